"""A link cleans up after itself: every failed connection attempt closes its socket
(a broker that never answers CONNACK must not cost a file descriptor per attempt), a
CONNACK arriving after the attempt was given up never reaches the abandoned client, and
capability detection never outlives its session or the link."""

from __future__ import annotations

import asyncio
import os

from mmc.brokers.link import BrokerLink, LinkConfig, LinkOptions
from tests.conftest import wait_until
from tests.fake_mqtt import CONNACK, FakeBroker

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
