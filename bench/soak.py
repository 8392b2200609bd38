"""Soak: mixed traffic at a steady rate against a real `mmc serve`, brokers restarting.

    python bench/soak.py [--minutes 10] [--rate 40] [--restart-every 60] [--json]

Starts two real mosquitto brokers (testbed/mosquitto.py, loopback only) and one `mmc serve`
on temporary data, then sends reads, store writes and $CONTROL requests at ``--rate``
per second while one broker after the other is killed and restarted every
``--restart-every`` seconds. Prints requests by status and the process's resident
memory, open file descriptors and asyncio tasks at the start (after a warm-up) and at
the end. Exits 1 when a 5xx other than 503/504 (or 502 OUTCOME_UNKNOWN: a change whose
answer a kill took, the broker not back in time) was answered, or memory grew by 10 % or
more, or descriptors or tasks did not come back to where they were.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testbed.mosquitto import MOSQUITTO_VERSIONS, MosquittoBroker  # noqa: E402
from testbed.serve import MmcServer  # noqa: E402

PASSWORD = "soak-admin-password"  # noqa: S105 - a throwaway instance
EXPECTED_5XX = frozenset({503, 504})
# A change in flight when its broker is killed: applied or not, unknown until it is back.
OUTCOME_UNKNOWN = (502, b'"OUTCOME_UNKNOWN"')


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def tasks(session: aiohttp.ClientSession, base: str) -> int:
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    match = re.search(r"^mmc_asyncio_tasks (\S+)$", text, re.M)
    return int(float(match.group(1))) if match else -1


def snapshot(pid: int) -> dict[str, int]:
    return {"rss_kib": rss_kib(pid), "fds": fds(pid)}


class Traffic:
    def __init__(self, base: str, token: str, brokers: list[str]) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}
        self.brokers = brokers
        self.statuses: collections.Counter[int] = collections.Counter()
        self.unexpected: list[str] = []
        self.latencies: list[float] = []
        self._ids = itertools.count()

    def _requests(self) -> list[tuple[str, str, Any]]:
        n = next(self._ids)
        broker = random.choice(self.brokers)  # noqa: S311 - load shape, not security
        dynsec = f"/api/projects/default/brokers/{broker}/dynsec"
        choice = n % 10
        if choice < 5:  # reads
            path = random.choice(  # noqa: S311
                [
                    "/api/connections",
                    f"{dynsec}/clients",
                    f"/api/projects/default/brokers/{broker}/info",
                    "/api/audit?limit=20",
                    "/api/projects",
                ]
            )
            return [("GET", path, None)]
        if choice < 7:  # store writes: create then delete
            if n % 2:
                return [
                    ("POST", "/api/projects", {"id": f"soak{n}", "name": f"soak {n}"}),
                    ("DELETE", f"/api/projects/soak{n}", None),
                ]
            return [("POST", "/api/tokens", {"name": f"soak{n}", "role": "viewer"})]
        # $CONTROL writes through the dynsec API, then the cleanup
        return [
            ("POST", f"{dynsec}/clients", {"username": f"soak{n}", "password": "soak-pass"}),
            ("DELETE", f"{dynsec}/clients/soak{n}", None),
        ]

    async def one(self, session: aiohttp.ClientSession) -> None:
        for method, path, body in self._requests():
            started = time.perf_counter()
            try:
                async with session.request(
                    method, self.base + path, json=body, headers=self.headers
                ) as resp:
                    payload = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.unexpected.append(f"{method} {path}: {exc!r}")
                self.statuses[0] += 1
                return
            self.latencies.append(time.perf_counter() - started)
            self.statuses[status] += 1
            expected = status in EXPECTED_5XX or (
                status == OUTCOME_UNKNOWN[0] and OUTCOME_UNKNOWN[1] in payload
            )
            if status >= 500 and not expected:
                self.unexpected.append(f"{method} {path} -> {status} {payload[:200]!r}")
            if method == "POST" and path == "/api/tokens" and status == 201:
                token_id = json.loads(payload)["id"]
                async with session.delete(
                    f"{self.base}/api/tokens/{token_id}", headers=self.headers
                ) as resp:
                    self.statuses[resp.status] += 1
            if status >= 400:
                return  # the cleanup step has nothing to clean


async def all_connected(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.get(f"{base}/api/connections", headers=headers) as resp:
            listing = await resp.json()
        if listing and all(c["status"]["connected"] for c in listing):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("brokers did not all reconnect")


async def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    duration = args.minutes * 60
    mosquitto = MOSQUITTO_VERSIONS[args.mosquitto]
    brokers = [MosquittoBroker(workdir / f"broker{i}", mosquitto=mosquitto) for i in range(2)]
    for broker in brokers:
        broker.start()
    config = workdir / "mmc.toml"
    config.write_text("[mmc]\nrequest_timeout = 2.0\nreconnect_max_delay = 2.0\n")
    server = MmcServer(
        workdir / "mmc",
        admin_password=PASSWORD,
        env={"MMC_LOG_LEVEL": "WARNING", "MMC_CONFIG": str(config)},
    )
    server.start()
    base = server.base_url
    try:
        await server.wait_ready()
        token = await server.admin_token("soak")
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            headers = {"Authorization": f"Bearer {token}"}
            ids = []
            for i, broker in enumerate(brokers):
                body = {
                    "id": f"b{i}",
                    "name": f"broker {i}",
                    "url": f"mqtt://127.0.0.1:{broker.port}",
                    "credentials": {
                        "username": broker.admin_username,
                        "password": broker.admin_password,
                    },
                }
                async with session.post(
                    f"{base}/api/connections", json=body, headers=headers
                ) as resp:
                    assert resp.status == 200, await resp.text()
                ids.append(f"b{i}")
        traffic = Traffic(base, token, ids)
        restarts = 0
        next_restart = time.monotonic() + args.restart_every

        async def run(seconds: float) -> None:
            """Traffic for ``seconds`` on its own connections, closed at the end: what stays
            open afterwards is mmc's, not the load generator's keep-alive pool."""
            nonlocal restarts, next_restart
            connector = aiohttp.TCPConnector(limit=64)
            async with aiohttp.ClientSession(connector=connector) as load:
                began = time.monotonic()
                interval = 1 / args.rate
                pending: set[asyncio.Task[None]] = set()
                tick = began
                while (now := time.monotonic()) < began + seconds:
                    if now >= next_restart:
                        victim = brokers[restarts % len(brokers)]
                        await asyncio.to_thread(victim.kill)
                        await asyncio.sleep(1.0)
                        await asyncio.to_thread(victim.start)
                        restarts += 1
                        next_restart += args.restart_every
                    task = asyncio.ensure_future(traffic.one(load))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    tick += interval
                    await asyncio.sleep(max(0.0, tick - time.monotonic()))
                await asyncio.gather(*pending)

        async def measure() -> dict[str, int]:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)
            ) as probe:
                await all_connected(probe, base, headers, 30)
                await asyncio.sleep(2)  # let link tasks of the last reconnect settle
                return {**snapshot(server.pid), "tasks": await tasks(probe, base)}

        started = time.monotonic()
        warmup = min(60.0, duration * 0.2)
        await run(warmup)
        start = await measure()
        await run(duration - warmup)
        end = await measure()
        latencies = sorted(traffic.latencies)
        return {
            "seconds": round(time.monotonic() - started, 1),
            "requests": sum(traffic.statuses.values()),
            "by_status": dict(sorted(traffic.statuses.items())),
            "unexpected": traffic.unexpected[:20],
            "unexpected_count": len(traffic.unexpected),
            "broker_restarts": restarts,
            "latency_ms_p50": round(1000 * latencies[len(latencies) // 2], 2),
            "latency_ms_p99": round(1000 * latencies[int(len(latencies) * 0.99)], 2),
            "start": start,
            "end": end,
            "rss_growth_pct": round(
                100 * (end["rss_kib"] - start["rss_kib"]) / start["rss_kib"], 2
            ),
            "mmc_alive": server.returncode is None,
        }
    finally:
        server.stop(timeout=15)
        for broker in brokers:
            broker.stop()


def verdict(figures: dict[str, Any]) -> list[str]:
    problems = []
    if figures["unexpected_count"]:
        problems.append(
            f"{figures['unexpected_count']} unexpected answers (5xx other than 503/504, or errors)"
        )
    if figures["rss_growth_pct"] >= 10:
        problems.append(f"resident memory grew {figures['rss_growth_pct']} %")
    if figures["end"]["fds"] > figures["start"]["fds"] + 2:
        problems.append(f"file descriptors {figures['start']['fds']} -> {figures['end']['fds']}")
    if figures["end"]["tasks"] > figures["start"]["tasks"] + 2:
        problems.append(f"asyncio tasks {figures['start']['tasks']} -> {figures['end']['tasks']}")
    if not figures["mmc_alive"]:
        problems.append("mmc died")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=40.0, help="request sequences per second")
    parser.add_argument(
        "--restart-every", type=float, default=60.0, help="seconds between broker restarts"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument(
        "--mosquitto",
        choices=sorted(MOSQUITTO_VERSIONS),
        default="2.0",
        help="the brokers' version (2.1: `make mosquitto-2.1` first)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmc-soak-") as tmp:
        figures = asyncio.run(soak(args, Path(tmp)))
    problems = verdict(figures)
    figures["problems"] = problems
    if args.json:
        print(json.dumps(figures))
    else:
        s, e = figures["start"], figures["end"]
        print(
            f"soak: {figures['seconds']} s, {figures['requests']} requests, "
            f"{figures['broker_restarts']} broker restarts"
        )
        print(f"  by status: {figures['by_status']}")
        print(f"  5xx other than 503/504 (or connection errors): {figures['unexpected_count']}")
        print(f"  latency p50 {figures['latency_ms_p50']} ms, p99 {figures['latency_ms_p99']} ms")
        print(f"  RSS {s['rss_kib']} KiB -> {e['rss_kib']} KiB ({figures['rss_growth_pct']:+} %)")
        print(f"  open fds {s['fds']} -> {e['fds']}; asyncio tasks {s['tasks']} -> {e['tasks']}")
        for line in figures["unexpected"]:
            print(f"  unexpected: {line}")
        print("  verdict:", "ok" if not problems else "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
