"""Login attempt counters, kept in the store so that they survive a restart (and, with a
shared store, count across replicas).

One row per subject: ``pair:<address> <username>``, ``addr:<address>`` and
``user:<username>`` (see ``mmc.services.throttling`` for the policy). An attempt
is counted *before* its password is checked (``reserve``): N guesses sent at once cannot
all be evaluated while their failures are still on the way. A success then gives back or
clears what it reserved (``release``, ``clear``).

Every write is an UPSERT that can only raise ``locked_until``: however writes interleave
(other replicas, a transaction that is not serialised), a lock is never erased.

The counters are row-local: no write here takes the store-wide write turn (on PostgreSQL,
the advisory lock every replica's other writes queue on). Each attempt is one statement per
row, evaluated against the row as the last committed attempt left it (SQLite: one writer;
PostgreSQL: the UPSERT locks the row and re-reads it once a concurrent attempt commits), so
concurrent guesses, from any replica, are counted one by one and cannot walk past a limit.
A transaction touches its rows in the order of their subjects, so two never wait for each
other's rows crosswise (no deadlock), and ``purge`` skips rows that an attempt holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmc.store.db import Database, Tx


@dataclass(frozen=True)
class Limit:
    """``attempts`` within ``window`` ms lock the subject for ``lockout`` ms (0: never)."""

    attempts: int
    window: int
    lockout: int


@dataclass(frozen=True)
class Reservation:
    """Whether the attempt may be evaluated; if not, until when (ms) it is refused. Also
    how many attempts the counted-only subject has seen in its window, this one included,
    and whether this (allowed) attempt reached a limit, locking the next ones out."""

    allowed: bool
    locked_until: int
    counted: int
    locks: bool = False


# One attempt on one subject, in a single statement. The row's old values decide:
# - locked (locked_until > now): the attempt is refused; it is counted past the limit
#   (at least limit + 1, so that the answer tells it apart from the attempt that set the
#   lock) but the lock is not extended: retrying does not push its end further away;
# - a lock of this window that has ended, or a window that has passed: start over at 1;
# - else one more; reaching the limit sets the lock. The lock end only ever rises (now +
#   lockout is above any lock that has ended). A limit of 0 counts without locking.
# Each ``?`` is its own parameter (PostgreSQL numbers them); timestamps are cast, so
# that PostgreSQL does not take a bare parameter next to ``0`` for a 32-bit integer.
_LOCKED = "login_failures.locked_until > CAST(? AS BIGINT)"
_START_OVER = (
    "(login_failures.first_at < login_failures.locked_until"
    " OR CAST(? AS BIGINT) - login_failures.first_at > CAST(? AS BIGINT))"
)
_COUNT = f"CASE WHEN {_START_OVER} THEN 1 ELSE login_failures.failures + 1 END"
_RESERVE = f"""
INSERT INTO login_failures (subject, failures, first_at, locked_until)
VALUES (?, 1, CAST(? AS BIGINT),
        CASE WHEN ? > 0 AND 1 >= ? THEN CAST(? AS BIGINT) ELSE CAST(0 AS BIGINT) END)
ON CONFLICT (subject) DO UPDATE SET
    failures = CASE
        WHEN {_LOCKED} THEN
            CASE WHEN login_failures.failures > ? THEN login_failures.failures + 1 ELSE ? + 1 END
        ELSE {_COUNT} END,
    first_at = CASE
        WHEN {_LOCKED} THEN login_failures.first_at
        WHEN {_START_OVER} THEN CAST(? AS BIGINT)
        ELSE login_failures.first_at END,
    locked_until = CASE
        WHEN {_LOCKED} THEN login_failures.locked_until
        WHEN ? > 0 AND {_COUNT} >= ? THEN CAST(? AS BIGINT)
        ELSE login_failures.locked_until END
RETURNING failures, locked_until
"""  # noqa: S608 - built from the constant fragments above


async def _reserve_one(tx: Tx, subject: str, now: int, limit: Limit) -> tuple[int, int]:
    """Count one attempt on the subject: (its attempts in the window, its lock end)."""
    n, w, until = limit.attempts, limit.window, now + limit.lockout
    # fmt: off
    params = (
        subject, now, n, n, until,              # VALUES
        now, n, n, now, w,                      # failures
        now, now, w, now,                       # first_at
        now, n, now, w, n, until,               # locked_until
    )
    # fmt: on
    row = await tx.fetch_one(_RESERVE, params)
    assert row is not None  # an UPSERT with RETURNING always returns its row
    return int(row[0]), int(row[1])


class LoginFailureRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def reserve(
        self, limited: dict[str, Limit], counted: str, now: int, *, window: int
    ) -> Reservation:
        """Count one login attempt on each limited subject, in one transaction, and say
        whether it may be evaluated: none of them was locked and none is past its limit.
        Only an allowed attempt is counted on ``counted`` (which never locks), so that
        refused ones (429, no password checked) do not add to it."""
        # The counted subject's row is written last: it must sort after the limited ones
        # for the rows to be taken in one order (see the module docstring).
        if any(subject >= counted for subject in limited):
            raise ValueError(f"{counted!r} must sort after the limited subjects")
        refused, until, locks = False, 0, False
        async with self._db.transaction(serialised=False) as tx:
            # A fixed order: two transactions never wait on each other's rows crosswise.
            for subject in sorted(limited):
                limit = limited[subject]
                attempts, locked_until = await _reserve_one(tx, subject, now, limit)
                if limit.attempts > 0 and attempts >= limit.attempts:
                    refused = refused or attempts > limit.attempts
                    locks = locks or attempts == limit.attempts
                    until = max(until, locked_until)
            if refused:
                return Reservation(False, until, 0)
            attempts, _ = await _reserve_one(tx, counted, now, Limit(0, window, 0))
        return Reservation(True, until, attempts, locks)

    async def succeeded(self, clear: str, give_back: list[str], now: int) -> None:
        """A login succeeded: forget ``clear``'s attempts unless it is locked (a lock runs
        its course), and give back the one attempt reserved on each of ``give_back``
        without touching its lock (a success from an address never unlocks it)."""
        async with self._db.transaction(serialised=False) as tx:
            # In the order of the subjects, as reserve takes them (no crosswise waits).
            for subject in sorted({clear, *give_back}):
                if subject == clear:
                    await tx.execute(
                        "DELETE FROM login_failures WHERE subject = ? AND locked_until <= ?",
                        (clear, now),
                    )
                else:
                    await tx.execute(
                        "UPDATE login_failures SET failures = failures - 1 "
                        "WHERE subject = ? AND failures > 0",
                        (subject,),
                    )

    async def purge(self, before: int, now: int) -> None:
        """Drop counters whose window began before ``before`` and that hold no lock."""
        async with self._db.transaction(serialised=False) as tx:
            if self._db.backend == "postgresql":
                # Rows an attempt holds are left for the next purge: waiting for them while
                # holding others could deadlock with it.
                await tx.execute(
                    "DELETE FROM login_failures WHERE subject IN (SELECT subject FROM "
                    "login_failures WHERE first_at < ? AND locked_until <= ? "
                    "FOR UPDATE SKIP LOCKED)",
                    (before, now),
                )
            else:
                await tx.execute(
                    "DELETE FROM login_failures WHERE first_at < ? AND locked_until <= ?",
                    (before, now),
                )
