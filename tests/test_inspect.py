"""Who is connected, end to end: REST -> mmc -> mosquitto 2.0 with mmc's plugin (loaded
before dynamic security) -> real MQTT clients connecting and disconnecting."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from openapi_schema_validator import OAS30Validator

from mmc.appkeys import connections_key
from mmc.brokers.inspect import EVENTS_TOPIC, NOT_ENABLED
from mmc.config import Settings
from testbed.mosquitto import MOSQUITTO_CTRL_BIN, Mosquitto, MosquittoBroker
from tests.conftest import Client, MakeClient, plain_body, wait_until
from tests.fake_mqtt import FakeBroker

REQUEST_TOPIC = "$CONTROL/cedalo/inspect/v1"
RESPONSE_TOPIC = f"{REQUEST_TOPIC}/response"
BASE = "/api/projects/default/brokers/plain/clients"
# Inspection is opt-in (plugin/README.md).
INSPECT_ON = "plugin_opt_inspect true"

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")
# Test clients: may publish and subscribe under insp/, nothing on $CONTROL.
USER = "insp-user"
PASSWORD = "insp-user-password"
FIELDS = {
    "clientid",
    "username",
    "connected",
    "address",
    "protocol",
    "protocolVersion",
    "lastConnect",
    "lastDisconnect",
    "keepalive",
    "cleanSession",
}


def _ctrl(broker: MosquittoBroker, *args: str) -> None:
    result = subprocess.run(
        [
            MOSQUITTO_CTRL_BIN,
            *("-h", broker.host, "-p", str(broker.port)),
            *("-u", broker.admin_username, "-P", broker.admin_password),
            "dynsec",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)


def _add_user(broker: MosquittoBroker) -> None:
    _ctrl(broker, "createRole", "insp")
    for acltype in ("publishClientSend", "subscribePattern"):
        _ctrl(broker, "addRoleACL", "insp", acltype, "insp/#", "allow")
    _ctrl(broker, "createClient", USER, "-p", PASSWORD)
    _ctrl(broker, "addClientRole", USER, "insp")


@pytest.fixture(scope="session")
def inspect_broker(
    tmp_path_factory: pytest.TempPathFactory, client_control_plugin: Path, mosquitto: Mosquitto
) -> Iterator[MosquittoBroker]:
    """mosquitto with mmc's plugin first, then dynamic security (which decides logins)."""
    workdir = tmp_path_factory.mktemp("inspect-broker")
    with MosquittoBroker(
        workdir, early_plugins=[client_control_plugin], early_conf=INSPECT_ON, mosquitto=mosquitto
    ) as broker:
        _add_user(broker)
        yield broker
        assert broker.is_running, "the broker died during the inspect tests"


async def _connect(client: Client, broker: MosquittoBroker) -> Client:
    resp = await client.post("/api/connections", json=plain_body(broker))
    assert resp.status == 200, await resp.text()
    return client


@pytest.fixture
async def insp_client(client: Client, inspect_broker: MosquittoBroker) -> Client:
    return await _connect(client, inspect_broker)


# mmc's correlationData: a random 64-bit prefix per channel and a counter.
_MMC_CORRELATION = re.compile(r"^[0-9a-f]{16}-[0-9]+$")


def _uid() -> str:
    return secrets.token_hex(4)


@asynccontextmanager
async def _mqtt(
    broker: MosquittoBroker,
    identifier: str,
    *,
    admin: bool = False,
    password: str | None = None,
    protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V5,
    **kwargs: Any,
) -> AsyncIterator[aiomqtt.Client]:
    username, secret = (broker.admin_username, broker.admin_password) if admin else (USER, PASSWORD)
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=username,
        password=password if password is not None else secret,
        identifier=identifier,
        protocol=protocol,
        **kwargs,
    ) as mqtt:
        yield mqtt


async def _get(client: Client, path: str = "", **query: Any) -> tuple[int, Any]:
    resp = await client.get(BASE + path, params={k: str(v) for k, v in query.items()})
    return resp.status, await resp.json()


async def _client(client: Client, clientid: str) -> dict[str, Any]:
    status, body = await _get(client, f"/{clientid}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


async def _all(client: Client, verbose: bool = True) -> dict[str, dict[str, Any]]:
    status, body = await _get(client, verbose=str(verbose).lower())
    assert status == 200, body
    return {c["clientid"]: c for c in body["clients"]}


async def _events(mqtt: aiomqtt.Client, n: int, timeout: float = 3.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for message in mqtt.messages:
            if message.topic.value == EVENTS_TOPIC:
                assert isinstance(message.payload, bytes)
                out.append(json.loads(message.payload))
                if len(out) == n:
                    return out
    raise AssertionError("the MQTT connection ended")


async def _received(
    mqtt: aiomqtt.Client, quiet: float, wanted: Callable[[aiomqtt.Message], bool]
) -> list[aiomqtt.Message]:
    """What arrives (and is wanted) within ``quiet`` seconds."""
    out: list[aiomqtt.Message] = []
    try:
        async with asyncio.timeout(quiet):
            async for message in mqtt.messages:
                if wanted(message):
                    out.append(message)
    except TimeoutError:
        pass
    return out


async def _no_events(mqtt: aiomqtt.Client, quiet: float = 0.4) -> None:
    assert await _received(mqtt, quiet, lambda m: m.topic.value == EVENTS_TOPIC) == []


async def _closed_by_the_broker(mqtt: aiomqtt.Client) -> None:
    try:
        async with asyncio.timeout(3):
            async for _ in mqtt.messages:
                pass
    except aiomqtt.MqttError:
        return
    raise AssertionError("still connected")


def _now_ms() -> int:
    return int(time.time() * 1000)


# ----------------------------------------------------------------- listing


async def test_connected_clients_have_the_inspect_fields(
    insp_client: Client, inspect_broker: MosquittoBroker
) -> None:
    uid = _uid()
    before = _now_ms()
    async with (
        _mqtt(inspect_broker, f"v5-{uid}", keepalive=33) as v5,
        _mqtt(
            inspect_broker,
            f"v311-{uid}",
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
            keepalive=21,
        ),
    ):
        await v5.subscribe(f"insp/{uid}/a")
        await v5.subscribe(f"insp/{uid}/b")
        after = _now_ms()
        one = await _client(insp_client, f"v5-{uid}")
        assert set(one) == FIELDS | {"numSubscriptions"}
        assert one == {
            "clientid": f"v5-{uid}",
            "username": USER,
            "connected": True,
            "address": "127.0.0.1",
            "protocol": "MQTT",
            "protocolVersion": "v5",
            "lastConnect": one["lastConnect"],
            "lastDisconnect": None,
            "keepalive": 33,
            "cleanSession": True,
            "numSubscriptions": 2,
        }
        assert before - 5 <= one["lastConnect"] <= after + 5
        other = await _client(insp_client, f"v311-{uid}")
        assert (other["protocolVersion"], other["cleanSession"], other["keepalive"]) == (
            "v3.1.1",
            False,
            21,
        )
        assert other["numSubscriptions"] == 0

        listed = await _all(insp_client)
        assert listed[f"v5-{uid}"] == one
        # Not verbose: who, and whether connected.
        brief = await _all(insp_client, verbose=False)
        assert brief[f"v5-{uid}"] == {"clientid": f"v5-{uid}", "username": USER, "connected": True}
        # mmc's own link is a client too.
        assert any(c["username"] == inspect_broker.admin_username for c in brief.values())


async def test_a_disconnected_client_is_remembered_until_it_comes_back(
    insp_client: Client, inspect_broker: MosquittoBroker
) -> None:
    clientid = f"back-{_uid()}"
    async with _mqtt(inspect_broker, clientid):
        first = await _client(insp_client, clientid)
    gone = _now_ms()
    await wait_until(lambda: _disconnected(insp_client, clientid))
    left = await _client(insp_client, clientid)
    assert left["connected"] is False
    assert left["lastConnect"] == first["lastConnect"]
    assert gone - 1000 <= left["lastDisconnect"] <= _now_ms() + 5
    assert "numSubscriptions" not in left
    assert (await _all(insp_client))[clientid] == left

    async with _mqtt(inspect_broker, clientid):
        again = await _client(insp_client, clientid)
        assert again["connected"] is True
        assert again["lastConnect"] >= left["lastDisconnect"]
        assert again["lastDisconnect"] == left["lastDisconnect"]


async def _disconnected(client: Client, clientid: str) -> bool:
    return (await _client(client, clientid))["connected"] is False


async def test_count_and_offset_page_through_the_list(
    insp_client: Client, inspect_broker: MosquittoBroker
) -> None:
    uid = _uid()
    async with (
        _mqtt(inspect_broker, f"p1-{uid}"),
        _mqtt(inspect_broker, f"p2-{uid}"),
        _mqtt(inspect_broker, f"p3-{uid}"),
    ):
        status, everything = await _get(insp_client)
        assert status == 200
        ids = [c["clientid"] for c in everything["clients"]]
        assert everything["totalCount"] == len(ids) >= 4
        # First seen, first listed.
        mine = [i for i in ids if i.endswith(uid)]
        assert mine == [f"p1-{uid}", f"p2-{uid}", f"p3-{uid}"]
        for count, offset in [(1, 0), (2, 1), (-1, 2), (0, 0), (3, len(ids) - 1), (5, len(ids))]:
            status, page = await _get(insp_client, count=count, offset=offset)
            assert status == 200
            expected = ids[offset:] if count < 0 else ids[offset : offset + count]
            assert [c["clientid"] for c in page["clients"]] == expected, (count, offset)
            assert page["totalCount"] == len(ids)


async def test_unknown_client_is_404(insp_client: Client) -> None:
    status, body = await _get(insp_client, f"/nobody-{_uid()}")
    assert (status, body) == (
        404,
        {"code": "NOT_FOUND", "message": "Client not found", "status": 404},
    )


async def test_answers_match_the_openapi_document(
    insp_client: Client, inspect_broker: MosquittoBroker
) -> None:
    spec = await (await insp_client.get("/api/docs/openapi.json")).json()
    path = "/api/projects/{projectId}/brokers/{brokerId}/clients"

    def check(route: str, body: Any) -> None:
        schema = spec["paths"][route]["get"]["responses"]["200"]["content"]["application/json"]
        OAS30Validator({**schema["schema"], "components": spec["components"]}).validate(body)

    clientid = f"doc-{_uid()}"
    async with _mqtt(inspect_broker, clientid):
        for verbose in ("true", "false"):
            status, body = await _get(insp_client, verbose=verbose)
            assert status == 200
            check(path, body)
        check(path + "/{clientid}", await _client(insp_client, clientid))
    await wait_until(lambda: _disconnected(insp_client, clientid))
    check(path + "/{clientid}", await _client(insp_client, clientid))


# ------------------------------------------------------- who is not listed


async def test_a_client_refused_by_dynamic_security_is_not_listed(
    insp_client: Client, inspect_broker: MosquittoBroker
) -> None:
    uid = _uid()
    async with _mqtt(inspect_broker, f"watch-{uid}", admin=True) as watcher:
        await watcher.subscribe(EVENTS_TOPIC)
        # Our basic-auth callback saw it (it runs first), dynamic security refused it.
        with pytest.raises(aiomqtt.MqttError):
            async with _mqtt(inspect_broker, f"refused-{uid}", password="wrong"):
                pass
        status, body = await _get(insp_client, f"/refused-{uid}")
        assert (status, body["message"]) == (404, "Client not found")
        assert f"refused-{uid}" not in await _all(insp_client)
        await _no_events(watcher)

        # A wrong password for the id of a connected client leaves that client alone.
        async with _mqtt(inspect_broker, f"held-{uid}"):
            assert [e["event"] for e in await _events(watcher, 1)] == ["connected"]
            held = await _client(insp_client, f"held-{uid}")
            with pytest.raises(aiomqtt.MqttError):
                async with _mqtt(inspect_broker, f"held-{uid}", password="wrong"):
                    pass
            await _no_events(watcher)
            assert await _client(insp_client, f"held-{uid}") == held


async def test_a_client_taking_over_its_id_stays_connected(
    insp_client: Client, inspect_broker: MosquittoBroker
) -> None:
    uid = _uid()
    clientid = f"twice-{uid}"
    async with _mqtt(inspect_broker, f"watch-{uid}", admin=True) as watcher:
        await watcher.subscribe(EVENTS_TOPIC)
        async with _mqtt(inspect_broker, clientid) as first:
            first_seen = await _client(insp_client, clientid)
            async with _mqtt(inspect_broker, clientid):
                # The broker closes the first connection after it has seen the second.
                await _closed_by_the_broker(first)
                now = await _client(insp_client, clientid)
                assert now["connected"] is True
                assert now["lastConnect"] >= first_seen["lastConnect"]
                events = [e["event"] for e in await _events(watcher, 3)]
                assert events == ["connected", "disconnected", "connected"]
                await asyncio.sleep(0.3)
                assert (await _client(insp_client, clientid))["connected"] is True


# ------------------------------------------------------------------ events


async def test_connects_and_disconnects_are_published(
    insp_client: Client, inspect_broker: MosquittoBroker
) -> None:
    uid = _uid()
    clientid = f"ev-{uid}"
    async with _mqtt(inspect_broker, f"watch-{uid}", admin=True) as watcher:
        await watcher.subscribe(EVENTS_TOPIC)
        before = _now_ms()
        async with _mqtt(inspect_broker, clientid, protocol=aiomqtt.ProtocolVersion.V311):
            (connected,) = await _events(watcher, 1)
        (disconnected,) = await _events(watcher, 1)
    common = {
        "clientid": clientid,
        "username": USER,
        "address": "127.0.0.1",
        "protocol": "MQTT",
        "protocolVersion": "v3.1.1",
    }
    assert connected == {**common, "event": "connected", "timestamp": connected["timestamp"]}
    assert disconnected == {
        **common,
        "event": "disconnected",
        "timestamp": disconnected["timestamp"],
    }
    assert before <= connected["timestamp"] <= disconnected["timestamp"] <= _now_ms() + 5
    remembered = await _client(insp_client, clientid)
    assert remembered["lastConnect"] == connected["timestamp"]
    assert remembered["lastDisconnect"] == disconnected["timestamp"]


# ---------------------------------------------------------------- memory


async def test_remembered_disconnected_clients_are_capped(
    client: Client, tmp_path: Path, client_control_plugin: Path, mosquitto: Mosquitto
) -> None:
    with MosquittoBroker(
        tmp_path / "b",
        mosquitto=mosquitto,
        early_plugins=[client_control_plugin],
        early_conf=f"{INSPECT_ON}\nplugin_opt_max_disconnected_clients 2",
    ) as own:
        _add_user(own)
        await _connect(client, own)
        async with _mqtt(own, "stays"):
            for n in range(5):
                async with _mqtt(own, f"gone-{n}"):
                    pass
                await wait_until(lambda n=n: _disconnected(client, f"gone-{n}"))  # type: ignore[misc]
            listed = await _all(client)
            assert "stays" in listed
            gone = sorted(i for i in listed if i.startswith("gone-"))
            # The two most recently disconnected; the oldest were forgotten first.
            assert gone == ["gone-3", "gone-4"]
            assert (await _get(client, "/gone-0"))[0] == 404


async def test_a_cap_of_zero_forgets_clients_when_they_leave(
    client: Client, tmp_path: Path, client_control_plugin: Path, mosquitto: Mosquitto
) -> None:
    with MosquittoBroker(
        tmp_path / "b",
        mosquitto=mosquitto,
        early_plugins=[client_control_plugin],
        early_conf=f"{INSPECT_ON}\nplugin_opt_max_disconnected_clients 0",
    ) as own:
        _add_user(own)
        await _connect(client, own)
        async with _mqtt(own, "brief"):
            assert (await _client(client, "brief"))["connected"] is True
        await wait_until(lambda: _gone(client, "brief"))


async def _gone(client: Client, clientid: str) -> bool:
    return (await _get(client, f"/{clientid}"))[0] == 404


# ------------------------------------------------------- errors and probing


async def test_broker_without_the_plugin_is_404_within_the_probe_time(
    make_client: MakeClient, settings: Settings, broker: MosquittoBroker
) -> None:
    client = await _connect(await make_client(settings.replace(probe_timeout=0.5)), broker)
    for path in ("", "/someone"):
        started = time.monotonic()
        status, body = await _get(client, path)
        assert time.monotonic() - started < 1.5
        assert (status, body["code"], body["message"]) == (404, "NOT_FOUND", NOT_ENABLED)


async def test_the_inspect_option_turns_it_off(
    make_client: MakeClient,
    settings: Settings,
    tmp_path: Path,
    client_control_plugin: Path,
    mosquitto: Mosquitto,
) -> None:
    with MosquittoBroker(
        tmp_path / "b",
        mosquitto=mosquitto,
        early_plugins=[client_control_plugin],
        early_conf="plugin_opt_inspect false",
    ) as own:
        client = await _connect(await make_client(settings.replace(probe_timeout=0.5)), own)
        status, body = await _get(client)
        assert (status, body["message"]) == (404, NOT_ENABLED)
        # Client control is still there.
        resp = await client.put(
            "/api/projects/default/brokers/plain/client-control/disconnect",
            json={"clientid": "nobody"},
        )
        assert (resp.status, (await resp.json())["message"]) == (404, "Client not found")


@pytest.mark.parametrize(
    "query",
    [{"count": -2}, {"count": "x"}, {"offset": -1}, {"offset": 1.5}, {"verbose": "maybe"}],
)
async def test_invalid_queries_are_400(insp_client: Client, query: dict[str, Any]) -> None:
    status, body = await _get(insp_client, **query)
    assert (status, body["code"]) == (400, "INVALID"), body


async def test_a_client_id_the_broker_cannot_read_is_400(insp_client: Client) -> None:
    resp = await insp_client.get(f"{BASE}/a%00b")
    assert resp.status == 400
    assert (await resp.json())["info"] == {
        "clientid": ["Must not contain NUL characters (U+0000)."]
    }


async def test_unknown_broker_or_wrong_project_is_404(insp_client: Client) -> None:
    resp = await insp_client.get("/api/projects/default/brokers/nope/clients")
    assert resp.status == 404
    resp = await insp_client.get("/api/projects/other/brokers/plain/clients/x")
    assert resp.status == 404
    assert (await resp.json())["message"] == "Broker plain not found in project other"


# ------------------------------------------------------ the plugin on the wire


async def test_malformed_commands_get_the_plugins_error(inspect_broker: MosquittoBroker) -> None:
    def cmds(*commands: Any) -> bytes:
        return json.dumps({"commands": list(commands)}).encode()

    requests: list[tuple[bytes, list[dict[str, Any]]]] = [
        (b"nope", [{"command": "Unknown command", "error": "Payload not valid JSON"}]),
        (
            cmds(
                {"command": "listClients", "count": "x"},
                {"command": "listClients", "count": 1.5},
                {"command": "listClients", "count": 1e300},
                {"command": "listClients", "offset": -1},
                {"command": "listClients", "verbose": "yes"},
                {"command": "getClient"},
                {"command": "getClient", "clientid": 5},
                {"command": "getClient", "clientid": "nobody-here", "correlationData": "c1"},
                {"command": "kickClient", "correlationData": "c2"},
            ),
            [
                {"command": "listClients", "error": "Invalid count"},
                {"command": "listClients", "error": "Invalid count"},
                {"command": "listClients", "error": "Invalid count"},
                {"command": "listClients", "error": "Invalid offset"},
                {"command": "listClients", "error": "Invalid verbose"},
                {"command": "getClient", "error": "Invalid/missing clientid"},
                {"command": "getClient", "error": "Invalid/missing clientid"},
                {"command": "getClient", "error": "Client not found", "correlationData": "c1"},
                {"command": "kickClient", "error": "Unknown command", "correlationData": "c2"},
            ],
        ),
    ]
    async with _mqtt(inspect_broker, f"admin-{_uid()}", admin=True) as admin:
        await admin.subscribe(RESPONSE_TOPIC)
        for payload, expected in requests:
            await admin.publish(REQUEST_TOPIC, payload)
            async with asyncio.timeout(3):
                async for message in admin.messages:
                    assert isinstance(message.payload, bytes)
                    answer = json.loads(message.payload)
                    if _MMC_CORRELATION.match(str(answer["responses"][0].get("correlationData"))):
                        continue  # a link's capability probe
                    assert answer == {"responses": expected}, payload
                    break
        # Case-insensitive names, like the client-control commands.
        await admin.publish(
            REQUEST_TOPIC, cmds({"command": "LISTCLIENTS", "count": 0, "correlationData": "c3"})
        )
        async with asyncio.timeout(3):
            async for message in admin.messages:
                assert isinstance(message.payload, bytes)
                answer = json.loads(message.payload)["responses"][0]
                if answer.get("correlationData") == "c3":
                    assert answer["command"] == "listClients"
                    assert answer["data"]["clients"] == []
                    break
    assert inspect_broker.is_running


async def test_only_clients_allowed_on_control_topics_may_ask_or_listen(
    inspect_broker: MosquittoBroker,
) -> None:
    uid = _uid()
    command = json.dumps({"commands": [{"command": "listClients", "correlationData": uid}]})
    async with (
        _mqtt(inspect_broker, f"admin-{uid}", admin=True) as admin,
        _mqtt(inspect_broker, f"user-{uid}") as user,
    ):
        await admin.subscribe(RESPONSE_TOPIC)
        # insp-user has no ACL on $CONTROL: the broker refuses its publish and subscriptions.
        await user.publish(REQUEST_TOPIC, command, qos=1)
        await user.subscribe(EVENTS_TOPIC)
        await user.subscribe(RESPONSE_TOPIC)
        answered = await _received(admin, 0.5, lambda m: uid in str(m.payload))
        assert answered == [], "the plugin answered a client without the right"
        async with _mqtt(inspect_broker, f"other-{uid}"):
            pass
        await admin.publish(REQUEST_TOPIC, command)
        async with asyncio.timeout(3):
            async for message in admin.messages:
                assert isinstance(message.payload, bytes)
                if uid in message.payload.decode():
                    break
        # The user saw neither the answer nor the events.
        assert await _received(user, 0.5, lambda m: True) == []


# ------------------------------------------------------- what 2.0 imposes, and 2.1 not


async def test_loaded_after_dynamic_security_it_misses_the_clients_dynsec_accepts(
    client: Client, tmp_path: Path, client_control_plugin: Path, mosquitto: Mosquitto
) -> None:
    """2.0 stops asking plugins at the first that decides: hence "load it first". 2.1
    tells every plugin of a connect (MOSQ_EVT_CONNECT), wherever it is loaded."""
    with MosquittoBroker(
        tmp_path / "b",
        mosquitto=mosquitto,
        extra_plugins=[client_control_plugin],
        extra_conf=INSPECT_ON,
    ) as own:
        _add_user(own)
        await _connect(client, own)
        async with _mqtt(own, "unseen"):
            status, body = await _get(client, "/unseen")
            if mosquitto.version == "2.0":
                assert status == 404, body
            else:
                assert (status, body["connected"]) == (200, True), body


@pytest.mark.parametrize(("inspect", "accepted"), [("true", False), ("false", True), ("", True)])
async def test_without_any_authentication_a_username_is_refused_unless_inspect_is_off(
    tmp_path: Path, client_control_plugin: Path, inspect: str, accepted: bool, mosquitto: Mosquitto
) -> None:
    """mosquitto 2.0 refuses a client with a username that every basic-auth plugin
    deferred, even with allow_anonymous true: the price of seeing clients on 2.0. On 2.1
    the plugin does not take part in authentication, so nothing is refused."""
    with MosquittoBroker(
        tmp_path / "b",
        mosquitto=mosquitto,
        dynsec=False,
        early_plugins=[client_control_plugin],
        early_conf=f"plugin_opt_inspect {inspect}" if inspect else "",
    ) as own:
        async with aiomqtt.Client(own.host, own.port, identifier="anonymous"):
            pass
        assert await _accepted(own, "bob") is (accepted or mosquitto.version != "2.0")


async def _accepted(broker: MosquittoBroker, username: str) -> bool:
    try:
        async with aiomqtt.Client(
            broker.host, broker.port, username=username, password="x", identifier=username
        ):
            return True
    except aiomqtt.MqttCodeError as exc:
        assert exc.rc == 135, exc  # noqa: PT017 - Not authorized, and nothing else
        return False


async def test_the_link_passes_client_events_on(
    insp_client: Client, inspect_broker: MosquittoBroker
) -> None:
    link = insp_client.app[connections_key].pool.require("plain")
    seen: list[tuple[str, dict[str, Any]]] = []
    link.on_client_event = lambda source, event: seen.append((source.id, event))
    clientid = f"linked-{_uid()}"
    async with _mqtt(inspect_broker, clientid):
        await wait_until(lambda: any(e["clientid"] == clientid for _, e in seen))
    await wait_until(lambda: len([e for _, e in seen if e["clientid"] == clientid]) == 2)
    mine = [(broker_id, e["event"]) for broker_id, e in seen if e["clientid"] == clientid]
    assert mine == [("plain", "connected"), ("plain", "disconnected")]


async def test_a_configuration_reload_changes_nobody(
    client: Client, tmp_path: Path, client_control_plugin: Path, mosquitto: Mosquitto
) -> None:
    """On SIGHUP 2.0 checks every session's password again through the basic-auth event,
    offline persistent sessions included: none of them is a client connecting."""
    with MosquittoBroker(
        tmp_path / "b",
        mosquitto=mosquitto,
        early_plugins=[client_control_plugin],
        early_conf=INSPECT_ON,
    ) as own:
        _add_user(own)
        await _connect(client, own)
        async with _mqtt(
            own, "offline", protocol=aiomqtt.ProtocolVersion.V311, clean_session=False
        ):
            pass
        await wait_until(lambda: _disconnected(client, "offline"))
        async with (
            _mqtt(own, "online") as online,
            _mqtt(own, "watch", admin=True) as watcher,
        ):
            await watcher.subscribe(EVENTS_TOPIC)
            await online.subscribe("insp/x")
            before = await _all(client)
            assert own.pid is not None
            os.kill(own.pid, signal.SIGHUP)
            await wait_until(lambda: "Reloading config." in own.log_path.read_text())
            await _no_events(watcher)
            after = await _all(client)
            assert after == before
            assert after["offline"]["connected"] is False
            assert after["online"]["numSubscriptions"] == 1


# An answer in the shape of Pro Mosquitto's inspect plugin (Cedalo's client-inspect
# AsyncAPI), with the fields mmc's plugin does not have.
PRO_CLIENT: dict[str, Any] = {
    "clientid": "pro-sensor",
    "username": "sensors",
    "address": "10.1.2.3",
    "protocol": "MQTT",
    "protocolVersion": "v3.1.1",
    "connected": True,
    "lastConnect": 1796205600123,
    "lastDisconnect": 0,
    "keepalive": 60,
    "cleanSession": True,
    "numSubscriptions": 1,
    "numPublished": 12,
    "bytesPublished": 345,
    "tls": {"clientCertificate": None, "version": "TLSv1.3", "ciphers": "TLS_AES_256_GCM_SHA384"},
    "listener": {"port": 8883, "bind_address": "10.1.2.1"},
    "subscriptions": [{"topic": "cmd/pro-sensor/#", "qos": 1}],
    "queues": {"bytesIn": 0, "bytesOut": 0, "messagesIn": 0, "messagesOut": 2},
    "inflight": {"messagesOut": 0},
}


async def test_a_pro_brokers_answers_pass_through_unchanged(
    client: Client, broker: MosquittoBroker
) -> None:
    answers = {
        "listClients": {"clients": [PRO_CLIENT]},
        "getClient": PRO_CLIENT,
    }
    async with FakeBroker("pro", answers=answers) as pro:
        resp = await client.post("/api/connections", json=plain_body(broker, url=pro.url))
        assert resp.status == 200, await resp.text()
        assert await _get(client, verbose="true") == (200, {"clients": [PRO_CLIENT]})
        assert await _get(client, "/pro-sensor") == (200, PRO_CLIENT)
