"""What the store does under concurrency, a full or read-only disk, and a SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mmc.config import Settings
from mmc.keys import db_key
from tests.brokers import MosquittoBroker
from tests.conftest import Client, MakeClient, login, plain_body


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
        await db.fetch_one("UPDATE sessions SET last_seen = last_seen - 120000")

        if fault == "disk full":
            filler = _fill(disk)
            refused = await _writes_until_refused(client, broker)
            expected = "database or disk is full"
        else:
            await db.fetch_one("PRAGMA query_only = ON")
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
            await db.fetch_one("PRAGMA query_only = OFF")
        resp = await client.post("/api/tokens", json={"name": "again", "role": "viewer"})
        assert resp.status == 201
        await client.close()
        await browser.close()
