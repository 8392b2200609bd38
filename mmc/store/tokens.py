"""Application tokens for scripts: a role, an optional expiry, only a hash stored."""

from __future__ import annotations

from dataclasses import dataclass

from mmc.store.db import Database, Row

_COLUMNS = "id, name, role, token_hash, created_by, created_at, valid_until"


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    role: str
    token_hash: str
    created_by: str
    created_at: int
    valid_until: int | None


def _from_row(row: Row) -> TokenRecord:
    return TokenRecord(*row)


class TokenRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(self, record: TokenRecord) -> None:
        async with self._db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    record.id,
                    record.name,
                    record.role,
                    record.token_hash,
                    record.created_by,
                    record.created_at,
                    record.valid_until,
                ),
            )

    async def list(self) -> list[TokenRecord]:
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} FROM tokens ORDER BY created_at, id"  # noqa: S608
        )
        return [_from_row(r) for r in rows]

    async def by_hash(self, token_hash: str) -> TokenRecord | None:
        row = await self._db.fetch_one(
            f"SELECT {_COLUMNS} FROM tokens WHERE token_hash = ?",  # noqa: S608
            (token_hash,),
        )
        return _from_row(row) if row else None

    async def delete(self, token_id: str) -> bool:
        async with self._db.transaction() as tx:
            return await tx.execute("DELETE FROM tokens WHERE id = ?", (token_id,)) > 0
