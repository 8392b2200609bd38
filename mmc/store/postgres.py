"""The shared backend: PostgreSQL through an asyncpg pool, for several mmc replicas.

Write transactions take one advisory lock, so they run one at a time across all replicas
as they do on SQLite, and every check-then-write keeps its meaning. Row-local writes (a
session's touch, login counters, appends to the audit trail) do not: PostgreSQL's row locks
keep each of them exact, and they no longer queue behind every other replica's writes.
A write that changes a connection NOTIFYs the others; each replica LISTENs on a connection
of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit

import asyncpg

from mmc.errors import StoreUnavailable
from mmc.store.db import ChangeHandler, Database, IntegrityViolation, ResyncHandler, Row, Tx
from mmc.store.migrations import migrate

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key of the store-wide write lock ("mmc" in ASCII).
WRITE_LOCK = 0x6D6D63
# Failures that mean "the database cannot be reached or cannot take this now", not a bug.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)
_ANY_FAILURE: tuple[type[BaseException], ...] = (*_UNAVAILABLE, asyncpg.PostgresError)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}@{netloc}").geturl()


@functools.lru_cache(maxsize=1024)
def dialect(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (our SQL has no ``?`` in literals)."""
    pieces = sql.split("?")
    out = [pieces[0]]
    for number, piece in enumerate(pieces[1:], start=1):
        out.append(f"${number}")
        out.append(piece)
    return "".join(out)


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise IntegrityViolation(str(exc)) from exc
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(
            f"The data store cannot be {what}: {exc or type(exc).__name__}"
        ) from exc


def _rowcount(status: str) -> int:
    """The count in a command tag such as ``UPDATE 3`` or ``INSERT 0 1``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresTx(Tx):
    def __init__(self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return _rowcount(await self._conn.execute(dialect(sql), *params))

    async def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(dialect(sql), list(rows))

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return cast(list[Row], await self._conn.fetch(dialect(sql), *params))

    async def notify(self, channel: str, payload: str) -> None:
        # Delivered at COMMIT, to every listener but only if the transaction commits.
        await self._conn.execute("SELECT pg_notify($1, $2)", channel, payload)


class PostgresDatabase(Database):
    backend: ClassVar[str] = "postgresql"
    shared: ClassVar[bool] = True

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], url: str, *, timeout: float) -> None:
        self._pool = pool
        self._url = url
        self._timeout = timeout
        self._listening = False

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, url: str, *, pool_size: int = 10, timeout: float = 5.0
    ) -> AsyncIterator[PostgresDatabase]:
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=timeout,
                command_timeout=timeout,
                # Idle connections go: a replica that saw a burst does not hold them forever.
                max_inactive_connection_lifetime=60,
            )
        except _ANY_FAILURE as exc:
            raise StoreUnavailable(
                f"Cannot connect to the database {redact(url)}: {exc or type(exc).__name__}"
            ) from exc
        try:
            db = cls(pool, url, timeout=timeout)
            async with db.transaction() as tx:
                await migrate(tx, cls.backend)
            yield db
        finally:
            # Bounded: a pool whose server vanished must not hold up shutdown.
            try:
                await asyncio.wait_for(pool.close(), timeout)
            except _ANY_FAILURE:
                pool.terminate()

    @contextlib.asynccontextmanager
    async def transaction(self, *, serialised: bool = True) -> AsyncIterator[Tx]:
        with _mapped("written"):
            async with (
                self._pool.acquire(timeout=self._timeout) as conn,
                conn.transaction(),
            ):
                if serialised:
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                yield PostgresTx(conn)

    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        with _mapped("read"):
            async with self._pool.acquire(timeout=self._timeout) as conn:
                return cast(list[Row], await conn.fetch(dialect(sql), *params))

    async def ping(self) -> None:
        await self.fetch_one("SELECT 1")

    @property
    def listening(self) -> bool:
        return self._listening

    @contextlib.asynccontextmanager
    async def listen(
        self, channel: str, on_change: ChangeHandler, on_resync: ResyncHandler
    ) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(
            self._listen_forever(channel, on_change, on_resync), name=f"mmc-listen-{channel}"
        )
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _listen_forever(
        self, channel: str, on_change: ChangeHandler, on_resync: ResyncHandler
    ) -> None:
        """Keep one connection LISTENing; after every (re)connect, resync: whatever was
        committed while it was down was never delivered to us."""
        delay = 0.1
        while True:
            try:
                await self._listen_once(channel, on_change, on_resync)
            except _ANY_FAILURE as exc:
                log.warning(
                    "change feed %s: %s; retrying in %.1f s",
                    channel,
                    exc or type(exc).__name__,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _listen_once(
        self, channel: str, on_change: ChangeHandler, on_resync: ResyncHandler
    ) -> None:
        conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(
            self._url, timeout=self._timeout
        )
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())

        def deliver(
            _conn: asyncpg.Connection[asyncpg.Record]
            | asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
            _pid: int,
            _channel: str,
            payload: object,
        ) -> None:
            on_change(str(payload))

        try:
            await conn.add_listener(channel, deliver)
            self._listening = True
            log.info("change feed %s: listening", channel)
            on_resync()
            # A silently dead TCP connection delivers nothing and reports nothing: ask.
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(5.0, self._timeout)):
                        await lost.wait()
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=self._timeout)
            raise ConnectionError("the listening connection was closed")
        finally:
            self._listening = False
            conn.terminate()
