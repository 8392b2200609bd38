"""A throw-away PostgreSQL database per test, on the machine's server (see `make test`)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from mmc.store.postgres import redact

# A role that may create databases, on the local server `make postgres` starts (the
# password is the one it gives a fresh install; a server that trusts loopback ignores it).
ADMIN_URL = os.environ.get(
    "MMC_TEST_POSTGRES_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)


def database_url(name: str) -> str:
    return urlsplit(ADMIN_URL)._replace(path=f"/{name}").geturl()


async def _admin() -> asyncpg.Connection[asyncpg.Record]:
    try:
        return await asyncpg.connect(ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL at {redact(ADMIN_URL)} is not reachable ({exc}): `make test` starts the "
            "local server; or point MMC_TEST_POSTGRES_URL at one that may create databases"
        )


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped afterwards with whatever still uses it."""
    name = f"mmc_test_{secrets.token_hex(6)}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield database_url(name)
    finally:
        admin = await _admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
