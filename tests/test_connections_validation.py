"""Bad input gets a clear 400/413 in the one error shape, and nothing is stored."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from testbed.mosquitto import MosquittoBroker, TlsMaterial
from tests.conftest import Client, blob, plain_body, tls_body


async def _assert_nothing_stored(client: Client) -> None:
    resp = await client.get("/api/connections")
    assert resp.status == 200
    assert await resp.json() == []


def _assert_error_shape(body: dict[str, Any], status: int, code: str) -> None:
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    assert set(body) <= {"code", "message", "status", "info"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"url": "http://127.0.0.1:1883"}, "url"),
        ({"url": "mqtt://"}, "url"),
        ({"url": "mqtt://127.0.0.1:99999"}, "url"),
        ({"url": "mqtt://user:secret@127.0.0.1:1883"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"id": ""}, "id"),
        ({"id": "../etc"}, "id"),
        ({"id": "a/b"}, "id"),
        ({"id": "nul\x00id"}, "id"),
        ({"name": ""}, "name"),
        ({"name": 42}, "name"),
        ({"rejectUnauthorized": "maybe"}, "rejectUnauthorized"),
        ({"credentials": "admin"}, "credentials"),
        ({"ca": {"data": "AAAA", "encoding": "hex"}}, "ca"),
    ],
)
async def test_invalid_fields_are_rejected(
    client: Client, broker: MosquittoBroker, changes: dict[str, Any], field: str
) -> None:
    body = plain_body(broker, **changes)
    resp = await client.post("/api/connections", json=body)
    assert resp.status == 400
    answer = await resp.json()
    _assert_error_shape(answer, 400, "INVALID")
    assert field in answer["info"], answer
    await _assert_nothing_stored(client)


@pytest.mark.parametrize("missing", ["id", "name", "url"])
async def test_required_fields(client: Client, broker: MosquittoBroker, missing: str) -> None:
    body = plain_body(broker)
    del body[missing]
    resp = await client.post("/api/connections", json=body)
    assert resp.status == 400
    assert (await resp.json())["info"] == {missing: ["Missing data for required field."]}


def _tls_cases(tls: TlsMaterial) -> list[tuple[dict[str, Any], str]]:
    encrypted_key = serialization.load_pem_private_key(tls.client_key, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    return [
        ({"ca": {"data": "%%% not base64 %%%", "encoding": "base64"}}, "not valid base64"),
        ({"ca": blob(b"hello, I am not a certificate")}, "not a PEM or DER"),
        ({"ca": blob(tls.client_key)}, "not a PEM or DER"),
        ({"cert": blob(tls.client_cert)}, "key: is required"),
        ({"cert": blob(tls.client_cert), "key": blob(tls.server_key)}, "does not match"),
        ({"cert": blob(tls.client_cert), "key": blob(encrypted_key)}, "encrypted"),
        ({"cert": blob(tls.client_cert), "key": blob(b"garbage")}, "not a PEM or DER private key"),
    ]


async def test_invalid_tls_material_is_rejected_before_storing(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    for changes, message in _tls_cases(tls_material):
        body = tls_body(broker, tls_material, broker.tls_port, **changes)
        resp = await client.post("/api/connections", json=body)
        answer = await resp.json()
        assert resp.status == 400, (changes, answer)
        _assert_error_shape(answer, 400, "INVALID")
        assert message in answer["message"], answer
    await _assert_nothing_stored(client)


async def test_certificates_in_der_and_seed_typos_are_accepted(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    from cryptography import x509

    der = x509.load_pem_x509_certificate(tls_material.ca_cert).public_bytes(
        serialization.Encoding.DER
    )
    body = tls_body(
        broker,
        tls_material,
        broker.tls_port,
        ca={"data": base64.encodebytes(der).decode(), "endoding": "base64"},
        rejectUnauthorized="true",
    )
    resp = await client.post("/api/connections", json=body)
    assert resp.status == 200, await resp.text()
    [conn] = await resp.json()
    assert conn["ca"]["encoding"] == "base64"
    assert conn["rejectUnauthorized"] is True


async def test_tls_material_with_a_plain_url_is_rejected(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    body = plain_body(broker, ca=blob(tls_material.ca_cert))
    resp = await client.post("/api/connections", json=body)
    assert resp.status == 400
    assert "url" in (await resp.json())["info"]
    await _assert_nothing_stored(client)


@pytest.mark.parametrize(
    ("data", "content_type", "message"),
    [
        (b'{"id": "x", ', "application/json", "Malformed JSON"),
        (b"", "application/json", "empty"),
        (b'{"id": "a", "id": "b"}', "application/json", "Duplicate key"),
        (b"\xff\xfe{}", "application/json", "UTF-8"),
        (b"[1, 2]", "application/json", "must be an object"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "nested too deeply"),
        (b'{"id": "x"}', "text/plain", "Content-Type"),
        (b"id=x", "application/x-www-form-urlencoded", "Content-Type"),
    ],
)
async def test_malformed_bodies(
    client: Client, data: bytes, content_type: str, message: str
) -> None:
    resp = await client.post("/api/connections", data=data, headers={"Content-Type": content_type})
    assert resp.status == 400
    answer = await resp.json()
    _assert_error_shape(answer, 400, "INVALID")
    assert message in answer["message"]
    await _assert_nothing_stored(client)


async def test_oversized_body_is_413(client: Client, broker: MosquittoBroker) -> None:
    body = plain_body(broker, name="x" * (2 * 1024 * 1024))
    resp = await client.post(
        "/api/connections",
        data=io.BytesIO(json.dumps(body).encode()),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 413
    answer = await resp.json()
    _assert_error_shape(answer, 413, "PAYLOAD_TOO_LARGE")
    assert answer["message"] == "Request body is too large (limit 1048576 bytes)"
    await _assert_nothing_stored(client)


async def test_unknown_routes_and_methods_use_the_error_shape(client: Client) -> None:
    resp = await client.get("/api/nothing-here")
    assert resp.status == 404
    _assert_error_shape(await resp.json(), 404, "NOT_FOUND")

    resp = await client.patch("/api/connections", json={})
    assert resp.status == 405
    _assert_error_shape(await resp.json(), 405, "METHOD_NOT_ALLOWED")
    assert "POST" in resp.headers["Allow"]

    resp = await client.get("/api/connections/unknown")
    assert resp.status == 404
    _assert_error_shape(await resp.json(), 404, "NOT_FOUND")


async def test_request_id_is_echoed_or_generated(client: Client) -> None:
    resp = await client.get("/api/connections", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = await client.get("/api/nothing-here")
    assert len(resp.headers["X-Request-ID"]) == 32


async def test_probes_answer(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"
    assert await (await client.get("/api/status-check")).json() == {"status": "healthy"}
