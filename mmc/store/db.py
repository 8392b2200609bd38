"""The store's one interface: a ``Database`` with reads, write transactions and a change feed.

Two backends implement it (``mmc.store.sqlite``: one process, the default;
``mmc.store.postgres``: replicas sharing one database). Repositories write their SQL once,
portable, with ``?`` placeholders; a backend translates what it must.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Protocol, overload


class Row(Protocol):
    """A result row, by position or by column name (sqlite3.Row and asyncpg.Record both are)."""

    @overload
    def __getitem__(self, key: int, /) -> Any: ...
    @overload
    def __getitem__(self, key: str, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...


class IntegrityViolation(Exception):
    """A write broke a constraint (a duplicate key, mostly); the transaction is undone."""


# The channel on which a write says which connection changed (payload: its id).
CONNECTIONS_CHANNEL = "mmc_connections"


class Tx(abc.ABC):
    """The statements of one write transaction: all of them take effect, or none."""

    @abc.abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""

    @abc.abstractmethod
    async def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @abc.abstractmethod
    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        for row in await self.fetch_all(sql, params):
            return row
        return None

    @abc.abstractmethod
    async def notify(self, channel: str, payload: str) -> None:
        """Tell the other processes on this store, once (and only if) the transaction commits."""


ChangeHandler = Callable[[str], None]
ResyncHandler = Callable[[], None]


class Database(abc.ABC):
    """Reads run on their own; writes go through ``transaction()``.

    Write transactions are serialised store-wide (SQLite: one writer; PostgreSQL: an
    advisory lock, unless a transaction says it checks nothing beyond its own rows), so a
    check inside one (the last admin, the connection limit, a project still in use) holds
    when it commits, whichever replica runs it. Do not nest them.
    """

    backend: ClassVar[str]
    # True when other processes (replicas) share the store: their changes arrive by listen().
    shared: ClassVar[bool]

    @abc.abstractmethod
    async def fetch_all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]: ...

    async def fetch_one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        """The first row of a query that returns at most a few (by key, or an aggregate)."""
        for row in await self.fetch_all(sql, params):
            return row
        return None

    @abc.abstractmethod
    def transaction(self, *, serialised: bool = True) -> contextlib.AbstractAsyncContextManager[Tx]:
        """Begin ... commit, or roll back on any error: nothing is half-written. Raises
        StoreUnavailable when the store cannot take a write. ``serialised=False`` is for
        writes that check nothing (appends) or nothing beyond the rows they write, each
        decided by one statement on its own row (an UPSERT, an UPDATE ... WHERE): they need
        not wait for the others' turn. Such a transaction that writes several rows takes
        them in one order (by key) everywhere, so that two never deadlock."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """A trivial query; raises when the store does not answer."""

    @contextlib.asynccontextmanager
    async def listen(
        self, channel: str, on_change: ChangeHandler, on_resync: ResyncHandler
    ) -> AsyncIterator[None]:
        """Call ``on_change(payload)`` for each notification another process commits, and
        ``on_resync()`` whenever some may have been missed (the feed was down). A store
        nobody else writes to has nothing to say."""
        yield

    @property
    def listening(self) -> bool:
        """Whether the change feed is up (always, for a store nobody else writes to)."""
        return True

    async def get_meta(self, name: str) -> str | None:
        row = await self.fetch_one("SELECT value FROM meta WHERE name = ?", (name,))
        return str(row[0]) if row else None

    async def set_meta(self, name: str, value: str) -> None:
        async with self.transaction() as tx:
            await tx.execute("DELETE FROM meta WHERE name = ?", (name,))
            await tx.execute("INSERT INTO meta (name, value) VALUES (?, ?)", (name, value))
