"""Browser sessions: created at login, checked on every request, ended by logout, a new
password, the user's deletion, or idleness.

A session and its user read from the store are believed from memory for
settings.session_cache_seconds: a request costs no store round trip. What this process
changes it forgets at once (logout, a user changed or deleted: a new password ends every
session of the user, a new role takes effect on the next request); what another replica
sharing the store changes, within that time. Idleness and the maximum age are checked on
every request, against the last activity this process knows. Activity is written at most
every TOUCH_INTERVAL_MS per session, not on every request.

While the store does not answer, a session it confirmed within OUTAGE_GRACE_SECONDS is
still believed: requests served from broker links go on through a database outage. Nothing
can be revoked during one (revoking is a write), and what this process revokes it forgets.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from dataclasses import replace

from mmc.auth.identity import Identity, digest
from mmc.clock import now_ms
from mmc.config import Settings
from mmc.errors import StoreUnavailable
from mmc.store.db import Database
from mmc.store.sessions import SessionRecord, SessionRepository
from mmc.store.users import UserRecord, UserRepository

log = logging.getLogger(__name__)

# A session's last_seen is written at most this often.
TOUCH_INTERVAL_MS = 60_000
OUTAGE_GRACE_SECONDS = 300.0
# Sessions remembered (cache and outage) at most; then it starts over.
KNOWN_SESSIONS_SIZE = 1024


class SessionService:
    def __init__(self, db: Database, settings: Settings, users: UserRepository) -> None:
        self._sessions = SessionRepository(db)
        self._users = users
        self._settings = settings
        # Session id hash -> (when the store last confirmed it, session, user): believed for
        # settings.session_cache_seconds, and OUTAGE_GRACE_SECONDS while the store does not
        # answer. Forgetting bumps the generation, so that a lookup still in flight cannot
        # put back what was just ended.
        self._known: dict[str, tuple[float, SessionRecord, UserRecord]] = {}
        self._generation = 0

    async def create(self, username: str) -> str:
        """A new session of the user: its id, which only the browser keeps."""
        session_id = secrets.token_urlsafe(32)
        await self._sessions.create(digest(session_id), username)
        return session_id

    async def end(self, session_id: str) -> None:
        # Forgotten again after the write: a lookup that read the row before the delete
        # committed is not kept either.
        self._forget(digest(session_id))
        try:
            await self._sessions.delete(digest(session_id))
        finally:
            self._forget(digest(session_id))

    def _forget(self, id_hash: str) -> None:
        self._generation += 1
        self._known.pop(id_hash, None)

    def forget_user(self, username: str) -> None:
        """Believe none of the user's sessions from memory any more (changed or deleted)."""
        self._generation += 1
        for id_hash, (_, _, user) in list(self._known.items()):
            if user.username == username:
                del self._known[id_hash]

    async def end_all_of(self, username: str) -> None:
        self.forget_user(username)
        try:
            await self._sessions.delete_user(username)
        finally:
            self.forget_user(username)

    async def purge_idle(self) -> None:
        """Forget sessions idle past the timeout (they are refused anyway)."""
        await self._sessions.delete_idle(now_ms() - int(self._settings.session_idle_timeout * 1000))

    async def _session_and_user(
        self, id_hash: str
    ) -> tuple[SessionRecord | None, UserRecord | None, bool]:
        """The session and its user: from memory when read less than
        session_cache_seconds ago, else from the store, or what it said recently when it
        does not answer (the last item: True when from the outage memory)."""
        now = time.monotonic()
        known = self._known.get(id_hash)
        if known is not None and now - known[0] < self._settings.session_cache_seconds:
            return known[1], known[2], False
        generation = self._generation
        try:
            session = await self._sessions.get(id_hash)
            user = None if session is None else await self._users.get(session.username)
        except StoreUnavailable:
            if known is None or now - known[0] > OUTAGE_GRACE_SECONDS:
                raise
            return known[1], known[2], True
        if session is None or user is None:
            self._known.pop(id_hash, None)
        elif generation == self._generation:
            if len(self._known) >= KNOWN_SESSIONS_SIZE:
                self._known.clear()
            self._known[id_hash] = (now, session, user)
        return session, user, False

    def _touched(self, session: SessionRecord, when: int) -> None:
        """Remember the activity just written, so that the cached session neither looks idle
        nor is touched again on its next request."""
        known = self._known.get(session.id_hash)
        if known is not None:
            self._known[session.id_hash] = (known[0], replace(session, last_seen=when), known[2])

    async def identity(self, session_id: str) -> Identity | None:
        now = now_ms()
        session, user, remembered = await self._session_and_user(digest(session_id))
        if session is None:
            return None
        s = self._settings
        if (
            now - session.last_seen > s.session_idle_timeout * 1000
            or now - session.created_at > s.session_max_age * 1000
        ):
            self._forget(session.id_hash)
            with contextlib.suppress(StoreUnavailable):  # refused either way
                await self._sessions.delete(session.id_hash)
            return None
        if user is None:
            return None
        if not remembered and now - session.last_seen > TOUCH_INTERVAL_MS:
            # Remembered before the write: requests arriving meanwhile do not write it again.
            self._touched(session, now)
            try:
                await self._sessions.touch(session.id_hash, now)
            except StoreUnavailable as exc:
                # A full or read-only store must not lock browsers out of reading: the
                # session stays valid; it only ages as if unused meanwhile.
                log.warning("could not record session activity: %s", exc.message)
        return Identity(user.username, user.roles, "session")
