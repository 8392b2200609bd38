"""Stored secrets never follow a connection to another address: a listener that records every
CONNECT stands in for a host an attacker controls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mmc.appkeys import connections_key, db_key, secret_box_key
from mmc.services.connections import target
from mmc.store.connections import ConnectionRecord, ConnectionRepository
from testbed.mosquitto import MosquittoBroker, TlsMaterial, free_port
from tests.conftest import BACKENDS, Client, blob, plain_body, tls_body, wait_until
from tests.fake_mqtt import FakeBroker

pytestmark = pytest.mark.backends(*BACKENDS)


async def _send(client: Client, method: str, path: str, body: Any) -> tuple[int, Any]:
    resp = await client.request(method, path, json=body)
    return resp.status, await resp.json()


async def _read(client: Client, connection_id: str) -> dict[str, Any]:
    """What a connectionManager sees: the connection without status, ready to send back."""
    resp = await client.get(f"/api/connections/{connection_id}")
    assert resp.status == 200
    read: dict[str, Any] = await resp.json()
    read.pop("status")
    return read


async def _stored(client: Client, connection_id: str) -> ConnectionRecord:
    """The connection as the store holds it (decrypted)."""
    record = await ConnectionRepository(client.app[db_key], client.app[secret_box_key]).get(
        connection_id
    )
    assert record is not None
    return record


def _passwords(listener: FakeBroker) -> list[bytes | None]:
    return [password for _, password in listener.logins]


async def test_put_to_another_host_without_the_password_is_refused(
    client: Client, broker: MosquittoBroker
) -> None:
    assert (await _send(client, "POST", "/api/connections", plain_body(broker)))[0] == 200
    secret = broker.admin_password.encode()
    async with FakeBroker("mute") as listener:
        read = await _read(client, "plain")
        assert "password" not in read["credentials"]
        status, answer = await _send(
            client, "PUT", "/api/connections/plain", {**read, "url": listener.url}
        )
        assert status == 400, answer
        assert answer["code"] == "INVALID"
        assert "credentials.password" in answer["message"]
        assert "only sent to the address" in answer["info"]["credentials"]["password"][0]
        # Nothing changed: still the old address, still connected, nothing sent anywhere.
        assert (await _read(client, "plain"))["url"] == plain_body(broker)["url"]
        assert client.app[connections_key].pool.require("plain").connected
        await asyncio.sleep(0.3)
        assert listener.logins == []

        # Sent again in the same request, the password goes to the new address: whoever
        # sends it knows it.
        new = {**read, "url": listener.url}
        new["credentials"] = {**read["credentials"], "password": broker.admin_password}
        status, answer = await _send(client, "PUT", "/api/connections/plain", new)
        assert status == 200, answer
        await wait_until(lambda: bool(listener.logins))
        assert listener.logins == [(broker.admin_username, secret)]

        # A stored password for the new address does not follow it to a third one either.
        async with FakeBroker("mute") as third:
            moved = {**read, "url": third.url}
            status, answer = await _send(client, "PUT", "/api/connections/plain", moved)
            assert status == 400, answer
            # null: connect without a password, on purpose.
            moved["credentials"] = {**read["credentials"], "password": None}
            status, answer = await _send(client, "PUT", "/api/connections/plain", moved)
            assert status == 200, answer
            await wait_until(lambda: bool(third.logins))
            assert third.logins == [(broker.admin_username, None)]


async def test_repost_of_a_failed_connection_to_another_host_keeps_no_secret(
    client: Client, broker: MosquittoBroker
) -> None:
    secret = "stored-for-the-first-address"
    body = plain_body(
        broker,
        url=f"mqtt://127.0.0.1:{free_port()}",  # nothing listens: the attempt fails
        credentials={"username": "admin", "password": secret},
    )
    assert (await _send(client, "POST", "/api/connections", body))[0] == 202
    async with FakeBroker("mute") as listener:
        again = {**body, "url": listener.url, "credentials": {"username": "admin"}}
        status, answer = await _send(client, "POST", "/api/connections", again)
        assert status == 400, answer
        assert "credentials.password" in answer["message"]
        await asyncio.sleep(0.3)
        assert listener.logins == []
        # The same address again (respelled) keeps the stored password, as before.
        port = body["url"].rsplit(":", 1)[1]
        same = {**again, "url": f"tcp://127.0.0.1:{port}/"}
        status, answer = await _send(client, "POST", "/api/connections", same)
        assert status == 202, answer
        assert (await _stored(client, "plain")).password == secret
    assert secret.encode() not in _passwords(listener)


async def test_client_key_is_not_kept_for_another_port(
    client: Client, broker: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    body = tls_body(
        broker,
        tls_material,
        broker.mtls_port,
        cert=blob(tls_material.client_cert),
        key=blob(tls_material.client_key),
    )
    assert (await _send(client, "POST", "/api/connections", body))[0] == 200
    read = await _read(client, "tls")
    moved = {**read, "url": f"mqtts://localhost:{broker.tls_port}"}
    moved["credentials"] = {**read["credentials"], "password": broker.admin_password}
    status, answer = await _send(client, "PUT", "/api/connections/tls", moved)
    assert status == 400, answer
    assert set(answer["info"]) == {"key"}
    assert "key.data" in answer["message"]
    stored = await _stored(client, "tls")
    assert stored.url == body["url"]
    assert stored.key is not None
    # Both secrets sent again: accepted.
    moved["key"] = blob(tls_material.client_key)
    status, answer = await _send(client, "PUT", "/api/connections/tls", moved)
    assert status == 200, answer
    # The same address respelled, key left out: the key stays (mutual TLS still works).
    again = await _read(client, "tls")
    again["url"] = f"ssl://LOCALHOST:{broker.tls_port}"
    again["credentials"] = moved["credentials"]
    status, answer = await _send(client, "PUT", "/api/connections/tls", again)
    assert status == 200, answer
    assert (await _stored(client, "tls")).key == blob(tls_material.client_key)["data"]


@pytest.mark.parametrize(
    ("old", "new", "same"),
    [
        ("mqtt://127.0.0.1", "tcp://127.0.0.1:1883/", True),
        ("mqtts://Broker.Example", "ssl://broker.example.:8883", True),
        ("mqtt://[::1]:1883", "mqtt://[0:0:0:0:0:0:0:1]", True),
        ("wss://h/mqtt", "wss://h:443/other", True),
        ("mqtt://h", "mqtts://h:1883", False),
        ("mqtt://h", "ws://h:1883", False),
        ("mqtt://h", "mqtt://h:1884", False),
        ("mqtt://127.0.0.1", "mqtt://localhost", False),
    ],
)
def test_what_counts_as_another_broker(old: str, new: str, same: bool) -> None:
    assert (target(old) == target(new)) is same
