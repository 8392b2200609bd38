"""Settings: built-in defaults, then ``config/mmc.toml`` (or ``MMC_CONFIG``), then ``MMC_*``.

The environment names are a contract with operators; keep them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("config/mmc.toml")

# Environment variable -> settings field.
ENV_NAMES: dict[str, str] = {
    "MMC_HOST": "host",
    "MMC_PORT": "port",
    "MMC_DATA_DIR": "data_dir",
    "MMC_MAX_CONNECTIONS": "max_connections",
    "MMC_LOG_LEVEL": "log_level",
    "MMC_SECRET_KEY": "secret_key",
    "MMC_CONNECT_TIMEOUT": "connect_timeout",
    "MMC_REQUEST_TIMEOUT": "request_timeout",
    "MMC_ADMIN_USERNAME": "admin_username",
    "MMC_ADMIN_PASSWORD": "admin_password",
    "MMC_TRUSTED_PROXIES": "trusted_proxies",
    "MMC_SESSION_IDLE_TIMEOUT": "session_idle_timeout",
    "MMC_BASE_PATH": "base_path",
    "MMC_LOG_FORMAT": "log_format",
    "MMC_SHUTDOWN_TIMEOUT": "shutdown_timeout",
    "MMC_TOKEN_CACHE_SECONDS": "token_cache_seconds",
    "MMC_AUDIT_RETENTION_DAYS": "audit_retention_days",
    "MMC_AUDIT_MAX_ROWS": "audit_max_rows",
    "MMC_DATABASE_URL": "database_url",
    "MMC_DATABASE_POOL_SIZE": "database_pool_size",
    "MMC_DATABASE_TIMEOUT": "database_timeout",
    "MMC_RECONCILE_INTERVAL": "reconcile_interval",
    "MMC_HTTP_HEADER_TIMEOUT": "http_header_timeout",
    "MMC_HTTP_BODY_TIMEOUT": "http_body_timeout",
    "MMC_HTTP_MAX_CONNECTIONS": "http_max_connections",
    "MMC_HTTP_MAX_CONNECTIONS_PER_ADDRESS": "http_max_connections_per_address",
    "MMC_ALLOWED_HOSTS": "allowed_hosts",
    "MMC_METRICS_TOKEN": "metrics_token",
    "MMC_REPLICA_ID": "replica_id",
}

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
    # Never printed: repr=False keeps it out of tracebacks and debug logs.
    secret_key: str | None = field(default=None, repr=False)
    # Seconds a POST/PUT waits for the first connection attempt before answering 202.
    connect_timeout: float = 5.0
    # Seconds a $CONTROL request waits for its reply before answering 504.
    request_timeout: float = 5.0
    keepalive: int = 30
    reconnect_min_delay: float = 0.5
    reconnect_max_delay: float = 30.0
    max_body_size: int = 1024 * 1024
    shutdown_timeout: float = 10.0
    # The first admin, created only when the user table is empty.
    admin_username: str = "admin"
    admin_password: str | None = field(default=None, repr=False)
    # Seconds a Bearer token found in the store is believed without asking it again.
    # A revocation through this process takes effect at once; one made through another
    # replica sharing the store, within this time. 0: ask the store on every request.
    token_cache_seconds: float = 1.0
    # Seconds without a request after which a browser session ends; and at the most.
    session_idle_timeout: float = 3600.0
    session_max_age: float = 7 * 24 * 3600.0
    # Failed logins: this many within the window lock the username and the address.
    login_max_failures: int = 5
    login_failure_window: float = 900.0
    login_lockout: float = 300.0
    # scrypt work factor, log2(n); stored with each hash, so it can be raised later.
    password_hash_cost: int = 15
    # Comma-separated addresses/networks whose X-Forwarded-* headers are believed.
    trusted_proxies: str = ""
    # Seconds a capability probe waits: mosquitto 2.0 drops a $CONTROL publish no
    # plugin handles, so silence for this long means "not there".
    probe_timeout: float = 1.0
    # A $SYS snapshot every sys_history_interval seconds, the last sys_history_length kept.
    sys_history_interval: float = 60.0
    sys_history_length: int = 60
    # The audit trail keeps entries this many days and at most this many rows (0: no cap).
    audit_retention_days: float = 365.0
    audit_max_rows: int = 1_000_000
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
    # Seconds a client has to send a whole request head (request line and headers), counted
    # from the connection or the end of the previous response: idle keep-alive
    # connections and trickled headers are closed after it.
    http_header_timeout: float = 10.0
    # Seconds a client has to send a whole request body once its head arrived.
    http_body_timeout: float = 30.0
    # Open HTTP connections at most, and from one client address (not counted for
    # trusted proxies, whose clients all share the proxy's address).
    http_max_connections: int = 4096
    http_max_connections_per_address: int = 256
    # Comma-separated host names (optionally host:port) the Host header may name; empty:
    # any (DNS rebinding can then reach the API from a browser).
    allowed_hosts: str = ""
    # When set, GET /metrics requires "Authorization: Bearer <metrics_token>".
    metrics_token: str | None = field(default=None, repr=False)

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


def _coerce(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind == "Path":
            return Path(str(value))
        if kind in ("str", "str | None"):
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {kind}") from None
    raise ConfigError(f"{name}: unsupported setting type {kind}")


def _normalise_base_path(value: str) -> str:
    """ "mmc/" or "/mmc/" -> "/mmc"; "/" or "" -> "" (no prefix)."""
    path = "/" + value.strip().strip("/")
    if path == "/":
        return ""
    if any(part in ("", ".", "..") for part in path.split("/")[1:]) or "?" in path or "#" in path:
        raise ConfigError(f"base_path {value!r} is not a plain URL path")
    return path


def load_settings(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Read the TOML file, apply the environment, then explicit overrides (CLI flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Settings)}

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
        for key, value in section.items():
            if key not in known:
                raise ConfigError(f"config file {config_path}: unknown setting {key!r}")
            values[key] = _coerce(key, value)

    for env_name, key in ENV_NAMES.items():
        if env.get(env_name):
            values[key] = _coerce(key, env[env_name])

    for key, value in overrides.items():
        if value is not None:
            values[key] = _coerce(key, value)

    if "base_path" in values:
        values["base_path"] = _normalise_base_path(values["base_path"])
    settings = Settings(**values)
    if not 0 < settings.port < 65536:
        raise ConfigError(f"port {settings.port} is out of range")
    if settings.log_format not in ("text", "json"):
        raise ConfigError("log_format must be 'text' or 'json'")
    if settings.max_connections < 0:
        raise ConfigError("max_connections must not be negative")
    if settings.connect_timeout <= 0 or settings.request_timeout <= 0:
        raise ConfigError("timeouts must be positive")
    if not 10 <= settings.password_hash_cost <= 20:
        raise ConfigError("password_hash_cost must be between 10 and 20")
    try:
        settings.trusted_networks  # noqa: B018 - parse now, fail at start
    except ValueError as exc:
        raise ConfigError(f"trusted_proxies: {exc}") from None
    if settings.probe_timeout <= 0 or settings.sys_history_interval <= 0:
        raise ConfigError("probe_timeout and sys_history_interval must be positive")
    if not 0 <= settings.token_cache_seconds <= 60:
        raise ConfigError("token_cache_seconds must be between 0 and 60")
    if settings.sys_history_length < 0:
        raise ConfigError("sys_history_length must not be negative")
    if settings.audit_retention_days < 0 or settings.audit_max_rows < 0:
        raise ConfigError("audit_retention_days and audit_max_rows must not be negative")
    if not (
        0 < settings.http_header_timeout < math.inf and 0 < settings.http_body_timeout < math.inf
    ):
        raise ConfigError("http_header_timeout and http_body_timeout must be positive")
    if settings.http_max_connections < 1 or settings.http_max_connections_per_address < 1:
        raise ConfigError(
            "http_max_connections and http_max_connections_per_address must be at least 1"
        )
    _check_database(settings)
    return settings


def _check_database(settings: Settings) -> None:
    url = settings.database_url
    if url:
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme not in ("sqlite", *POSTGRES_SCHEMES):
            raise ConfigError(
                "database_url must start with sqlite:/// or postgresql:// (got a "
                f"{scheme or 'scheme-less'} URL)"
            )
        if scheme == "sqlite" and not url.startswith("sqlite:///"):
            raise ConfigError("database_url: write a SQLite file as sqlite:///path/to/file")
    if settings.database_pool_size < 1:
        raise ConfigError("database_pool_size must be at least 1")
    if settings.database_timeout <= 0 or settings.reconcile_interval <= 0:
        raise ConfigError("database_timeout and reconcile_interval must be positive")
