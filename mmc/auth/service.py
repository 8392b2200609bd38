"""AuthService: users, logins with throttling, sessions and tokens."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from mmc.auth.passwords import hash_cost, hash_password, verify_or_dummy
from mmc.auth.permissions import Role
from mmc.clock import now_ms
from mmc.config import Settings
from mmc.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    StoreUnavailable,
    TooManyRequests,
    Unauthorized,
)
from mmc.store.db import Database
from mmc.store.login_failures import Limit, LoginFailureRepository
from mmc.store.sessions import SessionRecord, SessionRepository
from mmc.store.tokens import TokenRecord, TokenRepository
from mmc.store.users import UserRecord, UserRepository

log = logging.getLogger(__name__)

TOKEN_PREFIX = "mmc_"  # noqa: S105 - a marker, not a secret
MIN_PASSWORD_LENGTH = 8
# A session's last_seen is written at most this often.
TOUCH_INTERVAL_MS = 60_000
# Tokens believed from memory (settings.token_cache_seconds) at most; then it starts over.
TOKEN_CACHE_SIZE = 1024
# While the store does not answer, a session or token it confirmed this recently is still
# believed: requests served from broker links go on through a database outage. Nothing can
# be revoked during one (revoking is a write), and what this process revokes it forgets.
OUTAGE_GRACE_SECONDS = 300.0


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    username: str
    roles: tuple[str, ...]
    method: Literal["session", "token"]
    token_id: str | None = None
    token_name: str | None = None


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"Password must have at least {MIN_PASSWORD_LENGTH} characters",
            info={"password": [f"Shorter than minimum length {MIN_PASSWORD_LENGTH}."]},
        )


def username_delay(settings: Settings, attempts: int) -> float:
    """Seconds an attempt on a username waits before it is evaluated, given the attempts
    on that username (from any address) in the window, this one included: none up to
    login_max_failures, then login_username_delay doubling per attempt, at most
    login_username_max_delay."""
    s = settings
    # Where the pair limit is off, after as many attempts as its default allows.
    free = s.login_max_failures if s.login_max_failures > 0 else Settings.login_max_failures
    beyond = attempts - free
    if beyond <= 0 or s.login_username_delay <= 0:
        return 0.0
    return float(min(s.login_username_delay * 2 ** min(beyond - 1, 30), s.login_username_max_delay))


class AuthService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.users = UserRepository(db)
        self._sessions = SessionRepository(db)
        self._tokens = TokenRepository(db)
        self._failures = LoginFailureRepository(db)
        self._settings = settings
        # scrypt takes ~32 MiB a hash: a login flood must not take all memory and threads.
        self._hashing = asyncio.Semaphore(4)
        # Token hash -> (when it was read, the record), believed for
        # settings.token_cache_seconds (OUTAGE_GRACE_SECONDS while the store does not
        # answer). Only tokens that exist are kept; a revocation here clears them and bumps
        # the generation, so that a lookup still in flight cannot put a revoked one back.
        self._token_cache: dict[str, tuple[float, TokenRecord]] = {}
        self._token_generation = 0
        # Session id hash -> (when the store last confirmed it, session, user): read only
        # while the store is unavailable (OUTAGE_GRACE_SECONDS).
        self._known_sessions: dict[str, tuple[float, SessionRecord, UserRecord]] = {}

    # -- passwords --------------------------------------------------------------

    async def hash(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.get_running_loop().run_in_executor(
                None, hash_password, password, self._settings.password_hash_cost
            )

    async def _verify(self, password: str, encoded: str | None) -> bool:
        """Whether the password matches ``encoded`` (None: no such user, so a dummy hash
        is checked instead, which takes as long). Off the loop, either way."""
        async with self._hashing:
            return await asyncio.get_running_loop().run_in_executor(
                None, verify_or_dummy, password, encoded, self._settings.password_hash_cost
            )

    async def _rehash_if_cost_changed(self, user: UserRecord, password: str) -> None:
        """After a successful login: store a hash of the current cost when the user's is
        of another (raising password_hash_cost takes effect as users log in)."""
        if hash_cost(user.password_hash) == self._settings.password_hash_cost:
            return
        new_hash = await self.hash(password)
        try:
            # Only over the hash just verified: a password changed meanwhile stays.
            if await self.users.replace_hash(user.username, user.password_hash, new_hash):
                log.info(
                    "rehashed the password of %r with cost %d",
                    user.username,
                    self._settings.password_hash_cost,
                )
        except StoreUnavailable as exc:
            # The login stands; the next one tries again.
            log.warning("could not store the rehashed password of %r: %s", user.username, exc)

    # -- bootstrap ----------------------------------------------------------------

    async def bootstrap(self) -> None:
        """Create the first admin when there is no user at all; never touch existing users."""
        if await self.users.count():
            return
        username = self._settings.admin_username
        password = self._settings.admin_password
        generated = password is None
        if password is None:
            password = secrets.token_urlsafe(15)
        else:
            check_password_strength(password)
        try:
            await self.users.insert(username, await self.hash(password), (Role.ADMIN.value,))
        except Conflict:
            return  # another process bootstrapped at the same moment
        if generated:
            # Shown once, on purpose: it is the only way to learn it.
            log.warning(
                "created the first admin user %r with the generated password %s "
                "(change it with: mmc users passwd %s)",
                username,
                password,
                username,
            )
        else:
            log.info("created the first admin user %r from MMC_ADMIN_PASSWORD", username)

    async def purge_sessions(self) -> None:
        """Forget sessions idle past the timeout (they are refused anyway), and login
        counters whose window has passed and that hold no lock."""
        now = now_ms()
        await self._sessions.delete_idle(now - int(self._settings.session_idle_timeout * 1000))
        await self._failures.purge(now - int(self._settings.login_failure_window * 1000), now)

    # -- logins -------------------------------------------------------------------

    async def login(self, username: str, password: str, address: str) -> str:
        """A new session id for the user, or Unauthorized / TooManyRequests.

        Throttling, counted in the store across replicas within login_failure_window:
        - (address, username): login_max_failures attempts lock the pair for login_lockout;
          so an attacker locks out their own guesses, not the real user elsewhere;
        - address: login_address_max_failures attempts, whatever the usernames, lock it;
        - username: attempts from every address slow it down (username_delay), without a
          lock that a botnet could hold over the real user.
        The attempt is counted before the password is checked, so N guesses sent at once
        are evaluated at most up to the limits. A success clears the pair and gives back
        its own attempt on the address and the username, never lifting a lock.
        """
        s = self._settings
        now = now_ms()
        name = username.lower()
        window = int(s.login_failure_window * 1000)
        lockout = int(s.login_lockout * 1000)
        pair, addr, user_subject = f"pair:{address} {name}", f"addr:{address}", f"user:{name}"
        reservation = await self._failures.reserve(
            {
                pair: Limit(s.login_max_failures, window, lockout),
                addr: Limit(s.login_address_max_failures, window, lockout),
            },
            user_subject,
            now,
            window=window,
        )
        if not reservation.allowed:
            log.warning("login refused for %r from %s: locked out", username, address)
            raise TooManyRequests(
                "Too many failed logins; try again later",
                # From the time now: another attempt may have set the lock after ``now``.
                retry_after=math.ceil((reservation.locked_until - now_ms()) / 1000),
            )
        if reservation.locks:
            log.warning(
                "login attempts for %r from %s reached a limit: further ones refused for %d s",
                username,
                address,
                s.login_lockout,
            )
        delay = username_delay(s, reservation.counted)
        if delay:
            # A sleep, not a lock: no transaction or hashing slot is held meanwhile.
            log.info("login for %r from %s delayed %.2f s", username, address, delay)
            await asyncio.sleep(delay)
        user = await self.users.get(username)
        ok = await self._verify(password, user.password_hash if user else None)
        if user is None or not ok:
            log.warning("login failed for %r from %s", username, address)
            raise Unauthorized()
        await self._failures.succeeded(pair, [addr, user_subject], now_ms())
        await self._rehash_if_cost_changed(user, password)
        session_id = secrets.token_urlsafe(32)
        await self._sessions.create(digest(session_id), user.username)
        log.info("user %r logged in from %s", user.username, address)
        return session_id

    async def logout(self, session_id: str) -> None:
        self._known_sessions.pop(digest(session_id), None)
        await self._sessions.delete(digest(session_id))

    def _forget_sessions_of(self, username: str) -> None:
        for id_hash, (_, _, user) in list(self._known_sessions.items()):
            if user.username == username:
                del self._known_sessions[id_hash]

    async def _session_and_user(
        self, id_hash: str
    ) -> tuple[SessionRecord | None, UserRecord | None, bool]:
        """The session and its user from the store, or what it said recently when it does
        not answer (the last item: True when from memory)."""
        try:
            session = await self._sessions.get(id_hash)
            user = None if session is None else await self.users.get(session.username)
        except StoreUnavailable:
            known = self._known_sessions.get(id_hash)
            if known is None or time.monotonic() - known[0] > OUTAGE_GRACE_SECONDS:
                raise
            return known[1], known[2], True
        if session is None or user is None:
            self._known_sessions.pop(id_hash, None)
        else:
            if len(self._known_sessions) >= TOKEN_CACHE_SIZE:
                self._known_sessions.clear()
            self._known_sessions[id_hash] = (time.monotonic(), session, user)
        return session, user, False

    async def from_session(self, session_id: str) -> Identity | None:
        # Looked up on every request (no cache), so that a logout or a changed role takes
        # effect at once, on every replica sharing the store. (Tokens: see _token_by_hash.)
        now = now_ms()
        session, user, remembered = await self._session_and_user(digest(session_id))
        if session is None:
            return None
        s = self._settings
        if (
            now - session.last_seen > s.session_idle_timeout * 1000
            or now - session.created_at > s.session_max_age * 1000
        ):
            self._known_sessions.pop(session.id_hash, None)
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

    # -- tokens ---------------------------------------------------------------------

    async def create_token(
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

    async def list_tokens(self) -> list[TokenRecord]:
        return await self._tokens.list()

    async def revoke_token(self, token_id: str) -> None:
        try:
            if not await self._tokens.delete(token_id):
                raise NotFound(f"Token {token_id} not found")
        finally:
            self._forget_tokens()
        log.info("token %s revoked", token_id)

    def _forget_tokens(self) -> None:
        self._token_generation += 1
        self._token_cache.clear()

    async def _token_by_hash(self, token_hash: str) -> TokenRecord | None:
        """The stored token, from memory if it was read less than token_cache_seconds ago."""
        ttl = self._settings.token_cache_seconds
        now = time.monotonic()
        cached = self._token_cache.get(token_hash)
        if cached is not None and now - cached[0] < ttl:
            return cached[1]
        generation = self._token_generation
        try:
            record = await self._tokens.by_hash(token_hash)
        except StoreUnavailable:
            if cached is not None and now - cached[0] < OUTAGE_GRACE_SECONDS:
                return cached[1]
            raise
        if record is None:
            self._token_cache.pop(token_hash, None)
        elif generation == self._token_generation:
            if len(self._token_cache) >= TOKEN_CACHE_SIZE:
                self._token_cache.clear()
            self._token_cache[token_hash] = (now, record)
        return record

    async def from_bearer(self, token: str) -> Identity | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        token_hash = digest(token)
        record = await self._token_by_hash(token_hash)
        # The lookup is by hash; compare again in constant time all the same.
        if record is None or not hmac.compare_digest(record.token_hash, token_hash):
            return None
        if record.valid_until is not None and record.valid_until <= now_ms():
            return None
        return Identity(f"token:{record.name}", (record.role,), "token", record.id, record.name)

    # -- users ----------------------------------------------------------------------

    async def create_user(self, username: str, password: str, roles: tuple[str, ...]) -> UserRecord:
        check_password_strength(password)
        return await self.users.insert(username, await self.hash(password), roles)

    async def update_user(
        self, username: str, *, password: str | None = None, roles: tuple[str, ...] | None = None
    ) -> UserRecord:
        if await self.users.get(username) is None:
            raise NotFound(f"User {username} not found")
        password_hash = None
        if password is not None:
            check_password_strength(password)
            password_hash = await self.hash(password)
        await self.users.update(username, password_hash=password_hash, roles=roles)
        self._forget_sessions_of(username)
        if password is not None:
            # A new password ends every session of the user.
            await self._sessions.delete_user(username)
        user = await self.users.get(username)
        assert user is not None
        return user

    async def delete_user(self, username: str) -> None:
        self._forget_sessions_of(username)
        if not await self.users.delete(username):
            raise NotFound(f"User {username} not found")
