"""Stored broker connections. Passwords and private keys are encrypted here, never above."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mmc.clock import now_ms
from mmc.crypto import STALE_KEY_MESSAGE, SecretBox, SecretKeyError
from mmc.errors import InvalidInput, NotAllowed, StoreUnavailable
from mmc.store.db import CONNECTIONS_CHANNEL, Database, IntegrityViolation, Row, Tx

DUPLICATE_MESSAGE = "Connection with the same name/id already exists"
MAX_CONNECTIONS_MESSAGE = "Maximum number of connections reached"


@dataclass(frozen=True)
class ConnectionRecord:
    id: str
    name: str
    url: str
    project_id: str = "default"
    client_id: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # Base64 text exactly as the client sent it (PEM or DER inside).
    ca: str | None = None
    cert: str | None = None
    key: str | None = field(default=None, repr=False)
    reject_unauthorized: bool = True
    created_at: int = 0
    updated_at: int = 0
    # ms when a user disconnected it (PUT .../disconnect); None: mmc keeps it connected.
    disconnected_at: int | None = None

    def replace(self, **changes: object) -> ConnectionRecord:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_COLUMNS = (
    "id, name, url, project_id, client_id, username, password_enc, ca, cert, key_enc, "
    "reject_unauthorized, created_at, updated_at, disconnected_at"
)


class ConnectionRepository:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self._db = db
        self._box = box

    def _from_row(self, row: Row) -> ConnectionRecord:
        try:
            return self._record(row)
        except SecretKeyError:
            raise StoreUnavailable(STALE_KEY_MESSAGE) from None

    async def _check_key(self, tx: Tx) -> None:
        """Refuse to write secrets under a key the store no longer uses (see crypto)."""
        row = await tx.fetch_one("SELECT value FROM meta WHERE name = 'key_check'")
        if row is not None and not self._box.primary_opens(row[0]):
            raise StoreUnavailable(STALE_KEY_MESSAGE)

    def _record(self, row: Row) -> ConnectionRecord:
        return ConnectionRecord(
            id=row["id"],
            name=row["name"],
            url=row["url"],
            project_id=row["project_id"],
            client_id=row["client_id"],
            username=row["username"],
            password=self._box.decrypt(row["password_enc"]) if row["password_enc"] else None,
            ca=row["ca"],
            cert=row["cert"],
            key=self._box.decrypt(row["key_enc"]) if row["key_enc"] else None,
            reject_unauthorized=bool(row["reject_unauthorized"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            disconnected_at=row["disconnected_at"],
        )

    def _params(self, rec: ConnectionRecord) -> tuple[object, ...]:
        return (
            rec.id,
            rec.name,
            rec.url,
            rec.project_id,
            rec.client_id,
            rec.username,
            self._box.encrypt(rec.password) if rec.password is not None else None,
            rec.ca,
            rec.cert,
            self._box.encrypt(rec.key) if rec.key is not None else None,
            int(rec.reject_unauthorized),
            rec.created_at,
            rec.updated_at,
            rec.disconnected_at,
        )

    async def list(self) -> list[ConnectionRecord]:
        rows = await self._db.fetch_all(
            f"SELECT {_COLUMNS} FROM connections ORDER BY created_at, id"  # noqa: S608
        )
        return [self._from_row(r) for r in rows]

    async def versions(self) -> dict[str, int]:
        """Every connection's id and ``updated_at``: what changed, without decrypting."""
        rows = await self._db.fetch_all("SELECT id, updated_at FROM connections")
        return {row[0]: row[1] for row in rows}

    async def names(self) -> dict[str, str]:
        """Every connection's id and name, without decrypting anything."""
        rows = await self._db.fetch_all("SELECT id, name FROM connections")
        return {row[0]: row[1] for row in rows}

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        row = await self._db.fetch_one(
            f"SELECT {_COLUMNS} FROM connections WHERE id = ?",  # noqa: S608
            (connection_id,),
        )
        return self._from_row(row) if row else None

    @staticmethod
    async def _check_project(tx: Tx, project_id: str) -> None:
        # In the write transaction: a project deleted by another replica meanwhile counts.
        if await tx.fetch_one("SELECT 1 FROM projects WHERE id = ?", (project_id,)) is None:
            raise InvalidInput(
                f"Project {project_id} does not exist",
                info={"projectId": [f"Unknown project {project_id!r}: create it first."]},
            )

    async def insert(self, rec: ConnectionRecord, *, limit: int = 0) -> ConnectionRecord:
        """Store a new connection; NotAllowed for a duplicate id or name, or when ``limit``
        (0: none) connections exist already, counted store-wide in the same transaction."""
        ts = now_ms()
        rec = rec.replace(created_at=ts, updated_at=ts)
        try:
            async with self._db.transaction() as tx:
                await self._check_key(tx)
                await self._check_project(tx, rec.project_id)
                if limit:
                    row = await tx.fetch_one("SELECT COUNT(*) FROM connections")
                    if row is not None and row[0] >= limit:
                        raise NotAllowed(MAX_CONNECTIONS_MESSAGE)
                await tx.execute(
                    f"INSERT INTO connections ({_COLUMNS}) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    self._params(rec),
                )
                await tx.notify(CONNECTIONS_CHANNEL, rec.id)
        except IntegrityViolation:
            raise NotAllowed(DUPLICATE_MESSAGE) from None
        return rec

    async def update(self, rec: ConnectionRecord) -> ConnectionRecord:
        rec = rec.replace(updated_at=now_ms())
        params = self._params(rec)
        try:
            async with self._db.transaction() as tx:
                await self._check_key(tx)
                await self._check_project(tx, rec.project_id)
                await tx.execute(
                    "UPDATE connections SET name = ?, url = ?, project_id = ?, client_id = ?, "
                    "username = ?, password_enc = ?, ca = ?, cert = ?, key_enc = ?, "
                    "reject_unauthorized = ?, updated_at = ?, disconnected_at = ? WHERE id = ?",
                    (*params[1:11], params[12], params[13], rec.id),
                )
                await tx.notify(CONNECTIONS_CHANNEL, rec.id)
        except IntegrityViolation:
            raise NotAllowed(DUPLICATE_MESSAGE) from None
        return rec

    async def delete(self, connection_id: str) -> bool:
        async with self._db.transaction() as tx:
            deleted = await tx.execute("DELETE FROM connections WHERE id = ?", (connection_id,))
            if deleted:
                await tx.notify(CONNECTIONS_CHANNEL, connection_id)
        return deleted > 0
