"""The Cedalo MMC's extras around connections, against real brokers: trying a connection
without storing it, disconnecting and reconnecting one without deleting it, and the
version and OpenAPI export routes."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import mmc
from mmc.appkeys import connections_key, db_key
from mmc.config import Settings
from mmc.store import migrations
from testbed.mosquitto import MosquittoBroker, TlsMaterial, free_port
from tests.conftest import (
    BACKENDS,
    Client,
    MakeClient,
    blob,
    plain_body,
    tls_body,
    wait_until,
)
from tests.fake_mqtt import FakeBroker

pytestmark = [pytest.mark.backends(*BACKENDS), pytest.mark.mosquitto_versions("2.0", "2.1")]


async def _json(client: Client, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    resp = await client.request(method, path, **kwargs)
    return resp.status, await resp.json()


async def _try(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = await _json(client, "POST", "/api/connections/test", json=body)
    assert status == 200, answer
    assert isinstance(answer, dict)
    return answer


def _logins(broker: MosquittoBroker, client_id_prefix: str) -> int:
    """How many times a client whose id starts so connected to the broker."""
    return broker.log_text().count(f" as {client_id_prefix}")


def _disconnects(broker: MosquittoBroker, client_id_prefix: str) -> int:
    return broker.log_text().count(f"Client {client_id_prefix}")


# -- POST /api/connections/test ---------------------------------------------------------


async def test_trying_a_connection_connects_once_and_keeps_nothing(
    client: Client, own_broker: MosquittoBroker
) -> None:
    body = plain_body(own_broker, id="probe")
    assert await _try(client, body) == {"connected": True}
    # Nothing stored, no link, and the broker saw one client come and go.
    assert await (await client.get("/api/connections")).json() == []
    assert len(client.app[connections_key].pool) == 0
    assert (await client.get("/api/connections/probe")).status == 404
    assert _logins(own_broker, "mmc-probe-") == 1
    await wait_until(lambda: _disconnects(own_broker, "mmc-probe-") == 1)
    # Without id and name (a form that has not named it yet).
    del body["id"]
    assert await _try(client, body) == {"connected": True}


async def test_trying_a_connection_answers_the_codes_of_a_status(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    port = free_port()
    answer = await _try(client, plain_body(broker, url=f"mqtt://127.0.0.1:{port}"))
    assert answer["connected"] is False
    assert answer["error"] == {
        "code": "ECONNREFUSED",
        "errno": -111,
        "syscall": "connect",
        "address": "127.0.0.1",
        "port": port,
        "message": f"connect ECONNREFUSED 127.0.0.1:{port}",
    }
    bad_login = plain_body(broker, credentials={"username": "admin", "password": "wrong"})
    answer = await _try(client, bad_login)
    assert answer["error"]["code"] in {"NOT_AUTHORIZED", "BAD_USERNAME_OR_PASSWORD"}
    wrong_ca = tls_body(broker, tls_material, broker.tls_port, ca=blob(tls_material.other_ca_cert))
    answer = await _try(client, wrong_ca)
    assert answer["error"]["code"] == "SELF_SIGNED_CERT_IN_CHAIN"
    no_client_cert = tls_body(broker, tls_material, broker.mtls_port)
    answer = await _try(client, no_client_cert)
    assert answer["error"]["code"] == "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED"
    mutual = tls_body(
        broker,
        tls_material,
        broker.mtls_port,
        cert=blob(tls_material.client_cert),
        key=blob(tls_material.client_key),
    )
    assert await _try(client, mutual) == {"connected": True}
    # A body mmc would refuse to store is refused here too, before any attempt.
    status, error = await _json(
        client, "POST", "/api/connections/test", json=plain_body(broker, url="http://x")
    )
    assert status == 400
    assert "url" in error["info"]
    assert await (await client.get("/api/connections")).json() == []


async def test_trying_a_silent_broker_ends_within_the_connect_timeout(
    client: Client, settings: Settings
) -> None:
    async with FakeBroker("silent") as fake:
        started = time.monotonic()
        answer = await _try(client, {"id": "silent", "name": "Silent", "url": fake.url})
        took = time.monotonic() - started
        assert answer["connected"] is False
        assert answer["error"]["code"] == "ECONNACKTIMEOUT"
        assert took < settings.connect_timeout + 1.5
        assert fake.connects == 1  # one attempt, no retry
        await wait_until(lambda: not fake._writers)  # its socket was closed
    assert len(client.app[connections_key].pool) == 0


async def test_trying_a_stored_connection_uses_its_secrets_without_kicking_it(
    client: Client, own_broker: MosquittoBroker
) -> None:
    body = plain_body(own_broker, id="kept")
    body["credentials"]["clientId"] = "kept-client"
    status, _ = await _json(client, "POST", "/api/connections", json=body)
    assert status == 200
    link = client.app[connections_key].pool.require("kept")
    # What a client read back: no password. The stored one is used (same address).
    read = await (await client.get("/api/connections/kept")).json()
    assert await _try(client, read) == {"connected": True}
    # The test logged in with a client id of its own: the stored link kept its session.
    assert link.connected
    assert link.reconnects == 0
    assert "Client kept-client already connected" not in own_broker.log_text()
    # Moved to another address, the stored password is not sent there.
    moved = {**read, "url": f"mqtt://localhost:{own_broker.port}"}
    status, error = await _json(client, "POST", "/api/connections/test", json=moved)
    assert status == 400
    assert "password" in error["info"]["credentials"]


# -- PUT /api/connections/{id}/disconnect and /connect ----------------------------------


def _by_id(listing: list[dict[str, Any]], connection_id: str) -> dict[str, Any]:
    [entry] = [c for c in listing if c["id"] == connection_id]
    return entry


async def test_disconnect_keeps_the_connection_and_connect_brings_it_back(
    client: Client, own_broker: MosquittoBroker
) -> None:
    status, _ = await _json(client, "POST", "/api/connections", json=plain_body(own_broker))
    assert status == 200
    before = time.time() * 1000
    status, listing = await _json(client, "PUT", "/api/connections/plain/disconnect")
    assert status == 200, listing
    held = _by_id(listing, "plain")["status"]
    assert held["connected"] is False
    assert held["disconnected"] is True
    assert held["error"]["code"] == "EDISCONNECTED"
    assert held["timestamp"] >= before - 1
    await wait_until(lambda: _disconnects(own_broker, "mmc-plain-") == 1)
    # Stays so: no reconnect attempts, and asking again changes nothing.
    logins = _logins(own_broker, "mmc-plain-")
    status, again = await _json(client, "PUT", "/api/connections/plain/disconnect")
    assert status == 200
    assert _by_id(again, "plain")["status"] == held
    # Broker routes see it as not connected.
    resp = await client.get("/api/projects/default/brokers/plain/listeners")
    assert resp.status == 503
    assert "a user disconnected it" in (await resp.json())["message"]

    status, listing = await _json(client, "PUT", "/api/connections/plain/connect")
    assert status == 200, listing
    up = _by_id(listing, "plain")["status"]
    assert up["connected"] is True
    assert "disconnected" not in up
    assert "error" not in up
    assert _logins(own_broker, "mmc-plain-") == logins + 1
    # Connecting a connected connection: nothing to do, the same answer.
    status, listing = await _json(client, "PUT", "/api/connections/plain/connect")
    assert status == 200
    assert _by_id(listing, "plain")["status"]["connected"] is True

    for action in ("disconnect", "connect"):
        status, error = await _json(client, "PUT", f"/api/connections/nothing/{action}")
        assert status == 404, error


async def test_a_disconnected_connection_stays_so_across_restarts_and_changes(
    make_client: MakeClient, settings: Settings, own_broker: MosquittoBroker
) -> None:
    client = await make_client(settings)
    assert (await client.post("/api/connections", json=plain_body(own_broker))).status == 200
    assert (await client.put("/api/connections/plain/disconnect")).status == 200
    listing = await (await client.get("/api/connections")).json()
    held = listing[0]["status"]
    await client.close()

    client = await make_client(settings)
    link = client.app[connections_key].pool.require("plain")
    assert link.status.disconnected
    assert await (await client.get("/api/connections/plain")).json() == listing[0]
    logins = _logins(own_broker, "mmc-plain-")

    # A change (even POSTed again over it) keeps it disconnected and does not connect it.
    changed = plain_body(own_broker, name="Renamed")
    status, answer = await _json(client, "PUT", "/api/connections/plain", json=changed)
    assert status == 200, answer
    entry = _by_id(answer, "plain")
    assert entry["name"] == "Renamed"
    assert entry["status"]["disconnected"] is True
    assert entry["status"]["timestamp"] == held["timestamp"]
    status, answer = await _json(client, "POST", "/api/connections", json=changed)
    assert status == 403, answer
    assert _logins(own_broker, "mmc-plain-") == logins
    assert not client.app[connections_key].pool.require("plain").connected

    status, answer = await _json(client, "PUT", "/api/connections/plain/connect")
    assert status == 200
    assert _by_id(answer, "plain")["status"]["connected"] is True
    await client.close()
    client = await make_client(settings)
    link = client.app[connections_key].pool.require("plain")
    status_after = await link.wait_first_attempt(10)
    assert status_after is not None
    assert status_after.connected


async def test_a_store_from_before_the_flag_is_migrated(
    make_client: MakeClient, settings: Settings, own_broker: MosquittoBroker
) -> None:
    """A database written by an mmc without the disconnected flag: its connections get
    the column, are not disconnected, and can be disconnected."""
    flag = next(i for i, m in enumerate(migrations.MIGRATIONS) if "disconnected_at" in m.sqlite)
    client = await make_client(settings)
    assert (await client.post("/api/connections", json=plain_body(own_broker))).status == 200
    # Made what the mmc before the flag left: no column, one migration fewer.
    async with client.app[db_key].transaction() as tx:
        await tx.execute("ALTER TABLE connections DROP COLUMN disconnected_at")
        await tx.execute("DELETE FROM schema_migrations WHERE version > ?", (flag,))
    await client.close()
    client = await make_client(settings)
    link = client.app[connections_key].pool.require("plain")
    first = await link.wait_first_attempt(10)
    assert first is not None
    assert first.connected
    assert (await client.put("/api/connections/plain/disconnect")).status == 200
    await client.close()
    client = await make_client(settings)
    assert client.app[connections_key].pool.require("plain").status.disconnected


@pytest.mark.backends("postgresql")
async def test_other_replicas_follow_a_disconnect_and_a_connect(
    make_client: MakeClient, settings: Settings, own_broker: MosquittoBroker
) -> None:
    a = await make_client(settings.replace(replica_id="a"))
    b = await make_client(settings.replace(replica_id="b"))
    assert (await a.post("/api/connections", json=plain_body(own_broker))).status == 200
    on_b = b.app[connections_key].pool
    await wait_until(lambda: (link := on_b.get("plain")) is not None and link.connected)
    assert (await a.put("/api/connections/plain/disconnect")).status == 200
    await wait_until(lambda: on_b.require("plain").status.disconnected)
    await wait_until(lambda: "Client mmc-plain-" in own_broker.log_text())
    status, listing = await _json(b, "GET", "/api/connections")
    assert status == 200
    assert _by_id(listing, "plain")["status"]["disconnected"] is True
    assert (await a.put("/api/connections/plain/connect")).status == 200
    await wait_until(lambda: on_b.require("plain").connected)


async def test_the_new_routes_are_audited(client: Client, own_broker: MosquittoBroker) -> None:
    body = plain_body(own_broker)
    await client.post("/api/connections/test", json=body)
    await client.post("/api/connections", json=body)
    await client.put("/api/connections/plain/disconnect")
    await client.put("/api/connections/plain/connect")
    trail = await (await client.get("/api/audit")).json()
    routes = [(e["method"], e["route"], e["status"]) for e in trail["entries"]]
    assert ("POST", "/api/connections/test", 200) in routes
    assert ("PUT", "/api/connections/{connectionId}/disconnect", 200) in routes
    assert ("PUT", "/api/connections/{connectionId}/connect", 200) in routes
    targets = [e["target"] for e in trail["entries"] if e["route"].endswith("/disconnect")]
    assert targets == [{"connectionId": "plain"}]


# -- GET /api/version, /api/docs/export -------------------------------------------------


async def test_version_and_the_mmc_path_of_the_openapi_document(client: Client) -> None:
    status, version = await _json(client, "GET", "/api/version")
    assert status == 200
    assert version == {"name": "mmc", "version": mmc.__version__}
    resp = await client.get("/api/docs/export")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    exported = await resp.json()
    assert exported == json.loads(await (await client.get("/api/docs/openapi.json")).text())
    paths = exported["paths"]
    for path in (
        "/api/version",
        "/api/docs/export",
        "/api/connections/test",
        "/api/connections/{connectionId}/disconnect",
        "/api/connections/{connectionId}/connect",
    ):
        assert path in paths, path
