"""A loopback TCP proxy in front of a broker that counts what its client publishes on
``$CONTROL``: MQTT messages, and the commands in them by name.

It reads the client's packets one by one (MQTT 3.1.1 or 5, as the CONNECT says) and
forwards every byte as it came; the broker's bytes go back untouched. It counts at the
client's side of the wire, whatever version of mmc runs behind it (the benchmarks compare
main's code with a branch's, which may not have the same metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator

from testbed.mqtt_wire import read_varint

PUBLISH, CONNECT = 3, 1


async def _packet(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One MQTT packet: its fixed header (as read) and its body."""
    header = bytearray(await reader.readexactly(1))
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        header.append(byte)
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return bytes(header), await reader.readexactly(length)


def _publish(first: int, body: bytes, v5: bool) -> tuple[str, bytes]:
    """The topic and payload of a PUBLISH body."""
    length = int.from_bytes(body[:2], "big")
    topic = body[2 : 2 + length].decode(errors="replace")
    pos = 2 + length
    if (first >> 1) & 0x03:  # QoS > 0: a packet identifier
        pos += 2
    if v5:
        props, pos = read_varint(body, pos)
        pos += props
    return topic, body[pos:]


class ControlCounter:
    """``messages``: $CONTROL publishes from the client; ``commands``: by command name."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.messages = 0
        self.commands: Counter[str] = Counter()

    def reset(self) -> None:
        self.messages = 0
        self.commands = Counter()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, host: str, port: int) -> AsyncIterator[ControlCounter]:
        proxy = cls(host, port)
        proxy._server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
        proxy.port = proxy._server.sockets[0].getsockname()[1]
        try:
            yield proxy
        finally:
            proxy._server.close()
            for writer in list(proxy._writers):
                writer.transport.abort()
            for task in list(proxy._tasks):
                task.cancel()
            await asyncio.gather(*proxy._tasks, return_exceptions=True)
            await proxy._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._writers.update(pair)
        for coro in (self._client(reader, up_writer, pair), self._pipe(up_reader, writer, pair)):
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _close(self, pair: tuple[asyncio.StreamWriter, ...]) -> None:
        for w in pair:
            w.transport.abort()
            self._writers.discard(w)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, ...],
    ) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._close(pair)

    async def _client(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, ...],
    ) -> None:
        v5 = False
        try:
            while True:
                header, body = await _packet(src)
                kind = header[0] >> 4
                if kind == CONNECT:
                    name_length = int.from_bytes(body[:2], "big")
                    v5 = body[2 + name_length] == 5
                elif kind == PUBLISH:
                    self._count(*_publish(header[0], body, v5))
                dst.write(header + body)
                await dst.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._close(pair)

    def _count(self, topic: str, payload: bytes) -> None:
        if not topic.startswith("$CONTROL/"):
            return
        self.messages += 1
        try:
            commands = json.loads(payload).get("commands", [])
        except (ValueError, AttributeError):
            return
        for command in commands if isinstance(commands, list) else ():
            if isinstance(command, dict):
                self.commands[str(command.get("command"))] += 1
