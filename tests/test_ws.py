"""GET /api/ws end to end: the MMC UI's WebSocket protocol against real mosquitto brokers
(2.0 and 2.1, with mmc's plugin for client control and inspect), mmc's HTTP stack and a
real WebSocket client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from mmc.appkeys import events_key
from mmc.config import Settings
from mmc.services.events import CONNECTIONS
from testbed.mosquitto import Mosquitto, MosquittoBroker, TlsMaterial
from tests.conftest import (
    Client,
    MakeClient,
    b64,
    create_token,
    login,
    origin,
    plain_body,
    wait_until,
)

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

WS = "/api/ws"
BROKER_NAME = "Plain broker"
# Test clients of the plugin broker: may publish and subscribe under ws/.
USER = "ws-user"
PASSWORD = "ws-user-password"


def _ctrl_commands() -> list[dict[str, Any]]:
    return [
        {"command": "createRole", "rolename": "ws"},
        {
            "command": "addRoleACL",
            "rolename": "ws",
            "acltype": "subscribePattern",
            "topic": "ws/#",
            "allow": True,
        },
        {"command": "createClient", "username": USER, "password": PASSWORD},
        {"command": "addClientRole", "username": USER, "rolename": "ws"},
    ]


@pytest.fixture(scope="session")
def ws_broker(
    tmp_path_factory: pytest.TempPathFactory, client_control_plugin: Path, mosquitto: Mosquitto
) -> Iterator[MosquittoBroker]:
    """mosquitto with mmc's plugin (client control and inspect) before dynamic security."""
    with MosquittoBroker(
        tmp_path_factory.mktemp("ws-broker"),
        early_plugins=[client_control_plugin],
        early_conf="plugin_opt_inspect true",
        mosquitto=mosquitto,
    ) as broker:
        yield broker
        assert broker.is_running, "the broker died during the WebSocket tests"


class Socket:
    """A WebSocket client of the protocol: answers by requestId, events kept in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.answers: dict[Any, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        # Every frame as received (responses and events), to check their order.
        self.frames: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def _read(self, timeout: float) -> dict[str, Any]:
        message = await self.ws.receive(timeout=timeout)
        assert message.type is aiohttp.WSMsgType.TEXT, message
        frame: dict[str, Any] = json.loads(message.data)
        self.frames.append(frame)
        if frame["type"] == "event":
            self.events.append(frame["event"])
        else:
            assert frame["type"] == "response", frame
            self.answers[frame["requestId"]] = frame
        return frame

    async def answer(self, request_id: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while request_id not in self.answers:
            await self._read(max(0.01, deadline - time.monotonic()))
        return self.answers.pop(request_id)

    async def event(self, type_: str, check: Any = None, timeout: float = 10.0) -> Any:
        """The payload of the next ``type_`` event (kept or new) for which check holds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event["type"] == type_ and (check is None or check(event["payload"])):
                    del self.events[: i + 1]
                    return event["payload"]
            await self._read(max(0.01, deadline - time.monotonic()))

    async def request(self, name: str, **fields: Any) -> dict[str, Any]:
        request_id = next(self.ids)
        await self.send({"id": request_id, "type": "request", "request": name, **fields})
        return await self.answer(request_id)

    async def command(self, api: str, command: dict[str, Any], **extra: Any) -> dict[str, Any]:
        request_id = f"c{next(self.ids)}"
        await self.send(
            {"id": request_id, "type": "command", "api": api, "command": command, **extra}
        )
        return await self.answer(request_id)

    async def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Every frame that arrives within ``seconds``."""
        before = len(self.frames)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    await self._read(seconds)
        return self.frames[before:]


@asynccontextmanager
async def socket(
    client: Client, headers: dict[str, str] | None = None, path: str = WS
) -> AsyncIterator[Socket]:
    async with client.session.ws_connect(client.make_url(path), headers=headers) as ws:
        yield Socket(ws)


async def _add(client: Client, broker: MosquittoBroker, **overrides: Any) -> None:
    resp = await client.post("/api/connections", json=plain_body(broker, **overrides))
    assert resp.status == 200, await resp.text()


@pytest.fixture
async def ws_client(client: Client, ws_broker: MosquittoBroker) -> Client:
    await _add(client, ws_broker)
    return client


def _uid() -> str:
    return secrets.token_hex(4)


def _is_error(frame: dict[str, Any]) -> bool:
    return bool(frame.get("error")) and isinstance(frame["error"], str)


def _command_ok(frame: dict[str, Any], name: str) -> Any:
    assert frame["type"] == "response", frame
    assert frame["command"] == name, frame
    assert frame["done"] is True, frame
    assert not frame.get("error"), frame
    assert "data" in frame, frame
    return frame["data"]


def _command_error(frame: dict[str, Any], name: str) -> str:
    assert frame["type"] == "response", frame
    assert frame["command"] == name, frame
    assert frame["done"] is True, frame
    assert _is_error(frame), frame
    assert "data" not in frame, frame
    return str(frame["error"])


def _string_leaves(tree: Any) -> bool:
    if isinstance(tree, dict):
        return all(_string_leaves(v) for v in tree.values())
    return isinstance(tree, str)


async def test_page_load_sequence_as_the_ui_sends_it(
    make_client: MakeClient, settings: Settings, ws_broker: MosquittoBroker
) -> None:
    admin = await make_client(settings)
    await _add(admin, ws_broker, name=BROKER_NAME)
    # The browser: logged in with the session cookie, the upgrade from our own page.
    browser = await make_client(settings, authenticated=False)
    await login(browser)
    async with socket(browser, origin(browser), path=f"{WS}?authToken=undefined") as ui:
        # 2. getBrokerConnections: the first frame on the socket is its answer.
        await ui.send({"id": 1, "type": "request", "request": "getBrokerConnections"})
        first = await ui._read(10)
        assert first["type"] == "response", first
        assert first["requestId"] == 1, first
        assert not first.get("error")
        [conn] = first["response"]
        assert conn["id"] == "plain"
        assert conn["name"] == BROKER_NAME
        assert conn["url"] == f"mqtt://127.0.0.1:{ws_broker.port}"
        assert conn["status"]["connected"] is True
        assert isinstance(conn["status"]["timestamp"], int)
        ui.answers.clear()

        # 3. connectToBroker: no data, then the system_status of that broker.
        answer = await ui.request("connectToBroker", brokerName=BROKER_NAME)
        assert answer == {"type": "response", "requestId": answer["requestId"], "response": None}
        status = await ui.event("system_status")
        assert status["_name"] == BROKER_NAME
        assert isinstance(status["$SYS"]["broker"], dict)
        assert "version" in status["$SYS"]["broker"]
        assert _string_leaves(status["$SYS"])

        # 5. getBrokerConfigurations and getSettings must succeed.
        configurations = await ui.request("getBrokerConfigurations")
        assert not configurations.get("error")
        assert [c["id"] for c in configurations["response"]["connections"]] == ["plain"]
        got = await ui.request("getSettings")
        assert got["response"]["allowTrackingUsageData"] is False
        assert got["response"]["topicTreeEnabled"] is False

        # A keepalive is not answered.
        await ui.send({"type": "ping", "interval": 8000})

        # 6. The burst of commands, all in flight at once, as the UI sends them.
        burst: list[tuple[str, str, dict[str, Any]]] = [
            ("cluster-management", "getClusters", {}),
            ("dynamic-security", "listClients", {"verbose": True, "count": 10, "offset": 0}),
            ("dynamic-security", "listClients", {"verbose": False, "count": 10, "offset": 0}),
            ("dynamic-security", "listGroups", {"verbose": True, "count": 10, "offset": 0}),
            ("dynamic-security", "listGroups", {"verbose": False, "count": 10, "offset": 0}),
            ("dynamic-security", "getAnonymousGroup", {}),
            ("dynamic-security", "listRoles", {"verbose": True, "count": 10, "offset": 0}),
            ("dynamic-security", "listRoles", {"verbose": False, "count": 10, "offset": 0}),
            ("dynamic-security", "getDefaultACLAccess", {}),
            ("cedalo/license", "getLicenseInformation", {}),
            ("cedalo/inspect", "listClients", {"verbose": True, "count": -1, "offset": 0}),
            ("stream-processing", "listStreams", {}),
        ]
        for i, (api, name, fields) in enumerate(burst):
            await ui.send(
                {
                    "id": f"b{i}",
                    "api": api,
                    "type": "command",
                    "command": {"command": name, **fields},
                }
            )
        await ui.send({"id": "t", "type": "request", "request": "listTestCollections"})
        started = time.monotonic()
        answers = [await ui.answer(f"b{i}") for i in range(len(burst))]
        tests = await ui.answer("t")
        assert time.monotonic() - started < 5

        assert "premium" in _command_error(answers[0], "getClusters")
        verbose = _command_ok(answers[1], "listClients")
        assert verbose["totalCount"] >= 1
        assert any(c["username"] == ws_broker.admin_username for c in verbose["clients"])
        assert all(isinstance(c, dict) for c in verbose["clients"])
        terse = _command_ok(answers[2], "listClients")
        assert ws_broker.admin_username in terse["clients"]
        assert "groups" in _command_ok(answers[3], "listGroups")
        assert "groups" in _command_ok(answers[4], "listGroups")
        assert "group" in _command_ok(answers[5], "getAnonymousGroup")
        roles = _command_ok(answers[6], "listRoles")
        assert all(isinstance(r, dict) for r in roles["roles"])
        assert "roles" in _command_ok(answers[7], "listRoles")
        acls = _command_ok(answers[8], "getDefaultACLAccess")
        assert {a["acltype"] for a in acls["acls"]} >= {"publishClientSend", "subscribe"}
        # No license on an open-source broker: an error, never an empty success.
        assert "not enabled" in _command_error(answers[9], "getLicenseInformation")
        inspected = _command_ok(answers[10], "listClients")
        # mmc's own connection is among them, with a string username (the UI needs one).
        assert inspected["clients"], inspected
        assert all(isinstance(c["username"], str) for c in inspected["clients"])
        assert any(c["username"] == ws_broker.admin_username for c in inspected["clients"])
        assert "premium" in _command_error(answers[11], "listStreams")
        assert _is_error(tests)
        assert "premium" in tests["error"]
        # The ping got no answer: every frame was a response to an id or an event.
        assert all(f["type"] == "event" or f["requestId"] is not None for f in ui.frames)


async def test_command_round_trip_and_its_audit_entry(
    ws_client: Client, ws_broker: MosquittoBroker
) -> None:
    user = f"ws-{_uid()}"
    async with socket(ws_client) as ui:
        await ui.request("connectToBroker", brokerName=BROKER_NAME)
        created = await ui.command(
            "dynamic-security", {"command": "createClient", "username": user, "password": "pw-1"}
        )
        _command_ok(created, "createClient")
        got = _command_ok(
            await ui.command("dynamic-security", {"command": "getClient", "username": user}),
            "getClient",
        )
        assert got["client"]["username"] == user
        listing = _command_ok(
            await ui.command("dynamic-security", {"command": "listClients"}), "listClients"
        )
        assert user in listing["clients"]
        # The plugin's own error, passed on.
        again = await ui.command(
            "dynamic-security", {"command": "createClient", "username": user, "password": "x"}
        )
        assert "already exists" in _command_error(again, "createClient").lower()
        assert again["code"] == "CONFLICT"
        # The broker may also be named by the command (mmc's extension).
        named = await ui.command(
            "dynamic-security", {"command": "getClient", "username": user}, broker="plain"
        )
        assert _command_ok(named, "getClient")["client"]["username"] == user
        # Validated like the REST passthrough: a name the broker would read otherwise.
        bad = await ui.command("dynamic-security", {"command": "getClient", "username": "a\u0000b"})
        assert bad["code"] == "INVALID"
        assert "username" in bad["info"]

    resp = await ws_client.get("/api/audit", params={"method": "WS"})
    assert resp.status == 200, await resp.text()
    routes = [(e["route"], e["status"]) for e in (await resp.json())["entries"]]
    assert ("/api/ws dynamic-security/createClient", 200) in routes
    assert ("/api/ws dynamic-security/createClient", 409) in routes
    # Reads are not audited.
    assert not any("getClient" in r or "listClients" in r for r, _ in routes)


async def test_no_broker_selected(client: Client) -> None:
    # No connection at all: nothing to fall back on.
    async with socket(client) as ui:
        answer = await ui.command("dynamic-security", {"command": "listClients"})
        assert "connectToBroker" in _command_error(answer, "listClients")
        unknown = await ui.request("connectToBroker", brokerName="no such broker")
        assert _is_error(unknown)
        assert unknown["code"] == "NOT_FOUND"


async def test_commands_before_connect_to_broker_follow_the_session(
    make_client: MakeClient,
    settings: Settings,
    ws_broker: MosquittoBroker,
    own_broker: MosquittoBroker,
) -> None:
    """A reload of /clients: the page sends its commands the moment the socket opens,
    before the page load's connectToBroker; they go to the broker the session selected."""
    admin = await make_client(settings)
    await _add(admin, ws_broker, name=BROKER_NAME)
    await _add(admin, own_broker, id="second", name="Second broker")
    marker = f"only-on-second-{_uid()}"
    created = await admin.post(
        "/api/dynamic-security/second/command",
        json={"command": "createClient", "username": marker, "password": "pw"},
    )
    assert created.status == 200, await created.text()
    browser = await make_client(settings, authenticated=False)
    await login(browser)
    # The frames of the /clients page, as the UI sent them on a fresh socket.
    page_frames: list[dict[str, Any]] = [
        {"command": "listClients", "verbose": True, "count": 10, "offset": 0},
        {"command": "listGroups", "verbose": False, "count": -1, "offset": 0},
        {"command": "listRoles", "verbose": False, "count": -1, "offset": 0},
    ]

    async def fresh_page(ui: Socket) -> list[Any]:
        ids = [f"50e1abb0-eeee-11f1-a308-3978955de68{i}" for i in range(len(page_frames))]
        for frame_id, command in zip(ids, page_frames, strict=True):
            await ui.send(
                {"id": frame_id, "api": "dynamic-security", "type": "command", "command": command}
            )
        return [
            _command_ok(await ui.answer(i), c["command"])
            for i, c in zip(ids, page_frames, strict=True)
        ]

    # Nothing selected yet in this session: the broker the UI would pick itself, the
    # first connected one.
    async with socket(browser, origin(browser), path="/api/ws?authToken=undefined") as ui:
        clients, groups, roles = await fresh_page(ui)
        assert marker not in {c["username"] for c in clients["clients"]}
        assert "groups" in groups
        assert "roles" in roles
        # The page load then selects the second broker for the session.
        await ui.request("connectToBroker", brokerName="Second broker")
    async with socket(browser, origin(browser), path="/api/ws?authToken=undefined") as ui:
        clients, _, _ = await fresh_page(ui)
        assert marker in {c["username"] for c in clients["clients"]}
        # Its own selection wins once made.
        await ui.request("connectToBroker", brokerName=BROKER_NAME)
        listing = await ui.command("dynamic-security", {"command": "listClients"})
        assert marker not in _command_ok(listing, "listClients")["clients"]


async def test_missing_features_read_as_unavailable_by_the_ui(
    ws_client: Client, own_broker: MosquittoBroker
) -> None:
    """The UI shows a page as "not available" only when the error of its first call
    contains "Client: Timeout" (its reducer's test); any other error reads as "supported,
    empty". So a broker without the plugin, and mmc's lack of premium features, carry it;
    the plugin's own errors do not."""
    await _add(ws_client, own_broker, id="bare", name="Bare broker")
    mark = "Client: Timeout"
    async with socket(ws_client) as ui:
        await ui.request("connectToBroker", brokerName="Bare broker")
        # A connection just made is still being probed (up to the probe time); the UI
        # loads its pages on connections that are up.
        await ui.command("cedalo/inspect", {"command": "listClients"})
        # The page load's frames, as the UI sent them.
        await ui.send(
            {
                "id": "416b3c50-eeee-11f1-a5b3-c12720866048",
                "api": "cedalo/inspect",
                "type": "command",
                "command": {"command": "listClients", "verbose": True, "count": -1, "offset": 0},
            }
        )
        await ui.send(
            {
                "id": "416fd030-eeee-11f1-a5b3-c12720866048",
                "api": "stream-processing",
                "type": "command",
                "command": {"command": "listStreams", "verbose": True},
            }
        )
        await ui.send(
            {
                "id": "40b5f610-eeee-11f1-a5b3-c12720866048",
                "type": "request",
                "request": "cluster-management/getClusters",
            }
        )
        await ui.send(
            {
                "id": "40b9edb0-eeee-11f1-a5b3-c12720866048",
                "type": "request",
                "request": "listTestCollections",
            }
        )
        started = time.monotonic()
        inspect = await ui.answer("416b3c50-eeee-11f1-a5b3-c12720866048")
        streams = await ui.answer("416fd030-eeee-11f1-a5b3-c12720866048")
        clusters = await ui.answer("40b5f610-eeee-11f1-a5b3-c12720866048")
        tests = await ui.answer("40b9edb0-eeee-11f1-a5b3-c12720866048")
        # Within the UI's 1 s timeout of these calls.
        assert time.monotonic() - started < 1.0
        assert mark in _command_error(inspect, "listClients")
        assert "inspect" in inspect["error"]
        assert inspect["code"] == "NOT_FOUND"
        assert mark in _command_error(streams, "listStreams")
        assert mark in clusters["error"]
        assert "premium" in clusters["error"]
        assert mark in tests["error"]
        assert "premium" in tests["error"]
        # Dynamic security is there: answered, and its own "not found" is not a
        # missing feature.
        listing = await ui.command(
            "dynamic-security", {"command": "listClients", "verbose": True, "count": 10}
        )
        assert _command_ok(listing, "listClients")["clients"]
        missing = await ui.command(
            "dynamic-security", {"command": "getClient", "username": f"nobody-{_uid()}"}
        )
        assert mark not in _command_error(missing, "getClient")
        # An unknown request is not a missing feature either.
        unknown = await ui.request("noSuchRequest")
        assert unknown["error"] == "Unsupported request: noSuchRequest"
    # On the broker with mmc's plugin, inspect answers.
    async with socket(ws_client) as ui:
        await ui.request("connectToBroker", brokerName=BROKER_NAME)
        inspected = await ui.command(
            "cedalo/inspect", {"command": "listClients", "verbose": True, "count": -1, "offset": 0}
        )
        assert _command_ok(inspected, "listClients")["clients"]


async def test_commands_in_flight_are_answered_as_they_complete(
    ws_client: Client, ws_broker: MosquittoBroker
) -> None:
    # A broker that takes the TCP connection and never answers: a test of it lasts
    # connect_timeout, and must not hold up the commands sent after it.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with socket(ws_client) as ui:
            await ui.request("connectToBroker", brokerName=BROKER_NAME)
            await ui.send(
                {
                    "id": "slow",
                    "type": "request",
                    "request": "testConnection",
                    "connection": {"url": f"mqtt://127.0.0.1:{port}"},
                }
            )
            count = 64
            for i in range(count):
                command = (
                    {"command": "listClients"}
                    if i % 2
                    else {"command": "getClient", "username": f"nobody-{i}"}
                )
                await ui.send(
                    {"id": i, "type": "command", "api": "dynamic-security", "command": command}
                )
            answers = [await ui.answer(i) for i in range(count)]
            assert "slow" not in ui.answers, "the slow test was answered before the fast ones"
            for i, frame in enumerate(answers):
                if i % 2:
                    assert ws_broker.admin_username in _command_ok(frame, "listClients")["clients"]
                else:
                    assert "not found" in _command_error(frame, "getClient").lower()
            slow = await ui.answer("slow", timeout=15)
            assert slow["response"]["connected"] is False, slow
    finally:
        server.close()


async def test_permissions_per_request_and_command(
    ws_client: Client, ws_broker: MosquittoBroker
) -> None:
    monitoring = await create_token(ws_client, "monitoringViewer")
    viewer = await create_token(ws_client, "viewer")
    user = f"ws-{_uid()}"
    create = {"command": "createClient", "username": user, "password": "pw"}
    async with socket(ws_client, {"Authorization": f"Bearer {monitoring}"}) as ui:
        assert (await ui.request("connectToBroker", brokerName=BROKER_NAME))["response"] is None
        refused = await ui.command("dynamic-security", create)
        assert _command_error(refused, "createClient")
        assert refused["code"] == "NOT_ALLOWED"
        # Not even reads: the REST routes showing them need READ.
        listing = await ui.command("dynamic-security", {"command": "listClients"})
        assert listing["code"] == "NOT_ALLOWED"
        # The broker list, as GET /api/projects/{p}/brokers shows it to them: the UI's
        # page load needs it (else it shows no broker at all), without credentials.
        for name in ("getBrokerConnections", "getBrokerConfigurations"):
            answer = await ui.request(name)
            assert not answer.get("error"), answer
            response = answer["response"]
            listed = response if name == "getBrokerConnections" else response["connections"]
            [conn] = listed
            assert set(conn) == {"id", "name", "url", "projectId", "status"}, conn
            assert conn["name"] == BROKER_NAME
            assert conn["status"]["connected"] is True
        # system_status is for monitoring viewers too.
        status = await ui.event("system_status")
        assert status["_name"] == BROKER_NAME
    async with socket(ws_client, {"Authorization": f"Bearer {viewer}"}) as ui:
        await ui.request("connectToBroker", brokerName=BROKER_NAME)
        assert _command_ok(
            await ui.command("dynamic-security", {"command": "listClients"}), "listClients"
        )
        refused = await ui.command("dynamic-security", create)
        assert refused["code"] == "NOT_ALLOWED"
        delete = await ui.request("deleteConnection", connectionId="plain")
        assert delete["code"] == "NOT_ALLOWED"
        kick = await ui.request("disconnectClient", clientId="anybody")
        assert kick["code"] == "NOT_ALLOWED"
    # Nothing was created on the broker.
    async with socket(ws_client) as ui:
        await ui.request("connectToBroker", brokerName=BROKER_NAME)
        gone = await ui.command("dynamic-security", {"command": "getClient", "username": user})
        assert "not found" in _command_error(gone, "getClient").lower()


async def test_own_access_guard_applies(ws_client: Client, ws_broker: MosquittoBroker) -> None:
    async with socket(ws_client) as ui:
        await ui.request("connectToBroker", brokerName=BROKER_NAME)
        answer = await ui.command(
            "dynamic-security", {"command": "deleteClient", "username": ws_broker.admin_username}
        )
        assert answer["code"] == "CONFLICT", answer
        still = await ui.command(
            "dynamic-security", {"command": "getClient", "username": ws_broker.admin_username}
        )
        assert _command_ok(still, "getClient")["client"]["username"] == ws_broker.admin_username


async def test_unknown_request_and_api_answered_at_once(ws_client: Client) -> None:
    async with socket(ws_client) as ui:
        started = time.monotonic()
        answer = await ui.request("doSomethingElse")
        assert answer["error"] == "Unsupported request: doSomethingElse"
        assert time.monotonic() - started < 1
        await ui.request("connectToBroker", brokerName=BROKER_NAME)
        other = await ui.command("some/api", {"command": "x"})
        assert _command_error(other, "x") == "Unsupported API: some/api"


@pytest.mark.parametrize(
    ("value", "refused"),
    [("a\x00b", True), ("\ud800", True), ("x" * 100_000, True), ("", False), ("#", False)],
)
async def test_hostile_names_in_every_field_get_a_clear_answer(
    ws_client: Client, ws_broker: MosquittoBroker, value: str, refused: bool
) -> None:
    """Every name a request or command reads: never an internal error (a lone surrogate
    once reached SQLite through deleteConnection), the broker up. A NUL, a lone surrogate
    or a huge name is refused everywhere; other odd names get what the broker answers."""
    frames: list[dict[str, Any]] = [
        {"type": "request", "request": "connectToBroker", "brokerName": value},
        {"type": "request", "request": "disconnectClient", "clientId": value},
        *(
            {"type": "request", "request": request, "connectionId": value}
            for request in (
                "deleteConnection", "connectServerToBroker", "disconnectServerFromBroker"
            )
        ),
        {"type": "request", "request": "modifyConnection", "oldConnectionId": value,
         "connection": {"id": "plain", "name": value, "url": value}},
        {"type": "request", "request": "createConnection",
         "connection": {"id": value, "name": value, "url": value}},
        *(
            {"type": "command", "api": "dynamic-security", "broker": "plain",
             "command": {"command": command, field: value, "password": "p"}}
            for command, field in (
                ("createClient", "username"), ("getClient", "username"),
                ("createRole", "rolename"), ("createGroup", "groupname"),
            )
        ),
        {"type": "command", "api": "cedalo/inspect", "broker": "plain",
         "command": {"command": "getClient", "clientid": value}},
        {"type": "command", "api": "dynamic-security", "broker": value,
         "command": {"command": "listClients"}},
    ]  # fmt: skip
    async with socket(ws_client) as ui:
        for n, frame in enumerate(frames):
            await ui.ws.send_str(json.dumps({"id": n, **frame}))
            answer = await ui.answer(n)
            assert answer.get("code") != "INTERNAL_ERROR", (frame, answer)
            if refused:
                assert answer.get("error"), (frame, answer)
        await ui.send({"id": "list", "type": "command", "api": "dynamic-security",
                       "broker": "plain", "command": {"command": "listClients"}})  # fmt: skip
        assert not (await ui.answer("list")).get("error")
    assert ws_broker.is_running


async def test_malformed_frames_get_an_error_and_the_socket_goes_on(
    ws_client: Client, settings: Settings
) -> None:
    async with socket(ws_client) as ui:
        for text in (
            "not json",
            "[1, 2]",
            '"a string"',
            json.dumps({"type": "request", "request": "getSettings"}),  # no id
            json.dumps({"id": 1, "type": "nonsense"}),
            json.dumps({"id": True, "type": "request", "request": "getSettings"}),
            json.dumps({"id": {"x": 1}, "type": "request", "request": "getSettings"}),
            json.dumps({"id": 2, "type": "request", "request": 7}),
            json.dumps({"id": 3, "type": "command", "api": "dynamic-security"}),
            json.dumps({"id": 4, "type": "command", "api": "dynamic-security", "command": []}),
            json.dumps({"id": 5, "type": "command", "api": "x", "command": {"command": 5}}),
            json.dumps({"id": "x" * 1000, "type": "request", "request": "getSettings"}),
            "[" * 100_000,  # deeper than the JSON parser goes
            # Within the parser's depth, beyond what a plugin command may hold.
            json.dumps(
                {
                    "id": 6,
                    "type": "command",
                    "api": "dynamic-security",
                    "broker": "plain",
                    "command": {"command": "x", "deep": "here"},
                }
            ).replace('"here"', "[" * 500 + "]" * 500),
        ):
            await ui.ws.send_str(text)
            frame = await ui._read(5)
            assert frame["type"] == "response", (text, frame)
            assert _is_error(frame), (text, frame)
            assert frame["code"] == "INVALID", frame
            assert "Traceback" not in json.dumps(frame)
            ui.answers.clear()
        # The deep one was refused by the passthrough's validation, not sent.
        assert "Nested more than" in json.dumps(frame["info"]), frame
        # An id it could carry back is echoed.
        await ui.ws.send_str(json.dumps({"id": 9, "type": "request", "request": 7}))
        assert (await ui._read(5))["requestId"] == 9
        await ui.ws.send_bytes(b"\x00\x01")
        assert (await ui._read(5))["error"] == "Frames must be JSON text"
        # Still answering.
        assert (await ui.request("getSettings"))["response"]["topicTreeEnabled"] is False

        # A frame over the size limit: the socket is closed cleanly (1009).
        await ui.ws.send_str("x" * (settings.max_body_size + 10))
        message = await ui.ws.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.CLOSE, message
        assert message.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    # The server is fine.
    resp = await ws_client.get("/api/connections")
    assert resp.status == 200


async def test_connections_event_never_before_the_first_listing_then_on_changes(
    client: Client, own_broker: MosquittoBroker
) -> None:
    await _add(client, own_broker)
    async with socket(client) as ui:
        own_broker.kill()
        await asyncio.sleep(0.5)
        answer = await ui.request("getBrokerConnections")
        assert ui.frames[0]["type"] == "response", ui.frames
        assert ui.events == []
        [conn] = answer["response"]
        if conn["status"]["connected"]:
            # The kill had not been seen yet: its event comes now.
            await ui.event("connections", lambda d: not d[0]["status"]["connected"])
        own_broker.start()
        up = await ui.event("connections", lambda d: d[0]["status"]["connected"])
        assert up[0]["id"] == "plain"
        own_broker.kill()
        down = await ui.event("connections", lambda d: not d[0]["status"]["connected"])
        assert down[0]["status"]["error"]["code"]


async def test_system_status_follows_the_selected_broker(
    client: Client, ws_broker: MosquittoBroker, own_broker: MosquittoBroker
) -> None:
    await _add(client, ws_broker, name="first")
    await _add(client, own_broker, id="second", name="second")
    async with socket(client) as ui:
        assert (await ui.quiet(1.5)) == []  # nothing selected: no system_status
        await ui.request("connectToBroker", brokerName="second")
        for _ in range(3):
            assert (await ui.event("system_status"))["_name"] == "second"
        await ui.request("connectToBroker", brokerName="first")
        await ui.event("system_status", lambda p: p["_name"] == "first")
        ui.events.clear()
        frames = await ui.quiet(2.5)
        names = {f["event"]["payload"]["_name"] for f in frames if f["type"] == "event"}
        assert names == {"first"}
        await ui.request("disconnectFromBroker", brokerName="first")
        await ui.quiet(0.3)
        assert [f for f in await ui.quiet(2.0) if f["type"] == "event"] == []


async def test_connection_requests(client: Client, ws_broker: MosquittoBroker) -> None:
    async with socket(client) as ui:
        body = plain_body(ws_broker, id="made", name="made")
        created = await ui.request("createConnection", connection=body)
        assert [c["id"] for c in created["response"]] == ["made"]
        assert created["response"][0]["status"]["connected"] is True
        # Validated as the REST route validates.
        bad = await ui.request("createConnection", connection={"id": "x", "url": "ftp://x"})
        assert bad["code"] == "INVALID"
        assert "url" in bad["info"]
        tested = await ui.request("testConnection", connection=plain_body(ws_broker))
        assert tested["response"] == {"connected": True}
        off = await ui.request("disconnectServerFromBroker", connectionId="made")
        assert off["response"][0]["status"]["connected"] is False
        on = await ui.request("connectServerToBroker", connectionId="made", oneshot=False)
        assert on["response"][0]["status"]["connected"] is True
        renamed = await ui.request(
            "modifyConnection", oldConnectionId="made", connection={**body, "name": "renamed"}
        )
        assert renamed["response"][0]["name"] == "renamed"
        deleted = await ui.request("deleteConnection", connectionId="made")
        assert deleted["response"] == []
        missing = await ui.request("deleteConnection", connectionId="made")
        assert missing["code"] == "NOT_FOUND"
        settings = await ui.request("updateSettings", settings={"topicTreeEnabled": True})
        assert _is_error(settings)
        unknown = await ui.request("updateSettings", settings={"colour": "red"})
        assert unknown["code"] == "INVALID"
        same = await ui.request("updateSettings", settings={"allowTrackingUsageData": False})
        assert same["response"]["allowTrackingUsageData"] is False
    resp = await client.get("/api/audit", params={"method": "WS"})
    routes = {e["route"] for e in (await resp.json())["entries"]}
    assert {"/api/ws createConnection", "/api/ws deleteConnection"} <= routes


async def test_tls_connection_as_the_ui_makes_it(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    """The connection form with a CA file, once /api/tls/ping has enabled its TLS fields:
    the frames of "Connect & Save", then an edit that sends back what the UI read."""
    pong = await client.get("/api/tls/ping")
    assert pong.status == 200
    assert await pong.json() == {"pong": True}
    connection = {
        "id": "m20tls",
        "name": "Mosquitto TLS",
        "url": f"mqtts://localhost:{broker.tls_port}",
        "credentials": {"username": broker.admin_username, "password": broker.admin_password},
        "noMetricsMode": True,
        "rejectUnauthorized": True,
        "caFile": "tls-ca.pem",
        "certFile": "",
        "keyFile": "",
        "ca": {"data": b64(tls_material.ca_cert), "encoding": "base64"},
    }
    async with socket(client) as ui:
        created = await ui.request("createConnection", connection=connection)
        assert not created.get("error"), created
        tested = await ui.request("testConnection", connection=connection)
        assert tested["response"] == {"connected": True}, tested
        on = await ui.request("connectServerToBroker", connectionId="m20tls", oneshot=True)
        [listed] = on["response"]
        assert listed["status"]["connected"] is True, listed
        assert listed["ca"]["subject"], listed
        assert "password" not in listed["credentials"]
        # Edit: the UI disconnects, then sends the connection as it read it (no password,
        # the CA as listed, its status), with the field changed.
        await ui.request("disconnectServerFromBroker", connectionId="m20tls")
        edited = {
            **listed,
            "credentials": {**listed["credentials"], "clientId": f"ui-edited-{_uid()}"},
        }
        modified = await ui.request("modifyConnection", oldConnectionId="m20tls", connection=edited)
        assert not modified.get("error"), modified
        again = await ui.request("connectServerToBroker", connectionId="m20tls", oneshot=True)
        [after] = again["response"]
        assert after["status"]["connected"] is True, after
        assert after["credentials"]["clientId"] == edited["credentials"]["clientId"]
        assert after["ca"]["fingerprintSha256"] == listed["ca"]["fingerprintSha256"]
        # Without the CA the broker's certificate is not trusted: the CA is what connected.
        untrusted = {k: v for k, v in connection.items() if k != "ca"}
        refused = await ui.request("testConnection", connection=untrusted)
        assert refused["response"]["connected"] is False, refused


async def test_disconnect_client(ws_client: Client, ws_broker: MosquittoBroker) -> None:
    async with socket(ws_client) as ui:
        await ui.request("connectToBroker", brokerName=BROKER_NAME)
        identifier = f"ws-victim-{_uid()}"
        async with aiomqtt.Client(
            ws_broker.host,
            ws_broker.port,
            username=ws_broker.admin_username,
            password=ws_broker.admin_password,
            identifier=identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
        ):
            inspected = await ui.command(
                "cedalo/inspect", {"command": "getClient", "clientid": identifier}
            )
            assert _command_ok(inspected, "getClient")
            # The frame exactly as the UI's inspection page sends it: besides `request`,
            # a `command` that is a string (a command's body would be an object).
            frame_id = "c6530500-eeef-11f1-9eb7-3bf7db05d65c"
            await ui.send(
                {
                    "id": frame_id,
                    "command": "disconnectClient",
                    "type": "request",
                    "request": "disconnectClient",
                    "clientId": identifier,
                }
            )
            answer = await ui.answer(frame_id)
            assert not answer.get("error"), answer
            assert answer["response"] is None, answer

            async def gone() -> bool:
                frame = await ui.command(
                    "cedalo/inspect", {"command": "getClient", "clientid": identifier}
                )
                data = frame.get("data") or {}
                client = data.get("client", data)
                return client.get("connected") is False

            await wait_until(gone, timeout=5)

        # The same through the client-control API's own command.
        second = f"ws-victim-{_uid()}"
        async with aiomqtt.Client(
            ws_broker.host,
            ws_broker.port,
            username=ws_broker.admin_username,
            password=ws_broker.admin_password,
            identifier=second,
            protocol=aiomqtt.ProtocolVersion.V5,
        ):
            kicked = await ui.command(
                "cedalo/client-control", {"command": "disconnectClient", "clientid": second}
            )
            assert _command_ok(kicked, "disconnectClient") == {}
            unknown = await ui.command("cedalo/client-control", {"command": "explode"})
            assert "Unsupported command" in _command_error(unknown, "explode")
    resp = await ws_client.get("/api/audit", params={"method": "WS"})
    routes = {e["route"] for e in (await resp.json())["entries"]}
    assert {"/api/ws disconnectClient", "/api/ws cedalo/client-control/disconnectClient"} <= routes


async def test_auth_and_origin_on_the_upgrade(make_client: MakeClient, settings: Settings) -> None:
    anon = await make_client(settings, authenticated=False)
    resp = await anon.get(WS, headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert resp.status == 401
    assert (await resp.json())["code"] == "UNAUTHORIZED"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with socket(anon):
            pass
    assert refused.value.status == 401

    await login(anon)
    # The session cookie from another site's page: refused like a cookie write.
    with pytest.raises(aiohttp.WSServerHandshakeError) as cross:
        async with socket(anon, {"Origin": "http://evil.example"}):
            pass
    assert cross.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as null:
        async with socket(anon, {"Origin": "null"}):
            pass
    assert null.value.status == 403
    async with socket(anon, origin(anon)) as ui:
        assert (await ui.request("getSettings"))["response"]["topicTreeEnabled"] is False

    # A token is not a cookie a page could borrow: its Origin does not matter.
    token_client = await make_client(settings)
    async with socket(token_client, {"Origin": "http://elsewhere.example"}) as ui:
        assert (await ui.request("getBrokerConnections"))["response"] == []
    # A plain GET without the upgrade.
    resp = await token_client.get(WS)
    assert resp.status == 400


async def test_a_slow_socket_is_dropped_without_slowing_others(
    make_client: MakeClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(settings.replace(events_queue=20))
    hub = client.app[events_key]
    blob = "x" * 100_000
    async with socket(client) as slow, socket(client) as fast:
        for ui in (slow, fast):
            await ui.request("getBrokerConnections")
        received: list[int] = []

        async def read() -> None:
            while len(received) < 200:
                payload = await fast.event("connections", timeout=10)
                received.append(payload[0]["n"])

        reader = asyncio.get_running_loop().create_task(read())
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="mmc.services.events"):
            for n in range(200):  # 20 MB: more than the socket buffers of the slow one
                hub.publish(CONNECTIONS, [{"n": n, "blob": blob}])
                await asyncio.sleep(0.002)
            await asyncio.wait_for(reader, 10)
        assert received == list(range(200))
        assert time.monotonic() - started < 5
        assert hub.subscribers == 1
        assert any("too slow" in r.getMessage() for r in caplog.records)
        # The slow socket was closed under it (whatever it had received before).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while (await slow.ws.receive()).type is aiohttp.WSMsgType.TEXT:
                    pass
        assert slow.ws.closed


async def test_sockets_close_at_shutdown(client: Client) -> None:
    async with socket(client) as ui:
        assert (await ui.request("getSettings"))["response"]["topicTreeEnabled"] is False
        started = time.monotonic()
        await client.app.shutdown()
        message = await ui.ws.receive(timeout=2)
        assert message.type is aiohttp.WSMsgType.CLOSE, message
        assert message.data == aiohttp.WSCloseCode.GOING_AWAY
        assert time.monotonic() - started < 1.0


async def test_an_idle_socket_outlives_the_http_timeouts(
    make_client: MakeClient, settings: Settings
) -> None:
    # The header and body timeouts bound a request's arrival, not a socket's life; the
    # WebSocket pings (every events_heartbeat) keep it and find a peer that went away.
    client = await make_client(
        settings.replace(events_heartbeat=0.3, http_header_timeout=0.5, http_body_timeout=0.5)
    )
    async with socket(client) as ui:
        assert await ui.quiet(1.5) == []
        assert not ui.ws.closed
        assert (await ui.request("getSettings"))["response"]["topicTreeEnabled"] is False
