"""The SQLite database: opening, migrations, transactions, and mapping of write failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from mmc.errors import StoreUnavailable

log = logging.getLogger(__name__)

# Append only: each entry is applied once, in order, inside one transaction.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE connections (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        url TEXT NOT NULL,
        project_id TEXT NOT NULL,
        client_id TEXT,
        username TEXT,
        password_enc TEXT,
        ca TEXT,
        cert TEXT,
        key_enc TEXT,
        reject_unauthorized INTEGER NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )
    """,
    # Small facts about the store itself, e.g. a token that proves the secret key is right.
    """
    CREATE TABLE meta (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        roles TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )
    """,
    # Only a SHA-256 of each session id and token is stored: a copy of the database
    # does not log anybody in.
    """
    CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
        created_at BIGINT NOT NULL,
        last_seen BIGINT NOT NULL
    )
    """,
    """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_by TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        valid_until BIGINT
    )
    """,
    """
    CREATE TABLE login_failures (
        subject TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        first_at BIGINT NOT NULL,
        locked_until BIGINT NOT NULL
    )
    """,
    # Projects group connections (a broker is a connection seen through its project).
    """
    CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        description TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )
    """,
    # Connections stored before projects existed keep their project: create it.
    """
    INSERT INTO projects (id, name, description, created_at, updated_at)
    SELECT DISTINCT project_id, project_id, NULL, 0, 0 FROM connections
    """,
    # The audit trail: one row per state-changing request (mmc.web.audit). Never bodies.
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at BIGINT NOT NULL,
        request_id TEXT NOT NULL,
        username TEXT,
        auth_method TEXT,
        client TEXT NOT NULL,
        method TEXT NOT NULL,
        route TEXT NOT NULL,
        target TEXT NOT NULL,
        status INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        error_code TEXT,
        duration_ms INTEGER NOT NULL
    )
    """,
    "CREATE INDEX audit_at ON audit (at)",
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Database:
    """One aiosqlite connection shared by every request.

    SQLite has one transaction per connection: two requests that both ran ``BEGIN`` on
    it would see "cannot start a transaction within a transaction", and one's ROLLBACK
    would undo the other's statements. ``transaction()`` therefore holds a lock from
    ``BEGIN IMMEDIATE`` to ``COMMIT``/``ROLLBACK``: writes queue, each whole or not at all.
    Do not nest ``transaction()`` (it would wait for itself).
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._write_lock = asyncio.Lock()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[Database]:
        path.parent.mkdir(parents=True, exist_ok=True)
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            conn.row_factory = aiosqlite.Row
            # WAL keeps readers going during a write; FULL makes an answered write
            # survive a crash of the process or the machine.
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA busy_timeout=5000")
            db = cls(conn)
            await db.migrate()
            yield db

    async def migrate(self) -> None:
        async with self.transaction():
            await self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
            )
            async with self._conn.execute("SELECT MAX(version) FROM schema_migrations") as cur:
                row = await cur.fetchone()
            current = row[0] if row and row[0] is not None else 0
            for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
                log.info("applying store migration %d", version)
                await self._conn.execute(sql)
                await self._conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, now_ms()),
                )

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: nothing is half-written."""
        async with self._write_lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"The data store cannot be written: {exc}") from exc
            try:
                yield self._conn
                await self._conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise StoreUnavailable(f"The data store cannot be written: {exc}") from exc
                raise

    # One trip to aiosqlite's thread per query (execute + fetch + close would be three,
    # each a wake-up of the event loop): this runs on every authenticated request.
    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        return list(await self._conn.execute_fetchall(sql, tuple(params)))

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        """The first row of a query that returns at most a few (by key, or an aggregate)."""
        rows = await self._conn.execute_fetchall(sql, tuple(params))
        for row in rows:
            return row
        return None

    async def get_meta(self, name: str) -> str | None:
        row = await self.fetch_one("SELECT value FROM meta WHERE name = ?", (name,))
        return str(row[0]) if row else None

    async def set_meta(self, name: str, value: str) -> None:
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM meta WHERE name = ?", (name,))
            await conn.execute("INSERT INTO meta (name, value) VALUES (?, ?)", (name, value))

    async def ping(self) -> None:
        await self.fetch_one("SELECT 1")
