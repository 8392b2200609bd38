"""Bridges of mosquitto.conf, seen through $SYS: two real brokers, A bridged to B (on
mosquitto 2.0 and 2.1), and both ways (each broker also sees the far end of the other's
bridge); a Pro license's bridge that is not loaded, on the fake broker."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from mmc.config import Settings
from testbed.mosquitto import Mosquitto, MosquittoBroker, free_port
from tests.conftest import Client, plain_body
from tests.fake_mqtt import FakeBroker

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
    # No companion plugin on A: mmc cannot tell its own bridge from another's far end.
    assert listing == [
        {
            "id": bridge_id,
            "name": BRIDGE,
            "isActive": True,
            "source": "config",
            "origin": "unknown",
        }
    ]

    first = await _status_until(client, bridge_id, connected=True)
    assert first["id"] == bridge_id
    assert (first["origin"], first["isActive"]) == ("unknown", True)
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


# ------------------------------------------------------------------ both ways

A_TO_B = "a2b"
B_TO_A = "b2a"
HOST_PREFIX = socket.gethostname() + "."


def _bridge_conf(name: str, port: int, notifications: str) -> str:
    lines = [
        f"connection {name}",
        f"address 127.0.0.1:{port}",
        f"topic {name}/# out 0",
        "cleansession true",
        "restart_timeout 1 2",
        "keepalive_interval 5",
    ]
    if notifications == "off":
        lines.append("notifications false")
    else:
        lines.append("notifications true")  # mosquitto's default
        if notifications == "local-only":
            lines.append("notifications_local_only true")
    return "\n".join(lines)


def _both_ways(
    tmp_path: Path, plugins: list[Path], notifications: str, mosquitto: Mosquitto
) -> tuple[MosquittoBroker, MosquittoBroker]:
    """A bridging a2b/# to B and B bridging b2a/# to A, both anonymous (neither bridge
    has credentials), not started."""
    a = MosquittoBroker(tmp_path / "a", dynsec=False, extra_plugins=plugins, mosquitto=mosquitto)
    b = MosquittoBroker(tmp_path / "b", dynsec=False, extra_plugins=plugins, mosquitto=mosquitto)
    a.extra_conf = _bridge_conf(A_TO_B, b.port, notifications)
    b.extra_conf = _bridge_conf(B_TO_A, a.port, notifications)
    return a, b


async def _bridges_carry_messages(a: MosquittoBroker, b: MosquittoBroker) -> None:
    """Both bridges connected: a message crosses each of them."""
    for source, target, prefix in ((a, b, A_TO_B), (b, a, B_TO_A)):
        async with aiomqtt.Client("127.0.0.1", target.port) as sub:
            await sub.subscribe(f"{prefix}/#")
            async with aiomqtt.Client("127.0.0.1", source.port) as pub:
                async with asyncio.timeout(10):
                    while True:
                        await pub.publish(f"{prefix}/ping", b"1")
                        try:
                            async with asyncio.timeout(0.3):
                                await anext(aiter(sub.messages))
                            break
                        except TimeoutError:
                            continue


async def _connect_both(client: Client, a: MosquittoBroker, b: MosquittoBroker) -> None:
    for broker, broker_id in ((a, "a"), (b, "b")):
        body = plain_body(broker, id=broker_id, name=broker_id.upper())
        assert (await client.post("/api/connections", json=body)).status == 200


def _base(broker_id: str) -> str:
    return f"/api/projects/default/brokers/{broker_id}"


async def _until(client: Client, path: str, done: Callable[[int, Any], bool]) -> tuple[int, Any]:
    deadline = time.monotonic() + 10
    while True:
        resp = await client.get(path)
        status, body = resp.status, await resp.json()
        if done(status, body):
            return status, body
        assert time.monotonic() < deadline, (path, status, body)
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("notifications", ["on", "local-only"])
async def test_both_ways_each_broker_lists_only_its_own_bridge(
    client: Client,
    tmp_path: Path,
    client_control_plugin: Path,
    notifications: str,
    mosquitto: Mosquitto,
) -> None:
    a, b = _both_ways(tmp_path, [client_control_plugin], notifications, mosquitto)
    with a, b:
        await _connect_both(client, a, b)
        await _bridges_carry_messages(a, b)
        own = {"a": HOST_PREFIX + A_TO_B, "b": HOST_PREFIX + B_TO_A}
        theirs = {"a": HOST_PREFIX + B_TO_A, "b": HOST_PREFIX + A_TO_B}
        for broker_id in ("a", "b"):
            base = _base(broker_id)
            up = await _until(
                client,
                f"{base}/bridges/{own[broker_id]}/status",
                lambda s, body: s == 200 and body["connected"] is True,
            )
            assert up[1]["origin"] == "own"
            if notifications == "on":
                # The other's bridge publishes its state into this broker's $SYS too:
                # wait until mmc has seen it, then it must be neither listed nor found.
                _, body = await _until(
                    client,
                    f"{base}/bridges/{theirs[broker_id]}/status",
                    lambda s, body: s == 404 and "info" in body,
                )
                assert body["code"] == "NOT_FOUND"
                assert body["info"] == {"bridge": theirs[broker_id], "origin": "incoming"}
                # (Only a state topic in this broker's $SYS gets that far.)
                assert f"as client {theirs[broker_id]}" in body["message"]
            # By its connection name too.
            other_name = B_TO_A if broker_id == "a" else A_TO_B
            resp = await client.get(f"{base}/bridges/{other_name}/status")
            assert resp.status == 404, await resp.json()
            resp = await client.get(f"{base}/bridges")
            assert resp.status == 200
            assert await resp.json() == [
                {
                    "id": own[broker_id],
                    "name": own[broker_id].removeprefix(HOST_PREFIX),
                    "isActive": True,
                    "source": "config",
                    "origin": "own",
                }
            ]

        # B goes down: mmc still lists what B last published, as the plugin last told it;
        # and A, whose $SYS now holds the will "0" of B's bridge, still does not list it.
        b.stop()
        await _until(client, _base("b"), lambda s, body: body["isConnected"] is False)
        resp = await client.get(_base("b") + "/bridges")
        assert [(e["id"], e["origin"]) for e in await resp.json()] == [(own["b"], "own")]
        resp = await client.get(f"{_base('b')}/bridges/{own['b']}/status")
        assert resp.status == 503
        await _until(
            client,
            f"{_base('a')}/bridges/{own['a']}/status",
            lambda s, body: s == 200 and body["connected"] is False,
        )
        resp = await client.get(_base("a") + "/bridges")
        assert [(e["id"], e["origin"]) for e in await resp.json()] == [(own["a"], "own")]


async def test_both_ways_without_notifications_mmc_sees_no_bridge(
    client: Client, tmp_path: Path, client_control_plugin: Path, mosquitto: Mosquitto
) -> None:
    # Without notifications a bridge publishes no state anywhere: $SYS names none.
    a, b = _both_ways(tmp_path, [client_control_plugin], "off", mosquitto)
    with a, b:
        await _connect_both(client, a, b)
        await _bridges_carry_messages(a, b)
        for broker_id, name in (("a", A_TO_B), ("b", B_TO_A)):
            await _until(client, f"{_base(broker_id)}/info", lambda s, body: s == 200)
            resp = await client.get(f"{_base(broker_id)}/bridges")
            assert (resp.status, await resp.json()) == (200, [])
            resp = await client.get(f"{_base(broker_id)}/bridges/{name}/status")
            assert resp.status == 404


async def test_both_ways_without_the_plugin_no_bridge_is_called_own(
    client: Client, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    a, b = _both_ways(tmp_path, [], "on", mosquitto)
    with a, b:
        await _connect_both(client, a, b)
        await _bridges_carry_messages(a, b)
        expected = sorted([HOST_PREFIX + A_TO_B, HOST_PREFIX + B_TO_A])
        for broker_id in ("a", "b"):
            _, listing = await _until(
                client, f"{_base(broker_id)}/bridges", lambda s, body: len(body) == 2
            )
            assert [entry["id"] for entry in listing] == expected
            assert {entry["origin"] for entry in listing} == {"unknown"}
            # Every listed bridge answers its status, saying what mmc does not know.
            for bridge_id in expected:
                resp = await client.get(f"{_base(broker_id)}/bridges/{bridge_id}/status")
                body = await resp.json()
                assert (resp.status, body["origin"]) == (200, "unknown"), body


async def test_a_broker_never_reached_has_unknown_bridges(client: Client) -> None:
    # Nothing listens there: the link keeps retrying and has never seen the broker.
    body = {"id": "gone", "name": "Gone", "url": f"mqtt://127.0.0.1:{free_port()}"}
    assert (await client.post("/api/connections", json=body)).status == 202
    for path in ("/bridges", "/bridges/anything/status"):
        resp = await client.get(_base("gone") + path)
        answer = await resp.json()
        assert resp.status == 503, answer
        assert answer["code"] == "BROKER_UNAVAILABLE"
        assert answer["info"] == {"bridges": "unknown"}
        assert "has not been reached yet" in answer["message"]


async def test_a_licensed_bridge_that_is_not_loaded_answers_its_status(client: Client) -> None:
    license_data = {"edition": "pro", "features": ["client-control", "influxdb-bridge"]}
    async with FakeBroker("slow", license_data=license_data) as pro:
        body = {"id": "pro", "name": "Pro", "url": pro.url}
        assert (await client.post("/api/connections", json=body)).status == 200
        resp = await client.get(_base("pro") + "/bridges")
        listing = await resp.json()
        assert listing == [
            {
                "id": "influxdb-bridge",
                "name": "influxdb-bridge",
                "isActive": False,
                "source": "license",
                "origin": "own",
            }
        ]
        resp = await client.get(_base("pro") + "/bridges/influxdb-bridge/status")
        assert resp.status == 200, await resp.json()
        assert await resp.json() == {
            "id": "influxdb-bridge",
            "connected": False,
            "origin": "own",
            "isActive": False,
        }
        resp = await client.get(_base("pro") + "/bridges/influxdb-bridge/config")
        answer = await resp.json()
        assert resp.status == 404
        assert "licensed but not loaded" in answer["message"]
        resp = await client.get(_base("pro") + "/bridges/mongodb-bridge/status")
        assert resp.status == 404
