"""Small helpers shared by the dynamic-security API tests."""

from __future__ import annotations

import json
from typing import Any

import aiomqtt

from testbed.mosquitto import MosquittoBroker
from tests.conftest import Client, plain_body


def client_entity(broker: MosquittoBroker, **fields: Any) -> dict[str, Any]:
    """A client as the broker's plugin answers it: 2.1 adds its live ``connections``."""
    if broker.mosquitto.version != "2.0":
        fields.setdefault("connections", [])
    return fields


def role_entity(broker: MosquittoBroker, **fields: Any) -> dict[str, Any]:
    """A role as the broker's plugin answers it: 2.1 adds ``allowwildcardsubs``."""
    if broker.mosquitto.version != "2.0":
        fields.setdefault("allowwildcardsubs", True)
    return fields


def dynsec_path(broker_id: str = "plain", project: str = "default") -> str:
    return f"/api/projects/{project}/brokers/{broker_id}/dynsec"


async def connect(client: Client, broker: MosquittoBroker, **overrides: Any) -> str:
    """Add ``broker`` as a connection (creating its project if need be) and wait until it
    is connected; its id."""
    body = plain_body(broker, **overrides)
    project = body.get("projectId", "default")
    resp = await client.post("/api/projects", json={"id": project, "name": project})
    assert resp.status in (201, 409), await resp.text()
    resp = await client.post("/api/connections", json=body)
    assert resp.status == 200, await resp.text()
    [conn] = [c for c in await resp.json() if c["id"] == body["id"]]
    assert conn["status"]["connected"] is True, conn
    return str(body["id"])


async def call(
    client: Client,
    method: str,
    path: str,
    body: Any = None,
    *,
    status: int = 200,
    raw: str | None = None,
) -> Any:
    """One request; asserts the status and answers the JSON body (None for 204)."""
    if raw is not None:
        resp = await client.request(
            method, path, data=raw, headers={"Content-Type": "application/json"}
        )
    elif body is None:
        resp = await client.request(method, path)
    else:
        resp = await client.request(method, path, json=body)
    text = await resp.text()
    assert resp.status == status, f"{method} {path}: {resp.status} {text}"
    return json.loads(text) if text else None


async def can_login(
    broker: MosquittoBroker, username: str, password: str, client_id: str | None = None
) -> bool:
    try:
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            username=username,
            password=password,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=3,
        ):
            return True
    except aiomqtt.MqttError:
        return False
