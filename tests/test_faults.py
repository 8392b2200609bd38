"""Brokers that die, freeze or misbehave: callers get a clear answer at once, nothing
hangs, status follows the truth, and the other brokers do not notice."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from typing import Any

import pytest

from mmc.appkeys import connections_key
from mmc.config import Settings
from testbed.mosquitto import MosquittoBroker
from tests.conftest import Client, MakeClient, plain_body, wait_until
from tests.fake_mqtt import FakeBroker

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

CLIENTS = "/api/projects/default/brokers/{}/dynsec/clients"


async def _timed(client: Client, path: str) -> tuple[int, float, dict[str, Any]]:
    started = time.perf_counter()
    resp = await client.get(path)
    body = await resp.json()
    return resp.status, time.perf_counter() - started, body


async def _median_latency(client: Client, path: str, n: int = 40) -> float:
    times = []
    for _ in range(n):
        status, seconds, _ = await _timed(client, path)
        assert status == 200
        times.append(seconds)
    return statistics.median(times)


async def test_misbehaving_brokers_answer_clearly_and_do_not_slow_the_others(
    make_client: MakeClient, settings: Settings, broker: MosquittoBroker
) -> None:
    settings = settings.replace(connect_timeout=1.5, request_timeout=1.0, probe_timeout=0.5)
    client = await make_client(settings)
    assert (await client.post("/api/connections", json=plain_body(broker))).status == 200
    healthy = CLIENTS.format("plain")
    await _median_latency(client, healthy, 10)  # warm up
    baseline = await _median_latency(client, healthy)

    # "10 s late" scaled to this test's 1 s request timeout: 3 s.
    async with (
        FakeBroker("silent") as silent,
        FakeBroker("mute") as mute,
        FakeBroker("slow", delay=3.0) as slow,
    ):
        started = time.perf_counter()
        resp = await client.post(
            "/api/connections", json=plain_body(broker, id="silent", name="silent", url=silent.url)
        )
        assert resp.status == 202
        assert "within 1.5 s" in (await resp.json())["message"]
        assert time.perf_counter() - started < settings.connect_timeout + 1
        for fake in (mute, slow):
            body = plain_body(broker, id=fake.mode, name=fake.mode, url=fake.url)
            assert (await client.post("/api/connections", json=body)).status == 200

        # Clear answers, each within its bound.
        status, seconds, body = await _timed(client, CLIENTS.format("silent"))
        assert (status, body["code"]) == (503, "BROKER_UNAVAILABLE")
        assert seconds < 0.5
        status, seconds, body = await _timed(client, CLIENTS.format("mute"))
        assert (status, body["code"]) == (404, "NOT_FOUND")
        assert "dynamic-security plugin not enabled" in body["message"]
        assert seconds < settings.probe_timeout + 1
        status, seconds, body = await _timed(client, CLIENTS.format("slow"))
        assert (status, body["code"]) == (504, "TIMEOUT")
        assert settings.request_timeout <= seconds < settings.request_timeout + 1
        listing = {
            c["id"]: c["status"] for c in await (await client.get("/api/connections")).json()
        }
        assert listing["silent"]["connected"] is False
        assert listing["silent"]["error"]["code"] == "ECONNACKTIMEOUT"
        assert listing["mute"]["connected"] is listing["slow"]["connected"] is True

        # Keep all three busy (20 requests waiting on the slow one at any time) while
        # measuring the healthy broker again.
        stop = asyncio.Event()
        answers: list[int] = []

        async def hammer(path: str, pause: float) -> None:
            while not stop.is_set():
                resp = await client.get(path)
                answers.append(resp.status)
                resp.release()
                await asyncio.sleep(pause)

        load = [asyncio.ensure_future(hammer(CLIENTS.format("slow"), 0)) for _ in range(20)]
        load += [
            asyncio.ensure_future(hammer(CLIENTS.format(name), 0.02))
            for name in ("silent", "mute")
            for _ in range(3)
        ]
        await asyncio.sleep(0.3)
        try:
            loaded = await _median_latency(client, healthy)
        finally:
            stop.set()
            await asyncio.gather(*load)
        assert set(answers) <= {503, 404, 504}
        assert answers.count(504) >= 20
        # Within 2x of the baseline, plus 50 ms of slack for other test files running in
        # parallel workers (TEST_WORKERS) on the same two cores. A healthy broker held up behind the
        # misbehaving ones would wait out their request timeout (1 s), far beyond it.
        print(
            f"healthy broker median latency: {baseline * 1000:.2f} ms alone, "
            f"{loaded * 1000:.2f} ms while three misbehave"
        )
        assert loaded <= 2 * baseline + 0.050, (baseline, loaded)

        # The late replies arrived after their callers had their 504: ignored, nothing kept.
        await asyncio.sleep(3.2)
        link = client.app[connections_key].pool.require("slow")
        assert link.control._pending == {}
        assert link.connected


async def test_killed_broker_fails_requests_at_once_and_comes_back_by_itself(
    client: Client, own_broker: MosquittoBroker, settings: Settings
) -> None:
    assert (await client.post("/api/connections", json=plain_body(own_broker))).status == 200
    link = client.app[connections_key].pool.require("plain")
    path = CLIENTS.format("plain")

    async def burst() -> list[tuple[int, float]]:
        results = []
        for _ in range(30):
            status, seconds, _ = await _timed(client, path)
            results.append((status, seconds))
        return results

    runs = [asyncio.ensure_future(burst()) for _ in range(10)]
    await asyncio.sleep(0.1)
    own_broker.kill()
    killed = time.monotonic()
    results = [r for run in await asyncio.wait_for(asyncio.gather(*runs), 10) for r in run]
    assert {status for status, _ in results} <= {200, 503}
    assert any(status == 503 for status, _ in results)
    # Nobody waited for a timeout of the broker's: requests after the drop failed at once.
    # A read in flight at the kill waits for the link to be back, up to the request
    # timeout, then answers 503 (README "Answers whose reply was lost"): at most one per
    # burst, since each sends one request at a time.
    waited = [(status, seconds) for status, seconds in results if seconds >= 1.0]
    assert len(waited) <= len(runs), waited
    assert all(status == 503 for status, _ in waited), waited
    assert max(seconds for _, seconds in results) < settings.request_timeout + 1.0
    assert not link.connected
    assert time.monotonic() - killed < settings.keepalive

    own_broker.restart()
    restarted = time.monotonic()
    await wait_until(lambda: link.connected, timeout=settings.reconnect_max_delay + 5)
    # Back within the backoff cap (+ the time to connect), without any request.
    assert time.monotonic() - restarted < settings.reconnect_max_delay + 2
    await wait_until(lambda: link.capabilities is not None, timeout=5)
    assert (await client.get(path)).status == 200


async def test_frozen_broker_is_seen_down_within_the_keepalive_bound(
    make_client: MakeClient, settings: Settings, own_broker: MosquittoBroker
) -> None:
    # SIGSTOP: the TCP connection stays open but nothing answers, the case that leaves
    # other tools "connected" forever. Only keepalive can tell.
    settings = settings.replace(keepalive=2, request_timeout=1.0)
    client = await make_client(settings)
    assert (await client.post("/api/connections", json=plain_body(own_broker))).status == 200
    link = client.app[connections_key].pool.require("plain")
    await wait_until(lambda: link.capabilities is not None, timeout=5)
    pid = own_broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        status, seconds, body = await _timed(client, CLIENTS.format("plain"))
        assert status in (503, 504), body  # never a hang
        assert seconds < settings.request_timeout + 0.5
        # paho sends PINGREQ after `keepalive` s of silence and gives up after another.
        await wait_until(lambda: not link.connected, timeout=2 * settings.keepalive + 2)
        assert time.monotonic() - stopped < 2 * settings.keepalive + 2
        assert link.status.error is not None
    finally:
        os.kill(pid, signal.SIGCONT)
    await wait_until(lambda: link.connected, timeout=settings.reconnect_max_delay + 5)
