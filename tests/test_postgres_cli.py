"""The command line on a PostgreSQL store: start-up refusals, users, secret rotation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography.fernet import Fernet

from mmc.config import Settings
from mmc.crypto import KEY_CHECK_PLAINTEXT, SecretBox
from mmc.store import open_database
from mmc.store.connections import ConnectionRecord, ConnectionRepository
from mmc.store.projects import ProjectRepository
from testbed.mosquitto import free_port
from tests.conftest import SECRET_KEY

pytestmark = pytest.mark.backends("postgresql")


def _mmc(
    tmp_path: Path, *args: str, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmc", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "MMC_LOG_LEVEL": "WARNING",
            "MMC_DATA_DIR": str(tmp_path / "data"),
            **env,
        },
    )


async def _serve_briefly(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`mmc serve` that is expected to give up at start-up."""
    return await asyncio.to_thread(_mmc, tmp_path, "serve", "--port", str(free_port()), **env)


async def test_serve_refuses_to_start_without_its_database_or_a_shared_key(
    tmp_path: Path, settings: Settings
) -> None:
    assert settings.database_url is not None
    parts = urlsplit(settings.database_url)
    closed = parts._replace(netloc=f"mmc:pw-never-shown@127.0.0.1:{free_port()}").geturl()
    result = await _serve_briefly(
        tmp_path, MMC_DATABASE_URL=closed, MMC_SECRET_KEY=SECRET_KEY, MMC_DATABASE_TIMEOUT="2"
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert (
        f"Cannot connect to the database postgresql://mmc@127.0.0.1:{urlsplit(closed).port}/"
        in output
    )
    assert "pw-never-shown" not in output
    assert "Traceback" not in output

    result = await _serve_briefly(tmp_path, MMC_DATABASE_URL=settings.database_url)
    assert result.returncode == 2
    assert "MMC_SECRET_KEY is required with a PostgreSQL store" in result.stdout + result.stderr


async def test_users_and_secret_rotation_on_postgresql(tmp_path: Path, settings: Settings) -> None:
    assert settings.database_url is not None
    env = {"MMC_DATABASE_URL": settings.database_url, "MMC_SECRET_KEY": SECRET_KEY}
    added = await asyncio.to_thread(
        _mmc,
        tmp_path,
        "users",
        "add",
        "alice",
        "--role",
        "editor",
        "--password-stdin",
        stdin="alice-password\n",
        **env,
    )
    assert added.returncode == 0, added.stderr
    listed = await asyncio.to_thread(_mmc, tmp_path, "users", "list", **env)
    assert "alice\teditor" in listed.stdout

    # A stored secret, as a server would have written it; then rotate to a new key.
    async with open_database(settings) as db:
        await db.set_meta("key_check", SecretBox(SECRET_KEY.encode()).encrypt(KEY_CHECK_PLAINTEXT))
        await ProjectRepository(db).ensure_default()
        repo = ConnectionRepository(db, SecretBox(SECRET_KEY.encode()))
        await repo.insert(ConnectionRecord("c", "C", "mqtt://127.0.0.1:1", password="pw-1"))
    new = Fernet.generate_key().decode()
    rotated = await asyncio.to_thread(
        _mmc, tmp_path, "secrets", "rotate", MMC_NEW_SECRET_KEY=new, **env
    )
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 1 secrets of 1 connections" in rotated.stdout
    async with open_database(settings) as db:
        record = await ConnectionRepository(db, SecretBox(new.encode())).get("c")
        assert record is not None
        assert record.password == "pw-1"
        trail = await db.fetch_all("SELECT route FROM audit ORDER BY id")
        assert [row[0] for row in trail] == ["mmc users add", "mmc secrets rotate"]
