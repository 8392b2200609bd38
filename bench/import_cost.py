"""What an import costs: ``python -m bench.import_cost [--quick] [--runs N] [--json FILE]``
(``make bench-import``).

A generated configuration (1,000 clients, 200 roles, 20 groups; every client with two roles
and a group, every group with three roles) is imported through ``POST .../dynsec/import``
into a fresh mosquitto 2.0 broker (``--mosquitto 2.1``: 2.1) with dynamic security, then:

- *again*: the same document once more (nothing to change: the plan's export only);
- *shrink*: the document without 40 of its roles, all of them held by clients or groups
  (taken from their holders, then deleted);
- *envelope*: 40 ``deleteRole`` in one ``{commands}`` envelope (the passthrough), each role
  held by a client.

Each step reports its wall time, the MQTT messages mmc published on ``$CONTROL`` and the
commands in them (counted on the wire by a proxy at mmc's side, bench/mqtt_count.py, so the
count does not depend on mmc's own metrics) and the listings among them.

``--before DIR`` also runs the mmc code at DIR (main's checkout, say) the same way, runs
alternating with this checkout's, each with brokers of its own: the table shows both, the
median over the runs and the spread (min-max).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import connection_body, create_connection, machine
from bench.mqtt_count import ControlCounter
from testbed.mosquitto import HOST, MOSQUITTO_20, MOSQUITTO_VERSIONS, Mosquitto, MosquittoBroker
from testbed.serve import REPO, MmcServer

RESULTS = Path(__file__).resolve().parent / "results"
BROKER = "/api/projects/default/brokers/target"
LISTINGS = ("listClients", "listGroups", "listRoles")
STEPS = ("fresh", "again", "shrink", "envelope")
REQUEST_TIMEOUT = 120


def document(clients: int, roles: int, groups: int) -> dict[str, Any]:
    """The configuration: deterministic, every reference resolvable."""
    role_names = [f"role-{i:03d}" for i in range(roles)]
    group_names = [f"group-{i:02d}" for i in range(groups)]
    return {
        "roles": [
            {
                "rolename": name,
                "textname": f"Role {name}",
                "acls": [
                    {
                        "acltype": "publishClientSend",
                        "topic": f"t/{name}/#",
                        "priority": 0,
                        "allow": True,
                    },
                    {
                        "acltype": "subscribePattern",
                        "topic": f"t/{name}/+",
                        "priority": 0,
                        "allow": True,
                    },
                ],
            }
            for name in role_names
        ],
        "groups": [
            {
                "groupname": name,
                "roles": [{"rolename": role_names[(i * 3 + k) % roles]} for k in range(3)],
            }
            for i, name in enumerate(group_names)
        ],
        "clients": [
            {
                "username": f"client-{i:04d}",
                "password": f"password-{i:04d}",
                "textname": f"Device {i}",
                "roles": sorted(
                    (
                        {"rolename": role_names[i % roles]},
                        {"rolename": role_names[(i * 7 + 1) % roles]},
                    ),
                    key=lambda r: r["rolename"],
                )
                if i % roles != (i * 7 + 1) % roles
                else [{"rolename": role_names[i % roles]}],
                "groups": [{"groupname": group_names[i % groups]}],
            }
            for i in range(clients)
        ],
    }


def without_roles(doc: dict[str, Any], doomed: set[str]) -> dict[str, Any]:
    """The document with ``doomed`` roles gone, and every reference to them."""

    def keep(refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in refs if r["rolename"] not in doomed]

    return {
        "roles": [r for r in doc["roles"] if r["rolename"] not in doomed],
        "groups": [{**g, "roles": keep(g["roles"])} for g in doc["groups"]],
        "clients": [{**c, "roles": keep(c["roles"])} for c in doc["clients"]],
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _step(
    session: aiohttp.ClientSession,
    counter: ControlCounter,
    method: str,
    path: str,
    body: Any,
    pids: dict[str, int],
) -> tuple[dict[str, Any], Any]:
    counter.reset()
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    begin = time.perf_counter()
    async with session.request(method, path, json=body) as resp:
        answer = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status} {answer}")
    seconds = time.perf_counter() - begin
    commands: Counter[str] = counter.commands
    return {
        "seconds": round(seconds, 3),
        **{f"{name}_cpu": round(cpu_seconds(pid) - cpu[name], 2) for name, pid in pids.items()},
        "messages": counter.messages,
        "commands": sum(commands.values()),
        "listings": sum(commands[name] for name in LISTINGS),
        "by_command": dict(sorted(commands.items())),
    }, answer


async def one_run(
    code: Path,
    workdir: Path,
    clients: int,
    roles: int,
    groups: int,
    mosquitto: Mosquitto,
    request_timeout: float = REQUEST_TIMEOUT,
) -> dict[str, dict[str, Any]]:
    """Every step on a fresh broker and a fresh mmc running the code at ``code``."""
    broker = MosquittoBroker(workdir / "broker", sys_interval=10, mosquitto=mosquitto)
    # mosquitto 2.0 rewrites its whole dynsec.json after every change: with 1,000 clients
    # a message of 100 createClient takes it longer than the default 5 s request timeout.
    env = {"PYTHONPATH": str(code), "MMC_REQUEST_TIMEOUT": str(request_timeout)}
    mmc = MmcServer(workdir / "mmc", env=env)
    out: dict[str, dict[str, Any]] = {}
    try:
        broker.start()
        async with ControlCounter.running(HOST, broker.port) as counter:
            mmc.start()
            await mmc.wait_ready()
            token = await mmc.admin_token()
            assert broker.pid is not None
            pids = {"mmc": mmc.pid, "broker": broker.pid}
            headers = {"Authorization": f"Bearer {token}"}
            timeout = aiohttp.ClientTimeout(total=600)
            async with aiohttp.ClientSession(
                mmc.base_url, headers=headers, timeout=timeout
            ) as session:
                body = connection_body("target", broker)
                body["url"] = f"mqtt://{HOST}:{counter.port}"
                await create_connection(session, body)
                await _until_dynsec(session)
                doc = document(clients, roles, groups)
                path = f"{BROKER}/dynsec/import"
                out["fresh"], report = await _step(session, counter, "POST", path, doc, pids)
                _check_report("fresh", report)
                out["again"], report = await _step(session, counter, "POST", path, doc, pids)
                _check_report("again", report, changed=False)
                doomed = {r["rolename"] for r in doc["roles"][:40]}
                out["shrink"], report = await _step(
                    session, counter, "POST", path, without_roles(doc, doomed), pids
                )
                _check_report("shrink", report)
                # 40 more roles, each held by one client, deleted by one envelope.
                held = [f"held-{i:02d}" for i in range(40)]
                setup = [{"command": "createRole", "rolename": r} for r in held] + [
                    {"command": "addClientRole", "username": f"client-{i:04d}", "rolename": r}
                    for i, r in enumerate(held)
                ]
                await _step(
                    session,
                    counter,
                    "POST",
                    f"{BROKER}/dynamic-security",
                    {"commands": setup},
                    pids,
                )
                out["envelope"], answer = await _step(
                    session,
                    counter,
                    "POST",
                    f"{BROKER}/dynamic-security",
                    {"commands": [{"command": "deleteRole", "rolename": r} for r in held]},
                    pids,
                )
                failed = [r for r in answer["responses"] if "error" in r]
                if failed:
                    raise RuntimeError(f"envelope: {failed[:3]}")
                export = await (await session.get(f"{BROKER}/dynsec/export")).json()
                if any(r["rolename"] in doomed | set(held) for r in export["roles"]):
                    raise RuntimeError("roles left over after the deletions")
                if len(export["clients"]) != clients + 1:  # and the admin
                    raise RuntimeError(f"{len(export['clients'])} clients after the import")
    finally:
        mmc.stop()
        broker.stop()
    return out


def _check_report(step: str, report: dict[str, Any], *, changed: bool = True) -> None:
    if report["errors"]:
        raise RuntimeError(f"{step}: {len(report['errors'])} errors, {report['errors'][:3]}")
    if report["changed"] is not changed:
        raise RuntimeError(f"{step}: changed is {report['changed']}")


async def _until_dynsec(session: aiohttp.ClientSession, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(f"{BROKER}/dynsec/roles") as resp:
            await resp.read()
            if resp.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("dynsec not ready on the target broker")
        await asyncio.sleep(0.1)


def _spread(values: list[float]) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:g}"
    return f"{med:g} ({min(values):g}-{max(values):g})"


def table(outcome: dict[str, Any]) -> str:
    variants: dict[str, list[dict[str, dict[str, Any]]]] = outcome["runs"]
    lines = [
        "| step | code | wall s | mmc CPU s | broker CPU s | MQTT messages "
        "| $CONTROL commands | listings |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for step in STEPS:
        for name, runs in variants.items():
            cells = [
                _spread([run[step][key] for run in runs])
                for key in ("seconds", "mmc_cpu", "broker_cpu", "messages", "commands", "listings")
            ]
            lines.append(f"| {step} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def run(
    runs: int, before: Path | None, clients: int, roles: int, groups: int, workdir: Path,
    log: Callable[[str], None] = print, mosquitto: Mosquitto = MOSQUITTO_20,
    request_timeout: float = REQUEST_TIMEOUT,
) -> dict[str, Any]:  # fmt: skip
    codes = {"after": REPO} if before is None else {"before": before, "after": REPO}
    results: dict[str, list[dict[str, dict[str, Any]]]] = {name: [] for name in codes}
    started = time.monotonic()
    for i in range(runs):
        for name, code in codes.items():
            result = await one_run(
                code, workdir / f"{name}-{i}", clients, roles, groups, mosquitto, request_timeout
            )
            results[name].append(result)
            log(
                f"  run {i + 1} {name:<6} "
                + "  ".join(
                    f"{s} {r['seconds']:.2f} s/{r['messages']} msg/{r['commands']} cmd"
                    for s, r in result.items()
                )
            )
    return {
        "benchmark": "import",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(mosquitto),
        "sizes": {"clients": clients, "roles": roles, "groups": groups, "runs": runs},
        "request_timeout": request_timeout,
        "code": {name: str(code) for name, code in codes.items()},
        "runs": results,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.import_cost", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 clients, 50 roles, one run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each code (default 3)")
    parser.add_argument("--before", type=Path, help="also run the mmc code at this checkout")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--mosquitto",
        choices=sorted(MOSQUITTO_VERSIONS),
        default="2.0",
        help="the broker's version: Debian's 2.0, or 2.1 built by `make mosquitto-2.1`",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=REQUEST_TIMEOUT,
        help=f"mmc's MMC_REQUEST_TIMEOUT (default {REQUEST_TIMEOUT:g} s; mmc's own is 5)",
    )
    args = parser.parse_args(argv)
    mosquitto = MOSQUITTO_VERSIONS[args.mosquitto]
    missing = mosquitto.available()
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    sizes = (200, 50, 10) if args.quick else (1000, 200, 20)
    runs = 1 if args.quick else args.runs
    with tempfile.TemporaryDirectory(prefix="mmc-bench-import-") as tmp:
        outcome = asyncio.run(
            run(
                runs,
                args.before,
                *sizes,
                Path(tmp),
                mosquitto=mosquitto,
                request_timeout=args.request_timeout,
            )
        )
    print()
    print(table(outcome))
    path = args.json
    if path is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"import-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(outcome, indent=2) + "\n")
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
