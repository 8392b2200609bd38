"""The store writes of a login, at once from two replicas: ``python bench/store_writes.py
URL [--concurrency 64] [--seconds 5]`` prints one JSON object.

Two stores on the PostgreSQL database at URL stand for two replicas; each of
``concurrency`` workers (half on each store) records logins as mmc does: the attempt
reserved on its pair, address and username, the success given back, the session created
and touched. Different users from different addresses: no two workers share a row, so
whatever makes them wait for each other is the store's own locking.

Run by path with PYTHONPATH set to the mmc checkout to measure (it imports nothing of the
benchmarks), so that bench/replicas.py can run main's code and a branch's the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import time

from cryptography.fernet import Fernet

from mmc.clock import now_ms
from mmc.config import Settings
from mmc.store import open_database
from mmc.store.login_failures import Limit, LoginFailureRepository
from mmc.store.sessions import SessionRepository
from mmc.store.users import UserRepository


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[max(1, min(len(ordered), math.ceil(q / 100 * len(ordered)))) - 1]


async def main(url: str, concurrency: int, seconds: float) -> dict[str, object]:
    settings = Settings(database_url=url, secret_key=Fernet.generate_key().decode())
    async with open_database(settings) as one, open_database(settings) as two:
        stores = (one, two)
        for k in range(concurrency):
            await UserRepository(one).insert(f"u{k}", "hash", ("viewer",))
        latencies: list[float] = []
        errors = 0
        deadline = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal errors
            db = stores[k % 2]
            failures, sessions = LoginFailureRepository(db), SessionRepository(db)
            address, user = f"10.1.{k // 250}.{k % 250}", f"u{k}"
            pair, addr, name = f"pair:{address} {user}", f"addr:{address}", f"user:{user}"
            limits = {pair: Limit(5, 60_000, 1000), addr: Limit(20, 60_000, 1000)}
            while time.perf_counter() < deadline:
                begin = time.perf_counter()
                try:
                    now = now_ms()
                    reservation = await failures.reserve(limits, name, now, window=60_000)
                    if not reservation.allowed:
                        raise RuntimeError("refused")
                    await failures.succeeded(pair, [addr, name], now)
                    session = secrets.token_hex(16)
                    await sessions.create(session, user)
                    await sessions.touch(session, now + 1)
                except Exception:  # noqa: BLE001 - a failed login is a data point
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - begin)

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "case": "login store writes (reserve, succeeded, session create, touch)",
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "p50_ms": round(_percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 99) * 1000, 3),
        "rps": round(len(latencies) / elapsed, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.url, args.concurrency, args.seconds))))
