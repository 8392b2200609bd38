"""A link cleans up after itself: every failed connection attempt closes its socket
(a broker that never answers CONNACK must not cost a file descriptor per attempt), a
CONNACK arriving after the attempt was given up never reaches the abandoned client, and
capability detection never outlives its session or the link."""

from __future__ import annotations

import asyncio
import gc
import json
import os
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.client import MQTTMessage

from mmc.brokers.capabilities import SharedDetection
from mmc.brokers.link import BrokerLink, LinkConfig, LinkOptions
from mmc.brokers.pool import BrokerPool
from mmc.brokers.transport import MqttClient
from testbed.mosquitto import Mosquitto, MosquittoBroker
from testbed.mqtt_wire import read_varint
from tests.conftest import wait_until
from tests.fake_mqtt import (
    CONNACK,
    PINGRESP,
    FakeBroker,
    mqtt_string,
    publish_packet,
    read_packet,
    reply,
    suback,
)

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

# Short enough that 200 attempts take a few seconds.
FAST_FAILURES = LinkOptions(
    connect_timeout=0.02, reconnect_min_delay=0.001, reconnect_max_delay=0.002
)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_failed_attempts_against_a_silent_broker_leave_no_socket_open() -> None:
    async with FakeBroker("silent") as silent:
        link = BrokerLink(LinkConfig(id="silent", url=silent.url), None, FAST_FAILURES)
        link.start()
        try:
            # Warmed up (executor threads, the loop's own descriptors) before counting.
            await wait_until(lambda: link.reconnects >= 10, timeout=10)
            before = open_fds()
            await wait_until(lambda: link.reconnects >= 210, timeout=60)
            # One attempt may be in flight: its socket (and the listener's end of it).
            assert open_fds() <= before + 2
            assert silent.connects >= 200
        finally:
            await link.stop()
        # The listener sees each attempt's socket closed and closes its end too.
        await wait_until(lambda: open_fds() <= before, timeout=5, detail=lambda: str(open_fds()))
        assert not link.connected


async def test_a_late_connack_finds_the_abandoned_socket_closed() -> None:
    """The broker answers CONNECT only after the attempt timed out: by then mmc has
    closed that socket, so the broker never holds a session for it (with a fixed client
    id, such a session would take over the live one)."""
    ended_by_client = 0
    answered_late = 0

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal ended_by_client, answered_late
        try:
            await reader.read(1024)  # the CONNECT
            try:
                rest = await asyncio.wait_for(reader.read(), timeout=0.5)
            except TimeoutError:
                writer.write(CONNACK)
                answered_late += 1
                await writer.drain()
                await reader.read()
            else:
                assert rest == b""
                ended_by_client += 1
        finally:
            writer.close()

    server = await asyncio.start_server(late, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    options = LinkOptions(connect_timeout=0.1, reconnect_min_delay=0.05, reconnect_max_delay=0.1)
    link = BrokerLink(LinkConfig(id="late", url=f"mqtt://127.0.0.1:{port}"), None, options)
    link.start()
    try:
        await wait_until(lambda: ended_by_client + answered_late >= 3, timeout=10)
        assert not link.connected
    finally:
        await link.stop()
        server.close()
        await server.wait_closed()
    assert answered_late == 0


def detection_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("mmc-detect-")]


class GatedBroker:
    """Enough MQTT v5 for two links: holds the first two SUBACKs until both SUBSCRIBEs
    arrived (so both links connect in the same loop turn and share one detection), then
    answers the ``$CONTROL`` probes of one connection after ``answer_after`` seconds and
    never those of any other; ``drop(client_id)`` closes that client's connection."""

    def __init__(self, answer_after: float) -> None:
        self.answer_after = answer_after
        self.prober: str | None = None  # the client whose probes are answered
        self._writers: dict[str, asyncio.StreamWriter] = {}
        self._held: list[tuple[asyncio.StreamWriter, bytes]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> GatedBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers.values():
            writer.close()
        for task in self._tasks:
            task.cancel()
        await self._server.wait_closed()

    def drop(self, client_id: str) -> None:
        self._writers[client_id].close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client_id = ""
        try:
            while True:
                first, body = await read_packet(reader)
                kind = first >> 4
                if kind == 1:  # CONNECT: protocol name, version, flags, keepalive, props
                    _, pos = mqtt_string(body, 0)
                    props, pos = read_varint(body, pos + 4)
                    client_id, _ = mqtt_string(body, pos + props)
                    self._writers[client_id] = writer
                    writer.write(CONNACK)
                elif kind == 8:  # SUBSCRIBE
                    self._held.append((writer, suback(body)))
                    if len(self._held) >= 2:
                        for held, answer in self._held:
                            held.write(answer)
                        self._held = [(writer, b"")] * 2  # later ones pass at once
                elif kind == 12:
                    writer.write(PINGRESP)
                elif kind == 3:  # $CONTROL request (QoS 0)
                    topic, pos = mqtt_string(body, 0)
                    props, pos = read_varint(body, pos)
                    if self.prober in (None, client_id):
                        self.prober = client_id
                        commands = json.loads(body[pos + props :])["commands"]
                        self._answer_later(writer, topic, commands)
                elif kind == 14:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    def _answer_later(
        self, writer: asyncio.StreamWriter, topic: str, commands: list[dict[str, object]]
    ) -> None:
        async def answer() -> None:
            await asyncio.sleep(self.answer_after)
            payload = json.dumps({"responses": [reply(c) for c in commands]}).encode()
            writer.write(publish_packet(f"{topic}/response", payload))

        task = asyncio.get_running_loop().create_task(answer())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def test_a_detection_of_an_earlier_session_never_overwrites_the_current_one() -> None:
    """Two links share one detection (same broker, same user); the one that did not run
    it reconnects while it is still waiting. That detection then finds plugins, but it
    describes the session before the reconnect: the reconnected link must keep waiting
    for its own detection (which, here, finds nothing)."""
    options = LinkOptions(probe_timeout=2.0, reconnect_min_delay=0.05, reconnect_max_delay=0.1)
    shared = SharedDetection()
    async with GatedBroker(answer_after=0.6) as broker:
        url = f"mqtt://127.0.0.1:{broker.port}"
        links = {
            name: BrokerLink(
                LinkConfig(id=name, url=url, client_id=name), None, options, None, shared
            )
            for name in ("one", "two")
        }
        for link in links.values():
            link.start()
        try:
            for link in links.values():
                assert await link.wait_connected(5)
            await wait_until(lambda: broker.prober is not None, timeout=5)
            assert broker.prober is not None
            prober = links[broker.prober]
            follower = links["two" if broker.prober == "one" else "one"]
            broker.drop(follower.id)
            await wait_until(lambda: follower.reconnects == 1 and follower.connected, timeout=5)
            # The shared detection answers (plugins found) for the prober's session...
            await wait_until(lambda: prober.capabilities is not None, timeout=5)
            assert prober.features
            await asyncio.sleep(0.1)
            # ...which is not the follower's session since its reconnect.
            assert follower.capabilities is None
            await wait_until(lambda: follower.capabilities is not None, timeout=5)
            assert follower.features == frozenset()
        finally:
            for link in links.values():
                await link.stop()
        assert detection_tasks() == []


async def test_stop_leaves_no_detection_running() -> None:
    options = LinkOptions(probe_timeout=5.0)
    async with FakeBroker("mute") as mute:
        link = BrokerLink(LinkConfig(id="mute", url=mute.url), None, options)
        link.start()
        assert await link.wait_connected(5)
        await wait_until(lambda: mute.connects == 1 and len(detection_tasks()) == 1, timeout=5)
        await link.stop()
        assert detection_tasks() == []


async def test_receiving_messages_leaves_no_garbage_cycles(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Each message a link receives is freed when it is handled: paho's matching of
    per-filter callbacks made a reference cycle per message, and with a thousand links
    collecting those stopped the loop for 80-150 ms at a time."""
    with MosquittoBroker(tmp_path, dynsec=False, mosquitto=mosquitto) as broker:
        await _count_cycles(broker)


async def _count_cycles(own_broker: MosquittoBroker) -> None:
    received: list[MQTTMessage] = []
    client = MqttClient(
        own_broker.host,
        own_broker.port,
        client_id="gc-probe",
        username=None,
        password=None,
        tls_context=None,
        websocket_path=None,
        keepalive=60,
        connect_timeout=5,
        on_message=received.append,
    )
    count = 2000
    gc.collect()
    gc.disable()
    try:
        async with (
            client,
            aiomqtt.Client(
                own_broker.host,
                own_broker.port,
                username=own_broker.admin_username,
                password=own_broker.admin_password,
            ) as publisher,
        ):
            await client.subscribe("gc-probe/#")
            for i in range(count):
                await publisher.publish(f"gc-probe/{i % 7}/x", b"payload")
            await wait_until(lambda: len(received) >= count, timeout=20)
            received.clear()
            cycles = gc.collect()
    finally:
        gc.enable()
    # What connecting and the test's own tasks leave is some hundreds of objects; a
    # cycle per message would be six objects per message, over 10,000.
    assert cycles < count, cycles


async def test_connection_attempts_in_flight_are_bounded_by_the_pool() -> None:
    """A pool lets at most ``max_connecting`` of its links be in a handshake at once (from
    the TCP connect to the SUBACK): a start with thousands of links must not put them all
    in flight, where the CONNACKs time out before the loop can read them."""
    open_now = 0
    most = 0
    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most, accepted
        open_now += 1
        accepted += 1
        most = max(most, open_now)
        try:
            await reader.read()  # until the client gives up and closes
        finally:
            open_now -= 1
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    options = LinkOptions(
        connect_timeout=0.2,
        reconnect_min_delay=0.01,
        reconnect_max_delay=0.02,
        reconnect_fast_max_delay=0.02,
        max_connecting=2,
    )
    pool = BrokerPool(options)
    try:
        for i in range(6):
            await pool.open(LinkConfig(id=f"gated-{i}", url=f"mqtt://127.0.0.1:{port}"), None)
        await wait_until(lambda: accepted >= 12, timeout=20)
    finally:
        await pool.close_all()
        server.close()
        await server.wait_closed()
    assert most == 2


async def test_every_link_of_a_gated_pool_connects(tmp_path: Path, mosquitto: Mosquitto) -> None:
    options = LinkOptions(max_connecting=1)
    pool = BrokerPool(options)
    with MosquittoBroker(tmp_path, dynsec=False, mosquitto=mosquitto) as broker:
        try:
            url = f"mqtt://{broker.host}:{broker.port}"
            links = [
                await pool.open(LinkConfig(id=f"one-by-one-{i}", url=url), None) for i in range(5)
            ]
            await wait_until(lambda: all(link.connected for link in links), timeout=20)
        finally:
            await pool.close_all()
