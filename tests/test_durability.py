"""What the store does under concurrency, a full or read-only disk, and a SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mmc.appkeys import db_key
from mmc.config import Settings
from mmc.store.sqlite import SqliteDatabase
from testbed.mosquitto import MosquittoBroker
from testbed.serve import MmcServer
from tests.conftest import ADMIN_PASSWORD, Client, MakeClient, login, plain_body


async def test_concurrent_writes_each_get_their_own_transaction(client: Client) -> None:
    # One SQLite connection serves every request: without one transaction at a time,
    # 49 of these 50 answered 503 ("cannot start a transaction within a transaction").
    users = [
        client.post(
            "/api/user-management/users",
            json={"username": f"user{i}", "password": "password-123", "roles": ["viewer"]},
        )
        for i in range(25)
    ]
    tokens = [
        client.post("/api/tokens", json={"name": f"t{i}", "role": "viewer"}) for i in range(25)
    ]
    answers = await asyncio.gather(*users, *tokens)
    assert [r.status for r in answers] == [201] * 50
    listed = await (await client.get("/api/user-management/users")).json()
    assert {f"user{i}" for i in range(25)} <= {u["username"] for u in listed}
    assert len(await (await client.get("/api/tokens")).json()) == 25 + 1  # + the client's own


@contextlib.contextmanager
def _small_disk(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` at ``path`` (tests run as root, where file modes stop nothing)."""
    path.mkdir(parents=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs and needs root: {result.stderr.strip()}")
    try:
        yield path
    finally:
        # Lazy: the app under test may still hold its files open until its fixture ends.
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> Path:
    filler = path / "filler"
    with filler.open("wb") as fh, pytest.raises(OSError, match="No space left") as raised:  # noqa: PT012
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    assert raised.value.errno == errno.ENOSPC
    return filler


async def _writes_until_refused(client: Client, broker: MosquittoBroker) -> dict[str, Any]:
    """Write until the store refuses; every answer before is a success, never a 500."""
    for i in range(2000):
        resp = await client.post("/api/tokens", json={"name": f"t{i}", "role": "viewer"})
        if resp.status != 201:
            body: dict[str, Any] = await resp.json()
            assert resp.status == 503, body
            return body
    raise AssertionError("the store never reported a full disk")


@pytest.mark.parametrize("fault", ["disk full", "read-only"])
async def test_a_full_or_read_only_store_refuses_writes_and_keeps_serving_reads(
    make_client: MakeClient,
    settings: Settings,
    broker: MosquittoBroker,
    tmp_path: Path,
    fault: str,
) -> None:
    """Disk full is real: the data directory is a 2 MiB tmpfs, filled up by another file.
    Read-only is SQLite's own: ``PRAGMA query_only`` makes it answer SQLITE_READONLY, as for
    a read-only file (as root, file modes and a remount with open files stop nothing)."""
    with _small_disk(tmp_path / "disk", "2m") as disk:
        settings = settings.replace(data_dir=disk / "data")
        client = await make_client(settings)
        assert (await client.post("/api/connections", json=plain_body(broker))).status == 200
        browser = await make_client(settings, authenticated=False)
        await login(browser)
        db = client.app[db_key]
        # The browser's session is due for its "last seen" write on its next request.
        async with db.transaction() as tx:
            await tx.execute("UPDATE sessions SET last_seen = last_seen - 120000")

        if fault == "disk full":
            filler = _fill(disk)
            refused = await _writes_until_refused(client, broker)
            expected = "database or disk is full"
        else:
            # On the writer's connection (reads have one of their own, query_only already).
            assert isinstance(db, SqliteDatabase)
            writer = db._conn
            await writer.execute("PRAGMA query_only = ON")
            refused = await (
                await client.post("/api/tokens", json={"name": "t", "role": "viewer"})
            ).json()
            expected = "readonly database"
        assert refused["code"] == "STORE_UNAVAILABLE"
        assert expected in refused["message"]

        writes = [
            client.post(
                "/api/user-management/users",
                json={"username": "u1", "password": "password-123", "roles": ["viewer"]},
            ),
            client.post("/api/connections", json=plain_body(broker, id="two", name="two")),
            client.post("/api/projects", json={"id": "p1", "name": "P1"}),
        ]
        for resp in await asyncio.gather(*writes):
            body = await resp.json()
            assert resp.status == 503, body
            assert body["code"] == "STORE_UNAVAILABLE"
            assert expected in body["message"]
        # Reads go on, for token and cookie callers alike; the process is fine.
        for path in ("/api/connections", "/api/user-management/users", "/api/audit"):
            assert (await client.get(path)).status == 200, path
        assert (await browser.get("/api/connections")).status == 200
        dynsec = "/api/projects/default/brokers/plain/dynsec/clients"
        assert (await client.get(dynsec)).status == 200
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
        # The connection that could not be stored is not half there either.
        listing = await (await client.get("/api/connections")).json()
        assert [c["id"] for c in listing] == ["plain"]

        # Space freed / writable again: writes work again, no restart needed.
        if fault == "disk full":
            filler.unlink()
        else:
            await writer.execute("PRAGMA query_only = OFF")
        resp = await client.post("/api/tokens", json={"name": "again", "role": "viewer"})
        assert resp.status == 201
        await client.close()
        await browser.close()


async def test_sigkill_during_a_burst_of_writes_loses_nothing_acknowledged(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A real `mmc serve`, SIGKILLed while 120 writes are in flight: every write answered
    2xx is there after the restart, whole (its audit entry too), and SQLite is intact."""
    config = tmp_path / "mmc.toml"
    config.write_text("[mmc]\npassword_hash_cost = 10\n")
    data = tmp_path / "data"
    server = MmcServer(tmp_path, admin_password=ADMIN_PASSWORD, env={"MMC_CONFIG": str(config)})
    base = server.base_url
    acknowledged: dict[str, list[str]] = {"users": [], "tokens": [], "projects": [], "conns": []}
    request_ids: list[str] = []
    with server:
        await server.wait_ready()
        admin_token = await server.admin_token("burst")
        headers = {"Authorization": f"Bearer {admin_token}"}
        done = asyncio.Event()
        answered = 0

        async def write(kind: str, path: str, body: dict[str, Any], key: str) -> None:
            nonlocal answered
            rid = f"burst-{kind}-{key}"
            try:
                async with (
                    aiohttp.ClientSession(headers=headers) as session,
                    session.post(f"{base}{path}", json=body, headers={"X-Request-ID": rid}) as resp,
                ):
                    answer = await resp.json()
                    if resp.status < 300:
                        acknowledged[kind].append(answer["token"] if kind == "tokens" else key)
                        request_ids.append(rid)
            except (TimeoutError, aiohttp.ClientError):
                return  # in flight at the kill: may or may not be stored
            answered += 1
            if answered >= 40:
                done.set()

        jobs = []
        for i in range(30):
            jobs.append(
                write(
                    "users",
                    "/api/user-management/users",
                    {"username": f"u{i}", "password": f"password-{i:04d}", "roles": ["viewer"]},
                    f"u{i}",
                )
            )
            jobs.append(
                write("tokens", "/api/tokens", {"name": f"t{i}", "role": "viewer"}, f"t{i}")
            )
            jobs.append(
                write("projects", "/api/projects", {"id": f"p{i}", "name": f"P{i}"}, f"p{i}")
            )
            body = plain_body(broker, id=f"c{i}", name=f"c{i}")
            jobs.append(write("conns", "/api/connections", body, f"c{i}"))
        burst = asyncio.gather(*jobs)
        await asyncio.wait_for(done.wait(), 30)
        server.send_signal(signal.SIGKILL)
        await asyncio.wait_for(burst, 30)
        assert server.wait(timeout=10) == -signal.SIGKILL
    total = sum(len(v) for v in acknowledged.values())
    assert 40 <= total < 120, acknowledged  # killed in the middle, not before or after

    with contextlib.closing(sqlite3.connect(data / "mmc.sqlite3")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []

    server = MmcServer(tmp_path, admin_password=ADMIN_PASSWORD, env={"MMC_CONFIG": str(config)})
    base = server.base_url
    with server:
        await server.wait_ready()
        async with aiohttp.ClientSession(headers=headers) as session:
            users = {
                u["username"] for u in await _get(session, f"{base}/api/user-management/users")
            }
            assert set(acknowledged["users"]) <= users
            projects = {p["id"] for p in await _get(session, f"{base}/api/projects")}
            assert set(acknowledged["projects"]) <= projects
            conns = await _get(session, f"{base}/api/connections")
            assert set(acknowledged["conns"]) <= {c["id"] for c in conns}
            audited = {
                e["requestId"]
                for e in (await _get(session, f"{base}/api/audit?limit=1000"))["entries"]
            }
            assert set(request_ids) <= audited
            # Whole, not just present: tokens authenticate, stored broker passwords decrypt.
            for token in acknowledged["tokens"]:
                async with session.get(
                    f"{base}/api/profile", headers={"Authorization": f"Bearer {token}"}
                ) as resp:
                    assert resp.status == 200
            deadline = time.monotonic() + 15
            while not all(c["status"]["connected"] for c in conns):
                assert time.monotonic() < deadline, conns
                await asyncio.sleep(0.2)
                conns = await _get(session, f"{base}/api/connections")


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()
