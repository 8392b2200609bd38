"""mmc's own CPU per request on the hot API paths: ``python -m bench.cpu [--requests N]``.

Wall-clock latency on a shared machine measures the neighbours as much as mmc. This counts
what mmc itself burns: one ``mmc serve`` process against one mosquitto 2.0 broker, the
requests sent one at a time over one keep-alive connection (Bearer token, as ``make bench``
does), and the server's CPU time read from the kernel before and after each round
(``/proc/<pid>/task/*/schedstat``: nanoseconds on CPU, all of mmc's threads, aiosqlite's
included). Each path runs ``--rounds`` rounds of ``--requests`` requests; the table shows
the median CPU µs per request and the spread of the rounds.

``--callgrind`` counts instructions instead (mmc under ``valgrind --tool=callgrind``, user
space only, the counters zeroed before and dumped after each round): much slower, but the
figures hardly depend on what else the machine does, where CPU time on a shared 2-core
machine moves by 20-50 % between runs.

``--before DIR`` also runs another checkout's mmc (e.g. ``git archive`` of an older
commit), alternating with this one, so that before and after are measured by the same
script on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import MosquittoBroker, connection_body, create_connection
from testbed.serve import MmcServer

DYNSEC = "/api/projects/default/brokers/bench/dynsec"
USER = "cpu-user"


@dataclass(frozen=True)
class Path_:
    name: str
    method: str
    path: str
    body: Callable[[], Any] | None = None
    expect: int = 200


_texts = itertools.count()
PATHS = (
    Path_("GET /healthz (HTTP floor)", "GET", "/healthz"),
    Path_("GET /api/connections", "GET", "/api/connections"),
    Path_("REST getClient", "GET", f"{DYNSEC}/clients/{USER}"),
    Path_(
        "passthrough listClients",
        "POST",
        "/api/dynamic-security/bench/command",
        lambda: {"command": "listClients"},
    ),
    Path_(
        "REST modifyClient (PATCH)",
        "PATCH",
        f"{DYNSEC}/clients/{USER}",
        lambda: {"textname": f"cpu {next(_texts)}"},
    ),
)


def cpu_ns(pid: int) -> int:
    """Nanoseconds on CPU of every live thread of ``pid``."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        # A thread may end between the listing and the read.
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


class CpuTime:
    """CPU time of the process (all its threads), in µs."""

    unit = "CPU µs"

    def __init__(self, pid: int, workdir: Path) -> None:
        self.pid = pid
        self._start = 0

    def start(self) -> None:
        self._start = cpu_ns(self.pid)

    def stop(self) -> float:
        return (cpu_ns(self.pid) - self._start) / 1000


class Instructions:
    """Instructions counted by callgrind (user space), in thousands."""

    unit = "k instructions"
    wrapper = (
        "valgrind",
        "--tool=callgrind",
        "--dump-instr=no",
        "--collect-systime=no",
    )

    def __init__(self, pid: int, workdir: Path) -> None:
        self.pid = pid
        self.workdir = workdir

    def _control(self, option: str) -> None:
        subprocess.run(
            ["callgrind_control", option, str(self.pid)], check=True, capture_output=True
        )

    def start(self) -> None:
        self._control("-z")

    def stop(self) -> float:
        before = set(self.workdir.glob("callgrind.out.*"))
        self._control("-d")
        (dump,) = set(self.workdir.glob("callgrind.out.*")) - before
        for line in dump.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                dump.unlink()
                return int(line.split()[1]) / 1000
        raise RuntimeError(f"no totals in {dump}")


Meter = CpuTime | Instructions


async def _send(session: aiohttp.ClientSession, path: Path_, n: int) -> None:
    for _ in range(n):
        data = json.dumps(path.body()).encode() if path.body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        async with session.request(path.method, path.path, data=data, headers=headers) as resp:
            await resp.read()
            if resp.status != path.expect:
                raise RuntimeError(f"{path.name}: {resp.status} {await resp.text()}")


async def measure(
    workdir: Path,
    *,
    requests: int,
    rounds: int,
    mmc_path: Path | None = None,
    callgrind: bool = False,
    connections: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, list[float]]:
    """CPU µs (or thousands of instructions) per request of each path, one per round."""
    env = {"PYTHONPATH": str(mmc_path)} if mmc_path is not None else {}
    broker = MosquittoBroker(workdir / "broker", sys_interval=10)
    # The other connections, on a broker of their own (as in make bench).
    filler = MosquittoBroker(workdir / "filler", sys_interval=10) if connections > 1 else None
    meter_type: type[Meter] = Instructions if callgrind else CpuTime
    wrapper = Instructions.wrapper if callgrind else ()
    mmc = MmcServer(workdir / "mmc", env=env, wrapper=wrapper)
    out: dict[str, list[float]] = {}
    broker.start()
    if filler is not None:
        filler.start()
    try:
        mmc.start()
        await mmc.wait_ready(timeout=300 if callgrind else 30)
        meter = meter_type(mmc.pid, mmc.workdir)
        token = await mmc.admin_token()
        headers = {"Authorization": f"Bearer {token}"}
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(mmc.base_url, headers=headers, timeout=timeout) as session:
            await create_connection(session, connection_body("bench", broker))
            for i in range(1, connections):
                assert filler is not None
                await create_connection(session, connection_body(f"fill-{i:03d}", filler))
            client = {"username": USER, "password": "cpu-password", "textname": "cpu"}
            for _ in range(600):  # until the link has learnt its broker's features
                async with session.post(f"{DYNSEC}/clients", json=client) as resp:
                    if resp.status == 201:
                        break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("dynsec on the broker not ready")
            for path in PATHS:
                await _send(session, path, max(20, requests // 5))  # warm up
                figures = out.setdefault(path.name, [])
                for _ in range(rounds):
                    meter.start()
                    await _send(session, path, requests)
                    figures.append(meter.stop() / requests)
                log(f"  {path.name:<28} {statistics.median(figures):7.1f} {meter.unit}/request")
    finally:
        mmc.stop(timeout=120 if callgrind else 20)
        broker.stop()
        if filler is not None:
            filler.stop()
    return out


def table(columns: dict[str, dict[str, list[float]]], unit: str = "CPU µs") -> str:
    names = list(columns)
    lines = [
        "| path | " + " | ".join(f"{n}: {unit}/request, median (min-max)" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for path in PATHS:
        cells = []
        for n in names:
            v = columns[n].get(path.name, [])
            cells.append(f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})" if v else "-")
        lines.append(f"| {path.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    sides: list[tuple[str, Path | None]] = [("this checkout", None)]
    if args.before is not None:
        sides.insert(0, ("before", args.before))
    columns: dict[str, dict[str, list[float]]] = {name: {} for name, _ in sides}
    with tempfile.TemporaryDirectory() as tmp:
        # Sides alternate, one process each turn, so both see the same machine.
        for turn in range(args.turns):
            for name, mmc_path in sides:
                print(f"turn {turn + 1}, {name}:", flush=True)
                got = await measure(
                    Path(tmp) / f"{turn}-{name.replace(' ', '-')}",
                    requests=args.requests,
                    rounds=args.rounds,
                    mmc_path=mmc_path,
                    callgrind=args.callgrind,
                    connections=args.connections,
                )
                for path, figures in got.items():
                    columns[name].setdefault(path, []).extend(figures)
    unit = Instructions.unit if args.callgrind else CpuTime.unit
    print(table(columns, unit))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="per path and turn")
    parser.add_argument("--turns", type=int, default=2, help="mmc processes per side")
    parser.add_argument(
        "--before", type=Path, help="a checkout of mmc to compare with (run first each turn)"
    )
    parser.add_argument(
        "--callgrind", action="store_true", help="count instructions under valgrind"
    )
    parser.add_argument(
        "--connections", type=int, default=100, help="connections in mmc (make bench: 100)"
    )
    arguments = parser.parse_args()
    if arguments.callgrind and shutil.which("callgrind_control") is None:
        parser.error("--callgrind needs valgrind (apt-get install valgrind)")
    asyncio.run(main(arguments))
    sys.exit(0)
