"""`mmc serve` as a real process: what `make run` starts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from testbed.mosquitto import MosquittoBroker
from testbed.serve import MmcServer
from tests.conftest import ADMIN_PASSWORD, plain_body


def _server(workdir: Path, **env: str) -> MmcServer:
    return MmcServer(workdir, admin_password=ADMIN_PASSWORD, env={"MMC_LOG_LEVEL": "DEBUG", **env})


@pytest.fixture
def mmc_process(tmp_path: Path) -> Iterator[MmcServer]:
    with _server(tmp_path) as server:
        yield server


async def test_serve_creates_a_connection_and_stops_cleanly_on_sigterm(
    mmc_process: MmcServer, broker: MosquittoBroker
) -> None:
    server = mmc_process
    await server.wait_ready()
    base = server.base_url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        login = {"username": "admin", "password": ADMIN_PASSWORD}
        async with session.post(f"{base}/auth", data=login) as resp:
            assert resp.status == 200
            assert await resp.json() == {"code": "SUCCESS", "message": "Authorized"}
        async with session.post(
            f"{base}/api/connections", json=plain_body(broker), headers={"Origin": base}
        ) as resp:
            assert resp.status == 200
            [conn] = await resp.json()
            assert conn["status"]["connected"] is True

    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=15) == 0
    output = server.output()
    assert "mmc listening on http://127.0.0.1:" in output
    assert "broker plain connected" in output
    assert broker.admin_password not in output


async def test_a_chatty_mmc_never_blocks_on_its_output(tmp_path: Path) -> None:
    """Twice what a pipe holds (64 KiB) and more of log lines, one per request: an output
    nobody reads while the test runs blocked mmc in the middle of a line."""
    timeout = aiohttp.ClientTimeout(total=5)
    with _server(tmp_path) as server:
        await server.wait_ready()
        before = len(server.output())
        async with aiohttp.ClientSession(server.base_url, timeout=timeout) as session:
            for _ in range(1000):
                async with session.get("/healthz") as resp:
                    assert resp.status == 200
        assert len(server.output()) - before > 2 * 64 * 1024
        assert server.output().count("GET /healthz 200") == 1000


def test_wrong_secret_key_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    with _server(tmp_path) as server:
        # The first start stores a token that only the data directory's own key opens.
        asyncio.run(server.wait_ready())

    with _server(tmp_path, MMC_SECRET_KEY=Fernet.generate_key().decode()) as server:
        assert server.wait(timeout=30) == 2
        out = server.output()
    assert "cannot be decrypted with the configured secret key" in out
    assert "Traceback" not in out


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[mmc]\nport = 'eighty'\n")
    result = subprocess.run(
        [sys.executable, "-m", "mmc", "serve", "--config", str(bad)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"port" in result.stderr


def _mmc(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmc", *args, "--data-dir", str(data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "MMC_LOG_LEVEL": "WARNING"},
    )


def test_users_command_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = _mmc(
        data,
        "users",
        "add",
        "alice",
        "--role",
        "admin",
        "--role",
        "editor",
        "--password-stdin",
        stdin="alice-password\n",
    )
    assert result.returncode == 0, result.stderr
    result = _mmc(
        data, "users", "add", "bob", "--role", "viewer", "--password-stdin", stdin="short\n"
    )
    assert result.returncode == 1
    assert "at least 8 characters" in result.stderr
    assert (
        _mmc(
            data,
            "users",
            "add",
            "bob",
            "--role",
            "viewer",
            "--password-stdin",
            stdin="bob-password\n",
        ).returncode
        == 0
    )
    listing = _mmc(data, "users", "list").stdout
    assert "alice\tadmin,editor" in listing
    assert "bob\tviewer" in listing
    assert "password" not in listing

    assert (
        _mmc(data, "users", "passwd", "bob", "--password-stdin", stdin="bob-new-pass\n").returncode
        == 0
    )
    assert _mmc(data, "users", "delete", "bob").returncode == 0
    result = _mmc(data, "users", "delete", "alice")
    assert result.returncode == 1
    assert "last admin" in result.stderr
    assert _mmc(data, "users", "delete", "nobody").returncode == 1
    assert "bob" not in _mmc(data, "users", "list").stdout

    # The server sees the same users: alice logs in, no admin is bootstrapped over her.
    with _server(tmp_path) as server:
        assert server.data_dir == data
        asyncio.run(server.wait_ready())
        asyncio.run(_login(server.base_url, "alice", "alice-password"))
    assert "admin" not in _mmc(data, "users", "list").stdout.split()


async def _login(base: str, username: str, password: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}/auth", json={"username": username, "password": password}) as resp,
    ):
        assert resp.status == 200


async def test_sigterm_finishes_requests_in_flight_and_disconnects_cleanly(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    # A "broker" that accepts TCP and never answers: a POST to it takes connect_timeout.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # until mmc gives up and closes
        finally:
            writer.close()

    blackhole = await asyncio.start_server(silent, "127.0.0.1", 0)
    hole_port = blackhole.sockets[0].getsockname()[1]
    server = _server(tmp_path, MMC_CONNECT_TIMEOUT="2", MMC_SHUTDOWN_TIMEOUT="10")
    server.start()
    base = server.base_url
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            login = {"username": "admin", "password": ADMIN_PASSWORD}
            async with session.post(f"{base}/auth", json=login) as resp:
                assert resp.status == 200
            headers = {"Origin": base}
            body = plain_body(broker, id="steady", name="steady")
            async with session.post(f"{base}/api/connections", json=body, headers=headers) as resp:
                assert resp.status == 200
            slow = plain_body(broker, id="slow", name="slow", url=f"mqtt://127.0.0.1:{hole_port}")
            in_flight = asyncio.ensure_future(
                session.post(f"{base}/api/connections", json=slow, headers=headers)
            )
            await asyncio.sleep(0.5)
            server.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            # No new requests once shutdown began...
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as other, other.get(f"{base}/healthz"):
                    pass
            # ...but the one in flight gets its full answer.
            resp = await in_flight
            assert resp.status == 202
            assert (await resp.json())["code"] == "ACCEPTED"
            resp.release()
        assert await asyncio.to_thread(server.wait, 15) == 0
    finally:
        server.stop()
        blackhole.close()
        await blackhole.wait_closed()
    output = server.output()
    assert "mmc stopping" in output
    # The broker saw an MQTT DISCONNECT, not a dropped socket.
    client_id = re.search(r"broker steady connected to \S+ as (\S+)", output)
    assert client_id is not None
    log = broker.log_text()
    assert f"Client {client_id.group(1)} disconnected." in log
    assert f"Client {client_id.group(1)} closed its connection." not in log
