"""The audit trail: who changed what, from where, with which outcome; newest first.

Rows are written by ``mmc.web.audit`` (one per state-changing request) and by the
command line. They never hold a request body, so they never hold a secret. The
retention caps (``audit_retention_days``, ``audit_max_rows``) are applied in the
same transaction as each insert: the table cannot outgrow them.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from mmc.store.db import Database, Row, now_ms

DAY_MS = 86_400_000
_INSERTED = (
    "at, request_id, username, auth_method, client, method, route, target, status, "
    "outcome, error_code, duration_ms"
)
_COLUMNS = "id, " + _INSERTED


def outcome_of(status: int) -> str:
    """``success`` below 400, ``denied`` for 401/403/429, else ``failure``."""
    if status < 400:
        return "success"
    if status in (401, 403, 429):
        return "denied"
    return "failure"


@dataclass(frozen=True)
class AuditEntry:
    request_id: str
    username: str | None
    auth_method: str | None
    client: str
    method: str
    route: str
    target: dict[str, str]
    status: int
    error_code: str | None
    duration_ms: int
    at: int = field(default_factory=now_ms)
    id: int | None = None

    @property
    def outcome(self) -> str:
        return outcome_of(self.status)


@dataclass(frozen=True)
class AuditQuery:
    user: str | None = None
    method: str | None = None
    route: str | None = None
    status: int | None = None
    outcome: str | None = None
    since: int | None = None
    until: int | None = None
    before_id: int | None = None
    limit: int = 100


def _from_row(row: Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=row["at"],
        request_id=row["request_id"],
        username=row["username"],
        auth_method=row["auth_method"],
        client=row["client"],
        method=row["method"],
        route=row["route"],
        target=json.loads(row["target"]),
        status=row["status"],
        error_code=row["error_code"],
        duration_ms=row["duration_ms"],
    )


class AuditRepository:
    """Inserts are group-committed: entries that arrive while a batch is being written go
    into the next transaction together, so concurrent writers share one fsync instead of
    queueing for one each. ``insert`` still returns only once its row is committed."""

    def __init__(self, db: Database, *, max_rows: int = 0, retention_days: float = 0) -> None:
        self._db = db
        self._max_rows = max_rows
        self._retention_ms = int(retention_days * DAY_MS)
        self._queue: list[tuple[AuditEntry, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def insert(self, entry: AuditEntry) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((entry, done))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_batches(), name="mmc-audit-writer")
        await asyncio.shield(done)

    async def _write_batches(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await self._write([entry for entry, _ in batch])
            except Exception as exc:  # noqa: BLE001 - each waiting caller gets the error
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _write(self, entries: list[AuditEntry]) -> None:
        # Appends and trims check nothing: no need to queue behind other replicas' writes.
        async with self._db.transaction(serialised=False) as tx:
            await tx.execute_many(
                f"INSERT INTO audit ({_INSERTED}) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        entry.at,
                        entry.request_id,
                        entry.username,
                        entry.auth_method,
                        entry.client,
                        entry.method,
                        entry.route,
                        json.dumps(entry.target, sort_keys=True),
                        entry.status,
                        entry.outcome,
                        entry.error_code,
                        entry.duration_ms,
                    )
                    for entry in entries
                ],
            )
            # Both caps use an index (rowid, at): cheap when there is nothing to delete.
            if self._max_rows:
                row = await tx.fetch_one("SELECT MAX(id) FROM audit")
                newest = row[0] if row else None
                if newest is not None:
                    await tx.execute("DELETE FROM audit WHERE id <= ?", (newest - self._max_rows,))
            if self._retention_ms:
                await tx.execute("DELETE FROM audit WHERE at < ?", (now_ms() - self._retention_ms,))

    async def query(self, q: AuditQuery) -> list[AuditEntry]:
        """Newest first; ``before_id`` continues a previous page."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("username", q.user),
            ("method", q.method),
            ("route", q.route),
            ("status", q.status),
            ("outcome", q.outcome),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if q.since is not None:
            where.append("at >= ?")
            params.append(q.since)
        if q.until is not None:
            where.append("at < ?")
            params.append(q.until)
        if q.before_id is not None:
            where.append("id < ?")
            params.append(q.before_id)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} FROM audit {clause}ORDER BY id DESC LIMIT ?",  # noqa: S608
            (*params, q.limit),
        )
        return [_from_row(r) for r in rows]

    async def count(self) -> int:
        row = await self._db.fetch_one("SELECT COUNT(*) FROM audit")
        return int(row[0]) if row else 0
