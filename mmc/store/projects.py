"""Stored projects. A connection's ``project_id`` names one; ``default`` always exists."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mmc.clock import now_ms
from mmc.errors import Conflict
from mmc.store.db import Database, IntegrityViolation, Row

DEFAULT_PROJECT_ID = "default"
DEFAULT_PROJECT_NAME = "Default"


@dataclass(frozen=True)
class ProjectRecord:
    id: str
    name: str
    description: str | None = None
    created_at: int = 0
    updated_at: int = 0


class Deletion(Enum):
    DELETED = "deleted"
    MISSING = "missing"
    IN_USE = "in use"


_COLUMNS = "id, name, description, created_at, updated_at"


def _from_row(row: Row) -> ProjectRecord:
    return ProjectRecord(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class ProjectRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def ensure_default(self) -> None:
        ts = now_ms()
        async with self._db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO projects ({_COLUMNS}) VALUES (?, ?, NULL, ?, ?) "  # noqa: S608
                "ON CONFLICT (id) DO NOTHING",
                (DEFAULT_PROJECT_ID, DEFAULT_PROJECT_NAME, ts, ts),
            )

    async def list(self) -> list[ProjectRecord]:
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} FROM projects ORDER BY created_at, id"  # noqa: S608
        )
        return [_from_row(r) for r in rows]

    async def get(self, project_id: str) -> ProjectRecord | None:
        row = await self._db.fetch_one(
            f"SELECT {_COLUMNS} FROM projects WHERE id = ?",  # noqa: S608
            (project_id,),
        )
        return _from_row(row) if row else None

    async def exists(self, project_id: str) -> bool:
        return (
            await self._db.fetch_one("SELECT 1 FROM projects WHERE id = ?", (project_id,))
            is not None
        )

    async def insert(self, record: ProjectRecord) -> ProjectRecord:
        ts = now_ms()
        record = ProjectRecord(record.id, record.name, record.description, ts, ts)
        try:
            async with self._db.transaction() as tx:
                await tx.execute(
                    f"INSERT INTO projects ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",  # noqa: S608
                    (record.id, record.name, record.description, ts, ts),
                )
        except IntegrityViolation:
            raise Conflict(f"Project {record.id} already exists") from None
        return record

    async def update(self, record: ProjectRecord) -> ProjectRecord | None:
        ts = now_ms()
        async with self._db.transaction() as tx:
            updated = await tx.execute(
                "UPDATE projects SET name = ?, description = ?, updated_at = ? WHERE id = ?",
                (record.name, record.description, ts, record.id),
            )
        if not updated:
            return None
        return await self.get(record.id)

    async def delete(self, project_id: str) -> Deletion:
        """Delete a project that has no connections; checked and done in one transaction."""
        async with self._db.transaction() as tx:
            if await tx.fetch_one("SELECT 1 FROM projects WHERE id = ?", (project_id,)) is None:
                return Deletion.MISSING
            if (
                await tx.fetch_one(
                    "SELECT 1 FROM connections WHERE project_id = ? LIMIT 1", (project_id,)
                )
                is not None
            ):
                return Deletion.IN_USE
            await tx.execute("DELETE FROM projects WHERE id = ?", (project_id,))
        return Deletion.DELETED
