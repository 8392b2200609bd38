"""Pins on aiomqtt and paho-mqtt: every internal name mmc.brokers.transport relies on
(its docstring lists them) is checked here, by signature and by behaviour against a real
mosquitto or, where mosquitto cannot misbehave that way, a few lines of asyncio server.
An aiomqtt or paho upgrade that changes one fails here instead of misbehaving in
production. Nothing else in mmc may import either library."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import math
import re
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from mmc.brokers import transport
from mmc.brokers.tls import TlsMaterial, build_ssl_context
from mmc.brokers.transport import (
    ConnectionLost,
    HandshakeTimeout,
    Message,
    MessageHandler,
    MqttClient,
    MqttConnectError,
    MqttError,
)
from testbed.mosquitto import MosquittoBroker, free_port
from testbed.mqtt_wire import read_varint
from tests.conftest import wait_until
from tests.fake_mqtt import CONNACK, PINGRESP, mqtt_string, read_packet

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

ROOT = Path(__file__).resolve().parent.parent / "mmc"
ADAPTER = ROOT / "brokers" / "transport.py"
DYNSEC_RESPONSES = "$CONTROL/dynamic-security/v1/response"


def make_client(
    port: int,
    *,
    on_message: MessageHandler | None = None,
    username: str | None = None,
    password: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    keepalive: int = 30,
    connect_timeout: float = 3.0,
) -> MqttClient:
    return MqttClient(
        "127.0.0.1",
        port,
        client_id=f"pins-{port}-{time.monotonic_ns()}",
        username=username,
        password=password,
        tls_context=tls_context,
        websocket_path=None,
        keepalive=keepalive,
        connect_timeout=connect_timeout,
        on_message=on_message or (lambda message: None),
    )


def admin_client(broker: MosquittoBroker, **kwargs: object) -> MqttClient:
    return make_client(
        broker.port,
        username=broker.admin_username,
        password=broker.admin_password,
        **kwargs,  # type: ignore[arg-type]
    )


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(serve: Serve) -> AsyncIterator[int]:
    """A loopback TCP server running ``serve`` per connection; yields its port."""
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        for writer in writers:
            writer.close()
        await srv.wait_closed()


# -- signatures and wiring ---------------------------------------------------------------

# The base methods MqttClient overrides, with their parameters in aiomqtt 2.5.
OVERRIDDEN = {
    "_on_message": ["self", "client", "userdata", "message"],
    "_on_disconnect": ["self", "client", "userdata", "flags", "reason_code", "properties"],
    "_misc_loop": ["self"],
    "_client_connect": ["self"],
}


@pytest.mark.parametrize("name", sorted(OVERRIDDEN))
def test_the_overridden_aiomqtt_methods_keep_their_signatures(name: str) -> None:
    base = getattr(aiomqtt.Client, name)
    ours = getattr(MqttClient, name)
    assert ours is not base, f"MqttClient no longer overrides {name}"
    assert list(inspect.signature(base).parameters) == OVERRIDDEN[name]
    assert list(inspect.signature(ours).parameters) == OVERRIDDEN[name]
    assert inspect.iscoroutinefunction(base) == inspect.iscoroutinefunction(ours)
    assert inspect.iscoroutinefunction(ours) == (name == "_misc_loop")


async def test_aiomqtt_wires_the_overrides_and_state_mmc_uses() -> None:
    client = make_client(1883, connect_timeout=0.7)
    paho = client._client
    assert isinstance(paho, mqtt.Client)
    # aiomqtt hands paho its bound methods, so a subclass's override is what paho calls.
    assert paho.on_message == client._on_message
    assert paho.on_disconnect == client._on_disconnect
    assert client._loop is asyncio.get_running_loop()
    for name in ("_connected", "_disconnected"):
        future = getattr(client, name)
        assert isinstance(future, asyncio.Future)
        assert not future.done()
    # Both phases of an attempt are bounded by connect_timeout.
    assert client.timeout == 0.7
    assert paho.connect_timeout == 0.7
    assert paho.logger is client.paho_log
    assert list(inspect.signature(paho._sock_close).parameters) == []
    assert paho.loop_misc() == mqtt.MQTT_ERR_NO_CONN
    # publish_nowait's QoS 0 fast path is paho's publish.
    assert inspect.signature(paho.publish).parameters.keys() >= {"topic", "payload", "qos"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_names_used(tree: ast.AST) -> set[str]:
    """Private attributes read or set (``x._name``), and private methods defined (an
    override is a use of the name too)."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and _private(node.attr)
    } | {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _private(node.name)
    }


def _foreign_private_names(tree: ast.AST) -> set[str]:
    """Private attributes of something other than ``self`` (a class's own ``_client`` or
    ``_loop`` is its business)."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and _private(node.attr)
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    }


async def test_the_adapter_docstring_lists_every_private_name_it_uses() -> None:
    tree = ast.parse(ADAPTER.read_text())
    docstring = ast.get_docstring(tree) or ""
    # The libraries' own private names: what aiomqtt's and paho's clients define.
    client = aiomqtt.Client("127.0.0.1")
    theirs = (
        set(dir(aiomqtt.Client))
        | set(vars(client))
        | set(dir(mqtt.Client))
        | set(vars(client._client))
    )
    used = _private_names_used(tree) & theirs
    assert {"_client", "_on_message", "_sock_close"} <= used  # the walk sees them
    missing = sorted(name for name in used if f"``{name}``" not in docstring)
    assert missing == [], f"transport.py uses {missing} without saying why in its docstring"


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules = [node.module]
        else:
            continue
        found += [
            f"{path.name}:{node.lineno} imports {m}"
            for m in modules
            if m.split(".")[0] in ("aiomqtt", "paho")
        ]
    names = _foreign_private_names(tree) & ADAPTER_PRIVATE_NAMES
    found += [f"{path.name} uses {name}" for name in sorted(names)]
    return found


ADAPTER_PRIVATE_NAMES = set(
    re.findall(r"``(_[a-z_]+)``", ast.get_docstring(ast.parse(ADAPTER.read_text())) or "")
)


def test_no_other_module_imports_aiomqtt_or_paho_or_touches_their_internals() -> None:
    assert {"_client", "_connected", "_disconnected", "_sock_close"} <= ADAPTER_PRIVATE_NAMES
    modules = [path for path in sorted(ROOT.rglob("*.py")) if path != ADAPTER]
    assert len(modules) > 50
    found = [violation for path in modules for violation in _violations(path)]
    assert found == []
    # The check sees what it looks for.
    assert _violations(ADAPTER)


def test_the_adapter_exports_what_the_link_and_status_use() -> None:
    assert set(transport.__all__) >= {
        "MqttClient",
        "MqttError",
        "Message",
        "ConnectionLost",
        "HandshakeTimeout",
        "SubscribeTimeout",
        "MqttConnectError",
        "ReasonCode",
    }
    assert Message is mqtt.MQTTMessage
    assert MqttError is aiomqtt.MqttError


# -- behaviour against a real mosquitto -----------------------------------------------


async def test_messages_reach_on_message_in_order_from_the_read_callback(
    own_broker: MosquittoBroker,
) -> None:
    """``_on_message``: every message, in order, called by paho's read callback (no
    task), and nothing in aiomqtt's queue."""
    received: list[str] = []
    in_task: list[bool] = []

    def handle(message: Message) -> None:
        in_task.append(asyncio.current_task() is not None)
        for response in json.loads(message.payload)["responses"]:
            received.append(response["correlationData"])

    count = 200
    async with admin_client(own_broker, on_message=handle) as client:
        await client.subscribe_all([DYNSEC_RESPONSES], timeout=5)
        for i in range(count):
            command = {"command": "getDefaultACLAccess", "correlationData": str(i)}
            client.publish_nowait(
                "$CONTROL/dynamic-security/v1", json.dumps({"commands": [command]}).encode()
            )
        await wait_until(lambda: len(received) >= count, timeout=10)
        assert received == [str(i) for i in range(count)]
        assert not any(in_task)
        assert client._queue.qsize() == 0


async def test_the_disconnected_future_fails_when_the_broker_goes_away(
    own_broker: MosquittoBroker,
) -> None:
    """``_disconnected``: the link's only signal that an established connection ended."""
    async with admin_client(own_broker) as client:
        dropped = client.disconnected_future()
        assert dropped is client._disconnected
        assert not dropped.done()
        own_broker.kill()
        await asyncio.wait({dropped}, timeout=5)
        assert dropped.done()
        cause = dropped.exception()
        assert isinstance(cause, Exception)
        with pytest.raises(MqttError) as raised:
            client.raise_disconnected()
        assert raised.value.__cause__ is cause
        client.forget_disconnect_error()


async def test_a_refused_connack_is_mqtt_connect_error_with_a_reason_code(
    own_broker: MosquittoBroker,
) -> None:
    client = make_client(own_broker.port, username="nobody", password="wrong")
    with pytest.raises(MqttConnectError) as raised:
        async with client:
            pass
    assert isinstance(raised.value.rc, ReasonCode)
    assert raised.value.rc.getName() in ("Not authorized", "Bad user name or password")


async def test_misc_loop_is_ours_and_keeps_the_connection_alive() -> None:
    """``_misc_loop``: aiomqtt starts the override when the socket opens, and it sends
    PINGREQ (paho's ``loop_misc``) after a keepalive of silence."""
    pings = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal pings
        while True:
            first, _ = await read_packet(reader)
            if first >> 4 == 1:
                writer.write(CONNACK)
            elif first >> 4 == 12:
                pings += 1
                writer.write(PINGRESP)

    async with server(serve) as port, make_client(port, keepalive=1) as client:
        names = [t.get_coro().__qualname__ for t in asyncio.all_tasks()]  # type: ignore[union-attr]
        assert "MqttClient._misc_loop" in names
        assert client._client.keepalive == 1
        await wait_until(lambda: pings >= 2, timeout=5)
        assert not client.disconnected_future().done()


# -- behaviour mosquitto cannot show ----------------------------------------------------


async def test_a_connack_timeout_is_a_handshake_timeout_and_closes_the_socket() -> None:
    """aiomqtt's CONNACK wait (a plain MqttError raised from TimeoutError) becomes
    HandshakeTimeout; ``_client_connect`` and paho's ``_sock_close`` close the socket that
    aiomqtt leaves open."""
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client closes
        closed.set()

    async with server(silent) as port:
        client = make_client(port, connect_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(HandshakeTimeout) as raised:
            async with client:
                pass
        assert 0.25 < time.monotonic() - started < 2
        assert raised.value.timeout == 0.3
        await asyncio.wait_for(closed.wait(), timeout=1)
        assert client._client.socket() is None


async def test_paho_connect_timeout_bounds_the_tls_handshake() -> None:
    """paho's ``connect_timeout`` (default 5 s) bounds the socket and TLS phase, which
    aiomqtt's own timeout does not; a socket error stays in ``__context__``. (paho does
    not close the socket of a failed handshake: mmc's SSL contexts do, see tls.py.)"""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with server(silent) as port:
        context = build_ssl_context(TlsMaterial(None, None, None, reject_unauthorized=True))
        client = make_client(port, tls_context=context, connect_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(MqttError) as raised:
            async with client:
                pass
        assert time.monotonic() - started < 2
        assert not isinstance(raised.value, HandshakeTimeout)  # CONNECT was never sent
        assert isinstance(raised.value.__context__, TimeoutError)


async def test_a_socket_error_keeps_the_original_in_context() -> None:
    """status.py reads the OSError aiomqtt re-raises as ``MqttError(str(exc)) from None``."""
    with pytest.raises(MqttError) as raised:
        async with make_client(free_port()):
            pass
    assert isinstance(raised.value.__context__, ConnectionRefusedError)


async def test_a_reset_before_connack_fails_at_once_with_the_reason() -> None:
    """``_on_disconnect`` fails ``_connected`` with what paho logged (through the logger
    aiomqtt passes on), instead of waiting out the timeout."""

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)  # the CONNECT
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with server(reset) as port:
        client = make_client(port, connect_timeout=5)
        started = time.monotonic()
        with pytest.raises(ConnectionLost) as raised:
            async with client:
                pass
        assert time.monotonic() - started < 1
        assert raised.value.detail is not None
        assert "reset" in raised.value.detail.lower()


async def test_publish_nowait_writes_one_qos0_publish_at_once() -> None:
    packets: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            first, body = await read_packet(reader)
            if first >> 4 == 1:
                writer.write(CONNACK)
            else:
                packets.put_nowait((first, body))

    async with server(record) as port:
        client = make_client(port)
        async with client:
            # Not a coroutine: the packet is queued (and written) before it returns.
            assert not inspect.iscoroutinefunction(client.publish_nowait)
            client.publish_nowait("pins/a", b"payload")
            first, body = await asyncio.wait_for(packets.get(), timeout=2)
            assert first == 0x30  # PUBLISH, QoS 0, no retain, no dup
            topic, pos = mqtt_string(body, 0)
            props, pos = read_varint(body, pos)  # no packet id at QoS 0
            assert (topic, body[pos + props :]) == ("pins/a", b"payload")
        with pytest.raises(MqttError):
            client.publish_nowait("pins/a", b"after")


async def test_subscribe_all_accepts_no_aiomqtt_timeout(own_broker: MosquittoBroker) -> None:
    """subscribe_all keeps its own deadline and passes aiomqtt ``math.inf`` (no timeout)."""
    async with admin_client(own_broker) as client:
        reason_codes = await client.subscribe([(DYNSEC_RESPONSES, 0)], timeout=math.inf)
        assert [int(code.value) for code in reason_codes] == [0]  # type: ignore[union-attr]


def test_received_properties_read_as_paho_reads_them() -> None:
    """mmc's lean Properties (set as paho's decoder's) reads every PUBLISH as paho's own:
    none, one, several and repeated (user) properties."""
    from paho.mqtt import _packet
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties as PahoProperties

    # paho's properties module is untyped.
    paho_properties: Any = PahoProperties
    lean: Any = transport._LeanProperties
    decoder: Any = _packet
    assert decoder.Properties is lean
    samples = []
    for props in (
        {},
        {"CorrelationData": b"\x01\x02"},
        {"ResponseTopic": "r/t", "MessageExpiryInterval": 30, "ContentType": "json"},
        {"UserProperty": [("a", "1"), ("b", "2")], "PayloadFormatIndicator": 1},
    ):
        original = paho_properties(PacketTypes.PUBLISH)
        for name, value in props.items():
            setattr(original, name, value)
        samples.append(original.pack())
    for packed in samples:
        for buffer in (packed + b"payload", bytearray(packed + b"payload")):
            theirs, their_length = paho_properties(PacketTypes.PUBLISH).unpack(buffer)
            ours, our_length = lean(PacketTypes.PUBLISH).unpack(buffer)
            assert our_length == their_length
            assert ours.json() == theirs.json()
            assert str(ours) == str(theirs)
    # And a message through paho's decoder.
    topic = b"$SYS/broker/uptime"
    body = struct.pack("!H", len(topic)) + topic + b"\x00" + b"42 seconds"
    packet: Any = decoder.decode_publish(0x30, body, mqtt.MQTTv5)
    assert packet.topic == topic
    assert packet.payload == b"42 seconds"
    assert packet.properties.json() == {}
