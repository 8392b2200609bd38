"""The audit trail: who changed what, from where, with which outcome; newest first.

Rows are written by ``mmc.web.audit`` (one per state-changing request) and by the
command line. They never hold a request body, so they never hold a secret. The
retention caps are applied in the same transaction as each insert: the table cannot
outgrow them.

Two classes of entries are capped apart. A stranger's entry (``unauthenticated``: no
login, and not a login that succeeded: a refused anonymous request, a failed login, a
logout without a session) counts toward ``audit_max_refusals`` and evicts only the
oldest strangers' entries; every other entry (what logged-in users and the command
line did, successful logins) counts toward ``audit_max_rows``. Anybody can send
anonymous requests by the thousand a second; they must not push the records of real
changes out. ``audit_retention_days`` applies to both.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from mmc.clock import now_ms
from mmc.store.db import Database, Row

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

    @property
    def unauthenticated(self) -> bool:
        """A stranger's entry: nobody logged in (no username), or a login that failed
        (the username is only the one tried)."""
        return self.username is None or (self.auth_method == "password" and self.status >= 400)


def entry_wire(entry: AuditEntry) -> dict[str, Any]:
    """The entry as GET /api/audit and the audit event show it (no id before it is
    stored)."""
    out: dict[str, Any] = {
        "id": entry.id,
        "at": dt.datetime.fromtimestamp(entry.at / 1000, dt.UTC).isoformat(timespec="milliseconds"),
        "requestId": entry.request_id,
        "user": entry.username,
        "authMethod": entry.auth_method,
        "client": entry.client,
        "method": entry.method,
        "route": entry.route,
        "target": entry.target,
        "status": entry.status,
        "outcome": entry.outcome,
        "durationMs": entry.duration_ms,
    }
    if entry.error_code is not None:
        out["errorCode"] = entry.error_code
    return out


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

    def __init__(
        self,
        db: Database,
        *,
        max_rows: int = 0,
        retention_days: float = 0,
        max_refusals: int = 10_000,
    ) -> None:
        """``max_rows``: entries of logged-in users (0: no cap); ``max_refusals``: of
        strangers (0: none kept); ``retention_days``: of both (0: no limit)."""
        self._db = db
        self._max_rows = max_rows
        self._max_refusals = max_refusals
        self._retention_ms = int(retention_days * DAY_MS)
        self._queue: list[tuple[AuditEntry, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    def keeps(self, entry: AuditEntry) -> bool:
        """Whether ``insert`` stores the entry (strangers' not, with no room for them)."""
        return bool(self._max_refusals) or not entry.unauthenticated

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
        if not self._max_refusals:
            entries = [entry for entry in entries if not entry.unauthenticated]
        # Appends and trims check nothing: no need to queue behind other replicas' writes.
        # (So on PostgreSQL two replicas may number a class alike at the same moment: a
        # cap may then keep a row or two more, never fewer.)
        async with self._db.transaction(serialised=False) as tx:
            last: dict[bool, int] = {}
            for stranger in {entry.unauthenticated for entry in entries}:
                row = await tx.fetch_one(
                    "SELECT MAX(seq) FROM audit WHERE unauthenticated = ?", (int(stranger),)
                )
                last[stranger] = int(row[0]) if row and row[0] is not None else 0
            rows: list[tuple[Any, ...]] = []
            for entry in entries:
                last[entry.unauthenticated] += 1
                rows.append(
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
                        int(entry.unauthenticated),
                        last[entry.unauthenticated],
                    )
                )
            if rows:
                await tx.execute_many(
                    f"INSERT INTO audit ({_INSERTED}, unauthenticated, seq) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            # Each cap is one range of the (unauthenticated, seq) index: cheap when there
            # is nothing to delete.
            for stranger, newest in last.items():
                cap = self._max_refusals if stranger else self._max_rows
                if cap:
                    await tx.execute(
                        "DELETE FROM audit WHERE unauthenticated = ? AND seq <= ?",
                        (int(stranger), newest - cap),
                    )
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
