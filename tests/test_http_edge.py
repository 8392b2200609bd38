"""The HTTP edge against hostile clients, in process (the test server): malformed bodies,
log injection, the Host header, the metrics token and the 413 message. Slow clients and
connection caps, which live in `mmc serve`'s protocol, are in test_http_edge_process."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import pytest

from mmc.config import Settings
from tests.conftest import ADMIN_PASSWORD, Client, MakeClient, origin


def _assert_error_shape(body: dict[str, Any], status: int) -> None:
    assert body["status"] == status
    assert isinstance(body["code"], str)
    assert isinstance(body["message"], str)
    assert set(body) <= {"code", "message", "status", "info"}


async def _assert_400(resp: Any) -> dict[str, Any]:
    text = await resp.text()
    assert resp.status == 400, text
    body: dict[str, Any] = json.loads(text)
    _assert_error_shape(body, 400)
    assert body["code"] == "INVALID"
    return body


async def test_413_names_the_real_limit(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(settings.replace(max_body_size=4096))
    resp = await client.post(
        "/api/projects",
        data=io.BytesIO(json.dumps({"id": "p", "name": "x" * 8000}).encode()),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 413
    body = await resp.json()
    _assert_error_shape(body, 413)
    assert body["message"] == "Request body is too large (limit 4096 bytes)"


async def test_metrics_are_open_by_default(anon_client: Client) -> None:
    resp = await anon_client.get("/metrics")
    assert resp.status == 200
    assert "mmc_" in await resp.text()


async def test_metrics_token_is_required_when_set(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(
        settings.replace(metrics_token="scrape-me-please"), authenticated=False
    )
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer scrape-me-pleasX"},
        {"Authorization": "Basic scrape-me-please"},
        {"Authorization": "Bearer"},
    ):
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 401, headers
        _assert_error_shape(await resp.json(), 401)
    resp = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me-please"})
    assert resp.status == 200
    assert "mmc_" in await resp.text()
    # The probes stay open: kubelets send no token.
    assert (await client.get("/healthz")).status == 200


BIG_INT = "1" * 5000


@pytest.mark.parametrize(
    "path",
    [
        "/auth",
        "/api/projects",
        "/api/connections",
        "/api/user-management/users",
        "/api/tokens",
    ],
)
async def test_json_integers_past_pythons_digit_limit_are_400(client: Client, path: str) -> None:
    raw = '{"id": "x", "name": ' + BIG_INT + ', "username": "u", "password": ' + BIG_INT + "}"
    resp = await client.post(
        path, data=raw, headers={"Content-Type": "application/json", **origin(client)}
    )
    body = await _assert_400(resp)
    assert "too large" in body["message"]


@pytest.mark.parametrize(
    ("path", "document"),
    [
        ("/auth", {"username": "admin\ud800", "password": "x"}),
        ("/auth", {"username": "admin", "password": "pw\ud800"}),
        ("/api/projects", {"id": "p1", "name": "name\ud800"}),
        ("/api/projects", {"id": "p1", "name": "n", "description": "d\udfff"}),
        (
            "/api/user-management/users",
            {"username": "u\ud800", "password": "secret-pw", "roles": ["viewer"]},
        ),
        (
            "/api/user-management/users",
            {"username": "u2", "password": "secret\ud800", "roles": ["viewer"]},
        ),
        ("/api/tokens", {"name": "tok\ud800", "role": "viewer"}),
        ("/api/projects", {"id": "p1", "name": "n", "\ud800": "key"}),
        ("/api/projects", {"id": "p1", "name": "n", "list": ["\ud800"]}),
    ],
)
async def test_lone_surrogates_are_400(client: Client, path: str, document: Any) -> None:
    # json.dumps writes a lone surrogate as the escape \\ud800: valid JSON, invalid Unicode.
    raw = json.dumps(document)
    assert "\\ud8" in raw or "\\udf" in raw
    resp = await client.post(
        path, data=raw, headers={"Content-Type": "application/json", **origin(client)}
    )
    body = await _assert_400(resp)
    assert "surrogate" in body["message"]


async def test_a_surrogate_pair_is_a_character_not_an_error(client: Client) -> None:
    resp = await client.post(
        "/api/projects",
        data='{"id": "emoji", "name": "\\ud83d\\ude00"}',
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["name"] == "\U0001f600"


@pytest.mark.parametrize(
    ("content_type", "payload"),
    [
        ("multipart/form-data", b"username=admin&password=x"),
        ("multipart/form-data; boundary=", b"--\r\n"),
        ("multipart/form-data; boundary=XyZ", b"garbage without any boundary"),
        ("multipart/form-data; boundary=XyZ", b"--XyZ\r\nContent-Disposition: form-data\r\n"),
        (
            "multipart/form-data; boundary=XyZ",
            b'--XyZ\r\nContent-Disposition: form-data; name="username"\r\n\r\nadmin\r\n--XyZ',
        ),
        (
            "multipart/form-data; boundary=XyZ",
            b'--XyZ\r\nContent-Disposition: form-data; name="username"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n!!!\r\n--XyZ--\r\n",
        ),
        (
            "multipart/form-data; boundary=XyZ",
            b'--XyZ\r\nContent-Disposition: form-data; name="username"\r\n'
            b"Content-Transfer-Encoding: rot13\r\n\r\nnqzva\r\n--XyZ--\r\n",
        ),
        (
            "multipart/form-data; boundary=XyZ",
            b'--XyZ\r\nContent-Disposition: form-data; name="username"\r\n'
            b"Content-Type: text/plain; charset=no-such-charset\r\n\r\nadmin\r\n--XyZ--\r\n",
        ),
        ("application/x-www-form-urlencoded; charset=no-such-charset", b"username=admin"),
    ],
)
async def test_broken_login_forms_are_400(
    anon_client: Client, content_type: str, payload: bytes
) -> None:
    resp = await anon_client.post("/auth", data=payload, headers={"Content-Type": content_type})
    await _assert_400(resp)


@pytest.mark.parametrize(
    "payload", [b"username=admin%ED%A0%80&password=x", b"username=\xff\xfe&password=x%ED%A0%80"]
)
async def test_bad_utf8_in_an_urlencoded_login_is_refused_not_500(
    anon_client: Client, payload: bytes
) -> None:
    # aiohttp decodes form fields with replacement characters: a name nobody has.
    resp = await anon_client.post(
        "/auth", data=payload, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert resp.status in (400, 401)
    _assert_error_shape(await resp.json(), resp.status)


async def test_a_good_multipart_login_still_works(anon_client: Client) -> None:
    payload = (
        b'--XyZ\r\nContent-Disposition: form-data; name="username"\r\n\r\nadmin\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="password"\r\n\r\n'
        + ADMIN_PASSWORD.encode()
        + b"\r\n--XyZ--\r\n"
    )
    resp = await anon_client.post(
        "/auth", data=payload, headers={"Content-Type": "multipart/form-data; boundary=XyZ"}
    )
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize(
    "path",
    [
        "/healthz%0a2026-01-01%2000:00:00,000%20INFO%20mmc.access:%20GET%20/forged%20200",
        "/healthz%0d%0aforged",
        "/healthz%1b[31mred%1b[0m",
        "/healthz%e2%80%a8separator",
        "/api/nothing%00nul",
    ],
)
async def test_the_text_log_escapes_control_characters(
    anon_client: Client, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    from mmc.logs import JsonFormatter, TextFormatter

    caplog.set_level(logging.INFO, logger="mmc.access")
    resp = await anon_client.get(path)
    assert resp.status in (200, 401, 404)
    [record] = [r for r in caplog.records if r.name == "mmc.access"]
    assert (
        "\n" in record.getMessage()
        or "\x1b" in record.getMessage()
        or any(not c.isprintable() for c in record.getMessage())
    ), "the test must send a control character through"
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert "\r" not in line
    assert "\x1b" not in line
    assert all(c.isprintable() for c in line), line
    assert "forged" in line or "red" in line or "separator" in line or "nul" in line
    # JSON escapes them by its own rules: one line, and the path reads back intact.
    doc = JsonFormatter().format(record)
    assert "\n" not in doc
    assert "\x1b" not in doc
    assert json.loads(doc)["message"] == record.getMessage()


def test_the_text_log_keeps_tracebacks_on_their_own_lines() -> None:
    from mmc.logs import TextFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "mmc", logging.ERROR, __file__, 1, "failed on %s", ("x\ny",), sys.exc_info()
        )
    text = TextFormatter().format(record)
    first, *rest = text.split("\n")
    assert first.endswith("failed on x\\ny")
    assert rest[0] == "Traceback (most recent call last):"


async def test_any_host_is_served_without_allowed_hosts(anon_client: Client) -> None:
    resp = await anon_client.get("/validate-session", headers={"Host": "evil.example"})
    assert resp.status == 200


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("mmc.example.com", True),
        ("MMC.Example.com:443", True),
        ("ops.example.org:8443", True),
        ("ops.example.org:8444", False),
        ("ops.example.org", False),
        ("mmc.example.com.", True),
        ("a.mmc.example.com", False),
        ("[::1]:8088", True),
        ("evil.example", False),
        ("mmc.example.com.evil.example", False),
        ("", False),
    ],
)
async def test_allowed_hosts_refuses_other_host_headers(
    make_client: MakeClient, settings: Settings, host: str, allowed: bool
) -> None:
    client = await make_client(
        settings.replace(allowed_hosts="mmc.example.com, ops.example.org:8443, [::1]"),
        authenticated=False,
    )
    resp = await client.get("/validate-session", headers={"Host": host})
    if allowed:
        assert resp.status == 200, await resp.text()
    else:
        assert resp.status == 400
        body = await resp.json()
        _assert_error_shape(body, 400)
        assert "allowed_hosts" in body["message"]
        # A login from a rebound page is refused before any password is looked at.
        resp = await client.post(
            "/auth",
            json={"username": "admin", "password": ADMIN_PASSWORD},
            headers={"Host": host},
        )
        assert resp.status == 400
        assert "Set-Cookie" not in resp.headers
    # Probes and metrics answer any Host: kubelets and Prometheus address pods by IP.
    for path in ("/healthz", "/readyz", "/metrics"):
        resp = await client.get(path, headers={"Host": "10.1.2.3:8088"})
        assert resp.status == 200, path


async def test_security_headers(client: Client) -> None:
    resp = await client.get("/api/docs")
    assert resp.status == 200
    csp = resp.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in await resp.text()
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/healthz", "/api/connections", "/api/nothing-here", "/api/docs/openapi.json"):
        resp = await client.get(path)
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
    # Swagger UI's script is served with a script type, which nosniff requires.
    resp = await client.get("/api/docs/static/swagger-ui-bundle.js")
    assert resp.status == 200
    assert "javascript" in resp.content_type
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def _closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closes the connection within ``within`` seconds (whatever it
    sends first is read and dropped)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def test_idle_and_trickling_clients_are_closed_after_the_header_timeout(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(settings.replace(http_header_timeout=1.5), authenticated=False)
    assert client.port is not None
    port = client.port
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 40 + b"\r\n\r\n"
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]

    async def trickle(writer: asyncio.StreamWriter) -> None:
        # One byte every 0.2 s: the whole head would take 14 s.
        for byte in request:
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            try:
                await writer.drain()
            except ConnectionError:
                return
            await asyncio.sleep(0.2)

    trickling = [asyncio.create_task(trickle(w)) for _, w in streams[5:]]
    # A keep-alive connection that made one request and went quiet.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    streams.append((reader, writer))
    try:
        # Meanwhile the server answers others at once.
        for _ in range(3):
            async with asyncio.timeout(1):
                assert (await client.get("/healthz")).status == 200
            await asyncio.sleep(0.2)
        closed = await asyncio.gather(*(_closed_by_peer(r, within=4) for r, _ in streams))
        assert all(closed), closed
    finally:
        for task in trickling:
            task.cancel()
        for _, w in streams:
            w.close()


async def test_a_trickled_body_is_408_after_the_body_timeout(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(settings.replace(http_body_timeout=1.0), authenticated=False)
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(
            b"POST /auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"username": '
        )
        await writer.drain()
        started = asyncio.get_running_loop().time()

        async def trickle() -> None:
            for _ in range(40):
                await asyncio.sleep(0.2)
                writer.write(b" ")
                await writer.drain()

        task = asyncio.create_task(trickle())
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408"), head
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = json.loads(await reader.readexactly(length))
            assert asyncio.get_running_loop().time() - started < 3
            _assert_error_shape(body, 408)
            assert body["code"] == "REQUEST_TIMEOUT"
            assert await _closed_by_peer(reader, within=3)
        finally:
            task.cancel()
    finally:
        writer.close()
    # A body sent in time is read as before.
    resp = await client.post("/auth", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert resp.status == 200


async def test_a_lone_surrogate_is_named_by_its_field(client: Client) -> None:
    resp = await client.post(
        "/api/user-management/users",
        data='{"username": "u\\ud800", "password": "secret-pw", "roles": ["viewer", "x\\udfff"]}',
        headers={"Content-Type": "application/json"},
    )
    body = await _assert_400(resp)
    assert body["info"] == {"username": ["Not valid UTF-8."], "roles": {"1": ["Not valid UTF-8."]}}


@pytest.mark.parametrize(
    ("host", "allowed_hosts", "warned"),
    [
        ("0.0.0.0", "", True),  # noqa: S104 - a setting, nothing listens here
        ("::", "", True),
        ("mmc.example.com", "", True),
        ("0.0.0.0", "mmc.example.com", False),  # noqa: S104
        ("127.0.0.1", "", False),
        ("::1", "", False),
        ("localhost", "", False),
    ],
)
def test_start_up_warns_without_allowed_hosts_beyond_loopback(
    caplog: pytest.LogCaptureFixture, host: str, allowed_hosts: str, warned: bool
) -> None:
    from mmc.web.hosts import warn_without_allowed_hosts

    caplog.set_level(logging.WARNING)
    warn_without_allowed_hosts(Settings(host=host, allowed_hosts=allowed_hosts))
    assert any("allowed_hosts" in r.getMessage() for r in caplog.records) == warned


@pytest.mark.parametrize(
    ("encoding", "payload"),
    [
        ("gzip", b"not gzip at all"),
        ("deflate", b"not deflate"),
        ("gzip", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff"),
    ],
)
async def test_a_body_that_cannot_be_decompressed_is_400(
    client: Client, caplog: pytest.LogCaptureFixture, encoding: str, payload: bytes
) -> None:
    for path, content_type in (
        ("/api/projects", "application/json"),
        ("/auth", "application/x-www-form-urlencoded"),
    ):
        resp = await client.post(
            path,
            data=payload,
            headers={"Content-Type": content_type, "Content-Encoding": encoding},
        )
        body = await _assert_400(resp)
        assert "cannot be decoded" in body["message"]
    await asyncio.sleep(0.1)
    assert (await client.get("/healthz")).status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_openapi_documents_the_edge_statuses(client: Client) -> None:
    spec = await (await client.get("/api/docs/openapi.json")).json()
    paths = spec["paths"]
    # Every body may time out; every route but the probes and metrics checks the Host.
    assert {"400", "408", "413"} <= set(paths["/api/connections"]["post"]["responses"])
    assert "400" in paths["/api/connections"]["get"]["responses"]
    assert "400" not in paths["/healthz"]["get"]["responses"]
    assert "401" in paths["/metrics"]["get"]["responses"]


def test_request_ids_are_uuid4_hex() -> None:
    import uuid

    from mmc.web.middlewares import new_request_id

    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for request_id in ids:
        parsed = uuid.UUID(hex=request_id)
        assert parsed.hex == request_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
