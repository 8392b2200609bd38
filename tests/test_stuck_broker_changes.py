"""A broker stuck in its MQTT handshake holds up changes to its own connection only:
creating, changing and deleting other connections answers at once meanwhile."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from mmc.appkeys import connections_key
from mmc.config import Settings
from testbed.mosquitto import MosquittoBroker
from tests.conftest import Client, MakeClient, plain_body, wait_until
from tests.fake_mqtt import FakeBroker

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")


async def _timed(client: Client, method: str, path: str, **kwargs: Any) -> tuple[int, float]:
    started = time.perf_counter()
    resp = await client.request(method, path, **kwargs)
    resp.release()
    return resp.status, time.perf_counter() - started


async def _attempt_in_flight(silent: FakeBroker) -> None:
    """Wait for the stuck link's next attempt: it then hangs for a whole connect timeout."""
    seen = silent.connects
    await wait_until(lambda: silent.connects > seen)


async def _others_answer_at_once(client: Client, broker: MosquittoBroker, n: int) -> None:
    body = plain_body(broker, id=f"plain{n}", name=f"Plain {n}")
    status, seconds = await _timed(client, "POST", "/api/connections", json=body)
    assert (status, seconds < 1) == (200, True), seconds
    status, seconds = await _timed(
        client, "PUT", f"/api/connections/plain{n}", json={**body, "name": f"Renamed {n}"}
    )
    assert (status, seconds < 1) == (200, True), seconds
    status, seconds = await _timed(client, "DELETE", f"/api/connections/plain{n}")
    assert (status, seconds < 1) == (200, True), seconds


async def test_other_connections_do_not_wait_for_a_broker_stuck_in_its_handshake(
    make_client: MakeClient, settings: Settings, broker: MosquittoBroker
) -> None:
    settings = settings.replace(connect_timeout=3.0)
    client = await make_client(settings)
    async with FakeBroker("silent") as silent:
        stuck = plain_body(broker, id="stuck", name="stuck", url=silent.url)
        assert (await client.post("/api/connections", json=stuck)).status == 202

        # Replacing the stuck link waits for its attempt in flight (up to 3 s)...
        await _attempt_in_flight(silent)
        update = asyncio.ensure_future(
            client.put("/api/connections/stuck", json={**stuck, "name": "still stuck"})
        )
        await asyncio.sleep(0.2)
        assert not update.done()
        # ...while other connections are created, changed and deleted at once, and a full
        # comparison with the store (what the change feed and reconciliation run) ends.
        await _others_answer_at_once(client, broker, 1)
        started = time.perf_counter()
        await client.app[connections_key].sync()
        assert time.perf_counter() - started < 1
        assert not update.done()
        resp = await update
        assert resp.status == 202
        resp.release()

        # Deleting the stuck connection waits too; nobody else does.
        await _attempt_in_flight(silent)
        delete = asyncio.ensure_future(client.delete("/api/connections/stuck"))
        await asyncio.sleep(0.2)
        assert not delete.done()
        await _others_answer_at_once(client, broker, 2)
        resp = await delete
        assert resp.status == 200
        resp.release()

        listing = await (await client.get("/api/connections")).json()
        assert listing == []
