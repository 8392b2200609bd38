"""Encryption at rest for broker passwords and private keys (Fernet, AES-128-CBC + HMAC)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE_NAME = "secret.key"


class SecretKeyError(ValueError):
    """The configured secret key is unusable or does not open the stored secrets."""


class SecretBox:
    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise SecretKeyError(
                "MMC_SECRET_KEY must be a Fernet key: 32 random bytes, url-safe base64 "
                "(create one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')"
            ) from None

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken:
            raise SecretKeyError(
                "stored secrets cannot be decrypted with the configured secret key"
            ) from None


KEY_CHECK_PLAINTEXT = "mmc-secret-key-check"


def check_token_matches(box: SecretBox, token: str) -> None:
    """Raise SecretKeyError unless ``token`` was encrypted with this box's key."""
    if box.decrypt(token) != KEY_CHECK_PLAINTEXT:
        raise SecretKeyError("stored secrets cannot be decrypted with the configured secret key")


def load_secret_key(configured: str | None, data_dir: Path) -> bytes:
    """The key from the settings, else the data directory's key file, created 0600 once."""
    if configured:
        return configured.strip().encode("ascii", errors="replace")
    path = data_dir / KEY_FILE_NAME
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process created it between our read and our create: use theirs.
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as fh:
        fh.write(key + b"\n")
    return key
