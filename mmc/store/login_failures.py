"""Failed-login counters per username and per client address, kept in the store so that
they survive a restart (and, with a shared store, count across replicas)."""

from __future__ import annotations

from mmc.store.db import Database


class LoginFailureRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def locked_until(self, subjects: list[str]) -> int:
        """The latest lock end (ms) among the subjects, 0 when none is locked."""
        marks = ",".join("?" for _ in subjects)
        row = await self._db.fetch_one(
            f"SELECT MAX(locked_until) FROM login_failures WHERE subject IN ({marks})",  # noqa: S608
            subjects,
        )
        return int(row[0]) if row and row[0] is not None else 0

    async def record_failure(
        self, subjects: list[str], now: int, *, window: int, limit: int, lockout: int
    ) -> int:
        """Count one failure for each subject; lock those that reach ``limit`` within
        ``window`` ms for ``lockout`` ms. Returns the latest lock end, 0 if none."""
        latest = 0
        async with self._db.transaction() as tx:
            for subject in subjects:
                row = await tx.fetch_one(
                    "SELECT failures, first_at FROM login_failures WHERE subject = ?",
                    (subject,),
                )
                failures, first_at = (row[0], row[1]) if row else (0, now)
                if now - first_at > window:
                    failures, first_at = 0, now
                failures += 1
                locked_until = now + lockout if failures >= limit else 0
                latest = max(latest, locked_until)
                await tx.execute("DELETE FROM login_failures WHERE subject = ?", (subject,))
                await tx.execute(
                    "INSERT INTO login_failures (subject, failures, first_at, locked_until) "
                    "VALUES (?, ?, ?, ?)",
                    (subject, 0 if locked_until else failures, first_at, locked_until),
                )
        return latest

    async def clear(self, subject: str) -> None:
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM login_failures WHERE subject = ?", (subject,))
