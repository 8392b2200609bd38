"""API tokens: created, listed and revoked by admins, checked on every request.

A token read from the store is believed for settings.token_cache_seconds, and while the
store does not answer for OUTAGE_GRACE_SECONDS (see mmc.services.sessions).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time

from mmc.auth.identity import Identity, digest
from mmc.clock import now_ms
from mmc.config import Settings
from mmc.errors import InvalidInput, NotFound, StoreUnavailable
from mmc.services.sessions import OUTAGE_GRACE_SECONDS
from mmc.store.db import Database
from mmc.store.tokens import TokenRecord, TokenRepository

log = logging.getLogger(__name__)

TOKEN_PREFIX = "mmc_"  # noqa: S105 - a marker, not a secret
# Tokens believed from memory at most; then it starts over.
TOKEN_CACHE_SIZE = 1024


class TokenService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self._tokens = TokenRepository(db)
        self._settings = settings
        # Token hash -> (when it was read, the record), believed for
        # settings.token_cache_seconds (OUTAGE_GRACE_SECONDS while the store does not
        # answer). Only tokens that exist are kept; a revocation here clears them and bumps
        # the generation, so that a lookup still in flight cannot put a revoked one back.
        self._cache: dict[str, tuple[float, TokenRecord]] = {}
        self._generation = 0

    async def create(
        self, name: str, role: str, valid_until: int | None, created_by: str
    ) -> tuple[TokenRecord, str]:
        if valid_until is not None and valid_until <= now_ms():
            raise InvalidInput(
                "validUntil is in the past", info={"validUntil": ["Must be in the future."]}
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(
            id=secrets.token_hex(8),
            name=name,
            role=role,
            token_hash=digest(token),
            created_by=created_by,
            created_at=now_ms(),
            valid_until=valid_until,
        )
        await self._tokens.insert(record)
        log.info("token %s (%r, role %s) created by %s", record.id, name, role, created_by)
        return record, token

    async def list(self) -> list[TokenRecord]:
        return await self._tokens.list()

    async def revoke(self, token_id: str) -> None:
        try:
            if not await self._tokens.delete(token_id):
                raise NotFound(f"Token {token_id} not found")
        finally:
            self._forget()
        log.info("token %s revoked", token_id)

    def _forget(self) -> None:
        self._generation += 1
        self._cache.clear()

    async def _by_hash(self, token_hash: str) -> TokenRecord | None:
        """The stored token, from memory if it was read less than token_cache_seconds ago."""
        ttl = self._settings.token_cache_seconds
        now = time.monotonic()
        cached = self._cache.get(token_hash)
        if cached is not None and now - cached[0] < ttl:
            return cached[1]
        generation = self._generation
        try:
            record = await self._tokens.by_hash(token_hash)
        except StoreUnavailable:
            if cached is not None and now - cached[0] < OUTAGE_GRACE_SECONDS:
                return cached[1]
            raise
        if record is None:
            self._cache.pop(token_hash, None)
        elif generation == self._generation:
            if len(self._cache) >= TOKEN_CACHE_SIZE:
                self._cache.clear()
            self._cache[token_hash] = (now, record)
        return record

    async def identity(self, token: str) -> Identity | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        token_hash = digest(token)
        record = await self._by_hash(token_hash)
        # The lookup is by hash; compare again in constant time all the same.
        if record is None or not hmac.compare_digest(record.token_hash, token_hash):
            return None
        if record.valid_until is not None and record.valid_until <= now_ms():
            return None
        return Identity(f"token:{record.name}", (record.role,), "token", record.id, record.name)
