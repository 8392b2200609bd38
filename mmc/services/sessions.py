"""Browser sessions: created at login, checked on every request, ended by logout, a new
password, or idleness.

While the store does not answer, a session it confirmed within OUTAGE_GRACE_SECONDS is
still believed: requests served from broker links go on through a database outage. Nothing
can be revoked during one (revoking is a write), and what this process revokes it forgets.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time

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
# Sessions remembered for an outage at most; then it starts over.
KNOWN_SESSIONS_SIZE = 1024


class SessionService:
    def __init__(self, db: Database, settings: Settings, users: UserRepository) -> None:
        self._sessions = SessionRepository(db)
        self._users = users
        self._settings = settings
        # Session id hash -> (when the store last confirmed it, session, user): read only
        # while the store is unavailable (OUTAGE_GRACE_SECONDS).
        self._known: dict[str, tuple[float, SessionRecord, UserRecord]] = {}

    async def create(self, username: str) -> str:
        """A new session of the user: its id, which only the browser keeps."""
        session_id = secrets.token_urlsafe(32)
        await self._sessions.create(digest(session_id), username)
        return session_id

    async def end(self, session_id: str) -> None:
        self._known.pop(digest(session_id), None)
        await self._sessions.delete(digest(session_id))

    def forget_user(self, username: str) -> None:
        """Believe none of the user's sessions from memory any more (changed or deleted)."""
        for id_hash, (_, _, user) in list(self._known.items()):
            if user.username == username:
                del self._known[id_hash]

    async def end_all_of(self, username: str) -> None:
        await self._sessions.delete_user(username)

    async def purge_idle(self) -> None:
        """Forget sessions idle past the timeout (they are refused anyway)."""
        await self._sessions.delete_idle(now_ms() - int(self._settings.session_idle_timeout * 1000))

    async def _session_and_user(
        self, id_hash: str
    ) -> tuple[SessionRecord | None, UserRecord | None, bool]:
        """The session and its user from the store, or what it said recently when it does
        not answer (the last item: True when from memory)."""
        try:
            session = await self._sessions.get(id_hash)
            user = None if session is None else await self._users.get(session.username)
        except StoreUnavailable:
            known = self._known.get(id_hash)
            if known is None or time.monotonic() - known[0] > OUTAGE_GRACE_SECONDS:
                raise
            return known[1], known[2], True
        if session is None or user is None:
            self._known.pop(id_hash, None)
        else:
            if len(self._known) >= KNOWN_SESSIONS_SIZE:
                self._known.clear()
            self._known[id_hash] = (time.monotonic(), session, user)
        return session, user, False

    async def identity(self, session_id: str) -> Identity | None:
        # Looked up on every request (no cache), so that a logout or a changed role takes
        # effect at once, on every replica sharing the store. (Tokens: see mmc.services.tokens.)
        now = now_ms()
        session, user, remembered = await self._session_and_user(digest(session_id))
        if session is None:
            return None
        s = self._settings
        if (
            now - session.last_seen > s.session_idle_timeout * 1000
            or now - session.created_at > s.session_max_age * 1000
        ):
            self._known.pop(session.id_hash, None)
            with contextlib.suppress(StoreUnavailable):  # refused either way
                await self._sessions.delete(session.id_hash)
            return None
        if user is None:
            return None
        if not remembered and now - session.last_seen > TOUCH_INTERVAL_MS:
            try:
                await self._sessions.touch(session.id_hash, now)
            except StoreUnavailable as exc:
                # A full or read-only store must not lock browsers out of reading: the
                # session stays valid; it only ages as if unused meanwhile.
                log.warning("could not record session activity: %s", exc.message)
        return Identity(user.username, user.roles, "session")
