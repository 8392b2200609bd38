"""mmc's users: their passwords (hashed off the event loop, a few at a time), the first
admin, and changes to them. Ending their sessions is mmc.services.sessions' job."""

from __future__ import annotations

import asyncio
import logging
import secrets

from mmc.auth.passwords import hash_cost, hash_password, verify_or_dummy
from mmc.auth.permissions import Role
from mmc.config import Settings
from mmc.errors import Conflict, InvalidInput, NotFound, StoreUnavailable
from mmc.store.db import Database
from mmc.store.users import UserRecord, UserRepository

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 8


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"Password must have at least {MIN_PASSWORD_LENGTH} characters",
            info={"password": [f"Shorter than minimum length {MIN_PASSWORD_LENGTH}."]},
        )


class UserService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.repo = UserRepository(db)
        self._settings = settings
        # scrypt takes ~32 MiB a hash: a login flood must not take all memory and threads.
        self._hashing = asyncio.Semaphore(4)

    async def hash(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.get_running_loop().run_in_executor(
                None, hash_password, password, self._settings.password_hash_cost
            )

    async def verify(self, password: str, user: UserRecord | None) -> bool:
        """Whether the password is the user's (None: no such user, so a dummy hash is
        checked instead, which takes as long). Off the loop, either way."""
        encoded = user.password_hash if user else None
        async with self._hashing:
            return await asyncio.get_running_loop().run_in_executor(
                None, verify_or_dummy, password, encoded, self._settings.password_hash_cost
            )

    async def rehash_if_cost_changed(self, user: UserRecord, password: str) -> None:
        """After a successful login: store a hash of the current cost when the user's is
        of another (raising password_hash_cost takes effect as users log in)."""
        if hash_cost(user.password_hash) == self._settings.password_hash_cost:
            return
        new_hash = await self.hash(password)
        try:
            # Only over the hash just verified: a password changed meanwhile stays.
            if await self.repo.replace_hash(user.username, user.password_hash, new_hash):
                log.info(
                    "rehashed the password of %r with cost %d",
                    user.username,
                    self._settings.password_hash_cost,
                )
        except StoreUnavailable as exc:
            # The login stands; the next one tries again.
            log.warning("could not store the rehashed password of %r: %s", user.username, exc)

    async def bootstrap(self) -> None:
        """Create the first admin when there is no user at all; never touch existing users."""
        if await self.repo.count():
            return
        username = self._settings.admin_username
        password = self._settings.admin_password
        generated = password is None
        if password is None:
            password = secrets.token_urlsafe(15)
        else:
            check_password_strength(password)
        try:
            await self.repo.insert(username, await self.hash(password), (Role.ADMIN.value,))
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

    async def create(self, username: str, password: str, roles: tuple[str, ...]) -> UserRecord:
        check_password_strength(password)
        return await self.repo.insert(username, await self.hash(password), roles)

    async def update(
        self, username: str, *, password: str | None = None, roles: tuple[str, ...] | None = None
    ) -> None:
        if await self.repo.get(username) is None:
            raise NotFound(f"User {username} not found")
        password_hash = None
        if password is not None:
            check_password_strength(password)
            password_hash = await self.hash(password)
        await self.repo.update(username, password_hash=password_hash, roles=roles)

    async def delete(self, username: str) -> None:
        if not await self.repo.delete(username):
            raise NotFound(f"User {username} not found")
