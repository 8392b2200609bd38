"""CORS (MMC_CORS_ORIGINS) with real preflight requests, as a browser sends them."""

from __future__ import annotations

import pytest

from mmc.config import ConfigError, Settings, load_settings, normalise_origin
from testbed.mosquitto import MosquittoBroker
from tests.conftest import Client, MakeClient, create_token, login, plain_body

UI = "https://ui.example.com"
LOCAL_UI = "http://localhost:3000"
STRANGER = "https://evil.example.net"


@pytest.fixture
async def cors_client(make_client: MakeClient, settings: Settings) -> Client:
    return await make_client(
        settings.replace(cors_origins=f"{UI}, HTTP://LOCALHOST:3000/"), authenticated=False
    )


def _preflight(
    origin: str, method: str, headers: str = "authorization,content-type"
) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def _cors_headers(headers: object) -> dict[str, str]:
    assert hasattr(headers, "items")
    return {k: v for k, v in headers.items() if k.lower().startswith("access-control-")}


async def test_preflight_of_an_allowed_origin_is_answered_without_credentials(
    cors_client: Client,
) -> None:
    resp = await cors_client.options("/api/connections/some-id", headers=_preflight(UI, "PUT"))
    assert resp.status == 204, await resp.text()
    assert resp.headers["Access-Control-Allow-Origin"] == UI
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    methods = {m.strip() for m in resp.headers["Access-Control-Allow-Methods"].split(",")}
    assert methods == {"GET", "PUT", "DELETE"}
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert int(resp.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in resp.headers["Vary"]
    # Origins are compared as browsers send them (the setting's case and slash ignored).
    resp = await cors_client.options("/api/connections", headers=_preflight(LOCAL_UI, "POST"))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == LOCAL_UI
    # The session routes too: a page of that origin can log in.
    resp = await cors_client.options("/auth", headers=_preflight(UI, "POST", "content-type"))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == UI


async def test_other_origins_get_no_cors_headers(cors_client: Client) -> None:
    resp = await cors_client.options("/api/connections", headers=_preflight(STRANGER, "POST"))
    assert resp.status == 401
    assert _cors_headers(resp.headers) == {}
    await login(cors_client)
    token = await create_token(cors_client, "admin")
    bearer = {"Authorization": f"Bearer {token}"}
    resp = await cors_client.get("/api/connections", headers={**bearer, "Origin": STRANGER})
    assert resp.status == 200
    assert _cors_headers(resp.headers) == {}
    assert "Origin" in resp.headers["Vary"]
    # Without Origin (curl, scripts): nothing changes.
    resp = await cors_client.get("/api/connections", headers=bearer)
    assert _cors_headers(resp.headers) == {}
    # Paths outside /api and the session routes are not covered.
    resp = await cors_client.options("/healthz", headers=_preflight(UI, "GET"))
    assert _cors_headers(resp.headers) == {}
    # An unknown path is not answered as a preflight.
    resp = await cors_client.options("/api/nothing-here", headers=_preflight(UI, "GET"))
    assert resp.status in (401, 404)
    assert "Access-Control-Allow-Methods" not in resp.headers


async def test_actual_requests_carry_the_headers_errors_included(
    cors_client: Client, own_broker: MosquittoBroker
) -> None:
    resp = await cors_client.get("/api/connections", headers={"Origin": UI})
    assert resp.status == 401
    assert resp.headers["Access-Control-Allow-Origin"] == UI
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert "X-Request-ID" in resp.headers["Access-Control-Expose-Headers"]

    # A browser page of the UI origin logs in and uses its session cookie, state-changing
    # requests included (the cross-site check trusts cors_origins).
    resp = await cors_client.post(
        "/auth",
        json={"username": "admin", "password": "admin-password-for-tests"},
        headers={"Origin": UI, "Sec-Fetch-Site": "same-site"},
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Access-Control-Allow-Origin"] == UI
    resp = await cors_client.post(
        "/api/connections",
        json=plain_body(own_broker),
        headers={"Origin": UI, "Sec-Fetch-Site": "same-site"},
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Access-Control-Allow-Origin"] == UI
    # Another site's page is still refused with the cookie, and told nothing.
    resp = await cors_client.delete(
        "/api/connections/plain", headers={"Origin": STRANGER, "Sec-Fetch-Site": "cross-site"}
    )
    assert resp.status == 403
    assert _cors_headers(resp.headers) == {}


async def test_without_the_setting_there_is_no_cors(client: Client) -> None:
    resp = await client.options("/api/connections", headers=_preflight(UI, "POST"))
    assert resp.status == 405
    assert _cors_headers(resp.headers) == {}
    resp = await client.get("/api/connections", headers={"Origin": UI})
    assert _cors_headers(resp.headers) == {}
    assert "Vary" not in resp.headers


def test_origins_are_checked_and_normalised() -> None:
    assert normalise_origin("HTTPS://UI.Example.com:443/") == "https://ui.example.com"
    assert normalise_origin("http://[::1]:8080") == "http://[::1]:8080"
    for bad in ("*", "ui.example.com", "https://ui.example.com/app", "ftp://x", "https://x:0"):
        with pytest.raises(ConfigError, match="MMC_CORS_ORIGINS"):
            load_settings(env={"MMC_CORS_ORIGINS": bad})
    env = {"MMC_CORS_ORIGINS": f"{UI},{LOCAL_UI}"}
    assert load_settings(env=env).cors_origins == f"{UI},{LOCAL_UI}"


async def test_under_a_base_path(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(
        settings.replace(cors_origins=UI, base_path="/mmc"), authenticated=False
    )
    resp = await client.options("/mmc/api/connections", headers=_preflight(UI, "POST"))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == UI
    resp = await client.get("/mmc/api/version", headers={"Origin": UI})
    assert resp.status == 401
    assert resp.headers["Access-Control-Allow-Origin"] == UI
    resp = await client.options("/api/connections", headers=_preflight(UI, "POST"))
    assert _cors_headers(resp.headers) == {}
