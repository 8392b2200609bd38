"""Hostile input not covered elsewhere (test_connections_validation covers bodies: size,
nesting, UTF-8, duplicate keys, content types, bad base64, non-certificates, keys that do
not match; test_dynsec_api covers topic filters with '#' in the middle; test_permissions
and test_auth cover method overrides, session fixation, cookie flags and throttling)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mmc.config import Settings
from testbed.mosquitto import MosquittoBroker, TlsMaterial
from tests.conftest import ADMIN_PASSWORD, Client, MakeClient, blob, origin, tls_body

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")


def _assert_error_shape(body: dict[str, Any], status: int) -> None:
    assert body["status"] == status
    assert isinstance(body["code"], str)
    assert isinstance(body["message"], str)
    assert set(body) <= {"code", "message", "status", "info"}


@pytest.mark.parametrize(
    "raw_id",
    # (A request line over 8190 bytes is refused by aiohttp's parser before mmc sees it:
    # 400 in plain text, like a proxy's 414.)
    ["%2e%2e", "a%2Fb", "%00", "nul%00x", "%C3%A9t%C3%A9", "%F0%9F%98%80", "%FF%FE", "x" * 2000],
)
async def test_hostile_path_ids_are_404_in_the_error_shape(client: Client, raw_id: str) -> None:
    for method, path in (
        ("GET", f"/api/connections/{raw_id}"),
        ("DELETE", f"/api/connections/{raw_id}"),
        ("GET", f"/api/user-management/users/{raw_id}"),
        ("DELETE", f"/api/tokens/{raw_id}"),
        ("GET", f"/api/projects/{raw_id}"),
        ("GET", f"/api/projects/default/brokers/{raw_id}/dynsec/clients/{raw_id}"),
    ):
        resp = await client.request(method, path)
        body = await resp.json()
        assert resp.status in (400, 404), (method, path, resp.status, body)
        _assert_error_shape(body, resp.status)


async def test_huge_strings_within_the_size_limit_are_400(
    client: Client, broker: MosquittoBroker
) -> None:
    huge = "x" * 900_000
    for path, body in (
        ("/api/connections", {"id": "a", "name": huge, "url": "mqtt://127.0.0.1:1"}),
        (
            "/api/user-management/users",
            {"username": huge, "password": "p" * 8, "roles": ["viewer"]},
        ),
        ("/api/user-management/users", {"username": "u", "password": huge, "roles": ["viewer"]}),
        ("/api/tokens", {"name": huge, "role": "viewer"}),
        ("/api/projects", {"id": "p", "name": huge}),
        ("/auth", {"username": huge, "password": huge[:100]}),
    ):
        resp = await client.post(path, json=body)
        answer = await resp.json()
        assert resp.status == 400, (path, answer["message"][:200])
        _assert_error_shape(answer, 400)
        assert len(await resp.read()) < 10_000  # the input is not echoed back


def _cert(
    not_before: dt.datetime, not_after: dt.datetime
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "absurd")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key


async def test_certificates_with_absurd_validity(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    now = dt.datetime.now(dt.UTC)
    # Valid until 9999: odd but legal X.509; stored, and its date shown as it is.
    forever, _ = _cert(now - dt.timedelta(days=1), dt.datetime(9999, 12, 31, tzinfo=dt.UTC))
    body = tls_body(broker, tls_material, broker.tls_port, ca=blob(forever))
    resp = await client.post("/api/connections", json=body)
    assert resp.status in (200, 202), await resp.text()
    listing = await (await client.get("/api/connections/tls")).json()
    assert listing["ca"]["notAfter"].startswith("9999-12-31")

    # Not valid for another century, or expired for decades: stored (the broker decides
    # at handshake time) without breaking anything; never a 500.
    for not_before, not_after in (
        (now + dt.timedelta(days=36500), now + dt.timedelta(days=36600)),
        (dt.datetime(1950, 1, 1, tzinfo=dt.UTC), dt.datetime(1951, 1, 1, tzinfo=dt.UTC)),
    ):
        pem, _ = _cert(not_before, not_after)
        body = tls_body(broker, tls_material, broker.tls_port, id="odd", name="odd", ca=blob(pem))
        resp = await client.post("/api/connections", json=body)
        assert resp.status in (200, 202, 400), await resp.text()
        if resp.status != 400:
            assert (await client.delete("/api/connections/odd")).status == 200


async def test_a_viewer_cannot_write_through_the_base_path_or_path_tricks(
    make_client: MakeClient, settings: Settings
) -> None:
    admin = await make_client(settings.replace(base_path="/mmc"), authenticated=False)
    credentials = {"username": "admin", "password": ADMIN_PASSWORD}
    assert (await admin.post("/mmc/auth", json=credentials)).status == 200
    resp = await admin.post(
        "/mmc/api/tokens", json={"name": "v", "role": "viewer"}, headers=origin(admin)
    )
    viewer_token = (await resp.json())["token"]
    admin.session.cookie_jar.clear()
    headers = {"Authorization": f"Bearer {viewer_token}"}
    body = {"username": "mallory", "password": "mallory-password", "roles": ["admin"]}
    for path in (
        "/mmc/api/user-management/users",
        "/api/user-management/users",
        "/mmc/../api/user-management/users",
        "/mmc/api/connections/../user-management/users",
        "/mmc/api/connections/%2e%2e/user-management/users",
        "/mmc//api/user-management/users",
        "/MMC/api/user-management/users",
        "/mmc/api/user-management/users/",
        "/mmc/api/user-management/users?x=/api/tokens",
    ):
        for override in ({}, {"X-HTTP-Method-Override": "GET"}, {"X-Original-URL": "/healthz"}):
            resp = await admin.post(path, json=body, headers={**headers, **override})
            assert resp.status in (401, 403, 404, 405), (path, override, resp.status)
    assert (await admin.post("/mmc/auth", json=credentials)).status == 200
    users = await (await admin.get("/mmc/api/user-management/users")).json()
    assert "mallory" not in {u["username"] for u in users}
