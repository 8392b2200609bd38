"""What both benchmarks share: load generators, references to compare with, statistics.

The mmc process and the brokers are testbed's (`testbed/serve.py`, `testbed/mosquitto.py`).

Everything stays on 127.0.0.1, every load is bounded in requests and in time, and the
processes started here are signalled by their pid only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import platform
import resource
import secrets
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from testbed.mosquitto import HOST, MOSQUITTO_20, Mosquitto, MosquittoBroker

__all__ = [
    "HOST",
    "BareControl",
    "MosquittoBroker",
    "Stats",
    "http_load",
    "machine",
    "mosquitto_ctrl_times",
    "percentile",
    "raise_open_files",
    "run_load",
    "summarize",
]

DYNSEC_API = "dynamic-security"


# ------------------------------------------------------------------ statistics


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (0 < q <= 100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Stats:
    case: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    rps: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    case: str, concurrency: int, latencies: list[float], errors: int, seconds: float
) -> Stats:
    done = len(latencies)
    return Stats(
        case=case,
        concurrency=concurrency,
        requests=done,
        errors=errors,
        seconds=round(seconds, 3),
        p50_ms=round(percentile(latencies, 50) * 1000, 3),
        p99_ms=round(percentile(latencies, 99) * 1000, 3),
        rps=round(done / seconds, 1) if seconds > 0 else 0.0,
    )


async def run_load(
    case: str,
    request: Callable[[], Awaitable[bool]],
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    warmup: int = 20,
) -> Stats:
    """``concurrency`` workers call ``request`` in a loop until ``max_requests`` were started
    or ``max_seconds`` passed. A request that returns False or raises counts as an error."""
    for _ in range(min(warmup, max_requests)):
        await request()
    latencies: list[float] = []
    errors = 0
    started = 0
    t0 = time.perf_counter()
    deadline = t0 + max_seconds

    async def worker() -> None:
        nonlocal started, errors
        clock = time.perf_counter
        while started < max_requests and clock() < deadline:
            started += 1
            begin = clock()
            try:
                ok = await request()
            except Exception:  # noqa: BLE001 - a failed request is a data point
                ok = False
            if ok:
                latencies.append(clock() - begin)
            else:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(case, concurrency, latencies, errors, time.perf_counter() - t0)


async def http_load(
    case: str,
    base_url: str,
    token: str,
    method: str,
    path: str | Callable[[], str],
    *,
    body: Callable[[], Any] | None = None,
    expect: int = 200,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    warmup: int = 20,
) -> Stats:
    """HTTP load with keep-alive connections, one per worker, Bearer-authenticated."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base_url, connector=connector, headers=headers) as session:

        async def one() -> bool:
            url = path() if callable(path) else path
            data = json.dumps(body()).encode() if body is not None else None
            async with session.request(
                method,
                url,
                data=data,
                headers={"Content-Type": "application/json"} if data is not None else None,
            ) as resp:
                await resp.read()
                return resp.status == expect

        return await run_load(
            case,
            one,
            concurrency=concurrency,
            max_requests=max_requests,
            max_seconds=max_seconds,
            warmup=warmup,
        )


class WsCommands:
    """One WebSocket to mmc's ``/api/ws`` (the MMC UI's protocol), commands sent with ids
    and answered by a reader task: many in flight on the one socket, as the UI does."""

    def __init__(self, base_url: str, token: str, broker_id: str) -> None:
        self._base_url = base_url
        self._token = token
        self._broker_id = broker_id
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WsCommands:
        headers = {"Authorization": f"Bearer {self._token}"}
        self._session = aiohttp.ClientSession(self._base_url, headers=headers)
        self._ws = await self._session.ws_connect("/api/ws", max_msg_size=0)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            fut = self._pending.pop(frame.get("requestId"), None)
            if fut is not None and not fut.done():
                fut.set_result(frame)

    async def command(
        self, api: str, command: Mapping[str, Any], timeout: float = 5.0
    ) -> dict[str, Any]:
        """The response frame of one command (``data`` or ``error``)."""
        assert self._ws is not None
        request_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        frame = {
            "id": request_id,
            "type": "command",
            "api": api,
            "command": dict(command),
            "broker": self._broker_id,
        }
        try:
            await self._ws.send_str(json.dumps(frame))
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._pending.pop(request_id, None)


# ------------------------------------------------------------------- references


# aiomqtt warns about "pending publish calls" above 10 in flight: that is the load itself.
_QUIET = logging.getLogger("bench.bare")
_QUIET.setLevel(logging.ERROR)


class BareControl:
    """What a good hand-written client does: one persistent aiomqtt connection (MQTT v5),
    QoS 0 requests, one message per command, replies matched by correlationData by a
    dispatcher task.

    ``batch`` > 1: the broker's ceiling as mmc meets it. Commands requested in the same
    loop turn travel in one message, up to ``batch`` of them, as mmc's ControlChannel
    sends them (mmc.brokers.control.MAX_BATCH)."""

    def __init__(self, broker: MosquittoBroker, *, batch: int = 1) -> None:
        self._batch = batch
        self._queue: list[dict[str, Any]] = []
        self._client = aiomqtt.Client(
            HOST,
            broker.port,
            username=broker.admin_username,
            password=broker.admin_password,
            identifier=f"bench-bare-{secrets.token_hex(4)}",
            protocol=aiomqtt.ProtocolVersion.V5,
            logger=_QUIET,
        )
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._dispatcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BareControl:
        await self._client.__aenter__()
        await self._client.subscribe(f"$CONTROL/{DYNSEC_API}/v1/response", qos=0)
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        await self._client.__aexit__(None, None, None)

    async def _dispatch(self) -> None:
        async for message in self._client.messages:
            assert isinstance(message.payload, bytes)
            body = json.loads(message.payload)
            for entry in body.get("responses", ()):
                fut = self._pending.pop(entry.get("correlationData"), None)
                if fut is not None and not fut.done():
                    fut.set_result(entry)

    async def request(self, command: Mapping[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        correlation = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = fut
        entry = {**command, "correlationData": correlation}
        try:
            if self._batch <= 1:
                await self._publish([entry])
            else:
                self._queue.append(entry)
                if len(self._queue) >= self._batch:
                    batch, self._queue = self._queue, []
                    await self._publish(batch)
                elif len(self._queue) == 1:
                    # The first of a batch lets the others of this loop turn join it.
                    await asyncio.sleep(0)
                    batch, self._queue = self._queue, []
                    if batch:
                        await self._publish(batch)
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._pending.pop(correlation, None)

    async def envelope(
        self, commands: Sequence[Mapping[str, Any]], timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """``commands`` in one message, as the plugin's own envelope; their answers."""
        loop = asyncio.get_running_loop()
        entries, futures = [], []
        for command in commands:
            correlation = uuid.uuid4().hex
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._pending[correlation] = fut
            entries.append({**command, "correlationData": correlation})
            futures.append(fut)
        try:
            await self._publish(entries)
            async with asyncio.timeout(timeout):
                return list(await asyncio.gather(*futures))
        finally:
            for entry in entries:
                self._pending.pop(entry["correlationData"], None)

    async def _publish(self, commands: list[dict[str, Any]]) -> None:
        payload = json.dumps({"commands": commands})
        await self._client.publish(f"$CONTROL/{DYNSEC_API}/v1", payload, qos=0)


def mosquitto_ctrl_times(broker: MosquittoBroker, args: list[str], runs: int) -> list[float]:
    """Seconds per ``mosquitto_ctrl -h -p -u -P dynsec <args>`` run, one after the other."""
    argv = [
        broker.mosquitto.ctrl,
        "-h",
        HOST,
        "-p",
        str(broker.port),
        "-u",
        broker.admin_username,
        "-P",
        broker.admin_password,
        "dynsec",
        *args,
    ]
    times: list[float] = []
    for _ in range(runs):
        begin = time.perf_counter()
        done = subprocess.run(
            argv, capture_output=True, env=broker.mosquitto.env(), timeout=30, check=False
        )
        elapsed = time.perf_counter() - begin
        if done.returncode != 0:
            raise RuntimeError(f"mosquitto_ctrl failed: {done.stdout!r} {done.stderr!r}")
        times.append(elapsed)
    return times


# ------------------------------------------------------------------------- mmc


def connection_body(
    connection_id: str, broker: MosquittoBroker, *, name: str | None = None
) -> dict[str, Any]:
    return {
        "id": connection_id,
        "name": name or connection_id,
        "url": f"mqtt://{HOST}:{broker.port}",
        "credentials": {"username": broker.admin_username, "password": broker.admin_password},
    }


async def create_connection(
    session: aiohttp.ClientSession, body: Mapping[str, Any], *, connected: bool = True
) -> None:
    async with session.post("/api/connections", json=body) as resp:
        await resp.read()
        if resp.status != 200 and (connected or resp.status != 202):
            raise RuntimeError(f"creating {body['id']}: {resp.status} {await resp.text()}")


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft open-files limit (children inherit it); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def machine(mosquitto: Mosquitto = MOSQUITTO_20) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = mosquitto.installed_version()
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "mosquitto": f"mosquitto version {version}" if version else "unknown",
        "kernel": platform.release(),
    }
