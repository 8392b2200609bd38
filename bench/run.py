"""The API benchmark: ``python -m bench.run [--quick] [--json FILE]`` (``make bench``).

Starts three mosquitto 2.0 brokers with dynamic security on loopback and one mmc process:

- *target*: the broker mmc manages; its only subscriber is mmc's link;
- *reference*: the same dynsec data, for the bare aiomqtt clients (one command per
  message, and one that batches as mmc does: the broker's ceiling) and ``mosquitto_ctrl``
  (mosquitto 2.0 sends every ``$CONTROL`` reply to every subscriber of the response topic,
  so the references must not share a broker with mmc's link, nor mmc with them);
- *filler*: carries the other connections of the ``GET /api/connections`` case.

Then it measures each case at each concurrency, pair-wise with its bare reference in the
same run, prints one table and the targets as pass/fail, and writes one JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.fernet import Fernet

from bench.common import (
    BareControl,
    MosquittoBroker,
    Stats,
    WsCommands,
    connection_body,
    create_connection,
    http_load,
    machine,
    mosquitto_ctrl_times,
    run_load,
)
from mmc.brokers.control import MAX_BATCH
from testbed.mosquitto import MOSQUITTO_20, MOSQUITTO_VERSIONS, Mosquitto
from testbed.postgres import postgres_database
from testbed.serve import MmcServer

RESULTS = Path(__file__).resolve().parent / "results"
USER = "bench-user"
BROKER = "/api/projects/default/brokers/bench"
DYNSEC = f"{BROKER}/dynsec"


@dataclass(frozen=True)
class Sizes:
    concurrencies: tuple[int, ...] = (1, 16, 64)
    max_requests: int = 5000
    max_seconds: float = 3.0
    ctrl_runs: int = 20
    connections: int = 100
    listing_concurrency: int = 32


FULL = Sizes()
QUICK = replace(FULL, max_requests=1000, max_seconds=1.0, ctrl_runs=5)


@dataclass(frozen=True)
class Command:
    """A dynsec case: the REST request and the same plugin command sent bare."""

    name: str
    method: str
    path: str
    bare: Callable[[], dict[str, Any]]
    body: Callable[[], Any] | None = None


# The dynsec cases also measured over the WebSocket channel (GET /api/ws).
WS_COMMANDS = frozenset({"listClients"})
# The plugin's own envelope through mmc (POST .../dynamic-security {commands}) and bare:
# this many getClient in one request, one MQTT message.
ENVELOPE = 100
ENVELOPE_CASE = f"envelope of {ENVELOPE} getClient"


def _counter() -> Callable[[], int]:
    n = 0

    def next_() -> int:
        nonlocal n
        n += 1
        return n

    return next_


_edit = _counter()
COMMANDS = (
    Command(
        "getClient",
        "GET",
        f"{DYNSEC}/clients/{USER}",
        lambda: {"command": "getClient", "username": USER},
    ),
    Command(
        "listClients",
        "GET",
        f"{DYNSEC}/clients",
        lambda: {"command": "listClients", "verbose": False, "count": -1, "offset": 0},
    ),
    Command(
        # The MMC's endpoint, a read: no audit row (issue 20), the same command bare.
        "passthrough listClients",
        "POST",
        "/api/dynamic-security/bench/command",
        lambda: {"command": "listClients"},
        body=lambda: {"command": "listClients"},
    ),
    Command(
        "modifyClient",
        "PATCH",
        f"{DYNSEC}/clients/{USER}",
        lambda: {"command": "modifyClient", "username": USER, "textname": f"bench {_edit()}"},
        body=lambda: {"textname": f"bench {_edit()}"},
    ),
)


def _find(results: list[Stats], case: str, concurrency: int) -> Stats | None:
    for stats in results:
        if stats.case == case and stats.concurrency == concurrency:
            return stats
    return None


def targets(results: list[Stats], ctrl_ms: float, sizes: Sizes) -> list[dict[str, Any]]:
    """The issue's targets, each with the figures it was judged on."""
    out: list[dict[str, Any]] = []
    low, high = min(sizes.concurrencies), max(sizes.concurrencies)
    rest1 = _find(results, "REST getClient", low)
    for name, slack in (
        ("getClient", 0.5),
        ("passthrough listClients", 0.5),
        ("modifyClient", 1.0),
    ):
        rest, bare = _find(results, f"REST {name}", low), _find(results, f"bare {name}", low)
        if rest and bare:
            out.append(
                {
                    "target": f"c={low}: REST {name} p50 <= bare p50 + {slack} ms",
                    "measured": f"{rest.p50_ms:.2f} ms vs {bare.p50_ms:.2f} + {slack} ms",
                    "pass": rest.p50_ms <= bare.p50_ms + slack and rest.errors == 0,
                }
            )
    rest64, bare64 = _find(results, "REST getClient", high), _find(results, "bare getClient", high)
    if rest64 and bare64:
        out.append(
            {
                "target": f"c={high}: REST getClient req/s >= 1.0 x bare, p99 <= 50 ms, no error",
                "measured": (
                    f"{rest64.rps:.0f} vs {bare64.rps:.0f} req/s "
                    f"({rest64.rps / max(bare64.rps, 1e-9):.2f}x), p99 {rest64.p99_ms:.1f} ms, "
                    f"{rest64.errors} errors"
                ),
                "pass": rest64.rps >= bare64.rps and rest64.p99_ms <= 50 and rest64.errors == 0,
            }
        )
    for name in ("getClient", "modifyClient"):
        rest, ceiling = (
            _find(results, f"REST {name}", high),
            _find(results, f"batching bare {name}", high),
        )
        if rest and ceiling:
            out.append(
                {
                    "target": (
                        f"c={high}: REST {name} req/s >= 0.9 x batching bare "
                        f"(batch {MAX_BATCH}), p99 <= 50 ms, no error"
                    ),
                    "measured": (
                        f"{rest.rps:.0f} vs {ceiling.rps:.0f} req/s "
                        f"({rest.rps / max(ceiling.rps, 1e-9):.2f}x), p99 {rest.p99_ms:.1f} ms, "
                        f"{rest.errors} errors"
                    ),
                    "pass": rest.rps >= 0.9 * ceiling.rps
                    and rest.p99_ms <= 50
                    and rest.errors == 0,
                }
            )
    rest_env, bare_env = (
        _find(results, f"REST {ENVELOPE_CASE}", low),
        _find(results, f"bare {ENVELOPE_CASE}", low),
    )
    if rest_env and bare_env:
        out.append(
            {
                "target": f"c={low}: {ENVELOPE_CASE} through mmc >= 0.9 x bare (envelopes/s)",
                "measured": (
                    f"{rest_env.rps:.0f} vs {bare_env.rps:.0f} /s "
                    f"({rest_env.rps / max(bare_env.rps, 1e-9):.2f}x), "
                    f"p50 {rest_env.p50_ms:.2f} vs {bare_env.p50_ms:.2f} ms"
                ),
                "pass": rest_env.rps >= 0.9 * bare_env.rps and rest_env.errors == 0,
            }
        )
    if rest1 and ctrl_ms:
        out.append(
            {
                "target": ">= 40x faster per command than mosquitto_ctrl",
                "measured": (
                    f"{ctrl_ms:.1f} ms vs {rest1.p50_ms:.2f} ms "
                    f"({ctrl_ms / max(rest1.p50_ms, 1e-9):.0f}x)"
                ),
                "pass": ctrl_ms >= 40 * rest1.p50_ms,
            }
        )
    listing = _find(results, "GET /api/connections", sizes.listing_concurrency)
    if listing:
        out.append(
            {
                "target": (
                    f"GET /api/connections ({sizes.connections}) at c={sizes.listing_concurrency}"
                    ": >= 2000 req/s, p99 <= 50 ms"
                ),
                "measured": f"{listing.rps:.0f} req/s, p99 {listing.p99_ms:.1f} ms",
                "pass": listing.rps >= 2000 and listing.p99_ms <= 50 and listing.errors == 0,
            }
        )
    return out


def table(results: list[Stats]) -> str:
    """One markdown table; a REST or WS dynsec row shows its ratio to the bare row of the
    same run."""
    lines = [
        "| case | conc. | p50 ms | p99 ms | req/s | errors | vs bare (p50, req/s) "
        "| vs batching bare (req/s) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for s in results:
        ratio = ceiling = ""
        if s.case.startswith(("REST ", "WS ")):
            name = s.case.partition(" ")[2]
            bare = _find(results, "bare " + name, s.concurrency)
            if bare is not None and bare.p50_ms and bare.rps:
                ratio = f"{s.p50_ms - bare.p50_ms:+.2f} ms, {s.rps / bare.rps:.2f}x"
            batching = _find(results, "batching bare " + name, s.concurrency)
            if batching is not None and batching.rps:
                ceiling = f"{s.rps / batching.rps:.2f}x"
        lines.append(
            f"| {s.case} | {s.concurrency} | {s.p50_ms:.2f} | {s.p99_ms:.2f} | {s.rps:.0f} "
            f"| {s.errors} | {ratio} | {ceiling} |"
        )
    return "\n".join(lines)


async def _retry(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {timeout} s")
        await asyncio.sleep(0.1)


async def _prepare(
    session: aiohttp.ClientSession,
    target: MosquittoBroker,
    reference: MosquittoBroker,
    filler: MosquittoBroker,
    sizes: Sizes,
) -> None:
    await create_connection(session, connection_body("bench", target))
    for i in range(1, sizes.connections):
        await create_connection(session, connection_body(f"fill-{i:03d}", filler))
    client = {"username": USER, "password": "bench-password", "textname": "bench"}

    async def created() -> bool:
        async with session.post(f"{DYNSEC}/clients", json=client) as resp:
            return resp.status == 201

    # Until the link has learnt its broker's features, dynsec answers 503/404.
    await _retry(created, 15, "dynsec on the target broker")
    async with BareControl(reference) as bare:
        entry = await bare.request({"command": "createClient", **client})
        if "error" in entry:
            raise RuntimeError(f"createClient on the reference broker: {entry}")


async def run(
    sizes: Sizes,
    workdir: Path,
    log: Callable[[str], None] = print,
    *,
    store: str = "sqlite",
    mosquitto: Mosquitto = MOSQUITTO_20,
) -> dict[str, Any]:
    if store == "postgresql":
        # A database of its own on the local server (as the tests do), dropped afterwards.
        async with postgres_database() as url:
            env = {"MMC_DATABASE_URL": url, "MMC_SECRET_KEY": Fernet.generate_key().decode()}
            return await _run(sizes, workdir, log, store, env, mosquitto)
    return await _run(sizes, workdir, log, store, {}, mosquitto)


async def _run(
    sizes: Sizes,
    workdir: Path,
    log: Callable[[str], None],
    store: str,
    env: dict[str, str],
    mosquitto: Mosquitto,
) -> dict[str, Any]:
    target, reference, filler = (
        MosquittoBroker(workdir / name, sys_interval=10, mosquitto=mosquitto)
        for name in ("target", "reference", "filler")
    )
    mmc = MmcServer(workdir / "mmc", env=env)
    results: list[Stats] = []
    started = time.monotonic()
    try:
        for broker in (target, reference, filler):
            broker.start()
        mmc.start()
        await mmc.wait_ready()
        token = await mmc.admin_token()
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(mmc.base_url, headers=headers) as session:
            await _prepare(session, target, reference, filler, sizes)
        load: dict[str, Any] = {
            "max_requests": sizes.max_requests,
            "max_seconds": sizes.max_seconds,
        }

        def record(stats: Stats) -> None:
            results.append(stats)
            log(
                f"  {stats.case:<28} c={stats.concurrency:<3} p50 {stats.p50_ms:7.2f} ms  "
                f"p99 {stats.p99_ms:7.2f} ms  {stats.rps:8.0f} req/s  errors {stats.errors}"
            )

        base = mmc.base_url
        listing_levels = sorted({*sizes.concurrencies, sizes.listing_concurrency})
        for c in listing_levels:
            record(
                await http_load(
                    "GET /api/connections", base, token, "GET", "/api/connections",
                    concurrency=c, **load,
                )
            )  # fmt: skip
        for c in sizes.concurrencies:
            record(
                await http_load(
                    "GET /healthz (HTTP floor)", base, token, "GET", "/healthz",
                    concurrency=c, **load,
                )
            )  # fmt: skip
        for c in sizes.concurrencies:
            record(
                await http_load(
                    "REST broker info", base, token, "GET", f"{BROKER}/info",
                    concurrency=c, **load,
                )
            )  # fmt: skip
        for command in COMMANDS:
            for c in sizes.concurrencies:
                record(
                    await http_load(
                        f"REST {command.name}", base, token, command.method, command.path,
                        body=command.body, concurrency=c, **load,
                    )
                )  # fmt: skip
                # One reference client connected at a time: mosquitto 2.0 sends every
                # reply to every subscriber of the response topic.
                for case, batch in (("bare", 1), ("batching bare", MAX_BATCH)):
                    if batch > 1 and c == 1:
                        continue  # nothing to batch: the same as the bare client
                    async with BareControl(reference, batch=batch) as bare:

                        async def one(command: Command = command, bare: BareControl = bare) -> bool:
                            return "error" not in await bare.request(command.bare())

                        record(await run_load(f"{case} {command.name}", one, concurrency=c, **load))
                if command.name in WS_COMMANDS:
                    # The MMC UI's channel: every worker's commands on one socket.
                    async with WsCommands(base, token, "bench") as ws:

                        async def over_ws(command: Command = command) -> bool:
                            frame = await ws.command("dynamic-security", command.bare())
                            return not frame.get("error")

                        record(await run_load(f"WS {command.name}", over_ws, concurrency=c, **load))
        envelope = [{"command": "getClient", "username": USER}] * ENVELOPE
        for c in sizes.concurrencies[:1]:
            record(
                await http_load(
                    f"REST {ENVELOPE_CASE}", base, token, "POST",
                    f"{BROKER}/dynamic-security", body=lambda: {"commands": envelope},
                    concurrency=c, **load,
                )
            )  # fmt: skip
            async with BareControl(reference) as bare:

                async def one_envelope(bare: BareControl = bare) -> bool:
                    answers = await bare.envelope(envelope)
                    return not any("error" in a for a in answers)

                record(await run_load(f"bare {ENVELOPE_CASE}", one_envelope, concurrency=c, **load))
        ctrl = mosquitto_ctrl_times(reference, ["getClient", USER], sizes.ctrl_runs)
        ctrl_ms = statistics.median(ctrl) * 1000
        log(f"  mosquitto_ctrl getClient      median {ctrl_ms:.1f} ms over {len(ctrl)} runs")
        rss = mmc.rss_mb()
    finally:
        mmc.stop()
        for broker in (target, reference, filler):
            broker.stop()
    return {
        "benchmark": "api",
        "store": store,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(mosquitto),
        "sizes": sizes.__dict__,
        "results": [s.to_dict() for s in results],
        "mosquitto_ctrl": {
            "command": "getClient",
            "runs": len(ctrl),
            "median_ms": round(ctrl_ms, 2),
            "min_ms": round(min(ctrl) * 1000, 2),
            "max_ms": round(max(ctrl) * 1000, 2),
        },
        "mmc_rss_mb": round(rss, 1),
        "seconds": round(time.monotonic() - started, 1),
        "targets": targets(results, ctrl_ms, sizes),
    }


def report(outcome: dict[str, Any]) -> str:
    results = [Stats(**r) for r in outcome["results"]]
    ctrl = outcome["mosquitto_ctrl"]
    lines = [
        table(results),
        "",
        f"mosquitto_ctrl dynsec getClient: median {ctrl['median_ms']:.1f} ms "
        f"(min {ctrl['min_ms']:.1f}, max {ctrl['max_ms']:.1f}) over {ctrl['runs']} runs; "
        f"mmc resident memory {outcome['mmc_rss_mb']:.0f} MB",
        "",
        "| target | measured | result |",
        "|---|---|---|",
    ]
    for t in outcome["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'PASS' if t['pass'] else 'FAIL'} |")
    return "\n".join(lines)


def write_json(outcome: dict[str, Any], path: Path | None, prefix: str) -> Path:
    if path is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(outcome, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests, 1 s per case")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="mmc's store: a SQLite file, or a new database on the local PostgreSQL",
    )
    parser.add_argument(
        "--mosquitto",
        choices=sorted(MOSQUITTO_VERSIONS),
        default="2.0",
        help="the brokers' version: Debian's 2.0, or 2.1 built by `make mosquitto-2.1`",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    mosquitto = MOSQUITTO_VERSIONS[args.mosquitto]
    missing = mosquitto.available()
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mmc-bench-") as tmp:
        outcome = asyncio.run(run(sizes, Path(tmp), store=args.store, mosquitto=mosquitto))
    print()
    print(report(outcome))
    print(f"\nwritten to {write_json(outcome, args.json, 'bench')}")
    return 0 if all(t["pass"] for t in outcome["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
