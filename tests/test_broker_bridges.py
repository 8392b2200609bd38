"""Bridges of mosquitto.conf, seen through $SYS: two real brokers, A bridged to B (on
mosquitto 2.0 and 2.1)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mmc.config import Settings
from testbed.mosquitto import Mosquitto, MosquittoBroker
from tests.conftest import Client, plain_body

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

BRIDGE = "mmcbridge"
BASE = "/api/projects/default/brokers/plain"


@pytest.fixture
def remote(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[MosquittoBroker]:
    """B: anonymous, so A's bridge logs in without credentials."""
    with MosquittoBroker(tmp_path / "b", dynsec=False, mosquitto=mosquitto) as running:
        yield running


@pytest.fixture
def bridged(
    tmp_path: Path, remote: MosquittoBroker, mosquitto: Mosquitto
) -> Iterator[MosquittoBroker]:
    """A: bridges bridge/# out to B, retrying after 1-2 s."""
    conf = "\n".join(
        [
            f"connection {BRIDGE}",
            f"address 127.0.0.1:{remote.port}",
            "topic bridge/# out 0",
            "notifications true",
            "cleansession true",
            "restart_timeout 1 2",
            "keepalive_interval 5",
        ]
    )
    with MosquittoBroker(tmp_path / "a", extra_conf=conf, mosquitto=mosquitto) as running:
        yield running


async def _get(client: Client, path: str) -> tuple[int, Any]:
    resp = await client.get(BASE + path)
    return resp.status, await resp.json()


async def _status_until(
    client: Client, bridge_id: str, connected: bool, timeout: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await _get(client, f"/bridges/{bridge_id}/status")
        if status == 200 and body["connected"] is connected:
            return dict(body)
        if time.monotonic() > deadline:
            raise AssertionError(f"bridge never became connected={connected}: {status} {body}")
        await asyncio.sleep(0.1)


async def test_conf_bridge_is_listed_and_follows_the_remote_broker(
    client: Client, settings: Settings, bridged: MosquittoBroker, remote: MosquittoBroker
) -> None:
    assert (await client.post("/api/connections", json=plain_body(bridged))).status == 200

    # The default remote client id is <hostname>.<connection name> (src/conf.c).
    bridge_id = f"{socket.gethostname()}.{BRIDGE}"
    deadline = time.monotonic() + 10
    while True:
        status, listing = await _get(client, "/bridges")
        assert status == 200, listing
        if listing:
            break
        assert time.monotonic() < deadline, "the bridge never appeared in $SYS"
        await asyncio.sleep(0.1)
    assert listing == [{"id": bridge_id, "name": BRIDGE, "isActive": True, "source": "config"}]

    first = await _status_until(client, bridge_id, connected=True)
    assert first["id"] == bridge_id
    # The connection name finds it too.
    assert (await _status_until(client, BRIDGE, connected=True))["id"] == bridge_id

    started = time.monotonic()
    remote.stop()
    down = await _status_until(client, bridge_id, connected=False)
    assert time.monotonic() - started < 10
    # Seen changing live: mmc knows since when.
    assert isinstance(down["since"], int)

    remote.start()
    up = await _status_until(client, bridge_id, connected=True)
    assert up["since"] > down["since"]

    # Still listed while down or up: it is configured in mosquitto.conf.
    assert (await _get(client, "/bridges"))[1][0]["isActive"] is True


async def test_conf_bridge_has_no_config_api(
    client: Client, bridged: MosquittoBroker, remote: MosquittoBroker
) -> None:
    assert (await client.post("/api/connections", json=plain_body(bridged))).status == 200
    await _status_until(client, BRIDGE, connected=True)

    started = time.monotonic()
    status, body = await _get(client, f"/bridges/{BRIDGE}/config")
    assert status == 404, body
    assert body["code"] == "NOT_FOUND"
    assert "mosquitto.conf" in body["message"]
    resp = await client.put(BASE + f"/bridges/{BRIDGE}/config", json={"address": "elsewhere"})
    assert resp.status == 404
    assert "mosquitto.conf" in (await resp.json())["message"]
    assert time.monotonic() - started < 1.0

    status, body = await _get(client, "/bridges/no-such-bridge/status")
    assert status == 404
    assert body["message"] == "Bridge no-such-bridge not found on broker plain"
