"""Settings: built-in defaults, then ``config/mmc.toml`` (or ``MMC_CONFIG``), then ``MMC_*``.

Every setting ``key`` can be set in the file and by the environment variable
``MMC_<KEY>`` (``ENV_NAMES``); the names are a contract with operators, keep them.
One marshmallow schema (``SettingsSchema``) checks every value, whatever its source:
type, range, finite numbers, booleans. A value it refuses raises ``ConfigError`` naming
where the value came from (the variable, or the file and key) and never the value of a
secret; ``mmc`` then exits with status 2.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    validate,
    validates_schema,
)
from marshmallow import fields as mf

DEFAULT_CONFIG_PATH = Path("config/mmc.toml")

POSTGRES_SCHEMES = ("postgresql", "postgres")


class ConfigError(ValueError):
    """The configuration file or environment holds a value mmc cannot use."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8088
    data_dir: Path = Path("data")
    max_connections: int = 1000
    log_level: str = "INFO"
    # "text" or "json": one line per event either way.
    log_format: str = "text"
    # Serve everything under this prefix (e.g. "/mmc") behind a reverse proxy.
    base_path: str = ""
    # Never printed: repr=False keeps it out of tracebacks and debug logs (and marks a
    # secret for the settings schema: its value never appears in an error message).
    secret_key: str | None = field(default=None, repr=False)
    # Seconds a POST/PUT waits for the first connection attempt before answering 202.
    connect_timeout: float = 5.0
    # Seconds a $CONTROL request waits for its reply before answering 504.
    request_timeout: float = 5.0
    keepalive: int = 30
    reconnect_min_delay: float = 0.5
    reconnect_max_delay: float = 30.0
    # For the first reconnect_fast_period seconds of an outage the wait between attempts
    # stays at or under reconnect_fast_max_delay (0: no fast period).
    reconnect_fast_period: float = 60.0
    reconnect_fast_max_delay: float = 0.5
    # Connection attempts of all links in flight at once (from the TCP connect to the
    # SUBACK); the others wait their turn.
    max_connecting: int = 100
    max_body_size: int = 1024 * 1024
    shutdown_timeout: float = 10.0
    # The first admin, created only when the user table is empty.
    admin_username: str = "admin"
    admin_password: str | None = field(default=None, repr=False)
    # Seconds a Bearer token found in the store is believed without asking it again.
    # A revocation through this process takes effect at once; one made through another
    # replica sharing the store, within this time. 0: ask the store on every request.
    token_cache_seconds: float = 1.0
    # The same for browser sessions (a logout, a new password or a deleted user through
    # another replica): see mmc.services.sessions.
    session_cache_seconds: float = 1.0
    # Seconds without a request after which a browser session ends; and at the most.
    session_idle_timeout: float = 3600.0
    session_max_age: float = 7 * 24 * 3600.0
    # Login attempts within the window (seconds): login_max_failures lock that username
    # from that client address, login_address_max_failures lock the address for every
    # username, both for login_lockout seconds. Beyond login_max_failures, each attempt
    # on a username (from anywhere) first waits login_username_delay seconds, doubling per
    # attempt up to login_username_max_delay. 0 turns a limit or the delay off.
    login_max_failures: int = 5
    login_address_max_failures: int = 20
    login_failure_window: float = 900.0
    login_lockout: float = 300.0
    login_username_delay: float = 0.25
    login_username_max_delay: float = 5.0
    # scrypt work factor, log2(n); stored with each hash, so it can be raised later.
    password_hash_cost: int = 15
    # Comma-separated addresses/networks whose X-Forwarded-* headers are believed.
    trusted_proxies: str = ""
    # Comma-separated host names (optionally :port) the Host header may name; "": any.
    allowed_hosts: str = ""
    # Comma-separated origins (scheme://host[:port]) whose pages may call the API from the
    # browser (CORS, credentials included); "": none.
    cors_origins: str = ""
    # A Bearer token /metrics asks for; None: /metrics is open.
    metrics_token: str | None = field(default=None, repr=False)
    # Seconds a client may take to send its request headers, and its body.
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    # Concurrent HTTP connections, in all and from one client address.
    http_max_connections: int = 4096
    http_max_connections_per_address: int = 256
    # Seconds a capability probe waits: mosquitto 2.0 drops a $CONTROL publish no
    # plugin handles, so silence for this long means "not there".
    probe_timeout: float = 1.0
    # A plugin whose probe met silence (absent, or the broker was busy) is probed again by
    # a request that needs it, at most once per this many seconds.
    capability_recheck_interval: float = 10.0
    # A $SYS snapshot every sys_history_interval seconds, the last sys_history_length kept.
    sys_history_interval: float = 60.0
    sys_history_length: int = 60
    # The audit trail keeps entries this many days and at most this many rows (0: no cap).
    audit_retention_days: float = 365.0
    audit_max_rows: int = 1_000_000
    # Entries of refused requests nobody logged in for (401/403/429 without an identity)
    # have a cap of their own and only evict each other: strangers cannot flush the trail.
    audit_max_refusals: int = 10_000
    # GET /api/events: the events kept for clients resuming with Last-Event-ID, the
    # seconds between heartbeat comments of an idle stream, and the events one subscriber
    # may have waiting before it is dropped (a slow consumer never holds mmc up).
    events_buffer: int = 1000
    events_heartbeat: float = 15.0
    events_queue: int = 1000
    # Unset or sqlite:///relative/path, sqlite:////absolute/path: one process on a file.
    # postgresql://user:password@host:5432/db: replicas sharing one database. Holds a
    # password, so never printed.
    database_url: str | None = field(default=None, repr=False)
    # PostgreSQL: connections per replica, and seconds to connect, wait for one or run a
    # query before answering 503.
    database_pool_size: int = 10
    database_timeout: float = 5.0
    # PostgreSQL: seconds between full re-reads of the connections table, the safety net
    # under LISTEN/NOTIFY.
    reconcile_interval: float = 30.0
    # Names this process among replicas (logs, MQTT client ids); default: the host name.
    replica_id: str = ""
    # A root build of the open-source MMC web UI (cedalo/management-center frontend/),
    # served at base_path; None: no UI.
    ui_dir: Path | None = None

    @property
    def database_backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        url = self.database_url
        if url and url.split(":", 1)[0].lower() in POSTGRES_SCHEMES:
            return "postgresql"
        return "sqlite"

    @property
    def db_path(self) -> Path:
        """The SQLite file (SQLAlchemy's form: three slashes, then the path)."""
        url = self.database_url
        if url and url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
            return Path(url[len("sqlite:///") :])
        return self.data_dir / "mmc.sqlite3"

    @property
    def replica(self) -> str:
        return self.replica_id or socket.gethostname()

    @property
    def trusted_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        return tuple(
            ip_network(part.strip(), strict=False)
            for part in self.trusted_proxies.split(",")
            if part.strip()
        )

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def env_name(key: str) -> str:
    """The environment variable of a setting: ``MMC_`` and the key upper-cased."""
    return f"MMC_{key.upper()}"


# Environment variable -> settings field: one for every setting.
ENV_NAMES: dict[str, str] = {env_name(f.name): f.name for f in fields(Settings)}
# Settings whose values never appear in a message (repr=False on the dataclass field).
SECRETS = frozenset(f.name for f in fields(Settings) if not f.repr)


# Fields: each accepts the value as the TOML file types it and as the environment spells
# it (a string), and nothing else: no bool where a number belongs, no 2.5 for an integer.


class Integer(mf.Field[int]):
    default_error_messages = {"invalid": "must be a whole number"}  # noqa: RUF012

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,30}\s*", value):
            return int(value)
        raise self.make_error("invalid")


class Float(mf.Field[float]):
    """A finite number: ``nan`` and ``inf`` would make every timeout fire at once (or never)."""

    default_error_messages = {  # noqa: RUF012
        "invalid": "must be a number",
        "special": "must be a finite number, not nan or inf",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self.make_error("invalid")
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise self.make_error("invalid") from None
        if not math.isfinite(number):
            raise self.make_error("special")
        return number


class Boolean(mf.Field[bool]):
    """A TOML boolean, or true/false, 1/0, yes/no, on/off (any case) from the environment."""

    TRUE = frozenset({"true", "1", "yes", "on"})
    FALSE = frozenset({"false", "0", "no", "off"})
    default_error_messages = {  # noqa: RUF012
        "invalid": "must be true or false (also 1/0, yes/no, on/off)"
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            if word in self.TRUE:
                return True
            if word in self.FALSE:
                return False
        raise self.make_error("invalid")


class String(mf.Field[str]):
    default_error_messages = {  # noqa: RUF012
        "invalid": "must be a string",
        "control": "must not contain control characters",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        if re.search(r"[\x00-\x1f\x7f]", value):
            raise self.make_error("control")
        return value


class PathField(String):
    def _deserialize(  # type: ignore[override]
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> Path:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not text.strip():
            raise ValidationError("must not be empty")
        return Path(text)


def _checked(parse: Callable[[str], Any]) -> Callable[[str], None]:
    """A validator from a parser that raises ValueError with a useful message."""

    def check(value: str) -> None:
        try:
            parse(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    return check


def _normalise_base_path(value: str) -> str:
    """ "mmc/" or "/mmc/" -> "/mmc"; "/" or "" -> "" (no prefix)."""
    path = "/" + value.strip().strip("/")
    if path == "/":
        return ""
    if any(part in ("", ".", "..") for part in path.split("/")[1:]) or "?" in path or "#" in path:
        raise ValueError("is not a plain URL path (e.g. /mmc)")
    return path


def _parse_networks(value: str) -> None:
    for part in value.split(","):
        if part.strip():
            ip_network(part.strip(), strict=False)


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


def _parse_allowed_hosts(value: str) -> None:
    """``name``, ``name:port``, an IPv4 address, or ``[IPv6]`` (optionally ``:port``)."""
    for raw in value.split(","):
        part = raw.strip()
        if not part:
            continue
        host, port = part, None
        if part.startswith("["):
            host, sep, rest = part[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"{part!r} is not a host name or [IPv6]:port")
            port = rest[1:] if rest else None
            try:
                ip_address(host)
            except ValueError:
                raise ValueError(f"{part!r}: {host!r} is not an IPv6 address") from None
        else:
            if part.count(":") == 1:
                host, port = part.split(":")
            if not _HOST_NAME.fullmatch(host):
                raise ValueError(f"{part!r} is not a host name, host:port or [IPv6]:port")
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{part!r}: the port must be 1-65535")


def normalise_origin(value: str) -> str:
    """An origin as browsers send it in ``Origin``: lower-case scheme and host, the port
    only when it is not the scheme's default; ValueError for anything that is not one."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"{text!r} is not an origin: write http(s)://host[:port]")
    host = rest[:-1] if rest.endswith("/") else rest
    if not host or any(c in host for c in "/?#@ "):
        raise ValueError(f"{text!r} is not an origin: no path, query or credentials")
    host = host.lower()
    port = None
    if host.startswith("["):
        name, _, tail = host.partition("]")
        if tail:
            port = tail[1:] if tail.startswith(":") else "bad"
        host = name + "]"
    elif ":" in host:
        host, _, port = host.partition(":")
    if port is not None:
        if not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{text!r}: the port must be 1-65535")
        if int(port) != {"http": 80, "https": 443}[scheme]:
            host = f"{host}:{int(port)}"
    return f"{scheme}://{host}"


def parse_origins(value: str) -> frozenset[str]:
    """``cors_origins`` as a set of normalised origins. ``*`` is refused: with
    credentials allowed, every origin must be named."""
    origins = set()
    for part in value.split(","):
        if not part.strip():
            continue
        if part.strip() == "*":
            raise ValueError("'*' is not allowed (credentials are): name each origin")
        origins.add(normalise_origin(part))
    return frozenset(origins)


def _parse_database_url(url: str) -> None:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("sqlite", *POSTGRES_SCHEMES):
        # The scheme only: the rest may hold a password.
        raise ValueError(
            f"must start with sqlite:/// or postgresql:// (got a {scheme or 'scheme-less'} URL)"
        )
    if scheme == "sqlite" and not url.startswith("sqlite:///"):
        raise ValueError("write a SQLite file as sqlite:///path/to/file")


POSITIVE = validate.Range(min=0, min_inclusive=False, error="must be greater than 0")
NOT_NEGATIVE = validate.Range(min=0, error="must not be negative")
AT_LEAST_ONE = validate.Range(min=1, error="must be at least 1")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsSchema(Schema):
    """Every setting, its type and its range. Input: what the file and the environment
    hold (see the field classes); output: values for ``Settings``."""

    class Meta:
        unknown = RAISE

    host = String(validate=validate.Length(min=1, error="must not be empty"))
    port = Integer(validate=validate.Range(min=1, max=65535, error="must be 1-65535"))
    data_dir = PathField()
    max_connections = Integer(validate=NOT_NEGATIVE)
    log_level = String(
        validate=validate.OneOf(
            (*LOG_LEVELS, *(lvl.lower() for lvl in LOG_LEVELS)),
            error="must be one of " + ", ".join(LOG_LEVELS),
        )
    )
    log_format = String(validate=validate.OneOf(("text", "json"), error="must be text or json"))
    base_path = String(validate=_checked(_normalise_base_path))
    secret_key = String(allow_none=True)
    connect_timeout = Float(validate=POSITIVE)
    request_timeout = Float(validate=POSITIVE)
    # MQTT's keepalive is a 16-bit number of seconds; 0 turns it off.
    keepalive = Integer(validate=validate.Range(min=0, max=65535, error="must be 0-65535"))
    reconnect_min_delay = Float(validate=POSITIVE)
    reconnect_max_delay = Float(validate=POSITIVE)
    reconnect_fast_period = Float(validate=NOT_NEGATIVE)
    reconnect_fast_max_delay = Float(validate=POSITIVE)
    max_connecting = Integer(validate=AT_LEAST_ONE)
    max_body_size = Integer(validate=AT_LEAST_ONE)
    shutdown_timeout = Float(validate=NOT_NEGATIVE)
    admin_username = String(
        validate=validate.Length(min=1, max=64, error="must be 1-64 characters")
    )
    admin_password = String(allow_none=True)
    token_cache_seconds = Float(validate=validate.Range(min=0, max=60, error="must be 0-60"))
    session_cache_seconds = Float(validate=validate.Range(min=0, max=60, error="must be 0-60"))
    session_idle_timeout = Float(validate=POSITIVE)
    session_max_age = Float(validate=POSITIVE)
    # 0 turns a limit (or the delay) off.
    login_max_failures = Integer(validate=NOT_NEGATIVE)
    login_failure_window = Float(validate=POSITIVE)
    login_lockout = Float(validate=NOT_NEGATIVE)
    login_address_max_failures = Integer(validate=NOT_NEGATIVE)
    login_username_delay = Float(validate=NOT_NEGATIVE)
    login_username_max_delay = Float(validate=NOT_NEGATIVE)
    password_hash_cost = Integer(validate=validate.Range(min=10, max=20, error="must be 10-20"))
    trusted_proxies = String(validate=_checked(_parse_networks))
    allowed_hosts = String(validate=_checked(_parse_allowed_hosts))
    cors_origins = String(validate=_checked(parse_origins))
    metrics_token = String(allow_none=True)
    http_header_timeout = Float(validate=POSITIVE)
    http_body_timeout = Float(validate=POSITIVE)
    http_max_connections = Integer(validate=AT_LEAST_ONE)
    http_max_connections_per_address = Integer(validate=AT_LEAST_ONE)
    probe_timeout = Float(validate=POSITIVE)
    capability_recheck_interval = Float(validate=NOT_NEGATIVE)
    sys_history_interval = Float(validate=POSITIVE)
    sys_history_length = Integer(validate=NOT_NEGATIVE)
    audit_retention_days = Float(validate=NOT_NEGATIVE)
    audit_max_rows = Integer(validate=NOT_NEGATIVE)
    audit_max_refusals = Integer(validate=NOT_NEGATIVE)
    events_buffer = Integer(validate=NOT_NEGATIVE)
    events_heartbeat = Float(validate=POSITIVE)
    events_queue = Integer(validate=AT_LEAST_ONE)
    database_url = String(allow_none=True, validate=_checked(_parse_database_url))
    database_pool_size = Integer(validate=AT_LEAST_ONE)
    database_timeout = Float(validate=POSITIVE)
    reconcile_interval = Float(validate=POSITIVE)
    replica_id = String(validate=validate.Length(max=64, error="must be at most 64 characters"))
    ui_dir = PathField(allow_none=True)

    @validates_schema
    def _consistent(self, data: dict[str, Any], **kwargs: Any) -> None:
        defaults = Settings()
        low = data.get("reconnect_min_delay", defaults.reconnect_min_delay)
        high = data.get("reconnect_max_delay", defaults.reconnect_max_delay)
        if low > high:
            raise ValidationError(
                "must not be below reconnect_min_delay", field_name="reconnect_max_delay"
            )


_SCHEMA = SettingsSchema()
_MISSING = object()


def _describe(key: str, source: str, value: Any, problem: str) -> str:
    # A secret is named, never shown: the message goes to a terminal and to logs.
    shown = "" if key in SECRETS or value is _MISSING else f" (got {value!r})"
    return f"{source}: {problem}{shown}"


def _messages(errors: Any) -> list[str]:
    if isinstance(errors, dict):
        return [m for v in errors.values() for m in _messages(v)]
    if isinstance(errors, list):
        return [m for v in errors for m in _messages(v)]
    return [str(errors).rstrip(".")]


def validate_values(
    values: Mapping[str, Any], sources: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Values for ``Settings`` from raw ones (file-typed or strings), through the schema.
    ``sources`` names where each came from, for the message of a ``ConfigError``."""
    sources = sources or {}
    try:
        loaded: dict[str, Any] = _SCHEMA.load(dict(values))
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"": exc.messages}
        problems = [
            _describe(
                key,
                sources.get(key, key),
                values.get(key, _MISSING),
                "; ".join(_messages(problem)),
            )
            for key, problem in sorted(messages.items())
        ]
        raise ConfigError("; ".join(problems)) from None
    if "base_path" in loaded:
        loaded["base_path"] = _normalise_base_path(loaded["base_path"])
    if "log_level" in loaded:
        loaded["log_level"] = loaded["log_level"].upper()
    return loaded


def load_settings(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read the TOML file, apply the environment, then explicit overrides (CLI flags).

    An empty environment variable counts as unset."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    config_path = path or (Path(env["MMC_CONFIG"]) if env.get("MMC_CONFIG") else None)
    if config_path is None and DEFAULT_CONFIG_PATH.is_file():
        config_path = DEFAULT_CONFIG_PATH
    if config_path is not None:
        try:
            with config_path.open("rb") as fh:
                document = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_path} is not valid TOML: {exc}") from None
        section = document.get("mmc", document)
        if not isinstance(section, dict):
            raise ConfigError(f"config file {config_path}: [mmc] must be a table")
        known = set(ENV_NAMES.values())
        for key, value in section.items():
            if key not in known:
                raise ConfigError(f"config file {config_path}: unknown setting {key!r}")
            values[key] = value
            sources[key] = f"config file {config_path}, key {key}"

    for name, key in ENV_NAMES.items():
        if env.get(name):
            values[key] = env[name]
            sources[key] = name

    for key, value in overrides.items():
        if value is not None:
            # CLI flags arrive typed (argparse): give the schema the text it reads.
            values[key] = str(value) if isinstance(value, Path | int | float) else value
            sources[key] = f"--{key.replace('_', '-')}"

    return Settings(**validate_values(values, sources))
