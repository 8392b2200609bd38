"""Password hashing with scrypt (memory-hard). CPU-heavy: call through an executor."""

from __future__ import annotations

import base64
import functools
import secrets

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

DEFAULT_COST = 15  # n = 2**15, r = 8: about 32 MiB and tens of milliseconds per hash
_R = 8
_P = 1
_LENGTH = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, cost: int = DEFAULT_COST) -> str:
    """``scrypt$<log2 n>$<r>$<p>$<salt>$<hash>``: parameters travel with the hash."""
    salt = secrets.token_bytes(16)
    digest = Scrypt(salt=salt, length=_LENGTH, n=2**cost, r=_R, p=_P).derive(password.encode())
    return f"scrypt${cost}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, cost, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        kdf = Scrypt(salt=_unb64(salt), length=_LENGTH, n=2 ** int(cost), r=int(r), p=int(p))
        kdf.verify(password.encode(), _unb64(digest))
    except (InvalidKey, ValueError):
        return False
    return True


def hash_cost(encoded: str) -> int | None:
    """The cost (log2 n) a stored hash was made with; None when it is not ours."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not parts[1].isdigit():
        return None
    return int(parts[1])


# A stored value starting with this is no hash: nothing verifies against it, so the user
# cannot log in until a password is set (/etc/shadow's convention for a locked account).
NO_PASSWORD = "!"  # noqa: S105 - a marker, not a password


def locked(reason: str) -> str:
    """What to store for a user who may not log in (yet): ``!`` and why, never a hash."""
    return NO_PASSWORD + reason


def usable(encoded: str) -> bool:
    """Whether a stored value is a hash mmc verifies, i.e. whether the user can log in."""
    return hash_cost(encoded) is not None


@functools.lru_cache(maxsize=4)
def dummy_hash(cost: int) -> str:
    """Verified against when the user does not exist, so the answer takes as long."""
    return hash_password(secrets.token_hex(8), cost)


def verify_or_dummy(password: str, encoded: str | None, cost: int) -> bool:
    """``verify_password`` against the user's hash, or (no such user, or no usable password)
    against a dummy one of the current cost, which is False but takes as long. Both are CPU
    work, including the dummy's first computation: run this through an executor, never on
    the loop."""
    if encoded is None or not usable(encoded):
        # A disabled user's login takes as long as anybody's.
        verify_password(password, dummy_hash(cost))
        return False
    return verify_password(password, encoded)
