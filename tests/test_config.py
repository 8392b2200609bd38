"""Settings: defaults, TOML file, MMC_* environment, explicit overrides, one schema."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from marshmallow import Schema

from mmc.config import (
    ENV_NAMES,
    SECRETS,
    Boolean,
    ConfigError,
    Settings,
    SettingsSchema,
    load_settings,
)

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "mmc.toml"


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.port == 8088
    assert settings.data_dir == Path("data")


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "mmc.toml"
    path.write_text('[mmc]\nport = 9000\nmax_connections = 5\nlog_level = "DEBUG"\n')
    env = {
        "MMC_PORT": "9100",
        "MMC_DATA_DIR": str(tmp_path / "d"),
        "MMC_SECRET_KEY": "sekrit-value",
    }
    settings = load_settings(path, env=env, host="0.0.0.0")  # noqa: S104
    assert settings.port == 9100
    assert settings.max_connections == 5
    assert settings.log_level == "DEBUG"
    assert settings.data_dir == tmp_path / "d"
    assert settings.host == "0.0.0.0"  # noqa: S104
    assert settings.secret_key == "sekrit-value"
    assert "sekrit-value" not in repr(settings)


def test_mmc_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text("[mmc]\nmax_connections = 7\n")
    assert load_settings(env={"MMC_CONFIG": str(path)}).max_connections == 7


def test_one_schema_field_and_one_variable_per_setting() -> None:
    names = [f.name for f in dataclasses.fields(Settings)]
    assert sorted(SettingsSchema().fields) == sorted(names)
    assert {f"MMC_{name.upper()}": name for name in names} == ENV_NAMES
    # The names operators already use are among them.
    for old in ("MMC_HOST", "MMC_DATABASE_URL", "MMC_AUDIT_MAX_ROWS", "MMC_REPLICA_ID"):
        assert old in ENV_NAMES
    assert {"secret_key", "admin_password", "database_url", "metrics_token"} <= SECRETS


def test_every_setting_can_be_set_by_the_environment(tmp_path: Path) -> None:
    # The twelve the file's comment promised but the environment could not set, and more.
    env = {
        "MMC_KEEPALIVE": "45",
        "MMC_RECONNECT_MIN_DELAY": "1.5",
        "MMC_RECONNECT_MAX_DELAY": "60",
        "MMC_RECONNECT_FAST_PERIOD": "0",
        "MMC_RECONNECT_FAST_MAX_DELAY": "0.25",
        "MMC_MAX_BODY_SIZE": "2048",
        "MMC_SESSION_MAX_AGE": "86400",
        "MMC_LOGIN_MAX_FAILURES": "3",
        "MMC_LOGIN_FAILURE_WINDOW": "60",
        "MMC_LOGIN_LOCKOUT": "30",
        "MMC_PASSWORD_HASH_COST": "12",
        "MMC_PROBE_TIMEOUT": "2.5",
        "MMC_SYS_HISTORY_INTERVAL": "10",
        "MMC_SYS_HISTORY_LENGTH": "0",
        "MMC_AUDIT_MAX_REFUSALS": "500",
        "MMC_ALLOWED_HOSTS": "mmc.example.com, mmc.example.com:8443, 10.0.0.1, [::1]:8088",
        "MMC_HTTP_MAX_CONNECTIONS_PER_ADDRESS": "16",
        "MMC_METRICS_TOKEN": "scrape-me",
        "MMC_LOG_LEVEL": "debug",
    }
    settings = load_settings(SHIPPED, env=env)
    assert settings.keepalive == 45
    assert settings.reconnect_min_delay == 1.5
    assert settings.reconnect_max_delay == 60.0
    assert (settings.reconnect_fast_period, settings.reconnect_fast_max_delay) == (0.0, 0.25)
    assert settings.max_body_size == 2048
    assert settings.session_max_age == 86400.0
    assert (settings.login_max_failures, settings.login_failure_window) == (3, 60.0)
    assert settings.login_lockout == 30.0
    assert settings.password_hash_cost == 12
    assert (settings.probe_timeout, settings.sys_history_interval) == (2.5, 10.0)
    assert settings.sys_history_length == 0
    assert settings.audit_max_refusals == 500
    assert settings.allowed_hosts.startswith("mmc.example.com")
    assert settings.http_max_connections_per_address == 16
    assert settings.metrics_token == "scrape-me"
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
def test_timeouts_must_be_finite(value: str) -> None:
    # nan passed every "<= 0" check and then made every request time out at once.
    with pytest.raises(ConfigError, match="MMC_REQUEST_TIMEOUT: must be a finite number"):
        load_settings(SHIPPED, env={"MMC_REQUEST_TIMEOUT": value})


def test_toml_infinity_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "mmc.toml"
    path.write_text("[mmc]\nconnect_timeout = inf\n")
    with pytest.raises(ConfigError, match=r"mmc.toml, key connect_timeout: must be a finite"):
        load_settings(path, env={})


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[mmc]\nport = 'x'\n", {}, "key port: must be a whole number"),
        ("[mmc]\nbogus = 1\n", {}, "unknown setting 'bogus'"),
        ("not toml at all [", {}, "not valid TOML"),
        ("", {"MMC_PORT": "70000"}, "MMC_PORT: must be 1-65535"),
        ("", {"MMC_PORT": "0x50"}, "MMC_PORT: must be a whole number"),
        ("", {"MMC_MAX_CONNECTIONS": "many"}, "MMC_MAX_CONNECTIONS: must be a whole number"),
        ("[mmc]\nmax_connections = 2.5\n", {}, "key max_connections: must be a whole number"),
        # A TOML boolean is not a number, nor a number a string.
        ("[mmc]\nmax_connections = true\n", {}, "key max_connections: must be a whole number"),
        ("[mmc]\nrequest_timeout = false\n", {}, "key request_timeout: must be a number"),
        ("[mmc]\nhost = 8088\n", {}, "key host: must be a string"),
        ("", {"MMC_REQUEST_TIMEOUT": "0"}, "MMC_REQUEST_TIMEOUT: must be greater than 0"),
        ("", {"MMC_CONNECT_TIMEOUT": "-1"}, "MMC_CONNECT_TIMEOUT: must be greater than 0"),
        ("[mmc]\nprobe_timeout = 0\n", {}, "probe_timeout: must be greater than 0"),
        ("[mmc]\nsys_history_interval = -1\n", {}, "sys_history_interval"),
        ("[mmc]\nsys_history_length = -1\n", {}, "sys_history_length: must not be negative"),
        ("", {"MMC_LOG_FORMAT": "xml"}, "MMC_LOG_FORMAT: must be text or json"),
        ("", {"MMC_LOG_LEVEL": "LOUD"}, "MMC_LOG_LEVEL: must be one of DEBUG"),
        ("", {"MMC_PASSWORD_HASH_COST": "9"}, "MMC_PASSWORD_HASH_COST: must be 10-20"),
        ("", {"MMC_TOKEN_CACHE_SECONDS": "61"}, "MMC_TOKEN_CACHE_SECONDS: must be 0-60"),
        ("", {"MMC_KEEPALIVE": "70000"}, "MMC_KEEPALIVE: must be 0-65535"),
        ("", {"MMC_TRUSTED_PROXIES": "10.0.0.0/8, nonsense"}, "MMC_TRUSTED_PROXIES"),
        ("", {"MMC_ALLOWED_HOSTS": "good.example, bad host"}, "MMC_ALLOWED_HOSTS: 'bad host'"),
        ("", {"MMC_ALLOWED_HOSTS": "a.example:99999"}, "MMC_ALLOWED_HOSTS: .*1-65535"),
        ("", {"MMC_BASE_PATH": "/a/../b"}, "MMC_BASE_PATH: is not a plain URL path"),
        ("", {"MMC_HOST": "a\nb"}, "MMC_HOST: must not contain control characters"),
        ("", {"MMC_AUDIT_MAX_REFUSALS": "-1"}, "MMC_AUDIT_MAX_REFUSALS: must not be negative"),
        ("", {"MMC_LOGIN_ADDRESS_MAX_FAILURES": "-1"}, "MMC_LOGIN_ADDRESS_MAX_FAILURES: must not"),
        ("", {"MMC_LOGIN_USERNAME_DELAY": "-0.5"}, "MMC_LOGIN_USERNAME_DELAY"),
        ("", {"MMC_HTTP_HEADER_TIMEOUT": "nan"}, "MMC_HTTP_HEADER_TIMEOUT: must be a finite"),
        ("", {"MMC_HTTP_MAX_CONNECTIONS": "0"}, "MMC_HTTP_MAX_CONNECTIONS: must be at least 1"),
        ("", {"MMC_DATABASE_POOL_SIZE": "0"}, "MMC_DATABASE_POOL_SIZE: must be at least 1"),
        (
            "",
            {"MMC_RECONNECT_MIN_DELAY": "10", "MMC_RECONNECT_MAX_DELAY": "5"},
            "MMC_RECONNECT_MAX_DELAY: must not be below reconnect_min_delay",
        ),
        # Several at once: all of them are named.
        ("", {"MMC_PORT": "x", "MMC_KEEPALIVE": "-1"}, "MMC_KEEPALIVE: .*; MMC_PORT: "),
    ],
)
def test_bad_values_are_reported(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "mmc.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, env=env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MMC_DATABASE_URL", "mysql://mmc:hunter2-db@db.example/mmc"),
        ("MMC_DATABASE_URL", "sqlite://hunter2-db"),
        ("MMC_SECRET_KEY", "hunter2-key\x01"),
        ("MMC_ADMIN_PASSWORD", "hunter2-admin\x00"),
        ("MMC_METRICS_TOKEN", "hunter2-metrics\x1b[31m"),
    ],
)
def test_a_refused_secret_is_named_never_shown(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(SHIPPED, env={name: value})
    assert str(caught.value).startswith(f"{name}: ")
    assert "hunter2" not in str(caught.value)


def test_a_secret_of_the_wrong_type_in_the_file_is_not_shown(tmp_path: Path) -> None:
    path = tmp_path / "mmc.toml"
    path.write_text("[mmc]\nmetrics_token = 123456789\nport = 'eighty'\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert "key metrics_token: must be a string" in str(caught.value)
    assert "123456789" not in str(caught.value)
    # Not a secret: shown, which helps.
    assert "'eighty'" in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("No", False),
        ("off", False),
    ],
)
def test_boolean_settings_read_toml_booleans_and_the_usual_words(
    raw: object, expected: bool
) -> None:
    schema = Schema.from_dict({"flag": Boolean()})()
    assert schema.load({"flag": raw}) == {"flag": expected}


@pytest.mark.parametrize("raw", ["maybe", "", "2", 1, 0, 1.0, None])
def test_boolean_settings_refuse_anything_else(raw: object) -> None:
    schema = Schema.from_dict({"flag": Boolean()})()
    errors = schema.validate({"flag": raw})
    assert "flag" in errors


def test_shipped_config_file_loads_and_documents_every_setting() -> None:
    assert load_settings(SHIPPED, env={}) == Settings()
    text = SHIPPED.read_text()
    keys = set(tomllib.loads(text)["mmc"])
    for f in dataclasses.fields(Settings):
        # Set, or (secrets, values without a useful default) mentioned in a comment.
        assert f.name in keys or f"# {f.name}:" in text, f.name
        if f.name in keys:
            default = f.default
            assert tomllib.loads(text)["mmc"][f.name] == (
                str(default) if isinstance(default, Path) else default
            ), f.name


def _run_serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmc", "serve", "--data-dir", str(tmp_path / "data")],
        env={**os.environ, "MMC_CONFIG": str(SHIPPED), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_bad_value_stops_mmc_serve_with_exit_2_naming_the_variable(tmp_path: Path) -> None:
    result = _run_serve(
        tmp_path, MMC_REQUEST_TIMEOUT="nan", MMC_DATABASE_URL="ftp://u:hunter2@host/x"
    )
    assert result.returncode == 2, result.stderr
    assert "MMC_REQUEST_TIMEOUT: must be a finite number" in result.stderr
    assert "MMC_DATABASE_URL: must start with sqlite:/// or postgresql://" in result.stderr
    assert "hunter2" not in result.stderr
    # Nothing was started: no data directory.
    assert not (tmp_path / "data").exists()
