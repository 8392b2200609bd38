"""The embedded backend: one SQLite file, one process, a connection to write and one to read."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import aiosqlite

from mmc.errors import StoreUnavailable
from mmc.store.db import Database, IntegrityViolation, Row, Tx
from mmc.store.files import prepare_sqlite_file
from mmc.store.migrations import migrate


class SqliteTx(Tx):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            cur = await self._conn.execute(sql, tuple(params))
        except sqlite3.IntegrityError as exc:
            raise IntegrityViolation(str(exc)) from exc
        return cur.rowcount

    async def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            await self._conn.executemany(sql, [tuple(r) for r in rows])
        except sqlite3.IntegrityError as exc:
            raise IntegrityViolation(str(exc)) from exc

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return cast(list[Row], list(await self._conn.execute_fetchall(sql, tuple(params))))

    async def notify(self, channel: str, payload: str) -> None:
        """Nobody else shares the file: nothing to tell."""


async def _enable_wal(conn: aiosqlite.Connection, attempts: int = 100) -> None:
    # On a new file, two connections switching at once can get SQLITE_BUSY at once: the
    # busy handler is skipped where waiting could deadlock. Only a moment: try again.
    for attempt in range(attempts):
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.02)
        else:
            return


class SqliteDatabase(Database):
    """Two aiosqlite connections: one writes, the other reads.

    SQLite has one transaction per connection: two requests that both ran ``BEGIN`` on
    it would see "cannot start a transaction within a transaction", and one's ROLLBACK
    would undo the other's statements. ``transaction()`` therefore holds a lock from
    ``BEGIN IMMEDIATE`` to ``COMMIT``/``ROLLBACK``: writes queue, each whole or not at all.

    Reads go to a connection of their own. On the writer's connection they would see the
    rows of a transaction still open, which may yet be rolled back (a refused "demote the
    last admin" was visible to authorisation checks for a moment). Under WAL a reader
    sees the last commit and never waits for the writer: each read is its own snapshot,
    so a write is visible to the next read once ``transaction()`` has returned.
    """

    backend: ClassVar[str] = "sqlite"
    shared: ClassVar[bool] = False

    def __init__(self, conn: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._conn = conn
        self._reader = reader
        self._tx = SqliteTx(conn)
        self._write_lock = asyncio.Lock()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[SqliteDatabase]:
        await asyncio.to_thread(prepare_sqlite_file, path)
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            conn.row_factory = aiosqlite.Row
            # First: switching to WAL needs a moment alone with the file, and another
            # process (mmc users, a second server) may be opening it too.
            await conn.execute("PRAGMA busy_timeout=5000")
            # WAL keeps readers going during a write; FULL makes an answered write
            # survive a crash of the process or the machine.
            await _enable_wal(conn)
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA foreign_keys=ON")
            # The file is in WAL mode now (that is persistent): the reader needs no switch.
            async with aiosqlite.connect(path, isolation_level=None) as reader:
                reader.row_factory = aiosqlite.Row
                await reader.execute("PRAGMA busy_timeout=5000")
                # A read that tried to write would be a bug: make it fail, not succeed.
                await reader.execute("PRAGMA query_only=ON")
                db = cls(conn, reader)
                async with db.transaction() as tx:
                    await migrate(tx, cls.backend)
                yield db

    @contextlib.asynccontextmanager
    async def transaction(self, *, serialised: bool = True) -> AsyncIterator[Tx]:
        # SQLite has one writer at a time whatever the caller needs.
        async with self._write_lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"The data store cannot be written: {exc}") from exc
            try:
                yield self._tx
                await self._conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise StoreUnavailable(f"The data store cannot be written: {exc}") from exc
                raise

    # One trip to aiosqlite's thread per query (execute + fetch + close would be three,
    # each a wake-up of the event loop): this runs on every authenticated request.
    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        return cast(list[Row], list(await self._reader.execute_fetchall(sql, tuple(params))))

    async def ping(self) -> None:
        await self.fetch_one("SELECT 1")
