"""AuthService: the one object the HTTP layer and the CLI use for users, logins, sessions
and tokens. Each of those has its own module (users, throttling, sessions, tokens); this
facade only puts them in order where one action involves several."""

from __future__ import annotations

import logging

from mmc.auth.identity import Identity
from mmc.config import Settings
from mmc.errors import Unauthorized
from mmc.services.sessions import SessionService
from mmc.services.throttling import LoginThrottle
from mmc.services.tokens import TokenService
from mmc.services.users import UserService
from mmc.store.db import Database
from mmc.store.tokens import TokenRecord
from mmc.store.users import UserRecord, UserRepository

log = logging.getLogger(__name__)


class AuthService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.user_service = UserService(db, settings)
        self.sessions = SessionService(db, settings, self.user_service.repo)
        self.tokens = TokenService(db, settings)
        self.throttle = LoginThrottle(db, settings)

    @property
    def users(self) -> UserRepository:
        return self.user_service.repo

    async def bootstrap(self) -> None:
        await self.user_service.bootstrap()

    async def purge_sessions(self) -> None:
        """Forget sessions idle past the timeout (they are refused anyway), and login
        counters whose window has passed and that hold no lock."""
        await self.sessions.purge_idle()
        await self.throttle.purge()

    # -- logins -------------------------------------------------------------------

    async def login(self, username: str, password: str, address: str) -> str:
        """A new session id for the user, or Unauthorized / TooManyRequests (the policy:
        mmc.services.throttling)."""
        attempt = await self.throttle.admit(username, address)
        user = await self.users.get(username)
        ok = await self.user_service.verify(password, user)
        if user is None or not ok:
            log.warning("login failed for %r from %s", username, address)
            raise Unauthorized()
        await self.throttle.succeeded(attempt)
        await self.user_service.rehash_if_cost_changed(user, password)
        session_id = await self.sessions.create(user.username)
        log.info("user %r logged in from %s", user.username, address)
        return session_id

    async def logout(self, session_id: str) -> None:
        await self.sessions.end(session_id)

    async def from_session(self, session_id: str) -> Identity | None:
        return await self.sessions.identity(session_id)

    async def from_bearer(self, token: str) -> Identity | None:
        return await self.tokens.identity(token)

    # -- tokens ---------------------------------------------------------------------

    async def create_token(
        self, name: str, role: str, valid_until: int | None, created_by: str
    ) -> tuple[TokenRecord, str]:
        return await self.tokens.create(name, role, valid_until, created_by)

    async def list_tokens(self) -> list[TokenRecord]:
        return await self.tokens.list()

    async def revoke_token(self, token_id: str) -> None:
        await self.tokens.revoke(token_id)

    # -- users ----------------------------------------------------------------------

    async def create_user(self, username: str, password: str, roles: tuple[str, ...]) -> UserRecord:
        return await self.user_service.create(username, password, roles)

    async def update_user(
        self, username: str, *, password: str | None = None, roles: tuple[str, ...] | None = None
    ) -> UserRecord:
        await self.user_service.update(username, password=password, roles=roles)
        self.sessions.forget_user(username)
        if password is not None:
            # A new password ends every session of the user.
            await self.sessions.end_all_of(username)
        user = await self.users.get(username)
        assert user is not None
        return user

    async def delete_user(self, username: str) -> None:
        try:
            await self.user_service.delete(username)
        finally:
            # After the write: a lookup that read the user before it is not kept either.
            self.sessions.forget_user(username)
