"""Settings: defaults, TOML file, MMC_* environment, explicit overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmc.config import ConfigError, Settings, load_settings


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


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[mmc]\nport = 'x'\n", {}, "port"),
        ("[mmc]\nbogus = 1\n", {}, "unknown setting"),
        ("not toml at all [", {}, "not valid TOML"),
        ("", {"MMC_PORT": "70000"}, "out of range"),
        ("", {"MMC_MAX_CONNECTIONS": "many"}, "max_connections"),
        ("[mmc]\nmax_connections = 2.5\n", {}, "max_connections"),
        ("", {"MMC_REQUEST_TIMEOUT": "0"}, "positive"),
        ("[mmc]\nprobe_timeout = 0\n", {}, "probe_timeout"),
        ("[mmc]\nsys_history_interval = -1\n", {}, "sys_history_interval"),
        ("[mmc]\nsys_history_length = -1\n", {}, "sys_history_length"),
    ],
)
def test_bad_values_are_reported(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "mmc.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, env=env)


def test_shipped_config_file_loads() -> None:
    shipped = Path(__file__).resolve().parent.parent / "config" / "mmc.toml"
    assert load_settings(shipped, env={}) == Settings()
