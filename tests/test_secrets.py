"""Secrets at rest, and `mmc secrets rotate` next to a running server (real processes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography.fernet import Fernet, InvalidToken

from mmc.config import Settings
from testbed.mosquitto import MosquittoBroker, TlsMaterial
from testbed.serve import MmcServer
from tests.conftest import ADMIN_PASSWORD, Client, b64, blob, call, plain_body, tls_body


def _raw(data_dir: Path) -> bytes:
    with contextlib.closing(sqlite3.connect(data_dir / "mmc.sqlite3")) as db:
        db.execute("PRAGMA wal_checkpoint(FULL)")
    return b"".join(p.read_bytes() for p in data_dir.iterdir() if p.name.startswith("mmc.sqlite3"))


async def test_no_secret_is_in_the_database_file(
    client: Client, settings: Settings, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    broker_password = "broker-password-in-clear-0815"
    user_password = "user-password-in-clear-4711"
    body = tls_body(
        broker,
        tls_material,
        broker.mtls_port,
        credentials={"username": "someone", "password": broker_password},
        cert=blob(tls_material.client_cert),
        key=blob(tls_material.client_key),
    )
    assert (await client.post("/api/connections", json=body)).status in (200, 202)
    user = {"username": "carol", "password": user_password, "roles": ["viewer"]}
    assert (await client.post("/api/user-management/users", json=user)).status == 201
    resp = await client.post("/api/tokens", json={"name": "ci", "role": "viewer"})
    token = (await resp.json())["token"]
    raw = _raw(settings.data_dir)
    assert b"carol" in raw
    assert b"someone" in raw
    for secret in (
        broker_password,
        user_password,
        token,
        token.removeprefix("mmc_"),
        client.session.headers["Authorization"].removeprefix("Bearer "),
        b64(tls_material.client_key)[:40],
        tls_material.client_key.decode().splitlines()[1],
    ):
        assert secret.encode() not in raw, secret  # ...their secrets are not


def _server(workdir: Path, **env: str) -> MmcServer:
    """`mmc serve` on ``workdir/data``, the store the `mmc secrets` commands change."""
    return MmcServer(workdir, admin_password=ADMIN_PASSWORD, env=env)


def _mmc(data: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmc", *args, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "MMC_LOG_LEVEL": "WARNING", **env},
    )


def _password_tokens(data: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(data / "mmc.sqlite3")) as db:
        rows = db.execute("SELECT password_enc FROM connections").fetchall()
        check = db.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
    return [r[0] for r in rows] + [check[0]]


async def test_rotate_while_the_server_reads_then_restart_with_the_new_key(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    data = tmp_path / "data"
    server = _server(tmp_path, MMC_SECRET_KEY=old)
    base = server.base_url
    with server:
        await server.wait_ready()
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar, headers={"Origin": base}) as session:
            login = {"username": "admin", "password": server.password}
            assert (await call(session, "POST", f"{base}/auth", json=login))[0] == 200
            status, _ = await call(
                session, "POST", f"{base}/api/connections", json=plain_body(broker)
            )
            assert status == 200

            # Readers keep going during the rotation (after the broker's features are known).
            dynsec = f"{base}/api/projects/default/brokers/plain/dynsec/clients"
            assert (await call(session, "GET", dynsec))[0] == 200
            stop = asyncio.Event()
            statuses: list[int] = []

            async def read() -> None:
                while not stop.is_set():
                    for path in (
                        "/api/connections",
                        "/api/projects/default/brokers/plain/dynsec/clients",
                    ):
                        statuses.append((await call(session, "GET", base + path))[0])

            readers = [asyncio.ensure_future(read()) for _ in range(4)]
            result = await asyncio.to_thread(
                _mmc, data, "secrets", "rotate", MMC_SECRET_KEY=old, MMC_NEW_SECRET_KEY=new
            )
            await asyncio.sleep(0.2)
            stop.set()
            await asyncio.gather(*readers)
            assert result.returncode == 0, result.stderr
            assert "re-encrypted 1 secrets of 1 connections" in result.stdout
            assert len(statuses) > 40
            assert set(statuses) == {200}

            # Everything is under the new key now, nothing under the old one.
            for token in _password_tokens(data):
                Fernet(new.encode()).decrypt(token.encode())
                with pytest.raises(InvalidToken):
                    Fernet(old.encode()).decrypt(token.encode())
            assert broker.admin_password.encode() not in _raw(data)

            # The running server only knows the old key: it refuses to change connections
            # (clearly, 503) rather than write secrets nobody could open after a restart.
            status, body = await call(
                session, "PUT", f"{base}/api/connections/plain", json=plain_body(broker)
            )
            assert status == 503, body
            assert "restart mmc with the new MMC_SECRET_KEY" in body["message"]
    assert server.returncode == 0

    # The old key no longer opens the store; the new one does, with the secrets intact.
    with _server(tmp_path, MMC_SECRET_KEY=old) as server:
        assert server.wait(timeout=30) == 2
    assert "cannot be decrypted with the configured secret key" in server.output()
    server = _server(tmp_path, MMC_SECRET_KEY=new)
    base = server.base_url
    with server:
        await server.wait_ready()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            login = {"username": "admin", "password": server.password}
            assert (await call(session, "POST", f"{base}/auth", json=login))[0] == 200
            status, listing = await call(session, "GET", f"{base}/api/connections")
            for _ in range(50):
                if listing[0]["status"]["connected"]:
                    break
                await asyncio.sleep(0.1)
                status, listing = await call(session, "GET", f"{base}/api/connections")
            assert listing[0]["status"]["connected"] is True  # the password decrypted
            status, body = await call(
                session,
                "PUT",
                f"{base}/api/connections/plain",
                json=plain_body(broker),
                headers={"Origin": base},
            )
            assert status == 200, body
            status, audit = await call(session, "GET", f"{base}/api/audit?method=CLI")
            assert [e["route"] for e in audit["entries"]] == ["mmc secrets rotate"]


async def test_rotate_with_the_key_file_and_a_server_started_with_both_keys(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    data = tmp_path / "data"
    server = _server(tmp_path)
    base = server.base_url
    with server:
        await server.wait_ready()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            login = {"username": "admin", "password": server.password}
            assert (await call(session, "POST", f"{base}/auth", json=login))[0] == 200
            status, _ = await call(
                session,
                "POST",
                f"{base}/api/connections",
                json=plain_body(broker),
                headers={"Origin": base},
            )
            assert status == 200
    key_file = data / "secret.key"
    old = key_file.read_text().strip()

    # Without a new key, rotate makes one and updates the key file (0600).
    result = _mmc(data, "secrets", "rotate")
    assert result.returncode == 0, result.stderr
    new = key_file.read_text().strip()
    assert new != old
    assert "\n" not in new
    assert key_file.stat().st_mode & 0o777 == 0o600
    for token in _password_tokens(data):
        Fernet(new.encode()).decrypt(token.encode())

    # The zero-downtime order for MMC_SECRET_KEY: a server started with "newer,current"
    # writes under the newer key at once and still opens everything; rotate finishes.
    newer = Fernet.generate_key().decode()
    with _server(tmp_path, MMC_SECRET_KEY=f"{newer},{new}") as server:
        await server.wait_ready()
        result = _mmc(
            data, "secrets", "rotate", MMC_SECRET_KEY=f"{newer},{new}", MMC_NEW_SECRET_KEY=newer
        )
        assert result.returncode == 0, result.stderr
    for token in _password_tokens(data):
        Fernet(newer.encode()).decrypt(token.encode())

    # Wrong or missing keys are refused before anything is touched.
    wrong, other = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    result = _mmc(data, "secrets", "rotate", MMC_SECRET_KEY=wrong, MMC_NEW_SECRET_KEY=other)
    assert result.returncode == 2
    assert "does not open" in result.stderr or "cannot be decrypted" in result.stderr
    result = _mmc(data, "secrets", "rotate", MMC_SECRET_KEY=newer)
    assert result.returncode == 2
    assert "MMC_NEW_SECRET_KEY" in result.stderr
    result = _mmc(data, "secrets", "rotate", MMC_SECRET_KEY=newer, MMC_NEW_SECRET_KEY="short")
    assert result.returncode == 2
    assert "Fernet key" in result.stderr
    for token in _password_tokens(data):
        Fernet(newer.encode()).decrypt(token.encode())
    # Run again with the key it already has (say, after a crash): harmless.
    result = _mmc(data, "secrets", "rotate", MMC_SECRET_KEY=newer, MMC_NEW_SECRET_KEY=newer)
    assert result.returncode == 0, result.stderr
