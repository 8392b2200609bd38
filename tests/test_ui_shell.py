"""The MMC web UI on mmc, HTTP side: its files (MMC_UI_DIR) with the client-route fallback,
mmc's login page and the browser flow of /auth and /logout, and the shell's endpoints.

The build is a small stand-in the tests write (index.html, a hashed script); the real
one is checked by hand (README, "The MMC web UI")."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mmc.app import create_app
from mmc.appkeys import connections_key, ui_selections_key
from mmc.config import Settings
from mmc.openapi import build_spec
from testbed.mosquitto import Mosquitto, MosquittoBroker
from tests.conftest import (
    ADMIN_PASSWORD,
    Client,
    MakeClient,
    login,
    origin,
    plain_body,
    wait_until,
)

INDEX = "<!doctype html><html><body><div id=root>stand-in MMC UI</div></body></html>"
SCRIPT = "console.log('stand-in main chunk');"
SECRET = "not-for-the-web-4711"
# What a browser sends when it navigates (a link, a form, the address bar).
NAVIGATION = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
# What the MMC UI's own HTTP calls send.
UI_CALL = "application/json;version=1"


@pytest.fixture
def build(tmp_path: Path) -> Path:
    """A stand-in UI build, next to a file that must never be served."""
    folder = tmp_path / "build"
    (folder / "static" / "js").mkdir(parents=True)
    (folder / "static" / "css").mkdir()
    (folder / "index.html").write_text(INDEX)
    (folder / "static" / "js" / "main.abc123.js").write_text(SCRIPT)
    (folder / "static" / "css" / "main.def4567.css").write_text("body{margin:0}")
    (folder / "manifest.json").write_text('{"short_name": "MMC"}')
    (folder / "favicon-32x32.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / ".env").write_text(SECRET)
    (tmp_path / "secret.txt").write_text(SECRET)
    os.symlink(tmp_path / "secret.txt", folder / "linked.txt")
    return folder


@pytest.fixture
def ui_settings(settings: Settings, build: Path) -> Settings:
    return settings.replace(ui_dir=build)


@pytest.fixture
async def ui(make_client: MakeClient, ui_settings: Settings) -> Client:
    return await make_client(ui_settings)


@pytest.fixture
async def ui_anon(make_client: MakeClient, ui_settings: Settings) -> Client:
    return await make_client(ui_settings, authenticated=False)


def _browser(client: Client, **extra: str) -> dict[str, str]:
    return {"Accept": NAVIGATION, **origin(client), **extra}


async def _error(resp: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    assert (body["code"], body["status"]) == (code, status), body
    return body


async def _raw_get(client: Client, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """One request with the target sent exactly as written (no client-side normalising)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    lines = [f"GET {target} HTTP/1.1", f"Host: {client.host}:{client.port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# -- files ------------------------------------------------------------------------------


async def test_index_and_hashed_assets_with_their_types_and_caching(ui: Client) -> None:
    for path in ("/", "/index.html"):
        resp = await ui.get(path, headers={"Accept": NAVIGATION})
        assert resp.status == 200, path
        assert await resp.text() == INDEX
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Frame-Options"] == "DENY"
    resp = await ui.get("/static/js/main.abc123.js")
    assert resp.status == 200
    assert await resp.text() == SCRIPT
    assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    etag = resp.headers["ETag"]
    again = await ui.get("/static/js/main.abc123.js", headers={"If-None-Match": etag})
    assert again.status == 304
    resp = await ui.get("/static/css/main.def4567.css")
    assert resp.headers["Content-Type"] == "text/css; charset=utf-8"
    assert resp.headers["Cache-Control"].endswith("immutable")
    # Files outside static/ keep their names from build to build: revalidated.
    resp = await ui.get("/manifest.json")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Cache-Control"] == "no-cache"
    resp = await ui.get("/favicon-32x32.png")
    assert resp.headers["Content-Type"] == "image/png"
    resp = await ui.head("/static/js/main.abc123.js")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(SCRIPT))
    assert await resp.read() == b""


async def test_client_routes_get_index_html(ui: Client) -> None:
    for path in ("/security/clients", "/security/clients/john.doe", "/admin/users/", "/login-x"):
        resp = await ui.get(path, headers={"Accept": NAVIGATION})
        assert resp.status == 200, path
        assert await resp.text() == INDEX, path
        assert resp.headers["Cache-Control"] == "no-cache"


async def test_missing_build_files_and_folders_are_404_not_the_page(ui: Client) -> None:
    for path in ("/static/js/main.gone99.js", "/static/js/", "/static", "/favicon.ico"):
        body = await _error(await ui.get(path), 404, "NOT_FOUND")
        assert "stand-in" not in str(body)


async def test_api_paths_never_get_the_page(ui: Client) -> None:
    for method, path in (
        ("GET", "/api/nothing"),
        ("GET", "/api/nothing/deeper"),
        ("GET", "/api"),
        ("GET", "/api/"),
        ("POST", "/api/nothing"),
        ("DELETE", "/api/tokens/x/y"),
        ("GET", "/api/theme"),  # a route of its own, answering 404 JSON
    ):
        resp = await ui.request(method, path, headers={"Accept": NAVIGATION}, json={})
        await _error(resp, 404, "NOT_FOUND")
    # Other routes keep their answers: a POST-only route is no client route.
    await _error(await ui.get("/auth"), 405, "METHOD_NOT_ALLOWED")
    assert (await ui.get("/healthz")).status == 200
    # A client route takes GET and HEAD only.
    await _error(await ui.post("/security/clients", json={}), 405, "METHOD_NOT_ALLOWED")


async def test_nothing_outside_the_folder_nor_hidden_is_served(ui: Client) -> None:
    auth = {"Authorization": ui.session.headers["Authorization"]}
    for target in (
        "/../secret.txt",
        "/static/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/static/%2e%2e/%2e%2e/secret.txt",
        "/static/..%2f..%2fsecret.txt",
        "/static/js/..%5c..%5c..%5csecret.txt",
        "//secret.txt",
        "/.env",
        "/static/%2eenv",
        "/linked.txt",  # a symlink inside the build to a file outside
        "/static/js/main.abc123.js%00.txt",
    ):
        status, body = await _raw_get(ui, target, auth)
        assert SECRET.encode() not in body, target
        assert status in (200, 400, 404), (target, status)
        if status == 200:
            assert body == INDEX.encode(), target  # normalised to a client route


async def test_the_ui_needs_a_login_and_sends_browsers_to_the_login_page(
    ui_anon: Client,
) -> None:
    for path in ("/", "/security/clients"):
        resp = await ui_anon.get(path, headers={"Accept": NAVIGATION}, allow_redirects=False)
        assert resp.status == 303, path
        assert resp.headers["Location"] == "/login"
    resp = await ui_anon.get("/static/js/main.abc123.js")
    body = await _error(resp, 401, "UNAUTHORIZED")
    assert body["message"] == "Unauthorized"
    await _error(await ui_anon.get("/", headers={"Accept": UI_CALL}), 401, "UNAUTHORIZED")
    # The redirect leads to mmc's login, and from there into the UI.
    resp = await ui_anon.get("/", headers={"Accept": NAVIGATION})
    assert resp.status == 200
    assert resp.url.path == "/login"
    resp = await ui_anon.post(
        "/auth",
        data={"username": "admin", "password": ADMIN_PASSWORD},
        headers=_browser(ui_anon),
    )
    assert resp.status == 200
    assert resp.url.path == "/"
    assert await resp.text() == INDEX


async def test_the_websocket_upgrade_on_the_root_is_the_ui_channel(
    ui: Client, ui_anon: Client
) -> None:
    # The UI opens ws(s)://<host><PUBLIC_URL>?authToken=undefined: told from a GET of
    # index.html by its Upgrade header, and answered by the channel of /api/ws.
    for path in ("/", "/?authToken=undefined"):
        async with ui.ws_connect(path) as ws:
            await ws.send_json({"id": 1, "type": "request", "request": "getBrokerConnections"})
            answer = await ws.receive_json(timeout=5)
            assert answer == {"type": "response", "requestId": 1, "response": []}, path
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await ui_anon.ws_connect("/?authToken=undefined")
    assert refused.value.status == 401


async def test_under_a_base_path(make_client: MakeClient, settings: Settings, build: Path) -> None:
    based = settings.replace(ui_dir=build, base_path="/mmc")
    client = await make_client(based, authenticated=False)
    resp = await client.post("/mmc/auth", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert resp.status == 200
    for path in ("/mmc", "/mmc/", "/mmc/security/clients"):
        resp = await client.get(path, headers={"Accept": NAVIGATION})
        assert resp.status == 200, path
        assert await resp.text() == INDEX, path
    resp = await client.get("/mmc/static/js/main.abc123.js")
    assert await resp.text() == SCRIPT
    await _error(await client.get("/mmc/api/nothing"), 404, "NOT_FOUND")
    for path in ("/", "/security", "/mmcx", "/static/js/main.abc123.js"):
        # Outside the base path the session cookie (Path=/mmc) is not even sent.
        await _error(await client.get(path), 401, "UNAUTHORIZED")
    # A PUBLIC_URL=/mmc build opens its WebSocket on /mmc, without the slash.
    async with client.ws_connect("/mmc?authToken=undefined") as ws:
        await ws.send_json({"id": "a", "type": "request", "request": "getSettings"})
        answer = await ws.receive_json(timeout=5)
        assert answer["requestId"] == "a", answer
        assert answer["response"]["topicTreeEnabled"] is False, answer
    anon = await make_client(based, authenticated=False)
    resp = await anon.get("/mmc/", headers={"Accept": NAVIGATION}, allow_redirects=False)
    assert resp.headers["Location"] == "/mmc/login"
    page = await (await anon.get("/mmc/login")).text()
    assert 'action="/mmc/auth"' in page
    resp = await anon.post(
        "/mmc/auth",
        data={"username": "admin", "password": ADMIN_PASSWORD},
        headers=_browser(anon),
        allow_redirects=False,
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/mmc/"
    cookie = resp.cookies["mmc_session"]
    assert cookie["path"] == "/mmc"


async def test_a_folder_without_a_build_stops_start_up(settings: Settings, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, problem in ((empty, r"holds no index\.html"), (tmp_path / "no", "not a folder")):
        runner = web.AppRunner(create_app(settings.replace(ui_dir=folder)))
        try:
            with pytest.raises(FileNotFoundError, match=problem):
                await runner.setup()  # start-up: mmc serve exits with status 2
        finally:
            await runner.cleanup()


async def test_without_ui_dir_nothing_is_served_at_the_root(client: Client) -> None:
    await _error(await client.get("/", headers={"Accept": NAVIGATION}), 404, "NOT_FOUND")
    await _error(await client.get("/security"), 404, "NOT_FOUND")


# -- the login page and the browser's login and logout -----------------------------------


async def test_login_page(anon_client: Client) -> None:
    resp = await anon_client.get("/login")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert '<form method="post" action="/auth">' in page
    assert 'name="username"' in page
    assert 'name="password" type="password"' in page
    assert 'role="alert"' not in page
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "form-action 'self'" in csp
    assert "script-src" not in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    page = await (await anon_client.get("/login?error=session-expired")).text()
    assert "Your session has expired" in page
    hostile = '<script>alert("x")</script>'
    resp = await anon_client.get("/login", params={"error": hostile})
    page = await resp.text()
    assert hostile not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


async def test_form_login_redirects_a_browser_and_keeps_json_for_programs(
    make_client: MakeClient, settings: Settings, ui_settings: Settings
) -> None:
    form = {"username": "admin", "password": ADMIN_PASSWORD}
    browser = await make_client(ui_settings, authenticated=False)
    resp = await browser.post("/auth", data=form, headers=_browser(browser), allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/"
    assert resp.cookies["mmc_session"]["httponly"]
    profile = await (await browser.get("/api/profile")).json()
    assert profile["username"] == "admin"
    # Without the UI, a browser lands on the API browser.
    plain = await make_client(settings, authenticated=False)
    resp = await plain.post("/auth", data=form, headers=_browser(plain), allow_redirects=False)
    assert resp.headers["Location"] == "/api/docs"
    # curl -d (a form, Accept */*), and JSON bodies even from a browser: JSON.
    script = await make_client(settings, authenticated=False)
    resp = await script.post("/auth", data=form)
    assert resp.status == 200
    assert await resp.json() == {"code": "SUCCESS", "message": "Authorized"}
    resp = await script.post("/auth", json=form, headers=_browser(script))
    assert resp.status == 200
    assert (await resp.json())["code"] == "SUCCESS"
    # The cross-site rule holds for the form as for JSON.
    resp = await script.post(
        "/auth", data=form, headers={"Accept": NAVIGATION, "Origin": "http://evil.example"}
    )
    await _error(resp, 403, "NOT_ALLOWED")


async def test_a_refused_form_login_shows_the_page_with_the_refusal(
    make_client: MakeClient, settings: Settings, client: Client
) -> None:
    browser = await make_client(settings.replace(login_max_failures=2), authenticated=False)
    wrong = {"username": "admin", "password": "wrong-password-1"}
    for _ in range(2):
        resp = await browser.post("/auth", data=wrong, headers=_browser(browser))
        assert resp.status == 401
        assert resp.content_type == "text/html"
        assert "Wrong username or password." in await resp.text()
        assert "mmc_session" not in resp.cookies
    resp = await browser.post("/auth", data=wrong, headers=_browser(browser))
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    assert "Too many login attempts" in await resp.text()
    # The audit trail records refusals, not redirects.
    audit = await (await client.get("/api/audit", params={"route": "/auth"})).json()
    statuses = [e["status"] for e in audit["entries"] if e["user"] == "admin"]
    assert statuses[:3] == [429, 401, 401]
    outcomes = {e["outcome"] for e in audit["entries"][:3]}
    assert "success" not in outcomes


async def test_logout_redirects_a_browser_and_answers_json_otherwise(
    make_client: MakeClient, ui_settings: Settings
) -> None:
    browser = await make_client(ui_settings, authenticated=False)
    await login(browser)
    resp = await browser.get(
        "/logout",
        headers={"Accept": NAVIGATION, "Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/login"
    assert (await (await browser.get("/validate-session")).json()) == {"valid": False}
    # Logged out already, or never logged in: the browser still lands on the login page.
    resp = await browser.get("/logout", headers={"Accept": NAVIGATION})
    assert resp.status == 200
    assert resp.url.path == "/login"
    # The UI's own calls and scripts keep JSON.
    await login(browser)
    resp = await browser.get(
        "/logout", headers={"Accept": UI_CALL, "Sec-Fetch-Site": "same-origin"}
    )
    assert resp.status == 200
    assert await resp.json() == {"code": "SUCCESS", "message": "Logged out"}
    await login(browser)
    resp = await browser.post("/logout", headers={"Accept": NAVIGATION})
    assert (await resp.json())["code"] == "SUCCESS"
    assert (await (await browser.get("/validate-session")).json()) == {"valid": False}


# -- the shell's endpoints ----------------------------------------------------------------


async def test_shell_endpoints_answer_json(client: Client, anon_client: Client) -> None:
    body = await _error(await client.get("/api/theme"), 404, "NOT_FOUND")
    assert "theme" in body["message"]
    resp = await client.get("/api/config", headers={"Accept": UI_CALL})
    assert await resp.json() == {
        "hideConnections": False,
        "hideInfoPage": False,
        "hideLogoutButton": False,
        "hideProfileButton": False,
    }
    resp = await client.get("/api/newsletter/subscribe")
    assert await resp.json() == {"newsletterEndpointAvailable": False}
    assert await (await client.get("/api/plugins")).json() == []
    assert await (await client.get("/api/update")).json() == {}
    # Enables the TLS fields of the UI's connection forms (mmc takes ca/cert/key).
    assert await (await client.get("/api/tls/ping")).json() == {"pong": True}
    for path in (
        "/api/theme",
        "/api/config",
        "/api/backend-parameters",
        "/api/newsletter/subscribe",
        "/api/plugins",
        "/api/update",
        "/api/client-control/ping",
        "/api/tls/ping",
    ):
        resp = await anon_client.get(path, headers={"Accept": UI_CALL})
        body = await _error(resp, 401, "UNAUTHORIZED")
        assert body["message"] == "Unauthorized"


async def test_backend_parameters_carry_each_brokers_sys_status(
    client: Client, broker: MosquittoBroker
) -> None:
    resp = await client.post("/api/connections", json=plain_body(broker))
    assert resp.status == 200, await resp.text()
    down = plain_body(broker, id="down", name="Down broker", url="mqtt://127.0.0.1:1")
    assert (await client.post("/api/connections", json=down)).status == 202
    link = client.app[connections_key].pool.get("plain")
    assert link is not None
    await wait_until(lambda: "$SYS/broker/version" in link.sys_values)
    params = await (await client.get("/api/backend-parameters")).json()
    system_status = params.pop("systemStatus")
    assert params == {
        "isPremium": False,
        "multipleConnectionsAllowed": True,
        "showFeedbackForm": False,
        "showStreemsheets": False,
        "rootUsername": "admin",
        "ssoUsed": False,
        "treatUsernamesAsClientIds": False,
        "urlMappings": {},
    }
    assert list(system_status) == ["Plain broker"]
    status = system_status["Plain broker"]
    assert status["_name"] == "Plain broker"
    sys_broker = status["$SYS"]["broker"]
    assert sys_broker["version"].startswith("mosquitto version ")

    def leaves(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            for value in node.values():
                yield from leaves(value)
        else:
            yield node

    assert all(isinstance(leaf, str) for leaf in leaves(sys_broker))


@pytest.fixture(scope="module")
def cc_broker(
    tmp_path_factory: pytest.TempPathFactory, client_control_plugin: Path, mosquitto: Mosquitto
) -> Iterator[MosquittoBroker]:
    """A broker with mmc's client-control plugin."""
    with MosquittoBroker(
        tmp_path_factory.mktemp("ui-cc-broker"),
        extra_plugins=[client_control_plugin],
        mosquitto=mosquitto,
    ) as running:
        yield running


async def test_client_control_ping_follows_the_selected_broker(
    anon_client: Client, broker: MosquittoBroker, cc_broker: MosquittoBroker
) -> None:
    browser = anon_client
    await login(browser)  # a session, as the UI has

    async def pong(**params: str) -> bool:
        resp = await browser.get("/api/client-control/ping", params=params)
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
        assert set(answer) == {"pong"}
        return bool(answer["pong"])

    assert await pong() is False  # no connection at all
    for body in (
        plain_body(broker, id="plain", name="Plain"),
        plain_body(cc_broker, id="cc", name="With client control"),
    ):
        resp = await browser.post("/api/connections", json=body, headers=origin(browser))
        assert resp.status == 200, await resp.text()
    assert await pong(connection="cc") is True
    assert await pong(connection="With client control") is True
    assert await pong(connection="plain") is False
    await _error(
        await browser.get("/api/client-control/ping", params={"connection": "nope"}),
        404,
        "NOT_FOUND",
    )
    # Nothing selected: the UI's own default, the first connected connection.
    assert await pong() is False
    # The session's selection (connectToBroker on its WebSocket) is the one it asks about.
    session = browser.session.cookie_jar.filter_cookies(browser.make_url("/"))["mmc_session"]
    selections = browser.app[ui_selections_key]
    async with browser.ws_connect("/api/ws", headers=origin(browser)) as ws:
        for n, (name, expected) in enumerate((("With client control", True), ("Plain", False))):
            frame = {"id": n, "type": "request", "request": "connectToBroker", "brokerName": name}
            await ws.send_json(frame)
            while (answer := await ws.receive_json(timeout=5)).get("type") != "response":
                pass  # events
            assert answer["requestId"] == n, answer
            assert not answer.get("error"), answer
            assert await pong() is expected, name
    # It ends with the session.
    selections.select(session.value, "cc")
    assert (await browser.post("/logout")).status == 200
    assert selections.selected(session.value) is None


async def test_the_ui_files_are_no_operation_of_the_api_document(ui: Client) -> None:
    spec, undocumented = build_spec(ui.app)
    assert undocumented == []
    assert "/{path}" not in spec["paths"]
    for path in ("/login", "/api/backend-parameters", "/api/client-control/ping"):
        assert "get" in spec["paths"][path], path
    # The UI's files are counted under one route template in metrics and logs.
    await ui.get("/security/clients")
    metrics = await (await ui.get("/metrics")).text()
    assert 'route="/{path}"' in metrics
