"""Connections across restarts of mmc and of the broker; secrets at rest."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from mmc.appkeys import connections_key, db_key
from mmc.config import Settings
from testbed.mosquitto import MosquittoBroker, TlsMaterial
from tests.conftest import BACKENDS, Client, MakeClient, b64, blob, plain_body, tls_body, wait_until

pytestmark = [pytest.mark.backends(*BACKENDS), pytest.mark.mosquitto_versions("2.0", "2.1")]


async def _all_connected(client: Client) -> bool:
    listing = await (await client.get("/api/connections")).json()
    return bool(listing) and all(c["status"]["connected"] for c in listing)


async def test_restart_restores_connections_and_secrets(
    make_client: MakeClient,
    settings: Settings,
    broker: MosquittoBroker,
    tls_material: TlsMaterial,
) -> None:
    client = await make_client(settings)
    mtls = tls_body(
        broker,
        tls_material,
        broker.mtls_port,
        cert=blob(tls_material.client_cert),
        key=blob(tls_material.client_key),
    )
    assert (await client.post("/api/connections", json=plain_body(broker))).status == 200
    assert (await client.post("/api/connections", json=mtls)).status == 200
    before = await (await client.get("/api/connections")).json()
    await client.close()

    # A new process on the same data directory: both links come back without any request,
    # which needs the decrypted broker password and client key.
    client = await make_client(settings)
    links = list(client.app[connections_key].pool)
    assert [link.id for link in links] == ["plain", "tls"]
    for link in links:
        status = await link.wait_first_attempt(10)
        assert status is not None
        assert status.connected, status
    after = await (await client.get("/api/connections")).json()
    strip = [{k: v for k, v in c.items() if k != "status"} for c in before]
    assert [{k: v for k, v in c.items() if k != "status"} for c in after] == strip


async def test_secrets_are_encrypted_at_rest(
    client: Client, settings: Settings, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    password = "a-very-distinct-broker-password-1234"
    body = tls_body(
        broker,
        tls_material,
        broker.mtls_port,
        credentials={"username": "someone", "password": password},
        cert=blob(tls_material.client_cert),
        key=blob(tls_material.client_key),
    )
    assert (await client.post("/api/connections", json=body)).status == 202
    key_b64 = b64(tls_material.client_key)
    key_body = tls_material.client_key.decode().splitlines()[1]

    if settings.database_backend == "postgresql":
        # Every column of every row, as the database server holds them.
        rows = await client.app[db_key].fetch_all("SELECT * FROM connections")
        assert len(rows) == 1
        raw = repr([tuple(row) for row in rows]).encode()
    else:
        db = sqlite3.connect(settings.db_path)
        try:
            db.execute("PRAGMA wal_checkpoint(FULL)")
            (count,) = db.execute("SELECT COUNT(*) FROM connections").fetchone()
        finally:
            db.close()
        assert count == 1
        # The files themselves: free pages and the WAL too.
        raw = b"".join(
            p.read_bytes() for p in settings.data_dir.iterdir() if p.name.startswith("mmc.sqlite3")
        )
        key_file = settings.data_dir / "secret.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
    assert b"someone" in raw  # the row is there...
    for secret in (password, key_b64[:40], key_body):
        assert secret.encode() not in raw  # ...but not its secrets


async def test_status_follows_the_broker_without_requests(
    client: Client, own_broker: MosquittoBroker
) -> None:
    body = plain_body(own_broker)
    assert (await client.post("/api/connections", json=body)).status == 200
    link = client.app[connections_key].pool.require("plain")
    connected_at = link.status.timestamp

    own_broker.kill()
    await wait_until(lambda: not link.connected, timeout=10)
    listing = await (await client.get("/api/connections")).json()
    assert listing[0]["status"]["connected"] is False
    assert listing[0]["status"]["timestamp"] >= connected_at

    own_broker.restart()
    await wait_until(lambda: link.connected, timeout=10)
    listing = await (await client.get("/api/connections")).json()
    assert listing[0]["status"]["connected"] is True
    assert "error" not in listing[0]["status"]


async def test_secrets_never_reach_responses_or_logs(
    client: Client,
    broker: MosquittoBroker,
    tls_material: TlsMaterial,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    key_b64 = b64(tls_material.client_key)
    bodies = [
        plain_body(broker),
        plain_body(
            broker,
            id="bad",
            name="bad",
            credentials={"username": "admin", "password": "wrong-pass-987"},
        ),
        tls_body(
            broker,
            tls_material,
            broker.mtls_port,
            cert=blob(tls_material.client_cert),
            key=blob(tls_material.client_key),
        ),
    ]
    texts = []
    for body in bodies:
        resp = await client.post("/api/connections", json=body)
        texts.append(await resp.text())
    texts.append(await (await client.get("/api/connections")).text())
    texts.append(await (await client.get("/api/connections/tls")).text())
    texts.append(await (await client.delete("/api/connections/bad")).text())
    secrets = [
        broker.admin_password,
        "wrong-pass-987",
        key_b64[:40],
        tls_material.client_key.decode().splitlines()[1],
    ]
    for text in [*texts, caplog.text]:
        for secret in secrets:
            assert secret not in text
