"""scrypt password hashes at the production cost."""

from __future__ import annotations

from mmc.auth.passwords import DEFAULT_COST, hash_password, verify_password


def test_hash_and_verify_at_default_cost() -> None:
    encoded = hash_password("correct horse battery staple")
    assert encoded.startswith(f"scrypt${DEFAULT_COST}$8$1$")
    assert "correct horse" not in encoded
    assert verify_password("correct horse battery staple", encoded)
    assert not verify_password("correct horse battery stapler", encoded)
    # Salted: the same password never hashes the same twice.
    assert hash_password("correct horse battery staple", cost=10) != hash_password(
        "correct horse battery staple", cost=10
    )


def test_malformed_hashes_never_verify() -> None:
    for encoded in ("", "plain", "scrypt$x$8$1$AAAA$AAAA", "bcrypt$10$8$1$AAAA$AAAA"):
        assert not verify_password("anything", encoded)
