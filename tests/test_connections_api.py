"""The Connections API end to end against real mosquitto brokers."""

from __future__ import annotations

from typing import Any

from tests.brokers import MosquittoBroker, TlsMaterial, free_port
from tests.conftest import Client, blob, plain_body, tls_body


async def _post(client: Client, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await client.post("/api/connections", json=body)
    return resp.status, await resp.json()


async def _status_of(client: Client, connection_id: str) -> dict[str, Any]:
    resp = await client.get(f"/api/connections/{connection_id}")
    assert resp.status == 200
    status: dict[str, Any] = (await resp.json())["status"]
    return status


async def test_create_plain_connection_connects(client: Client, broker: MosquittoBroker) -> None:
    status, body = await _post(client, plain_body(broker))
    assert status == 200, body
    assert isinstance(body, list)
    [conn] = body
    assert conn["id"] == "plain"
    assert conn["name"] == "Plain broker"
    assert conn["projectId"] == "default"
    assert conn["credentials"] == {"username": broker.admin_username}
    assert conn["rejectUnauthorized"] is True
    assert conn["status"]["connected"] is True
    assert isinstance(conn["status"]["timestamp"], int)
    assert "error" not in conn["status"]

    listing = await (await client.get("/api/connections")).json()
    assert [c["id"] for c in listing] == ["plain"]
    assert listing[0]["status"]["connected"] is True


async def test_create_tls_connection_connects(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    status, body = await _post(client, tls_body(broker, tls_material, broker.tls_port))
    assert status == 200, body
    [conn] = body
    assert conn["status"]["connected"] is True
    ca = conn["ca"]
    assert ca["encoding"] == "base64"
    assert ca["data"] == blob(tls_material.ca_cert)["data"]
    assert "CN=" in ca["subject"]
    assert ca["notAfter"].endswith("Z")
    assert len(ca["fingerprintSha256"].split(":")) == 32


async def test_create_mutual_tls_connection_connects(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    body = tls_body(
        broker,
        tls_material,
        broker.mtls_port,
        cert=blob(tls_material.client_cert),
        key=blob(tls_material.client_key),
    )
    status, answer = await _post(client, body)
    assert status == 200, answer
    [conn] = answer
    assert conn["status"]["connected"] is True
    assert conn["key"] == {"encoding": "base64"}
    assert "mmc-test-client" in conn["cert"]["subject"]


async def test_mutual_tls_without_client_certificate_is_refused(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    status, answer = await _post(client, tls_body(broker, tls_material, broker.mtls_port))
    assert status == 202, answer
    assert answer["code"] == "ACCEPTED"
    conn = await _status_of(client, "tls")
    assert conn["connected"] is False
    assert conn["error"]["code"]


async def test_closed_port_reports_econnrefused(client: Client, broker: MosquittoBroker) -> None:
    port = free_port()
    status, answer = await _post(client, plain_body(broker, url=f"mqtt://127.0.0.1:{port}"))
    assert status == 202, answer
    assert answer["code"] == "ACCEPTED"
    assert answer["message"].startswith('Connection created but could not connect. Reason "')
    assert "ECONNREFUSED" in answer["message"]
    error = (await _status_of(client, "plain"))["error"]
    assert error["code"] == "ECONNREFUSED"
    assert error["errno"] == -111
    assert error["syscall"] == "connect"
    assert error["address"] == "127.0.0.1"
    assert error["port"] == port


async def test_bad_credentials_report_not_authorized(
    client: Client, broker: MosquittoBroker
) -> None:
    body = plain_body(broker, credentials={"username": "admin", "password": "wrong"})
    status, answer = await _post(client, body)
    assert status == 202, answer
    error = (await _status_of(client, "plain"))["error"]
    assert error["code"] in {"NOT_AUTHORIZED", "BAD_USERNAME_OR_PASSWORD"}
