"""The Connections API end to end against real mosquitto brokers."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from mmc.appkeys import connections_key
from testbed.mosquitto import MosquittoBroker, TlsMaterial, free_port
from tests.conftest import BACKENDS, Client, blob, plain_body, tls_body, wait_until

pytestmark = [pytest.mark.backends(*BACKENDS), pytest.mark.mosquitto_versions("2.0", "2.1")]


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
    # TLS 1.3 reports the missing client certificate after the handshake; it must
    # still come back as Node's code, not as a CONNACK timeout.
    assert conn["error"]["code"] == "ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert "certificate required" in answer["message"]


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


async def test_wrong_ca_reports_certificate_verification_error(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    body = tls_body(broker, tls_material, broker.tls_port, ca=blob(tls_material.other_ca_cert))
    status, answer = await _post(client, body)
    assert status == 202, answer
    error = (await _status_of(client, "tls"))["error"]
    # The broker sends its CA along with its certificate, so OpenSSL finds a
    # self-signed root it does not trust; without the chain it reports the leaf.
    assert error["code"] in {
        "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
        "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
        "SELF_SIGNED_CERT_IN_CHAIN",
    }
    assert error["message"] in answer["message"]


async def test_self_signed_server_is_refused_unless_reject_unauthorized_is_false(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    body = tls_body(broker, tls_material, broker.selfsigned_port)
    status, answer = await _post(client, body)
    assert status == 202, answer
    assert (await _status_of(client, "tls"))["error"]["code"] == "DEPTH_ZERO_SELF_SIGNED_CERT"

    # The seeds send booleans as strings; the fix is a re-POST of the failed connection.
    body["rejectUnauthorized"] = "false"
    status, answer = await _post(client, body)
    assert status == 200, answer
    [conn] = answer
    assert conn["rejectUnauthorized"] is False
    assert conn["status"]["connected"] is True


async def test_expired_and_misnamed_server_certificates(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    expired = tls_body(broker, tls_material, broker.expired_port, id="expired", name="expired")
    assert (await _post(client, expired))[0] == 202
    misnamed = tls_body(broker, tls_material, broker.wrongname_port, id="misnamed", name="misnamed")
    assert (await _post(client, misnamed))[0] == 202
    assert (await _status_of(client, "expired"))["error"]["code"] == "CERT_HAS_EXPIRED"
    assert (await _status_of(client, "misnamed"))["error"]["code"] == "ERR_TLS_CERT_ALTNAME_INVALID"


async def test_unresolvable_host_reports_enotfound(client: Client, broker: MosquittoBroker) -> None:
    status, _ = await _post(client, plain_body(broker, url="mqtt://no-such-host.invalid:1883"))
    assert status == 202
    error = (await _status_of(client, "plain"))["error"]
    assert error["code"] in {"ENOTFOUND", "EAI_AGAIN"}
    assert error["syscall"] == "getaddrinfo"
    assert error["address"] == "no-such-host.invalid"


async def test_duplicate_id_or_name_is_not_allowed(client: Client, broker: MosquittoBroker) -> None:
    assert (await _post(client, plain_body(broker)))[0] == 200
    for body in (plain_body(broker, name="Other name"), plain_body(broker, id="other-id")):
        status, answer = await _post(client, body)
        assert status == 403
        assert answer == {
            "code": "NOT_ALLOWED",
            "message": "Connection with the same name/id already exists",
            "status": 403,
        }
    listing = await (await client.get("/api/connections")).json()
    assert [(c["id"], c["name"]) for c in listing] == [("plain", "Plain broker")]


async def test_maximum_number_of_connections(
    make_client: Any, settings: Any, broker: MosquittoBroker
) -> None:
    client = await make_client(settings.replace(max_connections=2))
    for n in range(2):
        status, _ = await _post(client, plain_body(broker, id=f"c{n}", name=f"c{n}"))
        assert status == 200
    status, answer = await _post(client, plain_body(broker, id="c2", name="c2"))
    assert status == 403
    assert answer["message"] == "Maximum number of connections reached"
    # Fixing a failed connection by re-POSTing it is not a new connection.
    assert len(await (await client.get("/api/connections")).json()) == 2


async def test_failed_connection_is_fixed_by_posting_it_again(
    client: Client, broker: MosquittoBroker
) -> None:
    body = plain_body(broker, credentials={"username": broker.admin_username, "password": "bad"})
    assert (await _post(client, body))[0] == 202
    status, answer = await _post(client, plain_body(broker))
    assert status == 200, answer
    assert [c["status"]["connected"] for c in answer] == [True]


async def test_put_updates_and_reconnects_keeping_secrets(
    client: Client, broker: MosquittoBroker
) -> None:
    assert (await _post(client, plain_body(broker)))[0] == 200
    read = await (await client.get("/api/connections/plain")).json()
    assert "password" not in read["credentials"]
    read["name"] = "Renamed"
    # Sending back what was read (no password, with status) keeps the stored password.
    resp = await client.put("/api/connections/plain", json=read)
    assert resp.status == 200, await resp.text()
    [conn] = await resp.json()
    assert conn["name"] == "Renamed"
    assert conn["status"]["connected"] is True

    resp = await client.put("/api/connections/plain", json={**read, "id": "other"})
    assert resp.status == 400
    resp = await client.put("/api/connections/nope", json={**read, "id": "nope"})
    assert resp.status == 404
    assert (await resp.json())["code"] == "NOT_FOUND"


async def test_a_read_connection_sent_back_with_fields_mmc_does_not_use_is_accepted(
    client: Client, broker: MosquittoBroker
) -> None:
    assert (await _post(client, plain_body(broker)))[0] == 200
    read = await (await client.get("/api/connections/plain")).json()
    assert "status" in read

    def _settings(connection: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in connection.items() if k != "status"}

    # As read (status included), plus what the Cedalo MMC and newer clients add.
    extras = {"noMetricsMode": True, "lastConnected": 1700000000, "future": {"x": [1]}}
    sent = {**read, **extras, "credentials": {**read["credentials"], "extra": "ignored"}}
    resp = await client.put("/api/connections/plain", json=sent)
    assert resp.status == 200, await resp.text()
    [conn] = await resp.json()
    assert conn["status"]["connected"] is True
    after = await (await client.get("/api/connections/plain")).json()
    assert _settings(after) == _settings(read)
    assert not set(extras) & set(after)
    resp = await client.post(
        "/api/connections", json={**plain_body(broker, id="b2", name="b2"), **extras}
    )
    assert resp.status == 200, await resp.text()

    # Wrong types and values of the fields mmc uses are still refused, and change nothing.
    for field, value in (
        ("rejectUnauthorized", "maybe"),
        ("name", 5),
        ("url", "ftp://127.0.0.1"),
        ("credentials", {"username": 5}),
        ("ca", {"data": "x", "encoding": "hex"}),
    ):
        resp = await client.put("/api/connections/plain", json={**sent, field: value})
        assert resp.status == 400, (field, await resp.text())
        answer = await resp.json()
        assert (answer["code"], list(answer["info"])) == ("INVALID", [field])
    after = await (await client.get("/api/connections/plain")).json()
    assert _settings(after) == _settings(read)


async def test_delete_disconnects_and_returns_the_rest(
    client: Client, broker: MosquittoBroker
) -> None:
    assert (await _post(client, plain_body(broker)))[0] == 200
    assert (await _post(client, plain_body(broker, id="second", name="second")))[0] == 200
    link = client.app[connections_key].pool.get("plain")
    assert link is not None
    assert link.connected

    resp = await client.delete("/api/connections/plain")
    assert resp.status == 200
    assert [c["id"] for c in await resp.json()] == ["second"]
    assert link.status.connected is False
    assert client.app[connections_key].pool.get("plain") is None

    resp = await client.delete("/api/connections/plain")
    assert resp.status == 404
    assert (await resp.json())["status"] == 404


async def test_websocket_url_connects(client: Client, tmp_path: Path) -> None:
    ws_port = free_port()
    conf = f"listener {ws_port} 127.0.0.1\nprotocol websockets\n"
    with MosquittoBroker(tmp_path / "ws-broker", extra_conf=conf) as ws_broker:
        await wait_until(lambda: _port_open(ws_port))
        body = plain_body(ws_broker, url=f"ws://127.0.0.1:{ws_port}/mqtt")
        status, answer = await _post(client, body)
        assert status == 200, answer
        assert answer[0]["status"]["connected"] is True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_concurrent_posts_of_one_id_store_it_once(
    client: Client, broker: MosquittoBroker
) -> None:
    results = await asyncio.gather(*(_post(client, plain_body(broker)) for _ in range(5)))
    assert sorted(status for status, _ in results) == [200, 403, 403, 403, 403]
    assert len(await (await client.get("/api/connections")).json()) == 1


async def test_password_and_key_can_be_removed_explicitly(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    body = tls_body(
        broker,
        tls_material,
        broker.mtls_port,
        cert=blob(tls_material.client_cert),
        key=blob(tls_material.client_key),
    )
    assert (await _post(client, body))[0] == 200
    read = await (await client.get("/api/connections/tls")).json()
    # The key cannot be read back, but sending the read object keeps it (mTLS still works).
    resp = await client.put("/api/connections/tls", json=read)
    assert resp.status == 200
    # null removes: no password and no client certificate -> the broker refuses us.
    read["credentials"]["password"] = None
    read["cert"] = None
    read["key"] = None
    resp = await client.put("/api/connections/tls", json=read)
    assert resp.status == 202
    conn = await (await client.get("/api/connections/tls")).json()
    assert "cert" not in conn
    assert "key" not in conn
    assert conn["status"]["connected"] is False
