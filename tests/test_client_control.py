"""Client control end to end: REST -> mmc -> mosquitto 2.0 or 2.1 with mmc's plugin (built
against that version's headers) -> real clients."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from mmc.appkeys import connections_key
from mmc.brokers.client_control import NOT_ENABLED
from mmc.config import Settings
from testbed.mosquitto import Mosquitto, MosquittoBroker
from tests.conftest import Client, MakeClient, plain_body, wait_until

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

REQUEST_TOPIC = "$CONTROL/cedalo/client-control/v1"
RESPONSE_TOPIC = f"{REQUEST_TOPIC}/response"
BASE = "/api/projects/default/brokers/plain/client-control"
# Test clients: may publish and subscribe under cc/, nothing on $CONTROL.
CC_USER = "cc-user"
CC_PASSWORD = "cc-user-password"
QUIET = 0.4


def _ctrl(broker: MosquittoBroker, *args: str) -> None:
    result = subprocess.run(
        [
            broker.mosquitto.ctrl,
            *("-h", broker.host, "-p", str(broker.port)),
            *("-u", broker.admin_username, "-P", broker.admin_password),
            "dynsec",
            *args,
        ],
        capture_output=True,
        text=True,
        env=broker.mosquitto.env(),
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)


@pytest.fixture(scope="session")
def cc_broker(
    tmp_path_factory: pytest.TempPathFactory, client_control_plugin: Path, mosquitto: Mosquitto
) -> Iterator[MosquittoBroker]:
    """mosquitto with dynamic-security and the client-control plugin side by side."""
    workdir = tmp_path_factory.mktemp("cc-broker")
    with MosquittoBroker(
        workdir, extra_plugins=[client_control_plugin], mosquitto=mosquitto
    ) as broker:
        _ctrl(broker, "createRole", "cc")
        for acltype in ("publishClientSend", "subscribePattern"):
            _ctrl(broker, "addRoleACL", "cc", acltype, "cc/#", "allow")
        # A '$' topic the test clients may publish ($SYS is the broker's alone).
        _ctrl(broker, "addRoleACL", "cc", "publishClientSend", "$cc/#", "allow")
        _ctrl(broker, "createClient", CC_USER, "-p", CC_PASSWORD)
        _ctrl(broker, "addClientRole", CC_USER, "cc")
        yield broker
        assert broker.is_running, "the broker died during the client-control tests"


@pytest.fixture
async def cc_client(client: Client, cc_broker: MosquittoBroker) -> Client:
    resp = await client.post("/api/connections", json=plain_body(cc_broker))
    assert resp.status == 200, await resp.text()
    return client


def _uid() -> str:
    return secrets.token_hex(4)


@asynccontextmanager
async def _mqtt(
    broker: MosquittoBroker, identifier: str, *, admin: bool = False, **kwargs: Any
) -> AsyncIterator[aiomqtt.Client]:
    username, password = (
        (broker.admin_username, broker.admin_password) if admin else (CC_USER, CC_PASSWORD)
    )
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=username,
        password=password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        **kwargs,
    ) as mqtt:
        yield mqtt


# mmc's correlationData: a random 64-bit prefix per channel and a counter.
_MMC_CORRELATION = re.compile(r"^[0-9a-f]{16}-[0-9]+$")


def _from_mmc(message: aiomqtt.Message) -> bool:
    """A reply to one of mmc's own requests (e.g. its capability probe on connect): every
    subscriber of the response topic sees those too."""
    try:
        responses = json.loads(bytes(message.payload))["responses"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(responses) and all(
        isinstance(r, dict) and _MMC_CORRELATION.match(str(r.get("correlationData", "")))
        for r in responses
    )


async def _next(mqtt: aiomqtt.Client, timeout: float = 3.0) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        async for message in mqtt.messages:
            if not _from_mmc(message):
                return message
    raise AssertionError("the MQTT connection ended")


async def _nothing(mqtt: aiomqtt.Client, quiet: float = QUIET) -> None:
    try:
        message = await _next(mqtt, quiet)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message on {message.topic}: {message.payload!r}")


async def _put(client: Client, action: str, body: Any) -> tuple[int, Any]:
    resp = await client.put(f"{BASE}/{action}", json=body)
    text = await resp.text()
    return resp.status, json.loads(text) if text else None


# ------------------------------------------------------------------ disconnect


async def test_disconnect_closes_a_connected_client(
    cc_client: Client, cc_broker: MosquittoBroker
) -> None:
    uid = _uid()
    will = aiomqtt.Will(f"cc/{uid}/will", b"gone", qos=1)
    async with _mqtt(cc_broker, f"observer-{uid}") as observer:
        await observer.subscribe(f"cc/{uid}/will", qos=1)
        async with _mqtt(cc_broker, f"kick-{uid}", will=will) as target:
            assert await _put(cc_client, "disconnect", {"clientid": f"kick-{uid}"}) == (200, {})
            with pytest.raises(aiomqtt.MqttError, match="Disconnected"):
                await _next(target)
            cause = str(target._disconnected.exception())
            assert "Administrative action" in cause, cause
        # The server closed the connection: its will goes out, as MQTT 3.1.2.5 says.
        message = await _next(observer)
        assert (message.topic.value, message.payload) == (f"cc/{uid}/will", b"gone")

    status, body = await _put(cc_client, "disconnect", {"clientid": f"kick-{uid}"})
    assert (status, body["message"]) == (404, "Client not found")


async def test_disconnect_unknown_client_is_404(cc_client: Client) -> None:
    status, body = await _put(cc_client, "disconnect", {"clientid": f"nobody-{_uid()}"})
    assert status == 404
    assert body == {"code": "NOT_FOUND", "message": "Client not found", "status": 404}
    # A field mmc does not use is ignored: the request still reaches the broker.
    status, body = await _put(cc_client, "disconnect", {"clientid": f"n-{_uid()}", "extra": 1})
    assert (status, body["message"]) == (404, "Client not found")


# ------------------------------------------------------------ (un)subscribe


async def test_subscribe_delivers_matching_messages_at_the_lower_qos(
    cc_client: Client, cc_broker: MosquittoBroker
) -> None:
    uid = _uid()
    async with (
        _mqtt(cc_broker, f"target-{uid}") as target,
        _mqtt(cc_broker, f"pub-{uid}") as publisher,
    ):
        body = {
            "clientid": f"target-{uid}",
            "topic": f"cc/{uid}/+/temp",
            "qos": 1,
            "options": {"no_local": False, "retain_as_published": False, "send_retain": "never"},
        }
        assert await _put(cc_client, "subscribe", body) == (204, None)

        await publisher.publish(f"cc/{uid}/room1/humidity", b"no match", qos=1)
        await publisher.publish(f"cc/{uid}/room1/temp", b"21.5", qos=2)
        message = await _next(target)
        assert (message.topic.value, message.payload, message.qos) == (
            f"cc/{uid}/room1/temp",
            b"21.5",
            1,
        )
        await publisher.publish(f"cc/{uid}/room2/temp", b"19", qos=0)
        message = await _next(target)
        assert (message.topic.value, message.payload, message.qos) == (
            f"cc/{uid}/room2/temp",
            b"19",
            0,
        )
        await _nothing(target)

        # Subscribing again replaces the subscription, as an MQTT SUBSCRIBE does.
        assert await _put(cc_client, "subscribe", {**body, "qos": 2}) == (204, None)
        await publisher.publish(f"cc/{uid}/room1/temp", b"22", qos=2)
        message = await _next(target)
        assert (message.payload, message.qos) == (b"22", 2)
        await _nothing(target)


async def test_subscribe_without_qos_subscribes_at_qos_0(
    cc_client: Client, cc_broker: MosquittoBroker
) -> None:
    # The seed's schema requires nothing: qos defaults to 0, as in MQTT.
    uid = _uid()
    async with (
        _mqtt(cc_broker, f"target-{uid}") as target,
        _mqtt(cc_broker, f"pub-{uid}") as publisher,
    ):
        body = {"clientid": f"target-{uid}", "topic": f"cc/{uid}/t"}
        assert await _put(cc_client, "subscribe", body) == (204, None)
        await publisher.publish(f"cc/{uid}/t", b"x", qos=2)
        message = await _next(target)
        assert (message.payload, message.qos) == (b"x", 0)


async def test_unsubscribe_stops_delivery(cc_client: Client, cc_broker: MosquittoBroker) -> None:
    uid = _uid()
    target_id = f"target-{uid}"
    topic = f"cc/{uid}/#"
    async with (
        _mqtt(cc_broker, target_id) as target,
        _mqtt(cc_broker, f"pub-{uid}") as publisher,
    ):
        body = {"clientid": target_id, "topic": topic, "qos": 0}
        assert await _put(cc_client, "subscribe", body) == (204, None)
        await publisher.publish(f"cc/{uid}/a", b"1")
        assert (await _next(target)).payload == b"1"

        body = {"clientid": target_id, "topic": topic}
        assert await _put(cc_client, "unsubscribe", body) == (204, None)
        await publisher.publish(f"cc/{uid}/a", b"2")
        await _nothing(target)
        # Like MQTT's UNSUBSCRIBE, removing what is not there is no error.
        assert await _put(cc_client, "unsubscribe", body) == (204, None)


async def test_no_local_keeps_a_clients_own_messages_from_it(
    cc_client: Client, cc_broker: MosquittoBroker
) -> None:
    uid = _uid()
    target_id = f"target-{uid}"
    topic = f"cc/{uid}/chat"
    async with (
        _mqtt(cc_broker, target_id) as target,
        _mqtt(cc_broker, f"pub-{uid}") as publisher,
    ):
        body = {"clientid": target_id, "topic": topic, "qos": 1, "options": {"no_local": True}}
        assert await _put(cc_client, "subscribe", body) == (204, None)
        await target.publish(topic, b"mine", qos=1)
        await publisher.publish(topic, b"theirs", qos=1)
        assert (await _next(target)).payload == b"theirs"
        await _nothing(target)

        body["options"] = {"no_local": False}
        assert await _put(cc_client, "subscribe", body) == (204, None)
        await target.publish(topic, b"mine again", qos=1)
        assert (await _next(target)).payload == b"mine again"


async def test_subscriptions_end_when_the_client_disconnects(
    cc_client: Client, cc_broker: MosquittoBroker
) -> None:
    uid = _uid()
    target_id = f"target-{uid}"
    async with _mqtt(cc_broker, f"pub-{uid}") as publisher:
        async with _mqtt(cc_broker, target_id) as target:
            body = {"clientid": target_id, "topic": f"cc/{uid}/x", "qos": 0}
            assert await _put(cc_client, "subscribe", body) == (204, None)
            await publisher.publish(f"cc/{uid}/x", b"before")
            assert (await _next(target)).payload == b"before"
        async with _mqtt(cc_broker, target_id) as target:
            await publisher.publish(f"cc/{uid}/x", b"after")
            await _nothing(target)


@pytest.mark.mosquitto_versions("2.0")
async def test_on_mosquitto_2_0_a_subscription_waits_for_its_client(
    cc_client: Client, cc_broker: MosquittoBroker
) -> None:
    # 2.0 gives a plugin no way to look a client up: it keeps the subscription for
    # the id, and the client gets the messages once it connects (plugin/README.md).
    uid = _uid()
    for name in ("later", "never"):
        body = {"clientid": f"{name}-{uid}", "topic": f"cc/{uid}/t", "qos": 0}
        assert await _put(cc_client, "subscribe", body) == (204, None)
    async with (
        _mqtt(cc_broker, f"later-{uid}") as later,
        _mqtt(cc_broker, f"pub-{uid}") as publisher,
    ):
        await publisher.publish(f"cc/{uid}/t", b"hello")
        assert (await _next(later)).payload == b"hello"


@pytest.mark.mosquitto_versions("2.0")  # the plugin keeps subscriptions only on 2.0
async def test_max_subscriptions_option(
    client: Client, tmp_path: Path, client_control_plugin: Path, mosquitto: Mosquitto
) -> None:
    with MosquittoBroker(
        tmp_path / "b",
        extra_plugins=[client_control_plugin],
        mosquitto=mosquitto,
        extra_conf="plugin_opt_max_subscriptions 1",
    ) as own:
        resp = await client.post("/api/connections", json=plain_body(own))
        assert resp.status == 200, await resp.text()
        body = {"clientid": "c", "topic": "a", "qos": 0}
        assert await _put(client, "subscribe", body) == (204, None)
        assert await _put(client, "subscribe", {**body, "qos": 1}) == (204, None)
        status, answer = await _put(client, "subscribe", {**body, "topic": "b"})
        assert (status, answer["message"]) == (400, "Too many subscriptions")
        assert await _put(client, "unsubscribe", {"clientid": "c", "topic": "a"}) == (204, None)
        assert await _put(client, "subscribe", {**body, "topic": "b"}) == (204, None)


@pytest.mark.mosquitto_versions("2.0")
async def test_plugin_errors_keep_their_message(cc_client: Client) -> None:
    body = {"clientid": "someone", "topic": "$share/group/cc/x", "qos": 0}
    status, answer = await _put(cc_client, "subscribe", body)
    assert status == 400
    assert answer["message"] == "Shared subscriptions are not supported on mosquitto 2.0"


# -------------------------------------------------- matching (2.0: the plugin's tree)


async def _subscribe(client: Client, clientid: str, topic: str, qos: int = 0) -> None:
    body = {"clientid": clientid, "topic": topic, "qos": qos}
    assert await _put(client, "subscribe", body) == (204, None), body


async def _received(mqtt: aiomqtt.Client, count: int) -> list[tuple[str, bytes, int]]:
    """The next ``count`` messages, then nothing more."""
    got: list[tuple[str, bytes, int]] = []
    for _ in range(count):
        message = await _next(mqtt)
        assert isinstance(message.payload, bytes)
        got.append((message.topic.value, message.payload, message.qos))
    await _nothing(mqtt)
    return got


async def test_wildcards_match_level_by_level(
    cc_client: Client, cc_broker: MosquittoBroker
) -> None:
    uid = _uid()
    async with (
        _mqtt(cc_broker, f"hash-{uid}") as hash_,
        _mqtt(cc_broker, f"plus-{uid}") as plus,
        _mqtt(cc_broker, f"exact-{uid}") as exact,
        _mqtt(cc_broker, f"pub-{uid}") as publisher,
    ):
        await _subscribe(cc_client, f"hash-{uid}", f"cc/{uid}/a/#")
        await _subscribe(cc_client, f"plus-{uid}", f"cc/{uid}/+/b")
        await _subscribe(cc_client, f"plus-{uid}", f"cc/{uid}/+/+/+/e")
        await _subscribe(cc_client, f"exact-{uid}", f"cc/{uid}/a/b")
        await _subscribe(cc_client, f"exact-{uid}", f"cc/{uid}//b")
        for topic in ("a", "a/b", "x/b", "a/b/c", "/b", "a/b/c/e", "x/b/c/e", "a/bb", "b", "a/"):
            await publisher.publish(f"cc/{uid}/{topic}", topic.encode(), qos=1)
        # "a/#" takes its parent level "a" too, and an empty level is a level.
        assert [p for _, p, _ in await _received(hash_, 6)] == [
            b"a", b"a/b", b"a/b/c", b"a/b/c/e", b"a/bb", b"a/",
        ]  # fmt: skip
        # The exact and the '+' branch of one level are both followed.
        assert [p for _, p, _ in await _received(plus, 5)] == [
            b"a/b", b"x/b", b"/b", b"a/b/c/e", b"x/b/c/e",
        ]  # fmt: skip
        assert [p for _, p, _ in await _received(exact, 2)] == [b"a/b", b"/b"]


async def test_dollar_topics_are_not_matched_by_leading_wildcards(
    cc_client: Client, cc_broker: MosquittoBroker
) -> None:
    uid = _uid()
    async with (
        _mqtt(cc_broker, f"hash-{uid}") as hash_,
        _mqtt(cc_broker, f"plus-{uid}") as plus,
        _mqtt(cc_broker, f"dollar-{uid}") as dollar,
        _mqtt(cc_broker, f"pub-{uid}") as publisher,
    ):
        await _subscribe(cc_client, f"hash-{uid}", "#")
        await _subscribe(cc_client, f"plus-{uid}", f"+/{uid}/x")
        await _subscribe(cc_client, f"dollar-{uid}", "$cc/+/x")
        await publisher.publish(f"$cc/{uid}/x", b"dollar", qos=1)
        await publisher.publish(f"cc/{uid}/x", b"plain", qos=1)
        assert await _received(hash_, 1) == [(f"cc/{uid}/x", b"plain", 0)]
        assert await _received(plus, 1) == [(f"cc/{uid}/x", b"plain", 0)]
        assert await _received(dollar, 1) == [(f"$cc/{uid}/x", b"dollar", 0)]


@pytest.mark.mosquitto_versions("2.0")  # 2.1's own subscriptions allow duplicates by default
async def test_overlapping_filters_give_one_copy_at_the_best_qos(
    cc_client: Client, cc_broker: MosquittoBroker
) -> None:
    uid = _uid()
    async with (
        _mqtt(cc_broker, f"one-{uid}") as one,
        _mqtt(cc_broker, f"two-{uid}") as two,
        _mqtt(cc_broker, f"pub-{uid}") as publisher,
    ):
        for topic, qos in ((f"cc/{uid}/#", 0), (f"cc/{uid}/+/t", 2), (f"cc/{uid}/r/t", 1)):
            await _subscribe(cc_client, f"one-{uid}", topic, qos)
        await _subscribe(cc_client, f"two-{uid}", f"cc/{uid}/r/t", 0)
        await publisher.publish(f"cc/{uid}/r/t", b"m", qos=2)
        assert await _received(one, 1) == [(f"cc/{uid}/r/t", b"m", 2)]
        assert await _received(two, 1) == [(f"cc/{uid}/r/t", b"m", 0)]


async def test_unsubscribing_one_filter_keeps_the_others(
    cc_client: Client, cc_broker: MosquittoBroker
) -> None:
    uid = _uid()
    async with (
        _mqtt(cc_broker, f"one-{uid}") as one,
        _mqtt(cc_broker, f"two-{uid}") as two,
        _mqtt(cc_broker, f"pub-{uid}") as publisher,
    ):
        await _subscribe(cc_client, f"one-{uid}", f"cc/{uid}/a/#")
        await _subscribe(cc_client, f"one-{uid}", f"cc/{uid}/a/b/c")
        await _subscribe(cc_client, f"two-{uid}", f"cc/{uid}/a/b/c")

        body = {"clientid": f"one-{uid}", "topic": f"cc/{uid}/a/#"}
        assert await _put(cc_client, "unsubscribe", body) == (204, None)
        for topic in ("a", "a/b/c"):
            await publisher.publish(f"cc/{uid}/{topic}", topic.encode(), qos=1)
        assert [p for _, p, _ in await _received(one, 1)] == [b"a/b/c"]
        assert [p for _, p, _ in await _received(two, 1)] == [b"a/b/c"]

        # The deeper filter goes, of one client only; the shallower comes back.
        body = {"clientid": f"one-{uid}", "topic": f"cc/{uid}/a/b/c"}
        assert await _put(cc_client, "unsubscribe", body) == (204, None)
        await _subscribe(cc_client, f"one-{uid}", f"cc/{uid}/a/#")
        for topic in ("a/b", "a/b/c"):
            await publisher.publish(f"cc/{uid}/{topic}", topic.encode(), qos=1)
        assert [p for _, p, _ in await _received(one, 2)] == [b"a/b", b"a/b/c"]
        assert [p for _, p, _ in await _received(two, 1)] == [b"a/b/c"]


async def _commands(admin: aiomqtt.Client, commands: list[dict[str, Any]]) -> None:
    """Send commands to the plugin straight over MQTT; every one must succeed."""
    tag = _uid()
    entries = [{**c, "correlationData": f"{tag}-{i}"} for i, c in enumerate(commands)]
    await admin.publish(REQUEST_TOPIC, json.dumps({"commands": entries}), qos=1)
    responses = json.loads(await _payload(admin))["responses"]
    assert [r.get("correlationData") for r in responses] == [e["correlationData"] for e in entries]
    assert [r for r in responses if "error" in r] == []


async def test_thousands_of_subscriptions_deliver_to_the_right_clients(
    cc_broker: MosquittoBroker,
) -> None:
    uid = _uid()
    count = 2000
    async with (
        _mqtt(cc_broker, f"admin-{uid}", admin=True) as admin,
        _mqtt(cc_broker, f"even-{uid}") as even,
        _mqtt(cc_broker, f"odd-{uid}") as odd,
        _mqtt(cc_broker, f"pub-{uid}") as publisher,
    ):
        await admin.subscribe(RESPONSE_TOPIC)
        subscribe = [
            {
                "command": "subscribeClient",
                "clientid": f"{'odd' if n % 2 else 'even'}-{uid}",
                "topic": f"cc/{uid}/n/{n}",
                "qos": 1,
            }
            for n in range(count)
        ]
        for start in range(0, count, 500):
            await _commands(admin, subscribe[start : start + 500])
        published = [0, 1, 2, 17, 998, 999, 1000, 1999, 2000, 2001, 12, 10000]
        for n in published:
            await publisher.publish(f"cc/{uid}/n/{n}", str(n).encode(), qos=1)
        want_even = [str(n).encode() for n in published if n < count and n % 2 == 0]
        want_odd = [str(n).encode() for n in published if n < count and n % 2]
        assert [p for _, p, _ in await _received(even, len(want_even))] == want_even
        assert [p for _, p, _ in await _received(odd, len(want_odd))] == want_odd

        # Half of them go: the others still deliver.
        await _commands(
            admin,
            [
                {"command": "unsubscribeClient", "clientid": c["clientid"], "topic": c["topic"]}
                for c in subscribe[: count // 2]
            ],
        )
        for n in published:
            await publisher.publish(f"cc/{uid}/n/{n}", str(n).encode(), qos=1)
        want = [n for n in published if count // 2 <= n < count]
        assert [p for _, p, _ in await _received(even, len([n for n in want if n % 2 == 0]))] == [
            str(n).encode() for n in want if n % 2 == 0
        ]
        assert [p for _, p, _ in await _received(odd, len([n for n in want if n % 2]))] == [
            str(n).encode() for n in want if n % 2
        ]


@pytest.mark.mosquitto_versions("2.1")
async def test_on_mosquitto_2_1_subscriptions_are_the_brokers_own(
    cc_client: Client, cc_broker: MosquittoBroker
) -> None:
    """2.1 adds real broker subscriptions: the client must be known to the broker, and
    shared subscriptions work."""
    uid = _uid()
    body = {"clientid": f"later-{uid}", "topic": f"cc/{uid}/t", "qos": 0}
    status, answer = await _put(cc_client, "subscribe", body)
    assert (status, answer["message"]) == (404, "Client not found")
    async with (
        _mqtt(cc_broker, f"member-{uid}") as member,
        _mqtt(cc_broker, f"pub-{uid}") as publisher,
    ):
        shared = {"clientid": f"member-{uid}", "topic": f"$share/g/cc/{uid}/s", "qos": 1}
        assert await _put(cc_client, "subscribe", shared) == (204, None)
        await publisher.publish(f"cc/{uid}/s", b"to the group", qos=1)
        assert (await _next(member)).payload == b"to the group"


# ------------------------------------------------------- errors and probing


INVALID_BODIES: list[tuple[str, Any]] = [
    ("disconnect", {}),
    ("disconnect", {"clientid": ""}),
    ("disconnect", {"clientid": 7}),
    ("disconnect", {"clientid": "a\x00b"}),
    ("disconnect", ["c"]),
    ("subscribe", {"topic": "a/b", "qos": 0}),
    ("subscribe", {"clientid": "c", "qos": 0}),
    ("subscribe", {"clientid": "c", "topic": "", "qos": 0}),
    ("subscribe", {"clientid": "c", "topic": "a/#/b", "qos": 0}),
    ("subscribe", {"clientid": "c", "topic": "a/b#", "qos": 0}),
    ("subscribe", {"clientid": "c", "topic": "a/b+/c", "qos": 0}),
    ("subscribe", {"clientid": "c", "topic": "a", "qos": 3}),
    ("subscribe", {"clientid": "c", "topic": "a", "qos": True}),
    ("subscribe", {"clientid": "c", "topic": "a", "qos": "1"}),
    ("subscribe", {"clientid": "c", "topic": "a", "qos": 0, "options": {"send_retain": "x"}}),
    ("subscribe", {"clientid": "c", "topic": "a", "qos": 0, "options": {"no_local": "maybe"}}),
    ("unsubscribe", {"clientid": "c"}),
    ("unsubscribe", {"clientid": "c", "topic": "+a"}),
]


async def test_invalid_bodies_are_400_before_anything_is_sent(
    make_client: MakeClient, settings: Settings, broker: MosquittoBroker
) -> None:
    # A broker without the plugin: a body that got as far as the broker would be a 404.
    client = await make_client(settings.replace(probe_timeout=5.0))
    resp = await client.post("/api/connections", json=plain_body(broker))
    assert resp.status == 200, await resp.text()
    started = time.monotonic()
    for action, body in INVALID_BODIES:
        status, answer = await _put(client, action, body)
        assert (status, answer["code"]) == (400, "INVALID"), (action, body, answer)
    resp = await client.put(f"{BASE}/disconnect", data=b"{not json", headers=_JSON)
    assert resp.status == 400
    assert time.monotonic() - started < 2.0


_JSON = {"Content-Type": "application/json"}


async def test_broker_without_the_plugin_is_404_within_the_probe_time(
    make_client: MakeClient, settings: Settings, broker: MosquittoBroker
) -> None:
    client = await make_client(settings.replace(probe_timeout=0.5))
    resp = await client.post("/api/connections", json=plain_body(broker))
    assert resp.status == 200, await resp.text()
    for action, body in [
        ("disconnect", {"clientid": "c"}),
        ("subscribe", {"clientid": "c", "topic": "a", "qos": 0}),
        ("unsubscribe", {"clientid": "c", "topic": "a"}),
    ]:
        started = time.monotonic()
        status, answer = await _put(client, action, body)
        assert time.monotonic() - started < 1.5
        assert status == 404
        assert (answer["code"], answer["message"], answer["status"]) == (
            "NOT_FOUND",
            NOT_ENABLED,
            404,
        )


async def test_unknown_broker_or_wrong_project_is_404(cc_client: Client) -> None:
    body = {"clientid": "c"}
    resp = await cc_client.put(
        "/api/projects/default/brokers/nope/client-control/disconnect", json=body
    )
    assert resp.status == 404
    resp = await cc_client.put(
        "/api/projects/other/brokers/plain/client-control/disconnect", json=body
    )
    assert resp.status == 404
    assert (await resp.json())["message"] == "Broker plain not found in project other"


async def test_link_down_is_503(
    client: Client, tmp_path: Path, client_control_plugin: Path, mosquitto: Mosquitto
) -> None:
    with MosquittoBroker(
        tmp_path / "b", extra_plugins=[client_control_plugin], mosquitto=mosquitto
    ) as own:
        resp = await client.post("/api/connections", json=plain_body(own))
        assert resp.status == 200, await resp.text()
        status, answer = await _put(client, "disconnect", {"clientid": "nobody"})
        assert status == 404
        assert answer["message"] == "Client not found"
        own.kill()
        link = client.app[connections_key].pool.require("plain")
        await wait_until(lambda: not link.connected)
        status, answer = await _put(client, "disconnect", {"clientid": "nobody"})
        assert (status, answer["code"]) == (503, "BROKER_UNAVAILABLE")


async def test_no_answer_in_time_is_an_unknown_outcome(
    make_client: MakeClient,
    settings: Settings,
    tmp_path: Path,
    client_control_plugin: Path,
    mosquitto: Mosquitto,
) -> None:
    client = await make_client(settings.replace(request_timeout=0.5))
    with MosquittoBroker(
        tmp_path / "b", extra_plugins=[client_control_plugin], mosquitto=mosquitto
    ) as own:
        resp = await client.post("/api/connections", json=plain_body(own))
        assert resp.status == 200, await resp.text()
        assert (await _put(client, "disconnect", {"clientid": "nobody"}))[0] == 404
        assert own.pid is not None
        os.kill(own.pid, signal.SIGSTOP)  # the plugin is known; now the broker hangs
        try:
            status, answer = await _put(client, "disconnect", {"clientid": "nobody"})
        finally:
            os.kill(own.pid, signal.SIGCONT)
        # Sent to a broker that then stood still: it may act on it once resumed, and the
        # plugin cannot report what it did (tests/test_lost_answers.py).
        assert (status, answer["code"]) == (502, "OUTCOME_UNKNOWN"), answer
        assert "may have been applied" in answer["message"]
        assert answer["info"] == {
            "api": "cedalo/client-control",
            "command": {"command": "disconnectClient", "clientid": "nobody"},
        }


# ------------------------------------------------------ the plugin on the wire


async def test_malformed_requests_get_the_plugins_error_and_the_broker_survives(
    cc_client: Client, cc_broker: MosquittoBroker
) -> None:
    not_json = [{"command": "Unknown command", "error": "Payload not valid JSON"}]
    no_commands = [{"command": "Unknown command", "error": "Invalid/missing commands"}]

    def cmds(*commands: Any) -> bytes:
        return json.dumps({"commands": list(commands)}).encode()

    requests: list[tuple[bytes, list[dict[str, str]]]] = [
        (b"not json", not_json),
        (b"", not_json),
        (b"\xff\xfe\x00garbage", not_json),
        (b"[" * 5000, not_json),
        (b"{}", no_commands),
        (b'{"commands": 5}', no_commands),
        (
            cmds(7, {"correlationData": "c0"}, {"command": "nope", "correlationData": "c1"}),
            [
                {"command": "Unknown command", "error": "Command not an object"},
                {"command": "Unknown command", "error": "Missing command", "correlationData": "c0"},
                {"command": "nope", "error": "Unknown command", "correlationData": "c1"},
            ],
        ),
        (
            cmds(
                {"command": "subscribeClient", "clientid": "x", "topic": "a/#/b"},
                {"command": "subscribeClient", "clientid": "x", "topic": "a", "qos": 1.5},
                {"command": "disconnectClient", "clientid": 5},
                {"command": "DISCONNECTCLIENT", "clientid": "nobody", "correlationData": "c2"},
            ),
            [
                {"command": "subscribeClient", "error": "Invalid/missing topic"},
                {"command": "subscribeClient", "error": "Invalid qos"},
                {"command": "disconnectClient", "error": "Invalid/missing clientid"},
                {
                    "command": "disconnectClient",
                    "error": "Client not found",
                    "correlationData": "c2",
                },
            ],
        ),
        (
            cmds(
                {
                    "command": "unsubscribeClient",
                    "clientid": "x",
                    "topic": "t",
                    "correlationData": 5,
                }
            ),
            [{"command": "Unknown command", "error": "Invalid correlationData data type."}],
        ),
    ]
    async with _mqtt(cc_broker, f"admin-{_uid()}", admin=True) as admin:
        await admin.subscribe(RESPONSE_TOPIC)
        for payload, expected in requests:
            await admin.publish(REQUEST_TOPIC, payload)
            message = await _next(admin)
            assert isinstance(message.payload, bytes)
            assert json.loads(message.payload) == {"responses": expected}, payload
    assert cc_broker.is_running
    # ...and still answers through mmc.
    status, _ = await _put(cc_client, "disconnect", {"clientid": "nobody"})
    assert status == 404


async def test_only_clients_allowed_to_write_the_topic_may_call_it(
    cc_broker: MosquittoBroker,
) -> None:
    uid = _uid()
    command = {"commands": [{"command": "disconnectClient", "clientid": f"target-{uid}"}]}
    async with (
        _mqtt(cc_broker, f"admin-{uid}", admin=True) as admin,
        _mqtt(cc_broker, f"target-{uid}") as target,
    ):
        await admin.subscribe(RESPONSE_TOPIC)
        # cc-user has no ACL on $CONTROL: the broker refuses the publish, the plugin never sees it.
        await target.publish(REQUEST_TOPIC, json.dumps(command), qos=1)
        await _nothing(admin)
        await target.publish(f"cc/{uid}/still-here", b"")  # still connected
        await admin.publish(REQUEST_TOPIC, json.dumps(command))
        assert json.loads(await _payload(admin)) == {
            "responses": [{"command": "disconnectClient", "data": {}}]
        }
        with pytest.raises(aiomqtt.MqttError, match="Disconnected"):
            await _next(target)


async def _payload(mqtt: aiomqtt.Client) -> bytes:
    payload = (await _next(mqtt)).payload
    assert isinstance(payload, bytes)
    return payload
