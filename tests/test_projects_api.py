"""The Projects API, and connections naming their project."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mmc.config import Settings
from mmc.store.migrations import MIGRATIONS
from testbed.mosquitto import MosquittoBroker, free_port
from tests.conftest import BACKENDS, Client, plain_body

pytestmark = pytest.mark.backends(*BACKENDS)


async def _json(client: Client, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    resp = await client.request(method, path, **kwargs)
    return resp.status, await resp.json() if resp.status != 204 else None


async def test_default_project_always_exists(client: Client) -> None:
    status, listing = await _json(client, "GET", "/api/projects")
    assert status == 200
    assert listing == [{"id": "default", "name": "Default"}]
    assert await _json(client, "GET", "/api/projects/default") == (
        200,
        {"id": "default", "name": "Default"},
    )
    status, body = await _json(client, "DELETE", "/api/projects/default")
    assert status == 409
    assert body == {
        "code": "CONFLICT",
        "message": "The default project cannot be deleted",
        "status": 409,
    }


async def test_project_crud(client: Client) -> None:
    new = {"id": "plant-1", "name": "Plant 1", "description": "Brokers of the first plant"}
    assert await _json(client, "POST", "/api/projects", json=new) == (201, new)
    assert await _json(client, "GET", "/api/projects/plant-1") == (200, new)

    # Fields mmc does not use are ignored, not stored: a read project can be sent back.
    sent = {**new, "brokers": ["x"], "createdAt": 1}
    assert await _json(client, "PUT", "/api/projects/plant-1", json=sent) == (200, new)

    status, body = await _json(client, "POST", "/api/projects", json=new)
    assert status == 409
    assert body["code"] == "CONFLICT"
    assert body["message"] == "Project plant-1 already exists"

    # Without an id, the service makes one up.
    status, made = await _json(client, "POST", "/api/projects", json={"name": "Lab"})
    assert status == 201
    assert made["name"] == "Lab"
    assert "description" not in made
    assert len(made["id"]) == 36

    # PUT replaces name and description.
    status, updated = await _json(
        client, "PUT", "/api/projects/plant-1", json={"name": "Plant One"}
    )
    assert (status, updated) == (200, {"id": "plant-1", "name": "Plant One"})
    status, body = await _json(
        client, "PUT", "/api/projects/plant-1", json={"id": "other", "name": "X"}
    )
    assert status == 400
    assert body["info"] == {"id": ["Must match the project id in the URL."]}

    ids = [p["id"] for p in (await _json(client, "GET", "/api/projects"))[1]]
    assert ids == ["default", "plant-1", made["id"]]

    assert await _json(client, "DELETE", "/api/projects/plant-1") == (204, None)
    status, body = await _json(client, "GET", "/api/projects/plant-1")
    assert (status, body["code"], body["message"]) == (
        404,
        "NOT_FOUND",
        "Project plant-1 not found",
    )
    assert (await _json(client, "DELETE", "/api/projects/plant-1"))[0] == 404
    assert (await _json(client, "PUT", "/api/projects/plant-1", json={"name": "X"}))[0] == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "a\nb"}, "name"),
        ({"name": "ok", "id": "no spaces"}, "id"),
        ({"name": "ok", "description": 5}, "description"),
    ],
)
async def test_invalid_projects_are_rejected(
    client: Client, body: dict[str, Any], field: str
) -> None:
    status, answer = await _json(client, "POST", "/api/projects", json=body)
    assert status == 400, answer
    assert answer["code"] == "INVALID"
    assert field in answer["info"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/projects"),
        ("DELETE", "/api/projects"),
        ("POST", "/api/projects/default"),
        ("PATCH", "/api/projects/default"),
    ],
)
async def test_unsupported_methods_answer_405(client: Client, method: str, path: str) -> None:
    resp = await client.request(method, path)
    assert resp.status == 405
    body = await resp.json()
    assert body["code"] == "METHOD_NOT_ALLOWED"
    assert body["status"] == 405
    assert "Allow" in resp.headers


async def test_project_with_brokers_cannot_be_deleted(
    client: Client, broker: MosquittoBroker
) -> None:
    await _json(client, "POST", "/api/projects", json={"id": "p2", "name": "Second"})
    status, _ = await _json(
        client, "POST", "/api/connections", json=plain_body(broker, projectId="p2")
    )
    assert status == 200

    status, body = await _json(client, "DELETE", "/api/projects/p2")
    assert status == 409
    assert body["code"] == "CONFLICT"
    assert body["info"] == {"brokers": ["plain"]}

    # Moving the connection away frees the project.
    status, _ = await _json(
        client, "PUT", "/api/connections/plain", json=plain_body(broker, projectId="default")
    )
    assert status == 200
    assert (await _json(client, "DELETE", "/api/projects/p2"))[0] == 204


async def _later(delay: float, call: Awaitable[tuple[int, Any]]) -> tuple[int, Any]:
    await asyncio.sleep(delay)
    return await call


async def test_deleting_a_project_races_a_connection_joining_it(
    client: Client, broker: MosquittoBroker
) -> None:
    # No lock above the store: its write transactions are serialised and each checks the
    # other's condition, so either the delete sees the connection (409) or the connection
    # sees no project (400); never a connection left in a deleted project.
    for i in range(12):
        project, connection = f"race-{i}", f"joiner-{i}"
        await _json(client, "POST", "/api/projects", json={"id": project, "name": project})
        body = plain_body(broker, id=connection, name=connection, projectId=project)
        # The delete starts a little later each round: it lands before, during and after
        # the connection's write.
        (deleted, _), (joined, _) = await asyncio.gather(
            _later(i * 0.0001, _json(client, "DELETE", f"/api/projects/{project}")),
            _json(client, "POST", "/api/connections", json=body),
        )
        assert (deleted, joined) in {(204, 400), (409, 200)}
        listing = (await _json(client, "GET", "/api/connections"))[1]
        projects = {p["id"] for p in (await _json(client, "GET", "/api/projects"))[1]}
        assert {c["projectId"] for c in listing} <= projects
        if joined == 200:
            assert (await _json(client, "DELETE", f"/api/connections/{connection}"))[0] == 200


async def test_connection_must_name_an_existing_project(
    client: Client, broker: MosquittoBroker
) -> None:
    status, body = await _json(
        client, "POST", "/api/connections", json=plain_body(broker, projectId="nowhere")
    )
    assert status == 400
    assert body["code"] == "INVALID"
    assert body["message"] == "Project nowhere does not exist"
    assert "projectId" in body["info"]
    assert (await _json(client, "GET", "/api/connections"))[1] == []

    assert (await _json(client, "POST", "/api/connections", json=plain_body(broker)))[0] == 200
    status, body = await _json(
        client, "PUT", "/api/connections/plain", json=plain_body(broker, projectId="nowhere")
    )
    assert status == 400
    assert "projectId" in body["info"]
    [conn] = (await _json(client, "GET", "/api/connections"))[1]
    assert conn["projectId"] == "default"


@pytest.mark.backends("sqlite")  # PostgreSQL stores began after projects
async def test_connections_stored_before_projects_keep_their_project(
    make_client: Callable[[Settings], Awaitable[Client]], settings: Settings
) -> None:
    # A store written by the version before projects: its first two migrations only.
    settings.data_dir.mkdir(parents=True)
    db = sqlite3.connect(settings.db_path)
    with db:
        db.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT)"
        )
        for version, migration in enumerate(MIGRATIONS[:2], start=1):
            db.execute(migration.sqlite)
            db.execute("INSERT INTO schema_migrations VALUES (?, 0)", (version,))
        db.execute(
            "INSERT INTO connections (id, name, url, project_id, reject_unauthorized, "
            "created_at, updated_at) VALUES ('old', 'Old', ?, 'legacy', 1, 0, 0)",
            (f"mqtt://127.0.0.1:{free_port()}",),
        )
    db.close()

    client = await make_client(settings)
    status, listing = await _json(client, "GET", "/api/projects")
    assert status == 200
    assert {p["id"] for p in listing} == {"default", "legacy"}
    assert (await _json(client, "GET", "/api/projects/legacy"))[0] == 200
    [conn] = (await _json(client, "GET", "/api/connections"))[1]
    assert (conn["id"], conn["projectId"]) == ("old", "legacy")
