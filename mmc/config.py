"""Settings: built-in defaults, then ``config/mmc.toml`` (or ``MMC_CONFIG``), then ``MMC_*``.

The environment names are a contract with operators; keep them.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
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
}


class ConfigError(ValueError):
    """The configuration file or environment holds a value mmc cannot use."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8088
    data_dir: Path = Path("data")
    max_connections: int = 1000
    log_level: str = "INFO"
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
    # Seconds a capability probe waits: mosquitto 2.0 drops a $CONTROL publish no
    # plugin handles, so silence for this long means "not there".
    probe_timeout: float = 1.0
    # A $SYS snapshot every sys_history_interval seconds, the last sys_history_length kept.
    sys_history_interval: float = 60.0
    sys_history_length: int = 60

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mmc.sqlite3"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _coerce(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if kind == "int":
            if isinstance(value, bool):
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

    settings = Settings(**values)
    if not 0 < settings.port < 65536:
        raise ConfigError(f"port {settings.port} is out of range")
    if settings.max_connections < 0:
        raise ConfigError("max_connections must not be negative")
    if settings.connect_timeout <= 0 or settings.request_timeout <= 0:
        raise ConfigError("timeouts must be positive")
    if settings.probe_timeout <= 0 or settings.sys_history_interval <= 0:
        raise ConfigError("probe_timeout and sys_history_interval must be positive")
    if settings.sys_history_length < 0:
        raise ConfigError("sys_history_length must not be negative")
    return settings
