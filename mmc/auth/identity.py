"""Who a request is, once its session or token has been checked."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Identity:
    username: str
    roles: tuple[str, ...]
    method: Literal["session", "token"]
    token_id: str | None = None
    token_name: str | None = None


def digest(secret: str) -> str:
    """What the store keeps of a session id or token: never the secret itself."""
    return hashlib.sha256(secret.encode()).hexdigest()
