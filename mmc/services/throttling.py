"""Login throttling, counted in the store across replicas within login_failure_window:

- (address, username): login_max_failures attempts lock the pair for login_lockout;
  so an attacker locks out their own guesses, not the real user elsewhere;
- address: login_address_max_failures attempts, whatever the usernames, lock it;
- username: attempts from every address slow it down (username_delay), without a
  lock that a botnet could hold over the real user.

The attempt is counted before the password is checked, so N guesses sent at once are
evaluated at most up to the limits. A success clears the pair and gives back its own
attempt on the address and the username, never lifting a lock.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

from mmc.clock import now_ms
from mmc.config import Settings
from mmc.errors import TooManyRequests
from mmc.store.db import Database
from mmc.store.login_failures import Limit, LoginFailureRepository

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Attempt:
    """A login attempt let through: the counters a success clears or gives back."""

    pair: str
    given_back: tuple[str, ...]


class LoginThrottle:
    def __init__(self, db: Database, settings: Settings) -> None:
        self._failures = LoginFailureRepository(db)
        self._settings = settings

    async def admit(self, username: str, address: str) -> Attempt:
        """Count the attempt, and wait its delay; TooManyRequests when it is locked out."""
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
        return Attempt(pair, (addr, user_subject))

    async def succeeded(self, attempt: Attempt) -> None:
        await self._failures.succeeded(attempt.pair, list(attempt.given_back), now_ms())

    async def purge(self) -> None:
        """Forget counters whose window has passed and that hold no lock."""
        now = now_ms()
        await self._failures.purge(now - int(self._settings.login_failure_window * 1000), now)
