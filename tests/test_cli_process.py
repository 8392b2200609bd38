"""`mmc serve` as a real process: what `make run` starts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from testbed.mosquitto import MosquittoBroker, free_port
from tests.conftest import ADMIN_PASSWORD, plain_body


def _spawn(data_dir: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mmc", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env={
            **os.environ,
            "MMC_LOG_LEVEL": "DEBUG",
            "MMC_ADMIN_PASSWORD": ADMIN_PASSWORD,
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def mmc_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    proc = _spawn(tmp_path / "data", port)
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


async def _wait_http(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            assert proc.poll() is None, "mmc exited during start-up"
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "mmc did not answer in time"
            time.sleep(0.1)  # noqa: ASYNC251 - a tiny poll interval in a test


async def test_serve_creates_a_connection_and_stops_cleanly_on_sigterm(
    mmc_process: tuple[subprocess.Popen[bytes], int], broker: MosquittoBroker
) -> None:
    proc, port = mmc_process
    await _wait_http(port, proc)
    base = f"http://127.0.0.1:{port}"
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

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    assert "mmc listening on http://127.0.0.1:" in output
    assert "broker plain connected" in output
    assert broker.admin_password not in output


def test_wrong_secret_key_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    data_dir = tmp_path / "data"
    port = free_port()
    proc = _spawn(data_dir, port)
    try:
        import asyncio

        # The first start stores a token that only the data directory's own key opens.
        asyncio.run(_wait_http(port, proc))
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        assert proc.stdout is not None
        proc.stdout.close()

    proc = _spawn(data_dir, free_port(), MMC_SECRET_KEY=Fernet.generate_key().decode())
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert b"cannot be decrypted with the configured secret key" in out
    assert b"Traceback" not in out


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
    port = free_port()
    proc = _spawn(data, port)
    try:
        import asyncio

        asyncio.run(_wait_http(port, proc))
        asyncio.run(_login(port, "alice", "alice-password"))
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        assert proc.stdout is not None
        proc.stdout.close()
    assert "admin" not in _mmc(data, "users", "list").stdout.split()


async def _login(port: int, username: str, password: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/auth", json={"username": username, "password": password}
        ) as resp,
    ):
        assert resp.status == 200


async def test_sigterm_finishes_requests_in_flight_and_disconnects_cleanly(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    import asyncio

    # A "broker" that accepts TCP and never answers: a POST to it takes connect_timeout.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # until mmc gives up and closes
        finally:
            writer.close()

    blackhole = await asyncio.start_server(silent, "127.0.0.1", 0)
    hole_port = blackhole.sockets[0].getsockname()[1]
    port = free_port()
    proc = _spawn(tmp_path / "data", port, MMC_CONNECT_TIMEOUT="2", MMC_SHUTDOWN_TIMEOUT="10")
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_http(port, proc)
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
            proc.send_signal(signal.SIGTERM)
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
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        blackhole.close()
        await blackhole.wait_closed()
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    proc.stdout.close()
    assert "mmc stopping" in output
    # The broker saw an MQTT DISCONNECT, not a dropped socket.
    client_id = re.search(r"broker steady connected to \S+ as (\S+)", output)
    assert client_id is not None
    log = broker.log_text()
    assert f"Client {client_id.group(1)} disconnected." in log
    assert f"Client {client_id.group(1)} closed its connection." not in log
