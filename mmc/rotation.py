"""``mmc secrets rotate``: re-encrypt every stored secret under a new key, in one transaction.

Runs next to a live server: SQLite's WAL lets the server go on reading while the
rotation writes, and the transaction means a crash leaves the old state, whole.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from mmc.crypto import KEY_CHECK_PLAINTEXT, SecretBox, SecretKeyError
from mmc.store.db import Database

log = logging.getLogger(__name__)

# Every encrypted column: (table, key column, encrypted column).
ENCRYPTED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("connections", "id", "password_enc"),
    ("connections", "id", "key_enc"),
)


@dataclass(frozen=True)
class RotationReport:
    secrets: int
    connections: int


async def rotate(db: Database, current: Sequence[bytes], new: bytes) -> RotationReport:
    """Decrypt with any of ``current`` (or ``new``), encrypt with ``new``; all or nothing.

    Raises SecretKeyError when the current keys do not open the store.
    """
    opener = SecretBox([new, *current])
    sealer = SecretBox(new)
    count = 0
    rows: set[str] = set()
    async with db.transaction() as tx:
        row = await tx.fetch_one("SELECT value FROM meta WHERE name = 'key_check'")
        if row is None or opener.decrypt(row[0]) != KEY_CHECK_PLAINTEXT:
            raise SecretKeyError(
                "the current secret key does not open this store (MMC_SECRET_KEY or the key file)"
            )
        await tx.execute(
            "UPDATE meta SET value = ? WHERE name = 'key_check'",
            (sealer.encrypt(KEY_CHECK_PLAINTEXT),),
        )
        for table, key_column, column in ENCRYPTED_COLUMNS:
            found = await tx.fetch_all(
                f"SELECT {key_column}, {column} FROM {table} "  # noqa: S608 - constants
                f"WHERE {column} IS NOT NULL"
            )
            for ident, token in found:
                await tx.execute(
                    f"UPDATE {table} SET {column} = ? WHERE {key_column} = ?",  # noqa: S608
                    (sealer.encrypt(opener.decrypt(token)), ident),
                )
                count += 1
                rows.add(f"{table}:{ident}")
    return RotationReport(secrets=count, connections=len(rows))
