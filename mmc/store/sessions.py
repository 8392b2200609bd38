"""Browser sessions, stored server-side so that they survive a restart.

A session's own writes (created, touched, ended) concern its row only: they do not wait
for the store-wide write turn (``serialised=False``), which on PostgreSQL is one advisory
lock for every replica. Creating one needs its user: the foreign key (ON DELETE CASCADE)
makes the insert wait for, or fail after, a concurrent delete of that user, so a session
never outlives its user whichever commits first.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmc.clock import now_ms
from mmc.store.db import Database


@dataclass(frozen=True)
class SessionRecord:
    id_hash: str
    username: str
    created_at: int
    last_seen: int


class SessionRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, id_hash: str, username: str) -> SessionRecord:
        ts = now_ms()
        async with self._db.transaction(serialised=False) as tx:
            await tx.execute(
                "INSERT INTO sessions (id_hash, username, created_at, last_seen) "
                "VALUES (?, ?, ?, ?)",
                (id_hash, username, ts, ts),
            )
        return SessionRecord(id_hash, username, ts, ts)

    async def get(self, id_hash: str) -> SessionRecord | None:
        row = await self._db.fetch_one(
            "SELECT id_hash, username, created_at, last_seen FROM sessions WHERE id_hash = ?",
            (id_hash,),
        )
        return SessionRecord(*row) if row else None

    async def touch(self, id_hash: str, when: int) -> None:
        # Only forward: replicas touching one session at once never set it back in time.
        async with self._db.transaction(serialised=False) as tx:
            await tx.execute(
                "UPDATE sessions SET last_seen = ? WHERE id_hash = ? AND last_seen < ?",
                (when, id_hash, when),
            )

    async def delete(self, id_hash: str) -> None:
        async with self._db.transaction(serialised=False) as tx:
            await tx.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))

    async def delete_user(self, username: str) -> None:
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM sessions WHERE username = ?", (username,))

    async def delete_idle(self, idle_before: int) -> None:
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM sessions WHERE last_seen < ?", (idle_before,))
