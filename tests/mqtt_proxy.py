"""A loopback MQTT proxy in front of a real broker that can lose the broker's answers.

Bytes from the client go to the broker as they are; the broker's packets are read one by
one, so a test can make a ``$CONTROL`` answer never arrive: ``cut`` drops the connection
instead of delivering it (the command was applied, the link goes down), ``drop`` swallows
it (the link stays up, the answer is late forever). ``refuse`` turns new connections away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from testbed.mqtt_wire import encode_varint
from tests.fake_mqtt import read_packet

PUBLISH = 3
# An answer is lost when its payload contains this (and the rule's count is not used up).
Match = Callable[[bytes], bool]


def _answer_payload(first: int, body: bytes) -> bytes | None:
    """The payload of a PUBLISH on a ``$CONTROL/.../response`` topic, else None."""
    if first >> 4 != PUBLISH or len(body) < 2:
        return None
    length = int.from_bytes(body[:2], "big")
    topic = body[2 : 2 + length]
    if not (topic.startswith(b"$CONTROL/") and topic.endswith(b"/response")):
        return None
    return body[2 + length :]


class MqttProxy:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.refuse = False
        self._cut: list[Match] = []
        self._drop: list[Match] = []
        # Answers lost so far, by rule.
        self.cut_count = 0
        self.dropped_count = 0
        # Every $CONTROL answer message that reached the client, in order.
        self.answers: list[bytes] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, host: str, port: int) -> AsyncIterator[MqttProxy]:
        proxy = cls(host, port)
        proxy._server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
        proxy.port = proxy._server.sockets[0].getsockname()[1]
        try:
            yield proxy
        finally:
            proxy._server.close()
            proxy.abort_all()
            await proxy._server.wait_closed()
            for task in list(proxy._tasks):
                task.cancel()
            await asyncio.gather(*proxy._tasks, return_exceptions=True)

    def cut_answer(self, match: Match) -> None:
        """The next answer ``match`` accepts drops the connection instead of arriving."""
        self._cut.append(match)

    def drop_answer(self, match: Match) -> None:
        """The next answer ``match`` accepts is swallowed; the connection stays up."""
        self._drop.append(match)

    def abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        pair = (writer, up_writer)
        for coro in (
            self._upstream(reader, up_writer, pair),
            self._answers(up_reader, writer, pair),
        ):
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _close(self, pair: tuple[asyncio.StreamWriter, ...]) -> None:
        for w in pair:
            w.transport.abort()
            self._writers.discard(w)

    async def _upstream(
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

    async def _answers(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, ...],
    ) -> None:
        try:
            while True:
                first, body = await read_packet(src)
                payload = _answer_payload(first, body)
                if payload is not None:
                    if self._take(self._cut, payload):
                        self.cut_count += 1
                        return
                    if self._take(self._drop, payload):
                        self.dropped_count += 1
                        continue
                    self.answers.append(payload)
                dst.write(bytes([first]) + encode_varint(len(body)) + body)
                await dst.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._close(pair)

    @staticmethod
    def _take(rules: list[Match], payload: bytes) -> bool:
        for i, match in enumerate(rules):
            if match(payload):
                del rules[i]
                return True
        return False
