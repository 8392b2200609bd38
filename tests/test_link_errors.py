"""What a link's status says went wrong: a broker that accepts TCP but never answers
CONNECT is a handshake timeout (the socket connected), and an established connection
that drops is reported as closed, with when, before the reconnect attempts' errors."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mmc.appkeys import connections_key
from mmc.clock import now_ms
from mmc.config import Settings
from testbed.mosquitto import MosquittoBroker
from tests.conftest import Client, plain_body, wait_until
from tests.fake_mqtt import FakeBroker

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")


async def _status_of(client: Client, connection_id: str) -> dict[str, Any]:
    resp = await client.get(f"/api/connections/{connection_id}")
    assert resp.status == 200
    status: dict[str, Any] = (await resp.json())["status"]
    return status


async def test_a_broker_that_never_answers_connect_is_a_handshake_timeout(
    make_client: Callable[[Settings], Awaitable[Client]], settings: Settings
) -> None:
    client = await make_client(settings.replace(connect_timeout=0.3, reconnect_min_delay=60))
    async with FakeBroker("silent") as silent:
        body = {"id": "silent", "name": "Silent", "url": silent.url}
        resp = await client.post("/api/connections", json=body)
        assert resp.status == 202, await resp.text()
        assert silent.connects >= 1  # TCP did connect

        async def failed() -> bool:
            return "error" in await _status_of(client, "silent")

        await wait_until(failed, timeout=5)
        status = await _status_of(client, "silent")
        assert status["connected"] is False
        error = status["error"]
        assert error["code"] == "ECONNACKTIMEOUT"
        # No system call failed: not "connect ETIMEDOUT".
        assert "syscall" not in error
        assert "errno" not in error
        assert error["address"] == "127.0.0.1"
        assert "CONNACK" in error["message"]
        assert "0.3 s" in error["message"]
        # It never was connected: nothing dropped.
        assert "droppedAt" not in status


async def test_a_broker_that_never_answers_subscribe_is_a_suback_timeout(
    make_client: Callable[[Settings], Awaitable[Client]], settings: Settings
) -> None:
    """CONNACK came, SUBACK did not: neither a TCP connect timeout nor a dropped link."""
    client = await make_client(settings.replace(request_timeout=0.3, reconnect_min_delay=60))
    async with FakeBroker("deaf") as deaf:
        body = {"id": "deaf", "name": "Deaf", "url": deaf.url}
        resp = await client.post("/api/connections", json=body)
        assert resp.status == 202, await resp.text()

        async def failed() -> bool:
            return "error" in await _status_of(client, "deaf")

        await wait_until(failed, timeout=5)
        assert deaf.logins == [(None, None)]  # it did CONNACK
        status = await _status_of(client, "deaf")
        assert status["connected"] is False
        error = status["error"]
        assert error["code"] == "ESUBACKTIMEOUT"
        assert "syscall" not in error
        assert "errno" not in error
        assert error["address"] == "127.0.0.1"
        assert error["port"] == deaf.port
        assert error["message"] == (
            f"Connected to 127.0.0.1:{deaf.port}, but the broker did not answer SUBSCRIBE "
            "within 0.3 s"
        )
        assert "droppedAt" not in status


async def test_a_connection_closed_before_suback_is_closed_not_a_timeout(
    make_client: Callable[[Settings], Awaitable[Client]], settings: Settings
) -> None:
    """CONNACK came, then the broker closed the connection on SUBSCRIBE: said at once,
    not after request_timeout as a SUBACK timeout."""
    client = await make_client(settings.replace(request_timeout=3.0, reconnect_min_delay=60))
    async with FakeBroker("hangup") as hangup:
        body = {"id": "hangup", "name": "Hangup", "url": hangup.url}
        started = time.monotonic()
        resp = await client.post("/api/connections", json=body)
        assert resp.status == 202, await resp.text()

        async def failed() -> bool:
            return "error" in await _status_of(client, "hangup")

        await wait_until(failed, timeout=5)
        assert time.monotonic() - started < 1.5
        assert hangup.logins == [(None, None)]
        error = (await _status_of(client, "hangup"))["error"]
        assert error["code"] == "ECONNCLOSED"
        assert error["syscall"] == "on"
        assert error["port"] == hangup.port
        assert error["message"].startswith(
            f"Connection to 127.0.0.1:{hangup.port} closed before the broker answered SUBSCRIBE"
        )


async def test_an_established_link_that_drops_is_reported_closed_with_when(
    make_client: Callable[[Settings], Awaitable[Client]],
    settings: Settings,
    own_broker: MosquittoBroker,
) -> None:
    # Backoff far longer than the test: the status after the drop stays until the test
    # asks the link to try again.
    client = await make_client(settings.replace(reconnect_min_delay=60, reconnect_max_delay=60))
    resp = await client.post("/api/connections", json=plain_body(own_broker))
    assert resp.status == 200, await resp.text()
    link = client.app[connections_key].pool.require("plain")
    assert "droppedAt" not in await _status_of(client, "plain")

    before = now_ms()
    own_broker.kill()
    await wait_until(lambda: not link.connected, timeout=5)
    after = now_ms()
    status = await _status_of(client, "plain")
    assert status["connected"] is False
    error = status["error"]
    assert error["code"] == "ECONNCLOSED"
    assert error["errno"] == 1
    assert error["syscall"] == "on"
    assert error["port"] == own_broker.port
    assert error["message"].startswith(f"Connection to 127.0.0.1:{own_broker.port} closed")
    assert before <= status["droppedAt"] <= after
    assert status["timestamp"] == status["droppedAt"]

    # The reconnect attempt's error replaces it; when the connection dropped stays.
    assert link.reconnect_now()

    async def refused() -> bool:
        return bool((await _status_of(client, "plain"))["error"]["code"] == "ECONNREFUSED")

    await wait_until(refused, timeout=5)
    later = await _status_of(client, "plain")
    assert later["droppedAt"] == status["droppedAt"]
    assert later["error"]["syscall"] == "connect"

    # Connected again: nothing has dropped.
    own_broker.start()
    started = time.monotonic()
    while not link.connected and time.monotonic() - started < 5:
        link.reconnect_now()
        await link.wait_connected(0.2)
    final = await _status_of(client, "plain")
    assert final["connected"] is True
    assert "droppedAt" not in final
    assert "error" not in final
