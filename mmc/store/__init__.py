"""Persistence: one repository per table over a ``Database`` (mmc.store.db) of either backend.

SQL stays portable (TEXT/INTEGER/BIGINT, ``?`` placeholders, no backend-only syntax
outside mmc.store.migrations), so every repository runs unchanged on both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from mmc.config import Settings
from mmc.crypto import key_file
from mmc.store.db import Database
from mmc.store.files import secure_data_dir
from mmc.store.postgres import PostgresDatabase
from mmc.store.sqlite import SqliteDatabase


@contextlib.asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """The store the settings name, migrated to this version's schema."""
    if settings.database_backend == "postgresql":
        assert settings.database_url is not None
        async with PostgresDatabase.open(
            settings.database_url,
            pool_size=settings.database_pool_size,
            timeout=settings.database_timeout,
        ) as pg:
            yield pg
    else:
        # The key file lives there too (it is the data directory's, whatever the backend,
        # but only SQLite stores need one: PostgreSQL replicas share MMC_SECRET_KEY).
        key = key_file(settings.data_dir)
        await asyncio.to_thread(
            secure_data_dir, settings.data_dir, [key, key.with_name(key.name + ".tmp")]
        )
        async with SqliteDatabase.open(settings.db_path) as lite:
            yield lite
