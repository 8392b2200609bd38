"""Two replicas writing: ``python -m bench.replicas [--quick] [--runs N] [--before DIR]
[--json FILE]`` (``make bench-replicas``).

Each run creates a PostgreSQL database of its own on the local server (dropped afterwards),
and measures:

- *modifyClient*: two ``mmc serve`` processes on that database, each with its own link to
  one mosquitto 2.0 broker, under ``PATCH .../dynsec/clients/{name}`` (token-authenticated,
  as bench/run.py) at concurrency 64 in total, 32 on each replica: req/s, p50/p99 and
  errors for both together and for each;
- *login store writes*: what a login writes (its attempt counted on the pair, the address
  and the username, given back on success, the session created and touched), 64 workers
  over two stores on a fresh database (bench/store_writes.py): the rows are all different,
  so what makes them wait is the store's own locking.

``--before DIR`` runs the mmc code at DIR (main's checkout, say) the same way, alternating
with this checkout's (which goes first alternates too): the table shows the median over the
runs and the spread (min-max).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.fernet import Fernet

from bench.common import Stats, connection_body, create_connection, machine, summarize
from testbed.mosquitto import MOSQUITTO_20, MosquittoBroker
from testbed.postgres import postgres_database
from testbed.serve import REPO, MmcServer

RESULTS = Path(__file__).resolve().parent / "results"
USER = "bench-user"
DYNSEC = "/api/projects/default/brokers/bench/dynsec"
STORE_WRITES = Path(__file__).resolve().parent / "store_writes.py"


async def _patch_load(
    replicas: list[MmcServer], token: str, concurrency: int, seconds: float
) -> list[Stats]:
    """``concurrency`` workers, alternately on each replica, until ``seconds`` have passed:
    the stats of all of them, then of each replica's."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    sessions = [
        aiohttp.ClientSession(r.base_url, headers=headers, connector=aiohttp.TCPConnector())
        for r in replicas
    ]
    latencies: list[list[float]] = [[] for _ in replicas]
    errors = [0 for _ in replicas]
    edits = iter(range(10**9))
    try:
        # Warm-up: each replica's link and caches.
        for session in sessions:
            for _ in range(20):
                async with session.patch(f"{DYNSEC}/clients/{USER}", json={"textname": "w"}) as r:
                    await r.read()
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()

        async def worker(k: int) -> None:
            i = k % len(replicas)
            session = sessions[i]
            while time.perf_counter() < deadline:
                begin = time.perf_counter()
                try:
                    body = json.dumps({"textname": f"bench {next(edits)}"})
                    async with session.patch(f"{DYNSEC}/clients/{USER}", data=body) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except (aiohttp.ClientError, OSError):
                    ok = False
                if ok:
                    latencies[i].append(time.perf_counter() - begin)
                else:
                    errors[i] += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        for session in sessions:
            await session.close()
    per = concurrency // len(replicas)
    return [
        summarize(
            "REST modifyClient, both replicas",
            concurrency,
            [x for group in latencies for x in group],
            sum(errors),
            elapsed,
        ),
        *(
            summarize(
                f"REST modifyClient, replica {'ab'[i]}", per, latencies[i], errors[i], elapsed
            )
            for i in range(len(replicas))
        ),
    ]


async def _modify_client(
    code: Path, workdir: Path, concurrency: int, seconds: float
) -> list[Stats]:
    broker = MosquittoBroker(workdir / "broker", sys_interval=10, mosquitto=MOSQUITTO_20)
    key, password = Fernet.generate_key().decode(), secrets.token_urlsafe(16)
    async with postgres_database() as url:
        replicas = [
            MmcServer(
                workdir / name,
                admin_password=password,
                env={
                    "PYTHONPATH": str(code),
                    "MMC_DATABASE_URL": url,
                    "MMC_SECRET_KEY": key,
                    "MMC_REPLICA_ID": name,
                },
            )
            for name in ("a", "b")
        ]
        a, b = replicas
        try:
            broker.start()
            a.start()
            await a.wait_ready()  # the first creates the admin
            b.start()
            await b.wait_ready()
            token = await a.admin_token()
            headers = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession(a.base_url, headers=headers) as session:
                await create_connection(session, connection_body("bench", broker))
                await _until(session, a.base_url, "POST", {"username": USER, "password": "p"})
            async with aiohttp.ClientSession(b.base_url, headers=headers) as session:
                # B opened its own link on the NOTIFY; until then its dynsec is 404/503.
                await _until(session, b.base_url, "GET", None)
            return await _patch_load(replicas, token, concurrency, seconds)
        finally:
            for replica in replicas:
                replica.stop()
            broker.stop()


async def _until(
    session: aiohttp.ClientSession, base: str, method: str, body: Any, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    path = f"{base}{DYNSEC}/clients" + ("" if method == "POST" else f"/{USER}")
    while True:
        async with session.request(method, path, json=body) as resp:
            await resp.read()
            if resp.status in (200, 201):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{method} {path}: {resp.status}")
        await asyncio.sleep(0.1)


async def _store_writes(code: Path, concurrency: int, seconds: float) -> Stats:
    async with postgres_database() as url:
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                str(STORE_WRITES),
                url,
                "--concurrency",
                str(concurrency),
                "--seconds",
                str(seconds),
            ],
            env={"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            timeout=120,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"store_writes.py: {done.stderr.decode()[-2000:]}")
    return Stats(**json.loads(done.stdout))


def _cell(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def table(outcome: dict[str, Any]) -> str:
    lines = [
        "| case | code | conc. | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    runs: dict[str, list[list[dict[str, Any]]]] = outcome["runs"]
    cases = [s["case"] for s in next(iter(runs.values()))[0]]
    for case in cases:
        for code, results in runs.items():
            found = [s for run in results for s in run if s["case"] == case]
            lines.append(
                f"| {case} | {code} | {found[0]['concurrency']} "
                f"| {_cell([s['rps'] for s in found], '.0f')} "
                f"| {_cell([s['p50_ms'] for s in found], '.2f')} "
                f"| {_cell([s['p99_ms'] for s in found], '.1f')} "
                f"| {sum(s['errors'] for s in found)} |"
            )
    return "\n".join(lines)


async def run(
    runs: int, before: Path | None, seconds: float, workdir: Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    codes = {"after": REPO} if before is None else {"before": before, "after": REPO}
    results: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in codes}
    started = time.monotonic()
    for i in range(runs):
        # Alternating which goes first: what one leaves behind (PostgreSQL's checkpoint of
        # the writes just made, say) must not always fall on the same side.
        order = list(codes.items())
        for name, code in order if i % 2 == 0 else order[::-1]:
            found = await _modify_client(code, workdir / f"{name}-{i}", 64, seconds)
            found.append(await _store_writes(code, 64, seconds))
            results[name].append([s.to_dict() for s in found])
            for s in found:
                log(
                    f"  run {i + 1} {name:<6} {s.case:<40} {s.rps:7.0f} req/s  "
                    f"p50 {s.p50_ms:6.2f} ms  p99 {s.p99_ms:6.1f} ms  errors {s.errors}"
                )
    return {
        "benchmark": "replicas",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(MOSQUITTO_20),
        "sizes": {"concurrency": 64, "seconds": seconds, "runs": runs},
        "code": {name: str(code) for name, code in codes.items()},
        "runs": results,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run, 2 s per case")
    parser.add_argument("--runs", type=int, default=3, help="runs of each code (default 3)")
    parser.add_argument("--before", type=Path, help="also run the mmc code at this checkout")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    missing = MOSQUITTO_20.available()
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    runs, seconds = (1, 2.0) if args.quick else (args.runs, 5.0)
    with tempfile.TemporaryDirectory(prefix="mmc-bench-replicas-") as tmp:
        outcome = asyncio.run(run(runs, args.before, seconds, Path(tmp)))
    print()
    print(table(outcome))
    path = args.json
    if path is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"replicas-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(outcome, indent=2) + "\n")
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
