"""Users of mmc itself (not broker clients): name, scrypt hash, MMC roles."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmc.clock import now_ms
from mmc.errors import Conflict
from mmc.store.db import Database, IntegrityViolation, Row, Tx


@dataclass(frozen=True)
class UserRecord:
    username: str
    password_hash: str = field(repr=False)
    roles: tuple[str, ...]
    created_at: int = 0
    updated_at: int = 0


def _from_row(row: Row) -> UserRecord:
    return UserRecord(
        username=row["username"],
        password_hash=row["password_hash"],
        roles=tuple(r for r in row["roles"].split(",") if r),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class UserRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(self) -> list[UserRecord]:
        rows = await self._db.fetch_all(
            "SELECT username, password_hash, roles, created_at, updated_at FROM users "
            "ORDER BY username"
        )
        return [_from_row(r) for r in rows]

    async def get(self, username: str) -> UserRecord | None:
        row = await self._db.fetch_one(
            "SELECT username, password_hash, roles, created_at, updated_at FROM users "
            "WHERE username = ?",
            (username,),
        )
        return _from_row(row) if row else None

    async def count(self) -> int:
        row = await self._db.fetch_one("SELECT COUNT(*) FROM users")
        return int(row[0]) if row else 0

    async def insert(self, username: str, password_hash: str, roles: tuple[str, ...]) -> UserRecord:
        ts = now_ms()
        try:
            async with self._db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO users (username, password_hash, roles, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (username, password_hash, ",".join(roles), ts, ts),
                )
        except IntegrityViolation:
            raise Conflict(f"User {username} already exists") from None
        return UserRecord(username, password_hash, roles, ts, ts)

    async def update(
        self,
        username: str,
        *,
        password_hash: str | None = None,
        roles: tuple[str, ...] | None = None,
        keep_an_admin: bool = True,
    ) -> bool:
        """Change a user; with ``keep_an_admin`` refuse (Conflict) a change that would
        leave no admin, checked inside the same transaction as the write."""
        changed = 0
        async with self._db.transaction() as tx:
            if password_hash is not None:
                changed += await tx.execute(
                    "UPDATE users SET password_hash = ?, updated_at = ? WHERE username = ?",
                    (password_hash, now_ms(), username),
                )
            if roles is not None:
                changed += await tx.execute(
                    "UPDATE users SET roles = ?, updated_at = ? WHERE username = ?",
                    (",".join(roles), now_ms(), username),
                )
            if keep_an_admin:
                await self._require_an_admin(tx)
        return changed > 0

    async def replace_hash(self, username: str, old_hash: str, new_hash: str) -> bool:
        """Store a new hash of the same password, only if the stored one is still
        ``old_hash`` (a password changed meanwhile wins). One statement on one row, checked
        by its own WHERE: it need not wait for the store-wide write turn."""
        async with self._db.transaction(serialised=False) as tx:
            changed = await tx.execute(
                "UPDATE users SET password_hash = ? WHERE username = ? AND password_hash = ?",
                (new_hash, username, old_hash),
            )
        return changed > 0

    async def delete(self, username: str, *, keep_an_admin: bool = True) -> bool:
        async with self._db.transaction() as tx:
            deleted = await tx.execute("DELETE FROM users WHERE username = ?", (username,)) > 0
            if keep_an_admin:
                await self._require_an_admin(tx)
        return deleted

    @staticmethod
    async def _require_an_admin(tx: Tx) -> None:
        rows = await tx.fetch_all("SELECT roles FROM users")
        if not any("admin" in row[0].split(",") for row in rows):
            raise Conflict("The last admin cannot be deleted or lose the admin role")
