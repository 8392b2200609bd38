"""GET /api/events end to end: real mosquitto brokers, mmc's HTTP stack, an SSE reader."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from mmc.appkeys import events_key
from mmc.config import Settings
from mmc.services import events as events_module
from testbed.mosquitto import Mosquitto, MosquittoBroker, free_port
from testbed.serve import MmcServer
from tests.conftest import Client, MakeClient, create_token, login, plain_body, wait_until
from tests.nginx import Nginx, nginx_available

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

EVENTS = "/api/events"
# The figure is 100 and 100; more than this machine's test runs can carry.
FAN_OUT_SUBSCRIBERS = int(os.environ.get("FAN_OUT_SUBSCRIBERS", "30"))
FAN_OUT_BROKERS = int(os.environ.get("FAN_OUT_BROKERS", "10"))


@dataclass
class Frame:
    event: str | None
    id: int | None
    data: Any
    comment: str | None
    at: float


class Stream:
    """A server-sent-events reader over an open response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def frame(self, timeout: float = 5.0) -> Frame | None:
        """The next frame (an event or a comment); None at the end of the stream."""
        fields: dict[str, str] = {}
        comment: str | None = None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.response.content.readline()
                if not line:
                    return None
                text = line.decode().rstrip("\n")
                if text == "":
                    if fields or comment is not None:
                        data = json.loads(fields["data"]) if "data" in fields else None
                        event_id = int(fields["id"]) if "id" in fields else None
                        return Frame(fields.get("event"), event_id, data, comment, time.monotonic())
                    continue
                if text.startswith(":"):
                    comment = text[1:].strip()
                    continue
                name, _, value = text.partition(":")
                fields[name] = value.removeprefix(" ")

    async def event(self, timeout: float = 5.0) -> Frame:
        """The next event, comments skipped."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.frame(max(0.01, deadline - time.monotonic()))
            assert frame is not None, "the stream ended"
            if frame.event is not None:
                return frame

    async def until(self, name: str, check: Any = None, timeout: float = 5.0) -> Frame:
        """The next ``name`` event for which ``check(data)`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.event(max(0.01, deadline - time.monotonic()))
            if frame.event == name and (check is None or check(frame.data)):
                return frame

    async def rest(self, timeout: float = 5.0) -> list[Frame]:
        """Every frame until the stream ends."""
        frames = []
        while (frame := await self.frame(timeout)) is not None:
            frames.append(frame)
        return frames


@asynccontextmanager
async def stream(
    client: Client,
    token: str | None = None,
    last_event_id: int | str | None = None,
    **query: str,
) -> AsyncIterator[Stream]:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    async with client.session.get(
        client.make_url(EVENTS), params=query, headers=headers or None
    ) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        yield Stream(response)


def _status(listing: list[dict[str, Any]], connection_id: str) -> dict[str, Any]:
    status: dict[str, Any] = next(c for c in listing if c["id"] == connection_id)["status"]
    return status


async def _connect(client: Client, broker: MosquittoBroker, **overrides: Any) -> None:
    resp = await client.post("/api/connections", json=plain_body(broker, **overrides))
    assert resp.status == 200, await resp.text()


@pytest.fixture
async def own_client(client: Client, own_broker: MosquittoBroker) -> Client:
    await _connect(client, own_broker)
    return client


async def test_snapshot_first_then_each_status_change_within_a_second(
    own_client: Client, own_broker: MosquittoBroker
) -> None:
    async with stream(own_client, types="connections") as events:
        first = await events.event()
        assert first.event == "connections"
        assert first.id is not None
        listing = first.data
        resp = await own_client.get("/api/connections")
        assert listing == await resp.json()
        assert _status(listing, "plain")["connected"] is True

        killed = time.monotonic()
        own_broker.kill()
        down = await events.until("connections", lambda d: not _status(d, "plain")["connected"])
        assert down.at - killed < 1.0
        assert down.id is not None
        assert down.id > first.id
        assert _status(down.data, "plain")["error"]["code"]

        own_broker.start()
        restarted = time.monotonic()
        up = await events.until("connections", lambda d: _status(d, "plain")["connected"])
        # The link retries every 0.5 s at most (the test settings): then within a second.
        assert up.at - restarted < 1.5
        assert up.id is not None
        assert up.id > down.id


async def test_connections_added_and_removed_are_events(
    client: Client, own_broker: MosquittoBroker
) -> None:
    async with stream(client, types="connections") as events:
        assert (await events.event()).data == []
        await _connect(client, own_broker)
        await events.until("connections", lambda d: [c["id"] for c in d] == ["plain"])
        assert (await client.delete("/api/connections/plain")).status == 200
        await events.until("connections", lambda d: d == [])


async def test_system_status_at_most_once_a_second_per_broker(
    own_client: Client, own_broker: MosquittoBroker
) -> None:
    async with stream(own_client, types="system_status") as events:
        first = await events.until("system_status", timeout=5)
        assert first.data["brokerId"] == "plain"
        assert first.data["projectId"] == "default"
        # The $SYS values folded as GET .../info's sysTopics shows them.
        assert "version" in first.data["topics"]["$SYS"]["broker"]
        live: list[Frame] = []
        ended = time.monotonic() + 4.5
        while time.monotonic() < ended:
            frame = await events.frame(timeout=5)
            assert frame is not None
            if frame.event == "system_status":
                live.append(frame)
    # The broker publishes its $SYS topics one by one every second (sys_interval 1): in
    # 4.5 s, plus the read that ends past it, at most 6 events a second apart.
    assert 2 <= len(live) <= 6, [f.at for f in live]
    gaps = [b.at - a.at for a, b in itertools.pairwise(live)]
    assert min(gaps) > 0.9, gaps
    ids = [f.id or 0 for f in live]
    assert ids == sorted(ids)


async def test_system_status_of_many_links_made_a_few_a_loop_turn(
    client: Client, own_broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Links whose $SYS events fall due together are encoded from one queue, a time
    budget a loop turn (SYS_BUDGET; zero here: one link a turn, the most the queue can be
    split): each still gets its event, in due order, and again a second later."""
    monkeypatch.setattr(events_module, "SYS_BUDGET", 0.0)
    names = [f"many-{i}" for i in range(8)]
    for name in names:
        await _connect(client, own_broker, id=name, name=name)
    turns = 0
    stop = asyncio.Event()

    async def count_turns() -> None:
        nonlocal turns
        while not stop.is_set():
            turns += 1
            await asyncio.sleep(0)

    hub = client.app[events_key]
    publish = hub._publish
    published_in_turn: list[int] = []

    def recording_publish(type_: str, make: Any, **kwargs: Any) -> Any:
        if type_ == "system_status" and not stop.is_set():
            published_in_turn.append(turns)
        return publish(type_, make, **kwargs)

    monkeypatch.setattr(hub, "_publish", recording_publish)
    counter = asyncio.get_running_loop().create_task(count_turns())
    try:
        async with stream(client, types="system_status") as events:
            seen: dict[str, list[float]] = {name: [] for name in names}
            deadline = time.monotonic() + 10
            # The first of each is the subscription's snapshot, then the live ones.
            while min(len(v) for v in seen.values()) < 3:
                assert time.monotonic() < deadline, {k: len(v) for k, v in seen.items()}
                frame = await events.event(timeout=5)
                if frame.event == "system_status" and frame.data["brokerId"] in seen:
                    seen[frame.data["brokerId"]].append(frame.at)
    finally:
        stop.set()
        await counter
    for times in seen.values():
        gaps = [b - a for a, b in itertools.pairwise(times[1:])]
        assert min(gaps) > 0.9, gaps
    # Never two in one turn, though the eight links' values arrive together.
    assert len(published_in_turn) >= 2 * len(names)
    assert len(set(published_in_turn)) == len(published_in_turn), published_in_turn


async def test_client_events_from_a_broker_with_mmcs_plugin(
    client: Client, tmp_path: Path, client_control_plugin: Path, mosquitto: Mosquitto
) -> None:
    with MosquittoBroker(
        tmp_path / "b",
        mosquitto=mosquitto,
        early_plugins=[client_control_plugin],
        early_conf="plugin_opt_inspect true",
    ) as broker:
        await _connect(client, broker)
        async with stream(client, types="clients", brokerId="plain") as events:
            async with aiomqtt.Client(
                broker.host,
                broker.port,
                username=broker.admin_username,
                password=broker.admin_password,
                identifier="sse-watched",
            ):
                connected = await events.until("clients", lambda d: d["clientid"] == "sse-watched")
            disconnected = await events.until("clients", lambda d: d["clientid"] == "sse-watched")
    assert connected.data["event"] == "connected"
    assert disconnected.data["event"] == "disconnected"
    for frame in (connected, disconnected):
        assert frame.data["brokerId"] == "plain"
        assert frame.data["username"] == broker.admin_username
        assert frame.data["address"]
        assert isinstance(frame.data["timestamp"], int)


async def test_narrowed_to_a_broker(
    own_client: Client, own_broker: MosquittoBroker, broker: MosquittoBroker
) -> None:
    await _connect(own_client, broker, id="other", name="Other")
    async with stream(own_client, types="connections,system_status", brokerId="other") as events:
        first = await events.event()
        assert [c["id"] for c in first.data] == ["other"]
        own_broker.kill()
        # The other broker's $SYS values only; no connections event (it did not change).
        for _ in range(3):
            frame = await events.event(timeout=3)
            assert frame.event == "system_status", frame
            assert frame.data["brokerId"] == "other"


async def test_resume_with_last_event_id(own_client: Client) -> None:
    async with stream(own_client, types="connections,audit") as events:
        snapshot = await events.event()
    assert snapshot.event == "connections"
    resp = await own_client.put("/api/connections/plain/disconnect")
    assert resp.status == 200, await resp.text()
    # Missed meanwhile: the audit entry and the connection's change.
    async with stream(own_client, last_event_id=snapshot.id, types="connections,audit") as events:
        # In either order: the audit row is written after the answer, the connections
        # event 50 ms after the change, and a busy store can take longer than that.
        seen: dict[str | None, Frame] = {}
        while len(seen) < 2:
            frame = await events.event()
            seen.setdefault(frame.event, frame)
        audit, change = seen["audit"], seen["connections"]
    assert audit.data["route"] == "/api/connections/{connectionId}/disconnect"
    assert audit.data["target"] == {"connectionId": "plain"}
    assert audit.data["status"] == 200
    assert _status(change.data, "plain")["connected"] is False
    assert snapshot.id is not None
    assert audit.id is not None
    assert change.id is not None
    assert snapshot.id < min(audit.id, change.id)

    # once=true: what was missed, then the end (nothing missed: nothing at all).
    last = max(audit.id, change.id)
    async with stream(own_client, last_event_id=last, types="connections,audit", once="true") as s:
        assert await s.rest() == []


async def test_reset_when_last_event_id_is_too_old_or_unknown(
    make_client: MakeClient, settings: Settings, own_broker: MosquittoBroker
) -> None:
    client = await make_client(settings.replace(events_buffer=2))
    await _connect(client, own_broker)
    async with stream(client, types="connections", once="true") as events:
        (snapshot,) = await events.rest()
    for _ in range(3):  # three audit entries and connections events: more than 2 kept
        assert (await client.put("/api/connections/plain/disconnect")).status == 200
        assert (await client.put("/api/connections/plain/connect")).status == 200
    for last in (snapshot.id, "not-a-number", 1):
        async with stream(client, last_event_id=last, types="connections", once="true") as s:
            reset, again = await s.rest()
        assert reset.event == "reset", last
        assert reset.data["lastEventId"] == str(last)
        assert again.event == "connections"
        assert _status(again.data, "plain")["connected"] is True


async def test_event_types_need_their_permissions(client: Client) -> None:
    tokens = {
        role: await create_token(client, role)
        for role in ("monitoringViewer", "viewer", "editor", "admin")
    }
    session = client.session

    async def status(role: str, **query: str) -> int:
        headers = {"Authorization": f"Bearer {tokens[role]}"}
        async with session.get(
            client.make_url(EVENTS), params={"once": "true", **query}, headers=headers
        ) as resp:
            return resp.status

    assert await status("monitoringViewer", types="audit") == 403
    assert await status("monitoringViewer", types="connections") == 403
    assert await status("monitoringViewer", types="clients") == 403
    assert await status("monitoringViewer", types="system_status") == 200
    assert await status("viewer", types="audit") == 403
    assert await status("editor", types="audit") == 403
    assert await status("viewer", types="connections,clients,system_status") == 200
    assert await status("admin", types="audit") == 200
    assert await status("admin", types="nonsense") == 400
    assert await status("admin", types="connections,") == 400

    # Without types: every type one may see; the audit entries reach admins only.
    async with (
        stream(client, tokens["viewer"]) as viewer,
        stream(client, tokens["monitoringViewer"]) as monitor,
        stream(client, tokens["admin"]) as admin,
    ):
        assert (await viewer.event()).event == "connections"
        assert (await admin.event()).event == "connections"
        resp = await client.post("/api/projects", json={"name": "Audited", "id": "audited"})
        assert resp.status in (200, 201), await resp.text()
        entry = await admin.until("audit")
        assert entry.data["route"] == "/api/projects"
        assert entry.data["method"] == "POST"
        for other in (viewer, monitor):
            with pytest.raises(TimeoutError):
                await other.until("audit", timeout=0.5)


async def test_heartbeat_comments_on_an_idle_stream(
    make_client: MakeClient, settings: Settings
) -> None:
    # A stream outlives the HTTP header and body timeouts (they bound a request's arrival).
    client = await make_client(
        settings.replace(events_heartbeat=0.2, http_header_timeout=0.5, http_body_timeout=0.5)
    )
    async with stream(client, types="audit") as events:
        started = time.monotonic()
        frames = []
        while time.monotonic() - started < 1.5:
            frame = await events.frame(timeout=1)
            assert frame is not None
            frames.append(frame)
    assert {f.comment for f in frames} == {"heartbeat"}
    assert 5 <= len(frames) <= 9, len(frames)


async def test_a_slow_consumer_is_dropped_without_slowing_others(
    make_client: MakeClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(settings.replace(events_queue=20))
    hub = client.app[events_key]
    blob = "x" * 100_000
    async with stream(client, types="audit") as slow, stream(client, types="audit") as fast:
        await wait_until(lambda: hub.subscribers == 2)
        received: list[int] = []

        async def read() -> None:
            while len(received) < 200:
                frame = await fast.event(timeout=10)
                received.append(frame.data["n"])

        reader = asyncio.get_running_loop().create_task(read())
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="mmc.services.events"):
            for n in range(200):  # 20 MB: more than the socket buffers of the slow one
                hub.audit({"n": n, "blob": blob})
                await asyncio.sleep(0.002)
            await asyncio.wait_for(reader, 10)
        # The fast reader got everything, in order, while the slow one was let go.
        assert received == list(range(200))
        assert time.monotonic() - started < 5
        assert hub.subscribers == 1
        assert any("too slow" in r.getMessage() for r in caplog.records)
        # The slow stream was closed under it.
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
            await slow.rest()


async def test_streams_end_at_shutdown(client: Client) -> None:
    async with stream(client, types="audit") as events:
        await wait_until(lambda: client.app[events_key].subscribers == 1)
        started = time.monotonic()
        await client.app.shutdown()
        assert await events.rest(timeout=2) == []
        assert time.monotonic() - started < 1.0


async def test_cors_headers_on_the_stream(make_client: MakeClient, settings: Settings) -> None:
    ui = "https://ui.example"
    client = await make_client(settings.replace(cors_origins=ui))
    async with client.session.get(
        client.make_url(EVENTS), params={"once": "true"}, headers={"Origin": ui}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == ui
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        assert resp.headers["Vary"] == "Origin"
        assert resp.headers["X-Request-ID"]


async def test_strangers_audit_entries_only_when_kept(
    make_client: MakeClient, settings: Settings
) -> None:
    for kept in (10, 0):
        client = await make_client(settings.replace(audit_max_refusals=kept))
        async with stream(client, types="audit") as events:
            # Refused before any login: a stranger's entry.
            async with (
                aiohttp.ClientSession() as anonymous,
                anonymous.post(client.make_url("/api/projects"), json={}) as resp,
            ):
                assert resp.status == 401
            # And an admin's, which is always kept.
            await client.post("/api/projects", json={"name": "Kept", "id": f"kept{kept}"})
            first = await events.until("audit")
        assert first.data["status"] == (401 if kept else 201), first.data


async def test_session_login_works_too(anon_client: Client) -> None:
    await login(anon_client)
    async with stream(anon_client, types="connections", once="true") as events:
        (snapshot,) = await events.rest()
    assert snapshot.event == "connections"
    anon_client.session.cookie_jar.clear()
    assert (await anon_client.get(EVENTS, params={"once": "true"})).status == 401


def _lag_histogram(metrics: str) -> tuple[float, float]:
    """(samples at or under 50 ms, all samples) of mmc_event_loop_lag_seconds."""
    under = count = 0.0
    for line in metrics.splitlines():
        if line.startswith('mmc_event_loop_lag_seconds_bucket{le="0.05"}'):
            under = float(line.split()[-1])
        elif line.startswith("mmc_event_loop_lag_seconds_count"):
            count = float(line.split()[-1])
    return under, count


async def _process_stream(
    session: aiohttp.ClientSession, server: MmcServer, token: str, **query: str
) -> AsyncIterator[Stream]:
    async with session.get(
        f"{server.base_url}{EVENTS}", params=query, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 200, await response.text()
        yield Stream(response)


process_stream = asynccontextmanager(_process_stream)


async def test_fan_out_of_many_status_changes_to_many_subscribers(tmp_path: Path) -> None:
    """Readers here, mmc in a process of its own (its loop lag is its own). The issue's
    figure is 100 subscribers and 100 brokers (FAN_OUT_* set it); by default fewer."""
    brokers = [MosquittoBroker(tmp_path / f"b{i}") for i in range(FAN_OUT_BROKERS)]
    try:
        for broker in brokers:
            broker.start()
        with MmcServer(tmp_path / "mmc", env={"MMC_RECONNECT_MAX_DELAY": "0.5"}) as server:
            await server.wait_ready()
            token = await server.admin_token("fan-out")
            headers = {"Authorization": f"Bearer {token}"}
            # No cap on the connections (aiohttp's default is 100): the streams hold one each.
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
                for i, broker in enumerate(brokers):
                    body = plain_body(broker, id=f"b{i}", name=f"B{i}")
                    async with session.post(f"{server.base_url}/api/connections", json=body) as r:
                        assert r.status == 200, await r.text()
                async with contextlib.AsyncExitStack() as stack:
                    streams = [
                        await stack.enter_async_context(
                            process_stream(session, server, token, types="connections")
                        )
                        for _ in range(FAN_OUT_SUBSCRIBERS)
                    ]
                    for events in streams:
                        first = await events.event()
                        assert all(c["status"]["connected"] for c in first.data)
                    before = _lag_histogram(await server.metrics(session))
                    await asyncio.gather(*(asyncio.to_thread(b.kill) for b in brokers))
                    killed = time.monotonic()

                    def all_down(data: list[dict[str, Any]]) -> bool:
                        return not any(c["status"]["connected"] for c in data)

                    frames = await asyncio.gather(
                        *(events.until("connections", all_down, timeout=10) for events in streams)
                    )
                    await asyncio.sleep(1.0)  # and the links' reconnect attempts meanwhile
                    after = _lag_histogram(await server.metrics(session))
    finally:
        for broker in brokers:
            broker.kill()
    latest = max(f.at for f in frames) - killed
    late = (after[1] - before[1]) - (after[0] - before[0])
    samples = after[1] - before[1]
    print(
        f"fan-out: {len(streams)} subscribers, {len(brokers)} brokers down: all told in "
        f"{latest:.3f} s; mmc's loop lag over 50 ms in {late:.0f} of {samples:.0f} samples"
    )
    assert latest < 1.0
    # mmc samples its loop lag every 100 ms: p99 under 50 ms is none of these over it.
    assert late == 0


async def test_an_open_stream_does_not_hold_shutdown(tmp_path: Path) -> None:
    with MmcServer(tmp_path / "mmc", env={"MMC_SHUTDOWN_TIMEOUT": "30"}) as server:
        await server.wait_ready()
        token = await server.admin_token("shutdown")
        async with (
            aiohttp.ClientSession() as session,
            process_stream(session, server, token, types="audit") as events,
        ):
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            assert await events.rest(timeout=10) == []
            assert server.wait(10) == 0
            assert time.monotonic() - started < 5


async def test_behind_nginx_events_pass_at_once_and_heartbeats_keep_the_stream(
    make_client: MakeClient, settings: Settings, tmp_path: Path
) -> None:
    """nginx as it is usually set up (buffering on, HTTP/1.0 upstream) with a read timeout
    shorter than the test: the stream stays open and each event passes at once."""
    reason = nginx_available()
    if reason is not None:
        pytest.fail(reason)
    client = await make_client(settings.replace(events_heartbeat=0.3))
    port = free_port()
    server = f"""
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{client.port};
            proxy_read_timeout 1s;
        }}
    }}
    """
    token = client.session.headers["Authorization"]
    with Nginx(tmp_path / "nginx", server) as nginx:
        await asyncio.to_thread(nginx.start, port)
        async with (
            aiohttp.ClientSession(headers={"Authorization": token}) as session,
            session.get(f"http://127.0.0.1:{port}{EVENTS}", params={"types": "audit"}) as resp,
        ):
            assert resp.status == 200
            events = Stream(resp)
            # Longer than nginx's read timeout: only heartbeats meanwhile.
            ended = time.monotonic() + 2.5
            while time.monotonic() < ended:
                frame = await events.frame(timeout=1)
                assert frame is not None
                assert frame.comment == "heartbeat"
            sent = time.monotonic()
            resp2 = await client.post("/api/projects", json={"name": "Via nginx", "id": "nginx"})
            assert resp2.status in (200, 201)
            entry = await events.until("audit", timeout=2)
            assert entry.at - sent < 0.5
            assert entry.data["route"] == "/api/projects"
