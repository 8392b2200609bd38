"""The Brokers API against real mosquitto 2.0 and 2.1: listing, info from $SYS,
capabilities, 2.1's listeners."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mmc.appkeys import connections_key
from mmc.config import Settings
from testbed.mosquitto import Mosquitto, MosquittoBroker, free_port
from tests.conftest import Client, plain_body

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

BASE = "/api/projects/default/brokers"


async def _get(client: Client, path: str) -> tuple[int, Any]:
    resp = await client.get(path)
    return resp.status, await resp.json()


async def _connect(client: Client, broker: MosquittoBroker, **overrides: Any) -> None:
    resp = await client.post("/api/connections", json=plain_body(broker, **overrides))
    assert resp.status == 200, await resp.text()


async def _poll(
    fetch: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], timeout: float = 10.0
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {value!r}")
        await asyncio.sleep(0.05)


def _broker_sys(body: dict[str, Any]) -> dict[str, Any]:
    topics: dict[str, Any] = body["sysTopics"]["topics"]
    return dict(topics.get("$SYS", {}).get("broker", {}))


@pytest.fixture
def anonymous_broker(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "anon", dynsec=False, mosquitto=mosquitto) as running:
        yield running


def _features(broker: MosquittoBroker) -> list[str]:
    """What detection finds on the testbed's brokers: 2.1's have enable_control_api on."""
    found = ["dynamicSecurity"] if broker.dynsec else []
    return sorted([*found, "brokerControl"] if broker.control_api else found)


async def test_brokers_are_connections_seen_through_their_project(
    client: Client, broker: MosquittoBroker
) -> None:
    assert (await client.post("/api/projects", json={"id": "p2", "name": "P2"})).status == 201
    await _connect(client, broker)
    await _connect(client, broker, id="other", name="Other", projectId="p2")

    status, listing = await _get(client, BASE)
    assert status == 200
    [item] = listing
    assert item["id"] == "plain"
    assert item["name"] == "Plain broker"
    assert item["url"] == f"mqtt://127.0.0.1:{broker.port}"
    assert item["project_id"] == "default"
    assert item["isConnected"] is True
    assert item["status"]["connected"] is True
    assert "features" in item
    assert [b["id"] for b in (await _get(client, "/api/projects/p2/brokers"))[1]] == ["other"]

    status, one = await _get(client, f"{BASE}/plain")
    assert status == 200
    assert one["id"] == "plain"
    assert one["project_id"] == "default"

    # A broker is only found through its own project.
    status, body = await _get(client, "/api/projects/p2/brokers/plain")
    assert status == 404
    assert body["message"] == "Broker plain not found in project p2"
    status, body = await _get(client, "/api/projects/nope/brokers")
    assert (status, body["message"]) == (404, "Project nope not found")
    status, body = await _get(client, "/api/projects/nope/brokers/plain/info")
    assert (status, body["message"]) == (404, "Project nope not found")


async def test_delete_removes_the_connection_and_closes_its_link(
    client: Client, broker: MosquittoBroker
) -> None:
    await _connect(client, broker)
    link = client.app[connections_key].pool.require("plain")
    resp = await client.delete(f"{BASE}/plain")
    assert resp.status == 204
    assert not link.connected
    assert (await _get(client, "/api/connections"))[1] == []
    assert (await _get(client, f"{BASE}/plain"))[0] == 404
    assert (await client.delete(f"{BASE}/plain")).status == 404


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("POST", ""),
        ("PUT", "/plain"),
        ("POST", "/plain/info"),
        ("DELETE", "/plain/license"),
        ("PUT", "/plain/listeners"),
        ("POST", "/plain/bridges"),
        ("PUT", "/plain/bridges/x/status"),
        ("PATCH", "/plain/bridges/x/config"),
        ("DELETE", "/plain/bridges/x/config"),
    ],
)
async def test_unsupported_methods_answer_405(
    client: Client, broker: MosquittoBroker, method: str, suffix: str
) -> None:
    await _connect(client, broker)
    resp = await client.request(method, BASE + suffix)
    assert resp.status == 405
    body = await resp.json()
    assert body == {
        "code": "METHOD_NOT_ALLOWED",
        "message": f"Method {method} is not allowed here",
        "status": 405,
    }


async def test_features_are_detected_on_connect(
    client: Client, broker: MosquittoBroker, anonymous_broker: MosquittoBroker
) -> None:
    await _connect(client, broker)
    await _connect(
        client,
        anonymous_broker,
        id="anon",
        name="Anonymous",
        url=f"mqtt://127.0.0.1:{anonymous_broker.port}",
        credentials=None,
    )

    async def features() -> dict[str, Any]:
        listing = (await _get(client, BASE))[1]
        return {b["id"]: b["features"] for b in listing}

    # Known without any request asking, within the probe time of the connect.
    found = await _poll(features, lambda f: None not in f.values(), timeout=3)
    if broker.mosquitto.version == "2.0":
        assert found == {"plain": ["dynamicSecurity"], "anon": []}
    else:
        assert found == {"plain": ["brokerControl", "dynamicSecurity"], "anon": ["brokerControl"]}


async def test_missing_features_answer_404_within_the_probe_time(
    make_client: Callable[[Settings], Awaitable[Client]],
    settings: Settings,
    broker: MosquittoBroker,
) -> None:
    # A request timeout far above the probe timeout: a 404 must not wait for it.
    client = await make_client(settings.replace(probe_timeout=0.5, request_timeout=5.0))
    await _connect(client, broker)

    expected = {"license": "license plugin not enabled on this broker"}
    if not broker.control_api:
        expected["listeners"] = "broker-control plugin not enabled on this broker"
    for path, message in expected.items():
        # The first request may arrive while detection is still running.
        started = time.monotonic()
        status, body = await _get(client, f"{BASE}/plain/{path}")
        elapsed = time.monotonic() - started
        assert status == 404, body
        assert body["code"] == "NOT_FOUND"
        assert body["message"] == message
        assert elapsed < 1.5, elapsed

    # Once known, the answer is immediate.
    for path in (*expected, "bridges/influxdb-bridge/config"):
        started = time.monotonic()
        status, body = await _get(client, f"{BASE}/plain/{path}")
        assert status == 404, body
        assert time.monotonic() - started < 0.3
    resp = await client.put(f"{BASE}/plain/bridges/influxdb-bridge/config", json={})
    assert resp.status == 404


async def test_listeners_are_the_brokers_own(client: Client, broker: MosquittoBroker) -> None:
    """On 2.1 (enable_control_api) listListeners answers the broker's real listeners, in
    its configuration's order, numbered from 1; 2.0 has no broker control (404)."""
    await _connect(client, broker)
    status, body = await _get(client, f"{BASE}/plain/listeners")
    if broker.mosquitto.version == "2.0":
        assert (status, body["message"]) == (
            404,
            "broker-control plugin not enabled on this broker",
        )
        return
    assert status == 200, body
    assert [(item["id"], item["port"], item["tls"]) for item in body] == [
        (index, port, port != broker.port) for index, port in enumerate(broker.ports, start=1)
    ]
    # Open-source 2.1 names no bind address nor client-certificate requirement (Pro does).
    assert {item["protocol"] for item in body} == {"mqtt"}
    assert not any(item["requireCertificate"] for item in body)


@pytest.mark.mosquitto_versions("2.1")
async def test_listeners_need_the_control_api_on_2_1(
    client: Client, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Without ``enable_control_api`` a 2.1 broker has no broker control either."""
    with MosquittoBroker(tmp_path / "closed", mosquitto=mosquitto, control_api=False) as closed:
        await _connect(client, closed)
        status, body = await _get(client, f"{BASE}/plain/listeners")
        assert (status, body["message"]) == (
            404,
            "broker-control plugin not enabled on this broker",
        )
        status, body = await _get(client, f"{BASE}/plain")
        assert body["features"] == ["dynamicSecurity"]


async def test_info_shows_sys_values_as_the_broker_publishes_them(
    client: Client, broker: MosquittoBroker
) -> None:
    await _connect(client, broker)

    async def info() -> dict[str, Any]:
        status, body = await _get(client, f"{BASE}/plain/info")
        assert status == 200, body
        return dict(body)

    # sys_interval 1: within a couple of seconds uptime, clients, messages and the load
    # averages are in (2.1 may publish the load a moment after the rest).
    body = await _poll(
        info,
        lambda b: (
            {"uptime", "clients", "messages", "load"} <= _broker_sys(b).keys()
            and _broker_sys(b)["clients"].get("connected") not in (None, "0")
        ),
    )
    assert body["id"] == "plain"
    assert body["name"] == "Plain broker"
    assert body["url"] == f"mqtt://127.0.0.1:{broker.port}"
    assert body["project_id"] == "default"
    assert body["isConnected"] is True
    assert "licenseInfo" not in body
    assert isinstance(body["sysTopics"]["date"], int)
    assert isinstance(body["sysTopicsHistory"], list)
    sys = _broker_sys(body)
    assert sys["version"].startswith("mosquitto version 2.")
    assert sys["uptime"].endswith(" seconds")
    assert sys["messages"]["received"].isdigit()
    assert sys["load"]["messages"]["received"]["1min"].count(".") == 1
    # Values are the broker's strings, never converted.
    assert all(isinstance(v, str) for v in sys["clients"].values())

    uptime = int(sys["uptime"].split()[0])
    later = await _poll(info, lambda b: int(_broker_sys(b)["uptime"].split()[0]) > uptime)
    assert later["sysTopics"]["date"] > body["sysTopics"]["date"]


async def test_a_value_never_published_is_absent(
    client: Client, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # With sys_interval 0, mosquitto publishes no $SYS value at all (not even its version;
    # a long interval is no substitute: 2.0 counts it from the machine's boot). Whatever mmc
    # answers must then be absent, never a made-up 0.
    with MosquittoBroker(
        tmp_path / "quiet", dynsec=False, sys_interval=0, mosquitto=mosquitto
    ) as quiet:
        await _connect(client, quiet, url=f"mqtt://127.0.0.1:{quiet.port}", credentials=None)
        await asyncio.sleep(0.5)
        status, body = await _get(client, f"{BASE}/plain/info")
        assert status == 200
        assert body["isConnected"] is True
        assert body["sysTopics"]["topics"] == {}


async def test_history_grows_and_stays_bounded(
    make_client: Callable[[Settings], Awaitable[Client]],
    settings: Settings,
    broker: MosquittoBroker,
) -> None:
    client = await make_client(
        settings.replace(sys_history_interval=0.3, sys_history_length=3, probe_timeout=0.1)
    )
    await _connect(client, broker)

    lengths: set[int] = set()

    async def history() -> list[dict[str, Any]]:
        entries = list((await _get(client, f"{BASE}/plain/info"))[1]["sysTopicsHistory"])
        lengths.add(len(entries))
        return entries

    entries = await _poll(history, lambda h: len(h) == 3, timeout=5)
    assert {1, 2} & lengths, lengths  # it grew, one snapshot at a time
    dates = [e["date"] for e in entries]
    assert dates == sorted(dates)
    assert entries[-1]["topics"]["$SYS"]["broker"]["version"].startswith("mosquitto")

    await asyncio.sleep(1.0)
    later = await history()
    assert len(later) == 3
    # The oldest fell off; newer ones came in.
    assert later[0]["date"] > dates[-1]


async def test_info_on_an_unreachable_broker_answers_at_once_and_keeps_the_backoff(
    make_client: Callable[[Settings], Awaitable[Client]], settings: Settings
) -> None:
    # Nothing listens on the port: every attempt is refused at once. The backoff is far
    # longer than the test, so any attempt after the first one was caused by /info.
    client = await make_client(settings.replace(reconnect_min_delay=60, reconnect_max_delay=60))
    port = free_port()
    body = {"id": "plain", "name": "Closed port", "url": f"mqtt://127.0.0.1:{port}"}
    resp = await client.post("/api/connections", json=body)
    assert resp.status == 202, await resp.text()
    link = client.app[connections_key].pool.require("plain")
    await _poll(lambda: asyncio.sleep(0, link.reconnects), lambda n: n >= 1)
    attempts = link.reconnects

    for _ in range(10):
        started = time.monotonic()
        status, info = await _get(client, f"{BASE}/plain/info")
        assert time.monotonic() - started < 1.0
        assert status == 200
        assert info["isConnected"] is False
        assert info["status"]["connected"] is False
        assert info["status"]["error"]["code"] == "ECONNREFUSED"
        assert info["status"]["error"]["port"] == port
    await asyncio.sleep(0.2)
    assert link.reconnects == attempts


async def test_features_are_detected_again_after_a_reconnect(
    make_client: Callable[[Settings], Awaitable[Client]],
    settings: Settings,
    own_broker: MosquittoBroker,
) -> None:
    client = await make_client(settings.replace(probe_timeout=0.3))
    await _connect(client, own_broker)
    link = client.app[connections_key].pool.require("plain")

    async def features() -> Any:
        return (await _get(client, f"{BASE}/plain"))[1]["features"]

    expected = _features(own_broker)
    assert await _poll(features, lambda f: f is not None, timeout=3) == expected
    reconnects = link.reconnects
    own_broker.restart()
    await _poll(lambda: asyncio.sleep(0, link.reconnects), lambda n: n > reconnects)
    assert await link.wait_connected(5)
    # What the last connection learnt is gone; without any request asking, the new
    # connection learns it again by itself.
    assert await _poll(features, lambda f: f is not None, timeout=3) == expected
