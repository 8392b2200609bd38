"""A deliberately misbehaving "broker": the least of MQTT v5 needed to fool a client.

Modes:
- ``silent``: accepts TCP and never says a word (no CONNACK).
- ``deaf``: CONNACK and PINGRESP, but never a SUBACK.
- ``hangup``: CONNACK, then closes the connection on SUBSCRIBE.
- ``mute``: CONNACK, SUBACK and PINGRESP, but never a reply on ``$CONTROL``.
- ``slow``: like ``mute``, but answers ``$CONTROL`` commands after ``delay`` seconds;
  the capability probes in ``FAST_COMMANDS`` are answered at once, so the client
  believes the plugin is there and sends real commands, which then take too long.
  With ``delay=0`` it answers everything at once, and ``license_data`` makes it a Pro broker
  whose license offers what it names (getLicenseInformation's data).
- ``pro``: answers every ``$CONTROL`` command at once, with ``answers[command]`` as its
  ``data`` where given: what a Pro Mosquitto plugin says that mosquitto cannot.

Every mode records the username and password of each CONNECT (``logins``).

Loopback only; every connection ends when the client closes or ``close()`` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from testbed.mqtt_wire import encode_varint, read_varint

FAST_COMMANDS = frozenset({"getDefaultACLAccess"})
CONNACK = b"\x20\x03\x00\x00\x00"  # session present 0, reason 0, no properties
PINGRESP = b"\xd0\x00"


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT control packet off the stream: its fixed header's first byte (type in the
    high nibble, flags in the low one) and its body."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


def mqtt_string(buf: bytes, pos: int) -> tuple[str, int]:
    length = int.from_bytes(buf[pos : pos + 2], "big")
    return buf[pos + 2 : pos + 2 + length].decode(), pos + 2 + length


def parse_connect(body: bytes) -> tuple[str | None, bytes | None]:
    """The username and password of an MQTT v3.1.1 or v5 CONNECT packet's body."""
    _, pos = mqtt_string(body, 0)  # protocol name
    version, flags = body[pos], body[pos + 1]
    pos += 4  # version, flags, keep alive
    if version == 5:
        props, pos = read_varint(body, pos)
        pos += props
    _, pos = mqtt_string(body, pos)  # client id
    if flags & 0x04:  # will: (v5 properties), topic, payload
        if version == 5:
            props, pos = read_varint(body, pos)
            pos += props
        _, pos = mqtt_string(body, pos)
        pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
    username = password = None
    if flags & 0x80:
        username, pos = mqtt_string(body, pos)
    if flags & 0x40:
        length = int.from_bytes(body[pos : pos + 2], "big")
        password = body[pos + 2 : pos + 2 + length]
    return username, password


def publish_packet(topic: str, payload: bytes) -> bytes:
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + b"\x00" + payload
    return b"\x30" + encode_varint(len(body)) + body


def suback(body: bytes) -> bytes:
    packet_id = body[:2]
    props, pos = read_varint(body, 2)
    pos += props
    filters = 0
    while pos < len(body):
        _, pos = mqtt_string(body, pos)
        pos += 1  # subscription options
        filters += 1
    rest = packet_id + b"\x00" + b"\x00" * filters
    return b"\x90" + encode_varint(len(rest)) + rest


def reply(command: dict[str, Any], license_data: dict[str, Any] | None = None) -> dict[str, Any]:
    name = command.get("command")
    data: dict[str, Any] = {}
    if name == "getDefaultACLAccess":
        data = {"acls": []}
    elif name == "listClients":
        data = {"totalCount": 0, "clients": []}
    elif name == "getLicenseInformation" and license_data is not None:
        data = license_data
    return {"command": name, "correlationData": command.get("correlationData"), "data": data}


class FakeBroker:
    def __init__(
        self,
        mode: str,
        delay: float = 0.0,
        license_data: dict[str, Any] | None = None,
        answers: dict[str, Any] | None = None,
    ) -> None:
        assert mode in ("silent", "deaf", "hangup", "mute", "slow", "pro")
        self.mode = mode
        self.delay = delay
        # getLicenseInformation's data (a Pro broker's license), else {}.
        self.license = license_data
        self.answers = dict(answers or {})
        self.port = 0
        self.connects = 0
        self.control_requests = 0
        # (username, password) of every CONNECT received, None where the flag was unset.
        self.logins: list[tuple[str | None, bytes | None]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> FakeBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.connects += 1
        try:
            if self.mode == "silent":
                await reader.read()  # until the client gives up
                return
            while True:
                first, body = await read_packet(reader)
                kind = first >> 4
                if kind == 1:  # CONNECT
                    self.logins.append(parse_connect(body))
                    writer.write(CONNACK)
                elif kind == 8 and self.mode == "hangup":
                    return
                elif kind == 8 and self.mode != "deaf":  # SUBSCRIBE
                    writer.write(suback(body))
                elif kind == 12:  # PINGREQ
                    writer.write(PINGRESP)
                elif kind == 3:  # PUBLISH (QoS 0 from the client under test)
                    self._on_publish(first, body, writer)
                elif kind == 14:  # DISCONNECT
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    def _on_publish(self, first: int, body: bytes, writer: asyncio.StreamWriter) -> None:
        topic, pos = mqtt_string(body, 0)
        if (first >> 1) & 0x03:
            pos += 2  # packet id of QoS 1/2
        props, pos = read_varint(body, pos)
        payload = body[pos + props :]
        if not topic.startswith("$CONTROL/") or self.mode == "mute":
            return
        self.control_requests += 1
        commands = json.loads(payload).get("commands", [])
        if self.mode == "pro":
            self._send(writer, topic, commands)
            return
        fast = [c for c in commands if c.get("command") in FAST_COMMANDS]
        slow = [c for c in commands if c.get("command") not in FAST_COMMANDS]
        if fast:
            self._send(writer, topic, fast)
        if slow:
            self._spawn(self._later(writer, topic, slow))

    async def _later(
        self, writer: asyncio.StreamWriter, topic: str, commands: list[dict[str, Any]]
    ) -> None:
        await asyncio.sleep(self.delay)
        if not writer.is_closing():
            self._send(writer, topic, commands)

    def _send(
        self, writer: asyncio.StreamWriter, topic: str, commands: list[dict[str, Any]]
    ) -> None:
        responses = []
        for command in commands:
            response = reply(command, self.license)
            if command.get("command") in self.answers:
                response["data"] = self.answers[command["command"]]
            responses.append(response)
        payload = json.dumps({"responses": responses}).encode()
        writer.write(publish_packet(f"{topic}/response", payload))
