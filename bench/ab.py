"""A pair-wise A/B of one change, in one run: ``python -m bench.ab [--requests N]``.

mmc runs in this process on aiohttp's test server (SQLite in a temporary directory, the
same settings as ``mmc serve``'s defaults where they matter), against one mosquitto 2.0
broker; the requests are sent one at a time from the same loop. Each case is measured in
alternating rounds, before (A) and after (B), so that both see the same machine: the
figures are p50 and p90 of each side over all its rounds, and the spread of the rounds'
p50s. Client and server share one core here: the absolute figures include the client's
own work, the differences are what to read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from mmc.app import create_app
from mmc.config import Settings
from testbed.mosquitto import MosquittoBroker

PASSWORD = "admin-password-for-ab"  # noqa: S105 - a throwaway test server
Send = Callable[[], Awaitable[Any]]
Switch = Callable[[bool], contextlib.AbstractContextManager[None]]


async def _timed(send: Send, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await send()
        out.append((time.perf_counter() - started) * 1000)
    return out


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def compare(name: str, send: Send, switch: Switch, n: int, rounds: int) -> str:
    """``switch(False)`` is before (A), ``switch(True)`` after (B)."""
    samples: dict[bool, list[float]] = {False: [], True: []}
    medians: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for after in (False, True):
            with switch(after):
                await _timed(send, 20)  # warm up this side
                times = await _timed(send, n // rounds)
            samples[after] += times
            medians[after].append(statistics.median(times))
    a, b = samples[False], samples[True]

    def spread(side: bool) -> str:
        return f"{min(medians[side]):.2f}-{max(medians[side]):.2f}"

    return (
        f"| {name} | {len(a)} | {_p(a, 0.5):.2f} / {_p(a, 0.9):.2f} ({spread(False)}) "
        f"| {_p(b, 0.5):.2f} / {_p(b, 0.9):.2f} ({spread(True)}) "
        f"| {_p(a, 0.5) - _p(b, 0.5):+.2f} ms |"
    )


@contextlib.contextmanager
def _patched(obj: Any, attr: str, value: Any, active: bool) -> Iterator[None]:
    if not active:
        yield
        return
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


@contextlib.asynccontextmanager
async def _mmc(data: Path, broker: MosquittoBroker) -> AsyncIterator[TestClient[Any, Any]]:
    settings = Settings(data_dir=data / "mmc", admin_password=PASSWORD)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await client.start_server()
    try:
        resp = await client.post("/auth", json={"username": "admin", "password": PASSWORD})
        assert resp.status == 200, await resp.text()
        origin = {"Origin": f"http://{client.host}:{client.port}"}
        await client.post(
            "/api/projects", json={"id": "default", "name": "default"}, headers=origin
        )
        body = {
            "id": "plain",
            "name": "Plain",
            "url": f"mqtt://127.0.0.1:{broker.port}",
            "credentials": {"username": broker.admin_username, "password": broker.admin_password},
        }
        resp = await client.post("/api/connections", json=body, headers=origin)
        assert resp.status == 200, await resp.text()
        resp = await client.post(
            "/api/tokens", json={"name": "ab", "role": "admin"}, headers=origin
        )
        client.token = (await resp.json())["token"]  # type: ignore[attr-defined]
        yield client
    finally:
        await client.close()


async def main(n: int, rounds: int) -> None:
    from mmc.api import dynsec as dynsec_api
    from mmc.appkeys import auth_key
    from mmc.web import own_user

    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker(Path(tmp) / "broker") as broker:
        async with _mmc(Path(tmp), broker) as client:
            command = "/api/dynamic-security/plain/command"
            bearer = {"Authorization": f"Bearer {client.token}"}  # type: ignore[attr-defined]

            async def list_clients() -> None:
                resp = await client.post(command, json={"command": "listClients"}, headers=bearer)
                assert resp.status == 200, await resp.text()
                await resp.read()

            def audit_reads(after: bool) -> contextlib.AbstractContextManager[None]:
                # Before: every passthrough POST recorded, reads included.
                return _patched(dynsec_api, "_classify", lambda *_: None, not after)

            jar = client.session.cookie_jar.filter_cookies(client.make_url("/"))
            client.session.cookie_jar.clear()
            browser = {
                "Cookie": f"mmc_session={jar['mmc_session'].value}",
                "Origin": f"http://{client.host}:{client.port}",
            }
            sessions = client.app[auth_key].sessions
            settings = sessions._settings

            async def list_clients_session() -> None:
                resp = await client.post(command, json={"command": "listClients"}, headers=browser)
                assert resp.status == 200, await resp.text()
                await resp.read()

            async def connections_session() -> None:
                resp = await client.get("/api/connections", headers=browser)
                assert resp.status == 200, await resp.text()
                await resp.read()

            def session_cache(after: bool) -> contextlib.AbstractContextManager[None]:
                # Before: the session and its user read from the store on every request.
                no_cache = settings.replace(session_cache_seconds=0)
                return _patched(sessions, "_settings", no_cache, not after)

            @contextlib.contextmanager
            def both(after: bool) -> Iterator[None]:
                with audit_reads(after), session_cache(after):
                    yield

            ds = "/api/projects/default/brokers/plain/dynsec"
            resp = await client.post(
                f"{ds}/clients", json={"username": "ab", "password": "ab-pass"}, headers=bearer
            )
            assert resp.status == 201, await resp.text()
            texts = iter(range(10**9))

            async def patch_client() -> None:
                body = {"textname": f"t{next(texts)}"}
                resp = await client.patch(f"{ds}/clients/ab", json=body, headers=bearer)
                assert resp.status == 200, await resp.text()
                await resp.read()

            def read_back(after: bool) -> contextlib.AbstractContextManager[None]:
                # Before: the change, then the read in a message of its own.
                return _patched(own_user, "goes_out_as_is", lambda _: False, not after)

            print("| case | requests | before p50 / p90 ms (round p50s) | after | p50 gain |")
            print("|---|---:|---|---|---:|")
            for name, send, switch in (
                ("passthrough listClients, token: read audited / not", list_clients, audit_reads),
                (
                    "GET /api/connections, session: store / memory",
                    connections_session,
                    session_cache,
                ),
                ("passthrough listClients, session: both", list_clients_session, both),
                ("PATCH clients/{name}, token: read-back apart / with", patch_client, read_back),
            ):
                print(await compare(name, send, switch, n, rounds), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500, help="per side")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
