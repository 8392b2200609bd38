"""Production operation: metrics, structured logs, base path, reverse proxy, probes."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from pathlib import Path

import aiohttp
import pytest

from mmc.appkeys import connections_key
from mmc.config import Settings
from mmc.logs import JsonFormatter
from testbed.mosquitto import MosquittoBroker, TlsMaterial, free_port, write_tls_files
from tests.conftest import ADMIN_PASSWORD, Client, MakeClient, plain_body
from tests.nginx import Nginx, nginx_available


async def test_metrics_are_open_and_bounded(client: Client, broker: MosquittoBroker) -> None:
    assert (await client.post("/api/connections", json=plain_body(broker))).status == 200
    assert (await client.get("/api/connections/some-raw-id-123")).status == 404
    link = client.app[connections_key].pool.require_connected("plain")
    await link.control.request("dynamic-security", {"command": "listClients"})
    await link.control.send("dynamic-security", {"command": "madeUpCommand"})
    await asyncio.sleep(0.6)  # one event-loop lag sample

    # No credentials needed.
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(client.make_url("/metrics")) as resp,
    ):
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    assert (
        'mmc_http_requests_total{method="POST",route="/api/connections",status="200"} 1.0' in text
    )
    assert 'route="/api/connections/{connectionId}",status="404"' in text
    assert "some-raw-id-123" not in text
    assert 'mmc_broker_links{state="up"} 1.0' in text
    assert 'mmc_broker_link_changes_total{state="up"} 1.0' in text
    assert (
        'mmc_control_requests_total{api="dynamic-security",command="listClients",outcome="ok"} 1.0'
        in text
    )
    # A command name the plugin does not know is not a new label value.
    assert 'command="other",outcome="error"' in text
    assert "madeUpCommand" not in text
    assert "mmc_control_request_duration_seconds_bucket" in text
    assert "mmc_event_loop_lag_seconds_count" in text
    assert "mmc_http_request_duration_seconds_bucket" in text


async def test_one_structured_log_line_per_request(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mmc.access")
    resp = await client.get("/api/connections", headers={"X-Request-ID": "trace-42"})
    assert resp.headers["X-Request-ID"] == "trace-42"
    [record] = [r for r in caplog.records if getattr(r, "request_id", None) == "trace-42"]
    line = json.loads(JsonFormatter().format(record))
    assert line["method"] == "GET"
    assert line["route"] == "/api/connections"
    assert line["status"] == 200
    assert line["user"] == "token:admin-token"
    assert line["client"] == "127.0.0.1"
    assert isinstance(line["duration_ms"], float)
    assert line["level"] == "INFO"
    assert line["logger"] == "mmc.access"


async def test_base_path_serves_everything_under_the_prefix(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(settings.replace(base_path="/mmc"), authenticated=False)
    for path in ("/mmc/healthz", "/mmc/readyz", "/mmc/metrics", "/mmc/api/status-check"):
        assert (await client.get(path)).status == 200, path
    assert (await client.get("/healthz")).status in (401, 404)
    resp = await client.post("/mmc/auth", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert resp.status == 200
    assert "Path=/mmc" in resp.headers["Set-Cookie"]
    assert (await client.get("/mmc/api/connections")).status == 200
    assert (await client.get("/api/connections")).status in (401, 404)

    viewer = await create_token_under(client, "viewer")
    bearer = {"Authorization": f"Bearer {viewer}"}
    assert (await client.get("/mmc/api/connections", headers=bearer)).status == 200
    for path in ("/mmc/api/connections", "/mmc//api/connections", "/mmc/api/../api/connections"):
        resp = await client.post(path, json={}, headers=bearer)
        assert resp.status in (403, 404), path


async def create_token_under(client: Client, role: str) -> str:
    resp = await client.post(
        "/mmc/api/tokens",
        json={"name": role, "role": role},
        headers={"Origin": f"http://{client.host}:{client.port}"},
    )
    assert resp.status == 201, await resp.text()
    token: str = (await resp.json())["token"]
    return token


@pytest.fixture
def nginx_ready() -> None:
    reason = nginx_available()
    if reason is not None:
        pytest.fail(reason)


async def test_behind_nginx_with_tls_and_a_base_path(
    nginx_ready: None,
    make_client: MakeClient,
    settings: Settings,
    tmp_path: Path,
    tls_material: TlsMaterial,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mmc.access")
    mmc = await make_client(
        settings.replace(base_path="/mmc", trusted_proxies="127.0.0.1"), authenticated=False
    )
    files = write_tls_files(tls_material, tmp_path / "tls")
    port = free_port()
    server = f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {files["server_cert"]};
        ssl_certificate_key {files["server_key"]};
        location /mmc/ {{
            proxy_pass http://127.0.0.1:{mmc.port};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
        }}
    }}
    """
    ctx = ssl.create_default_context(cadata=tls_material.ca_cert.decode())
    base = f"https://localhost:{port}/mmc"
    with Nginx(tmp_path / "nginx", server) as nginx:
        await asyncio.to_thread(nginx.start, port)
        jar = aiohttp.CookieJar()
        async with aiohttp.ClientSession(
            cookie_jar=jar, connector=aiohttp.TCPConnector(ssl=ctx)
        ) as session:
            async with session.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            login = {"username": "admin", "password": ADMIN_PASSWORD}
            async with session.post(
                f"{base}/auth", data=login, headers={"X-Forwarded-For": "203.0.113.9"}
            ) as resp:
                assert resp.status == 200
                cookie = resp.headers["Set-Cookie"]
            # HTTPS at the proxy: the cookie is Secure and scoped to the base path.
            assert "Secure" in cookie
            assert "Path=/mmc" in cookie
            async with session.get(f"{base}/api/connections") as resp:
                assert resp.status == 200
            origin = f"https://localhost:{port}"
            async with session.post(
                f"{base}/api/tokens",
                json={"name": "n", "role": "viewer"},
                headers={"Origin": origin},
            ) as resp:
                assert resp.status == 201
            async with session.post(
                f"{base}/api/tokens",
                json={"name": "n", "role": "viewer"},
                headers={"Origin": f"http://localhost:{port}"},
            ) as resp:
                assert resp.status == 403  # scheme differs from what the client used
    # nginx appends its peer (127.0.0.1, trusted) to the X-Forwarded-For the client sent:
    # the right-most untrusted hop is the client.
    [login_line] = [r for r in caplog.records if getattr(r, "route", None) == "/auth"]
    assert getattr(login_line, "client", None) == "203.0.113.9"


async def test_forwarded_headers_from_untrusted_peers_are_ignored(
    make_client: MakeClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mmc.access")
    client = await make_client(settings, authenticated=False)
    await client.get("/healthz", headers={"X-Forwarded-For": "198.51.100.7"})
    assert {getattr(r, "client", None) for r in caplog.records} == {"127.0.0.1"}
