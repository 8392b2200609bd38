"""The store's contract, on both backends: migrations, constraints, all-or-nothing writes,
writes serialised across processes, and the change feed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mmc.clock import now_ms
from mmc.config import Settings
from mmc.crypto import SecretBox
from mmc.errors import Conflict, InvalidInput, NotAllowed, StoreUnavailable
from mmc.store import open_database
from mmc.store.connections import ConnectionRecord, ConnectionRepository
from mmc.store.db import CONNECTIONS_CHANNEL, Database
from mmc.store.login_failures import Limit, LoginFailureRepository
from mmc.store.migrations import MIGRATIONS
from mmc.store.postgres import PostgresDatabase, dialect, redact
from mmc.store.projects import ProjectRepository
from mmc.store.sessions import SessionRepository
from mmc.store.users import UserRepository
from tests.conftest import BACKENDS, SECRET_KEY, wait_until
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.backends(*BACKENDS)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    async with open_database(settings) as database:
        yield database


def record(ident: str, **changes: object) -> ConnectionRecord:
    return ConnectionRecord(ident, f"Broker {ident}", "mqtt://127.0.0.1:1").replace(**changes)


async def test_migrations_apply_once_even_when_processes_start_together(
    settings: Settings,
) -> None:
    # Four processes' worth of stores opening an empty database at the same moment.
    async def open_and_count() -> int:
        async with open_database(settings) as db:
            row = await db.fetch_one("SELECT COUNT(*), MAX(version) FROM schema_migrations")
            assert row is not None
            assert row[1] == len(MIGRATIONS)
            return int(row[0])

    counts = await asyncio.gather(*(open_and_count() for _ in range(4)))
    assert counts == [len(MIGRATIONS)] * 4
    async with open_database(settings) as db:
        assert await db.fetch_all("SELECT * FROM connections") == []
        await ProjectRepository(db).ensure_default()
        assert [p.id for p in await ProjectRepository(db).list()] == ["default"]


async def test_connections_round_trip_with_encrypted_secrets(db: Database) -> None:
    repo = ConnectionRepository(db, SecretBox(SECRET_KEY.encode()))
    await ProjectRepository(db).ensure_default()
    stored = await repo.insert(record("a", username="u", password="s3cret", key="a2V5"))
    assert await repo.get("a") == stored
    raw = await db.fetch_one("SELECT password_enc, key_enc FROM connections WHERE id = ?", ("a",))
    assert raw is not None
    assert "s3cret" not in raw[0]
    assert raw[1] != "a2V5"
    updated = await repo.update(stored.replace(url="mqtt://127.0.0.1:2", password=None))
    assert await repo.get("a") == updated
    assert (await repo.list())[0].password is None
    assert await repo.delete("a") is True
    assert await repo.delete("a") is False
    assert await repo.get("a") is None


async def test_constraints_refuse_duplicates_and_write_nothing(db: Database) -> None:
    repo = ConnectionRepository(db, SecretBox(SECRET_KEY.encode()))
    await ProjectRepository(db).ensure_default()
    await repo.insert(record("a"))
    with pytest.raises(NotAllowed):
        await repo.insert(record("a", name="Other name"))
    with pytest.raises(NotAllowed):
        await repo.insert(record("b", name="Broker a"))
    with pytest.raises(InvalidInput):
        await repo.insert(record("c", project_id="nowhere"))
    with pytest.raises(NotAllowed, match="Maximum"):
        await repo.insert(record("d"), limit=1)
    assert [r.id for r in await repo.list()] == ["a"]

    users = UserRepository(db)
    await users.insert("ann", "hash", ("admin",))
    with pytest.raises(Conflict):
        await users.insert("ann", "hash", ("viewer",))
    assert [u.username for u in await users.list()] == ["ann"]


async def test_a_failing_transaction_leaves_nothing_behind(db: Database) -> None:
    async def write_then_fail() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO meta (name, value) VALUES (?, ?)", ("x", "1"))
            assert await tx.fetch_one("SELECT value FROM meta WHERE name = ?", ("x",))
            raise RuntimeError("half-way")

    with pytest.raises(RuntimeError):
        await write_then_fail()
    assert await db.get_meta("x") is None
    # The store still takes writes afterwards (the transaction was really ended).
    await db.set_meta("x", "2")
    assert await db.get_meta("x") == "2"


class _Undo(Exception):
    pass


async def test_reads_never_see_a_write_in_progress(db: Database) -> None:
    """A refused change (the last admin demoted, then rolled back) must never be seen by
    a read, such as an authorisation check, while its transaction is open; and reads do
    not wait for the writer."""
    users = UserRepository(db)
    await users.insert("ann", "hash", ("admin",))
    written = asyncio.Event()
    release = asyncio.Event()

    async def demote_then_undo() -> None:
        async with db.transaction() as tx:
            await tx.execute("UPDATE users SET roles = ? WHERE username = ?", ("viewer", "ann"))
            await tx.execute("INSERT INTO meta (name, value) VALUES (?, ?)", ("probe", "1"))
            # The transaction itself sees its rows...
            assert await tx.fetch_one("SELECT value FROM meta WHERE name = ?", ("probe",))
            written.set()
            await release.wait()
            raise _Undo

    task = asyncio.get_running_loop().create_task(demote_then_undo())
    try:
        await asyncio.wait_for(written.wait(), 5)
        # ...nobody else does, and reading does not queue behind the open transaction.
        async with asyncio.timeout(2):
            assert await db.get_meta("probe") is None
            ann = await users.get("ann")
            assert ann is not None
            assert ann.roles == ("admin",)
    finally:
        release.set()
        with pytest.raises(_Undo):
            await task
    assert await db.get_meta("probe") is None

    # A committed write is seen by the very next read.
    await db.set_meta("probe", "2")
    assert await db.get_meta("probe") == "2"


async def test_row_counts(db: Database) -> None:
    users = UserRepository(db)
    await users.insert("ann", "hash", ("admin",))
    await users.insert("bob", "hash", ("viewer",))
    assert await users.update("bob", roles=("editor",)) is True
    assert await users.update("nobody", roles=("editor",)) is False
    async with db.transaction() as tx:
        assert await tx.execute("UPDATE users SET updated_at = ?", (1,)) == 2
        assert await tx.execute("DELETE FROM users WHERE username = ?", ("zed",)) == 0


async def test_writes_from_two_processes_are_serialised(settings: Settings) -> None:
    """Check-then-write stays true across replicas: of two admins demoted at once through
    two stores, one keeps the role; of two connections inserted at the limit, one gets in;
    failures counted at once from both are all counted."""
    async with open_database(settings) as one, open_database(settings) as two:
        await UserRepository(one).insert("ann", "hash", ("admin",))
        await UserRepository(one).insert("bob", "hash", ("admin",))
        results = await asyncio.gather(
            UserRepository(one).update("ann", roles=("viewer",)),
            UserRepository(two).update("bob", roles=("viewer",)),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["Conflict", "bool"]
        admins = [u for u in await UserRepository(two).list() if "admin" in u.roles]
        assert len(admins) == 1

        # The connection limit, counted by two stores inserting at once: one gets in.
        await ProjectRepository(one).ensure_default()
        box = SecretBox(SECRET_KEY.encode())
        inserted = await asyncio.gather(
            ConnectionRepository(one, box).insert(record("x"), limit=1),
            ConnectionRepository(two, box).insert(record("y"), limit=1),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in inserted) == ["ConnectionRecord", "NotAllowed"]
        assert len(await ConnectionRepository(two, box).list()) == 1

        failures = [LoginFailureRepository(one), LoginFailureRepository(two)]
        await asyncio.gather(
            *(
                failures[i % 2].reserve(
                    {"addr:x": Limit(100, 60_000, 1000)}, "user:carol", 1000 + i, window=60_000
                )
                for i in range(20)
            )
        )
        row = await one.fetch_one(
            "SELECT failures FROM login_failures WHERE subject = ?", ("user:carol",)
        )
        assert row is not None
        assert row[0] == 20


async def test_login_attempts_are_reserved_atomically(settings: Settings) -> None:
    """20 attempts at once through two stores: exactly the limit (5) may be evaluated,
    the rest are refused until the lock ends; nothing written later lowers the lock."""
    pair = {"pair:10.0.0.9 admin": Limit(5, 60_000, 30_000)}
    async with open_database(settings) as one, open_database(settings) as two:
        repos = [LoginFailureRepository(one), LoginFailureRepository(two)]
        now = 1_000_000
        answers = await asyncio.gather(
            *(repos[i % 2].reserve(pair, "user:admin", now, window=60_000) for i in range(20))
        )
        allowed = [a for a in answers if a.allowed]
        assert len(allowed) == 5
        assert sorted(a.counted for a in allowed) == [1, 2, 3, 4, 5]
        assert [a.counted for a in allowed if a.locks] == [5]  # the one that set the lock
        assert {a.locked_until for a in answers if not a.allowed} == {now + 30_000}
        # Only evaluated attempts count on the username.
        row = await one.fetch_one(
            "SELECT failures FROM login_failures WHERE subject = ?", ("user:admin",)
        )
        assert row is not None
        assert row[0] == 5

        # A success while locked neither clears nor lowers the lock; a refused retry
        # does not extend it.
        await repos[0].succeeded("pair:10.0.0.9 admin", ["user:admin"], now + 1)
        later = await repos[1].reserve(pair, "user:admin", now + 10_000, window=60_000)
        assert (later.allowed, later.locked_until) == (False, now + 30_000)
        # When the lock has ended, counting starts over.
        after = await repos[0].reserve(pair, "user:admin", now + 30_001, window=60_000)
        assert after.allowed
        row = await one.fetch_one(
            "SELECT failures FROM login_failures WHERE subject = ?", ("pair:10.0.0.9 admin",)
        )
        assert row is not None
        assert row[0] == 1


@pytest.mark.backends("postgresql")
async def test_row_local_writes_do_not_wait_for_the_store_wide_lock(settings: Settings) -> None:
    """While one replica holds the store-wide write lock (a long check-then-write), the
    other still records logins and session activity: those writes concern their own rows
    only. A serialised write does wait, as before."""
    async with open_database(settings) as one, open_database(settings) as two:
        await UserRepository(one).insert("ann", "old-hash", ("admin",))
        sessions = SessionRepository(two)
        await sessions.create("gone", "ann")
        failures = LoginFailureRepository(two)
        pair = {"pair:10.0.0.1 ann": Limit(5, 60_000, 30_000)}
        async with one.transaction():  # holds the advisory lock until the block ends

            async def row_local() -> None:
                await failures.reserve(pair, "user:ann", 1000, window=60_000)
                await failures.succeeded("pair:10.0.0.1 ann", ["user:ann"], 1001)
                await sessions.create("s1", "ann")
                await sessions.touch("s1", now_ms() + 1000)
                await sessions.delete("gone")
                assert await UserRepository(two).replace_hash("ann", "old-hash", "new-hash")
                await failures.purge(0, 2000)

            await asyncio.wait_for(row_local(), timeout=3)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(two.set_meta("probe", "x"), timeout=0.5)
        assert await two.get_meta("probe") is None
        assert {s.id_hash for s in [await sessions.get("s1")] if s} == {"s1"}
        assert await sessions.get("gone") is None


async def test_a_session_touch_never_goes_back_in_time(db: Database) -> None:
    """Two replicas touching one session with their own clocks: the later time stays."""
    await UserRepository(db).insert("ann", "hash", ("admin",))
    sessions = SessionRepository(db)
    created = await sessions.create("s", "ann")
    await sessions.touch("s", created.last_seen + 5000)
    await sessions.touch("s", created.last_seen + 2000)  # a replica a little behind
    touched = await sessions.get("s")
    assert touched is not None
    assert touched.last_seen == created.last_seen + 5000


async def test_concurrent_attempts_and_successes_never_deadlock(settings: Settings) -> None:
    """Attempts and successes on overlapping subjects, at once through two stores, none of
    them serialised store-wide: each takes its rows in one order, so none waits for the
    other crosswise (PostgreSQL would abort one after deadlock_timeout), and every attempt
    on the username is counted once, less the ones given back."""
    async with open_database(settings) as one, open_database(settings) as two:
        repos = [LoginFailureRepository(one), LoginFailureRepository(two)]
        limits = {
            "addr:10.0.0.2": Limit(1000, 60_000, 1000),
            "pair:10.0.0.2 ann": Limit(1000, 60_000, 1000),
        }

        async def attempt(i: int) -> None:
            repo = repos[i % 2]
            reservation = await repo.reserve(limits, "user:ann", 1000 + i, window=60_000)
            assert reservation.allowed
            if i % 3 == 0:
                await repo.succeeded("pair:10.0.0.2 ann", ["addr:10.0.0.2", "user:ann"], 1000)
            await repo.purge(0, 1000)

        await asyncio.wait_for(asyncio.gather(*(attempt(i) for i in range(60))), timeout=20)
        row = await one.fetch_one(
            "SELECT failures FROM login_failures WHERE subject = ?", ("user:ann",)
        )
        assert row is not None
        assert row[0] == 60 - 20


async def test_an_address_lock_survives_a_success(db: Database) -> None:
    repo = LoginFailureRepository(db)
    address = {"addr:10.0.0.7": Limit(3, 60_000, 30_000)}
    now = 5_000_000
    for i in range(3):
        assert (await repo.reserve(address, f"user:u{i}", now + i, window=60_000)).allowed
    # The third attempt locked the address; the third login succeeding changes nothing.
    await repo.succeeded("pair:10.0.0.7 u2", ["addr:10.0.0.7", "user:u2"], now + 3)
    refused = await repo.reserve(address, "user:u3", now + 4, window=60_000)
    assert (refused.allowed, refused.locked_until) == (False, now + 2 + 30_000)

    # Below the limit, a success gives back its own attempt: logins that succeed
    # behind a shared address never add up to a lock.
    shared = {"addr:10.0.0.8": Limit(3, 60_000, 30_000)}
    for i in range(10):
        assert (await repo.reserve(shared, "user:ok", now + i, window=60_000)).allowed
        await repo.succeeded("pair:10.0.0.8 ok", ["addr:10.0.0.8", "user:ok"], now + i)


async def test_the_change_feed_reports_committed_connection_changes(
    settings: Settings,
) -> None:
    heard: list[str] = []
    resyncs: list[None] = []
    async with open_database(settings) as writer, open_database(settings) as reader:
        await ProjectRepository(writer).ensure_default()
        repo = ConnectionRepository(writer, SecretBox(SECRET_KEY.encode()))
        async with reader.listen(CONNECTIONS_CHANNEL, heard.append, lambda: resyncs.append(None)):
            if not reader.shared:
                # Nobody else writes to a SQLite file mmc serves: nothing to hear.
                await repo.insert(record("a"))
                await asyncio.sleep(0.2)
                assert (heard, resyncs, reader.listening) == ([], [], True)
                return
            await wait_until(lambda: reader.listening)
            assert len(resyncs) == 1  # once listening: what happened before is unknown
            await repo.insert(record("a"))
            await repo.update(record("a", url="mqtt://127.0.0.1:2"))
            with pytest.raises(NotAllowed):
                await repo.insert(record("a"))  # rolled back: never announced
            await repo.delete("a")
            await repo.delete("a")  # nothing deleted: nothing to announce
            await wait_until(lambda: len(heard) >= 3)
            await asyncio.sleep(0.2)
            assert heard == ["a", "a", "a"]


@pytest.mark.backends("postgresql")
async def test_postgres_unreachable_and_lost(settings: Settings) -> None:
    assert settings.database_url is not None
    port = urlsplit(settings.database_url).port
    assert port is not None
    async with TcpProxy.running("127.0.0.1", port) as proxy:
        url = settings.database_url.replace(f":{port}/", f":{proxy.port}/")
        proxied = settings.replace(database_url=url, database_timeout=1.0)
        async with open_database(proxied) as db:
            heard: list[str] = []
            resyncs: list[None] = []
            async with db.listen(CONNECTIONS_CHANNEL, heard.append, lambda: resyncs.append(None)):
                await wait_until(lambda: db.listening)
                proxy.cut()
                with pytest.raises(StoreUnavailable):
                    await db.fetch_all("SELECT 1")
                with pytest.raises(StoreUnavailable):
                    await db.set_meta("x", "1")
                await wait_until(lambda: not db.listening, timeout=10)
                proxy.restore()
                await wait_until(lambda: db.listening, timeout=15)
                # After the feed came back, a resync covers what it may have missed.
                assert len(resyncs) == 2
                await db.set_meta("x", "1")
                assert await db.get_meta("x") == "1"

        proxy.cut()
        with pytest.raises(StoreUnavailable, match="Cannot connect") as refused:
            async with open_database(proxied):
                pass
        message = str(refused.value.message)
        assert f"Cannot connect to the database {redact(url)}:" in message
        # The URL's password (the tests' default has one) never reaches a message.
        assert f":{urlsplit(url).password}@" not in message


def test_sql_is_written_once_for_both_dialects() -> None:
    assert dialect("SELECT a FROM t WHERE b = ? AND c IN (?, ?)") == (
        "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)"
    )
    assert redact("postgresql://mmc:pw@db:5432/mmc") == "postgresql://mmc@db:5432/mmc"
    assert redact("postgresql://db.example/mmc") == "postgresql://db.example/mmc"


def test_backend_is_chosen_by_the_url(tmp_path: Path) -> None:
    assert Settings().database_backend == "sqlite"
    assert Settings(database_url="postgres://x@h/db").database_backend == "postgresql"
    lite = Settings(database_url="sqlite:////var/lib/mmc/store.db")
    assert (lite.database_backend, lite.db_path) == ("sqlite", Path("/var/lib/mmc/store.db"))
    assert Settings(database_url="sqlite:///rel.db").db_path == Path("rel.db")
    assert issubclass(PostgresDatabase, Database)


async def test_a_limit_of_zero_or_below_never_locks(db: Database) -> None:
    repo = LoginFailureRepository(db)
    for attempts in (0, -1):
        subject = {f"addr:off{attempts}": Limit(attempts, 60_000, 30_000)}
        for i in range(30):
            assert (await repo.reserve(subject, "user:x", 1000 + i, window=60_000)).allowed


async def test_purge_keeps_locks_and_current_windows(db: Database) -> None:
    repo = LoginFailureRepository(db)
    limit = {"addr:10.0.0.1": Limit(1, 60_000, 500_000)}
    await repo.reserve(limit, "user:old", 1000, window=60_000)  # locks until 501_000
    await repo.reserve({"addr:10.0.0.2": Limit(5, 60_000, 1)}, "user:new", 200_000, window=60_000)
    await repo.purge(before=100_000, now=300_000)
    rows = await db.fetch_all("SELECT subject FROM login_failures ORDER BY subject")
    # user:old's window is over; the address lock and the recent counters stay.
    assert [r[0] for r in rows] == ["addr:10.0.0.1", "addr:10.0.0.2", "user:new"]
