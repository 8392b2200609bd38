"""Two `mmc serve` processes on one PostgreSQL database behave as one service."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from mmc.appkeys import connections_key
from mmc.config import Settings
from mmc.crypto import SecretBox
from mmc.store import open_database
from mmc.store.migrations import MIGRATIONS
from testbed.mosquitto import MosquittoBroker
from testbed.postgres import postgres_database
from testbed.serve import MmcServer
from tests.conftest import ADMIN_PASSWORD, SECRET_KEY, MakeClient, call, plain_body, wait_until
from tests.tcp_proxy import TcpProxy

CONFIG = """
[mmc]
password_hash_cost = 10
connect_timeout = 3.0
reconnect_min_delay = 0.1
reconnect_max_delay = 0.5
"""


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with postgres_database() as url:
        yield url


Spawn = Callable[..., MmcServer]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start a replica: `mmc serve` in a process of its own, on the given store."""
    started: list[MmcServer] = []
    config = tmp_path / "mmc.toml"
    config.write_text(CONFIG)

    def start(name: str, url: str, **env: str) -> MmcServer:
        server = MmcServer(
            tmp_path / name,
            # The first replica to start creates the admin, with this password.
            admin_password=ADMIN_PASSWORD,
            env={
                "MMC_CONFIG": str(config),
                "MMC_DATABASE_URL": url,
                "MMC_SECRET_KEY": SECRET_KEY,
                "MMC_REPLICA_ID": name,
                # Far beyond the test: a change that arrives did so by NOTIFY.
                "MMC_RECONCILE_INTERVAL": "600",
                **env,
            },
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def kill(server: MmcServer) -> None:
    os.kill(server.pid, signal.SIGKILL)
    server.stop()  # reaps it


async def connected_on(session: aiohttp.ClientSession, replica: MmcServer, token: str) -> set[str]:
    status, listing = await call(session, "GET", f"{replica.base_url}/api/connections", token=token)
    assert status == 200, listing
    return {c["id"] for c in listing if c["status"]["connected"]}


async def has(session: aiohttp.ClientSession, replica: MmcServer, token: str, *ids: str) -> bool:
    """Whether these connections, and no others, are connected on the replica."""
    return await connected_on(session, replica, token) == set(ids)


async def test_two_replicas_share_connections_sessions_and_throttling(
    spawn: Spawn, pg_url: str, own_broker: MosquittoBroker
) -> None:
    # Both start at once on an empty database: one of them migrates, neither breaks.
    a, b = spawn("a", pg_url), spawn("b", pg_url)
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(a.wait_ready(), b.wait_ready())
        conn = await asyncpg.connect(pg_url)
        try:
            versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            admins = await conn.fetchval("SELECT COUNT(*) FROM users")
        finally:
            await conn.close()
        assert [v[0] for v in versions] == list(range(1, len(MIGRATIONS) + 1))
        assert admins == 1

        token = await a.admin_token()

        # Created through A: B has a live link of its own within a second.
        body = plain_body(
            own_broker,
            credentials={
                "username": own_broker.admin_username,
                "password": own_broker.admin_password,
                "clientId": "fleet-mmc",
            },
        )
        status, _ = await call(
            session, "POST", f"{a.base_url}/api/connections", token=token, json=body
        )
        assert status == 200
        await wait_until(
            lambda: has(session, b, token, "plain"), timeout=1.0, interval=0.02, detail=b.log_tail
        )
        # Each with its own client id, so neither takes the other's session.
        await wait_until(lambda: "as fleet-mmc-b" in own_broker.log_text())
        assert "as fleet-mmc-a" in own_broker.log_text()
        await asyncio.sleep(1.0)
        assert "plain" in await connected_on(session, a, token)
        assert "plain" in await connected_on(session, b, token)
        assert "session taken over" not in own_broker.log_text()

        # Changed through B: A reconnects with the new settings.
        body["name"] = "Renamed"
        status, _ = await call(
            session, "PUT", f"{b.base_url}/api/connections/plain", token=token, json=body
        )
        assert status == 200

        async def renamed_on_a() -> bool:
            _, one = await call(session, "GET", f"{a.base_url}/api/connections/plain", token=token)
            return bool(one["name"] == "Renamed")

        await wait_until(renamed_on_a, timeout=1.0, interval=0.02)

        # Deleted through B: A's link closes (a clean DISCONNECT the broker logs).
        status, _ = await call(
            session, "DELETE", f"{b.base_url}/api/connections/plain", token=token
        )
        assert status == 200

        async def gone_on_a() -> bool:
            url = f"{a.base_url}/api/connections/plain"
            return (await call(session, "GET", url, token=token))[0] == 404

        await wait_until(gone_on_a, timeout=1.0, interval=0.02)
        await wait_until(lambda: "Client fleet-mmc-a disconnected." in own_broker.log_text())
        async with session.get(f"{a.base_url}/metrics") as resp:
            metrics = await resp.text()
        for action in ("reopened", "closed"):
            line = f'mmc_connections_followed_total{{action="{action}",trigger="notify"}} 1.0'
            assert line in metrics

    # A session cookie from A is a session on B.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        login = {"username": "admin", "password": ADMIN_PASSWORD}
        assert (await call(browser, "POST", f"{a.base_url}/auth", json=login))[0] == 200
        [cookie] = list(browser.cookie_jar)
        # A believes the session from memory from now on (MMC_SESSION_CACHE_SECONDS, 1 s)...
        assert (await call(browser, "GET", f"{a.base_url}/api/profile"))[0] == 200
        async with aiohttp.ClientSession() as other:
            headers = {"Cookie": f"{cookie.key}={cookie.value}"}
            status, profile = await call(other, "GET", f"{b.base_url}/api/profile", headers=headers)
            assert status == 200
            assert profile["username"] == "admin"
            # ...and a logout through B ends it on A.
            assert (
                await call(
                    other,
                    "POST",
                    f"{b.base_url}/logout",
                    headers={**headers, "Origin": b.base_url},
                )
            )[0] in (200, 204)
        ended = asyncio.get_running_loop().time()

        async def refused_on_a() -> bool:
            return (await call(browser, "GET", f"{a.base_url}/api/profile"))[0] == 401

        # ...so it refuses it within that window of the logout on B.
        await wait_until(refused_on_a, timeout=1.5, interval=0.05)
        assert asyncio.get_running_loop().time() - ended < 1.5

    # Failed logins count across replicas: 3 on A and 2 on B lock the user on both.
    async with aiohttp.ClientSession() as session:
        wrong = {"username": "admin", "password": "not-the-password"}
        for replica in (a, a, a, b, b):
            assert (await call(session, "POST", f"{replica.base_url}/auth", json=wrong))[0] == 401
        right = {"username": "admin", "password": ADMIN_PASSWORD}
        for replica in (a, b):
            assert (await call(session, "POST", f"{replica.base_url}/auth", json=right))[0] == 429


async def test_guesses_sent_at_once_to_two_replicas_stop_at_the_limit(
    spawn: Spawn, pg_url: str
) -> None:
    """20 wrong passwords at once, half through each replica: the counters are row-local
    (no store-wide lock), and still exactly login_max_failures (5) are checked, the others
    refused; then the right password is refused on both."""
    a = spawn("a", pg_url)
    await a.wait_ready()  # one of them creates the admin
    b = spawn("b", pg_url)
    await b.wait_ready()
    async with aiohttp.ClientSession() as session:
        wrong = {"username": "admin", "password": "not-the-password"}
        answers = await asyncio.gather(
            *(
                call(session, "POST", f"{replica.base_url}/auth", json=wrong)
                for replica in [a, b] * 10
            )
        )
        statuses = sorted(status for status, _ in answers)
        assert statuses == [401] * Settings.login_max_failures + [429] * (
            20 - Settings.login_max_failures
        ), statuses
        right = {"username": "admin", "password": ADMIN_PASSWORD}
        for replica in (a, b):
            assert (await call(session, "POST", f"{replica.base_url}/auth", json=right))[0] == 429


async def test_the_other_replica_serves_everything_when_one_is_killed(
    spawn: Spawn, pg_url: str, own_broker: MosquittoBroker
) -> None:
    a = spawn("a", pg_url)
    async with aiohttp.ClientSession() as session:
        await a.wait_ready()
        b = spawn("b", pg_url)
        await b.wait_ready()
        token = await a.admin_token()
        body = plain_body(own_broker)
        assert (
            await call(session, "POST", f"{a.base_url}/api/connections", token=token, json=body)
        )[0] == 200
        kill(a)

        # B: reads, writes, logins and the brokers behind it, all still there.
        assert (await call(session, "GET", f"{b.base_url}/readyz"))[0] == 200
        await wait_until(lambda: has(session, b, token, "plain"), timeout=5)
        status, info = await call(
            session, "GET", f"{b.base_url}/api/projects/default/brokers/plain/info", token=token
        )
        assert status == 200, info
        second = plain_body(own_broker, id="second", name="Second")
        status, _ = await call(
            session, "POST", f"{b.base_url}/api/connections", token=token, json=second
        )
        assert status == 200
        assert await connected_on(session, b, token) == {"plain", "second"}
        login = {"username": "admin", "password": ADMIN_PASSWORD}
        assert (await call(session, "POST", f"{b.base_url}/auth", json=login))[0] == 200

        # A comes back and finds everything, including what B did meanwhile.
        a2 = spawn("a2", pg_url)
        await a2.wait_ready()
        await wait_until(lambda: has(session, a2, token, "plain", "second"), timeout=5)


async def test_a_replica_that_loses_the_database_stays_alive_and_serves_reads(
    spawn: Spawn, pg_url: str, own_broker: MosquittoBroker
) -> None:
    port = urlsplit(pg_url).port
    assert port is not None
    async with (
        TcpProxy.running("127.0.0.1", port) as proxy,
        aiohttp.ClientSession() as session,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
    ):
        a = spawn("a", pg_url)
        b = spawn(
            "b",
            pg_url.replace(f":{port}/", f":{proxy.port}/"),
            MMC_DATABASE_TIMEOUT="1",
            # Every request asks the store: what works in the outage works without it.
            MMC_TOKEN_CACHE_SECONDS="0",
        )
        await asyncio.gather(a.wait_ready(), b.wait_ready())
        token = await a.admin_token()
        body = plain_body(own_broker)
        status, _ = await call(
            session, "POST", f"{a.base_url}/api/connections", token=token, json=body
        )
        assert status == 200
        await wait_until(lambda: has(session, b, token, "plain"), timeout=5)

        login = {"username": "admin", "password": ADMIN_PASSWORD}
        assert (await call(browser, "POST", f"{b.base_url}/auth", json=login))[0] == 200
        assert (await call(browser, "GET", f"{b.base_url}/api/connections"))[0] == 200

        proxy.cut()
        status, ready_body = await call(session, "GET", f"{b.base_url}/readyz")
        assert status == 503
        assert ready_body["database"] == {
            "backend": "postgresql",
            "status": "unavailable",
            "listening": ready_body["database"]["listening"],
        }
        assert (await call(session, "GET", f"{b.base_url}/healthz"))[0] == 200
        # Reads from the links go on, for a caller the store confirmed before the outage.
        assert await connected_on(session, b, token) == {"plain"}
        status, info = await call(
            session, "GET", f"{b.base_url}/api/projects/default/brokers/plain/info", token=token
        )
        assert status == 200, info
        status, listing = await call(browser, "GET", f"{b.base_url}/api/connections")
        assert status == 200, listing
        # Writes answer 503 and store nothing.
        second = plain_body(own_broker, id="second", name="Second")
        status, error = await call(
            session, "POST", f"{b.base_url}/api/connections", token=token, json=second
        )
        assert (status, error["code"]) == (503, "STORE_UNAVAILABLE")
        # Meanwhile A goes on, and its change waits for B in the database.
        status, _ = await call(
            session, "POST", f"{a.base_url}/api/connections", token=token, json=second
        )
        assert status == 200
        await asyncio.sleep(0.5)
        assert (await call(session, "GET", f"{b.base_url}/healthz"))[0] == 200

        proxy.restore()
        await b.wait_ready(timeout=15)
        await wait_until(
            lambda: has(session, b, token, "plain", "second"),
            timeout=10,
            interval=0.1,
            detail=b.log_tail,
        )


@pytest.mark.backends("postgresql")
async def test_reconciliation_catches_changes_no_notification_announced(
    make_client: MakeClient, settings: Settings, own_broker: MosquittoBroker
) -> None:
    client = await make_client(settings.replace(reconcile_interval=0.3))
    service = client.app[connections_key]
    url = f"mqtt://127.0.0.1:{own_broker.port}"
    # Written behind mmc's back, with no NOTIFY: as if the notification had been lost.
    async with open_database(settings) as other, other.transaction() as tx:
        await tx.execute(
            "INSERT INTO connections (id, name, url, project_id, username, password_enc, "
            "reject_unauthorized, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 1, 0, 0)",
            (
                "quiet",
                "Quiet",
                url,
                "default",
                own_broker.admin_username,
                SecretBox(SECRET_KEY.encode()).encrypt(own_broker.admin_password),
            ),
        )
    await wait_until(lambda: (link := service.pool.get("quiet")) is not None and link.connected)
    async with open_database(settings) as other, other.transaction() as tx:
        await tx.execute("DELETE FROM connections WHERE id = ?", ("quiet",))
    await wait_until(lambda: service.pool.get("quiet") is None)
    opened = 'mmc_connections_followed_total{action="opened",trigger="reconcile"} 1.0'
    closed = 'mmc_connections_followed_total{action="closed",trigger="reconcile"} 1.0'

    async def counted() -> bool:
        # A sync counts what it did once all of its links are done, and a link leaves the
        # pool before its old connection has finished closing.
        metrics = await (await client.get("/metrics")).text()
        return opened in metrics and closed in metrics

    await wait_until(counted, timeout=5)
    metrics = await (await client.get("/metrics")).text()
    assert "mmc_store_listening 1.0" in metrics
