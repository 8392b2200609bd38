"""Encryption at rest for broker passwords and private keys (Fernet, AES-128-CBC + HMAC).

Several keys may be configured (``MMC_SECRET_KEY=new,old`` or one key a line in the key
file): the first encrypts, every one decrypts (``MultiFernet``). That is what lets
``mmc secrets rotate`` move the store to a new key while servers keep running.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_FILE_NAME = "secret.key"
KEY_HELP = (
    "a Fernet key is 32 random bytes, url-safe base64 (create one with: python -c "
    "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
)


class SecretKeyError(ValueError):
    """The configured secret key is unusable or does not open the stored secrets."""


def parse_keys(text: str | bytes) -> list[bytes]:
    """Keys separated by commas, spaces or newlines, first one first."""
    raw = text.decode("ascii", errors="replace") if isinstance(text, bytes) else text
    return [k.encode("ascii", errors="replace") for k in re.split(r"[\s,]+", raw) if k]


def _fernet(key: bytes) -> Fernet:
    try:
        return Fernet(key)
    except (ValueError, TypeError):
        raise SecretKeyError(f"MMC_SECRET_KEY must be a Fernet key: {KEY_HELP}") from None


class SecretBox:
    def __init__(self, keys: bytes | Sequence[bytes]) -> None:
        keys = [keys] if isinstance(keys, bytes) else list(keys)
        if not keys:
            raise SecretKeyError(f"no secret key configured: {KEY_HELP}")
        fernets = [_fernet(k) for k in keys]
        self._primary = fernets[0]
        self._fernet = MultiFernet(fernets)
        self.key_count = len(fernets)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken:
            raise SecretKeyError(
                "stored secrets cannot be decrypted with the configured secret key"
            ) from None

    def rotate(self, token: str) -> str:
        """The same secret, encrypted with the first key (decrypted with any)."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise SecretKeyError(
                "stored secrets cannot be decrypted with the configured secret key"
            ) from None

    def primary_opens(self, token: str) -> bool:
        """Whether the first (encrypting) key alone opens ``token``."""
        try:
            self._primary.decrypt(token.encode("ascii"))
        except InvalidToken:
            return False
        return True


KEY_CHECK_PLAINTEXT = "mmc-secret-key-check"
STALE_KEY_MESSAGE = (
    "The stored secrets were re-encrypted under a new key (mmc secrets rotate): "
    "restart mmc with the new MMC_SECRET_KEY to change connections"
)


def check_token_matches(box: SecretBox, token: str) -> None:
    """Raise SecretKeyError unless ``token`` was encrypted with one of this box's keys."""
    if box.decrypt(token) != KEY_CHECK_PLAINTEXT:
        raise SecretKeyError("stored secrets cannot be decrypted with the configured secret key")


def key_file(data_dir: Path) -> Path:
    return data_dir / KEY_FILE_NAME


def load_secret_keys(configured: str | None, data_dir: Path) -> list[bytes]:
    """The keys from the settings, else the data directory's key file, created 0600 once."""
    if configured:
        return parse_keys(configured)
    path = key_file(data_dir)
    try:
        return parse_keys(path.read_bytes())
    except FileNotFoundError:
        pass
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process created it between our read and our create: use theirs.
        return parse_keys(path.read_bytes())
    with os.fdopen(fd, "wb") as fh:
        fh.write(key + b"\n")
    return [key]


def write_key_file(path: Path, keys: Sequence[bytes]) -> None:
    """Replace the key file atomically (0600, fsynced): never a moment without a key."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"\n".join(keys) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
