"""What the store does under concurrency, a full or read-only disk, and a SIGKILL."""

from __future__ import annotations

import asyncio

from tests.conftest import Client


async def test_concurrent_writes_each_get_their_own_transaction(client: Client) -> None:
    # One SQLite connection serves every request: without one transaction at a time,
    # 49 of these 50 answered 503 ("cannot start a transaction within a transaction").
    users = [
        client.post(
            "/api/user-management/users",
            json={"username": f"user{i}", "password": "password-123", "roles": ["viewer"]},
        )
        for i in range(25)
    ]
    tokens = [
        client.post("/api/tokens", json={"name": f"t{i}", "role": "viewer"}) for i in range(25)
    ]
    answers = await asyncio.gather(*users, *tokens)
    assert [r.status for r in answers] == [201] * 50
    listed = await (await client.get("/api/user-management/users")).json()
    assert {f"user{i}" for i in range(25)} <= {u["username"] for u in listed}
    assert len(await (await client.get("/api/tokens")).json()) == 25 + 1  # + the client's own
