"""The Projects API: /api/projects. Every connection belongs to one; ``default`` always exists."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from mmc.appkeys import connections_key, projects_key
from mmc.auth.permissions import Permission
from mmc.errors import Conflict, InvalidInput, NotFound
from mmc.schemas.projects import project_schema
from mmc.schemas.responses import ProjectOutSchema
from mmc.store.projects import DEFAULT_PROJECT_ID, Deletion, ProjectRecord
from mmc.web.routing import Routes

routes = Routes()

PROJECTS = "/api/projects"
PROJECT = PROJECTS + "/{projectId}"


def to_wire(project: ProjectRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"id": project.id, "name": project.name}
    if project.description is not None:
        out["description"] = project.description
    return out


def not_found(project_id: str) -> NotFound:
    return NotFound(f"Project {project_id} not found")


@routes.get(
    PROJECTS, Permission.READ, "List projects", responses={200: ProjectOutSchema(many=True)}
)
async def list_projects(request: web.Request) -> web.Response:
    projects = await request.app[projects_key].list()
    return web.json_response([to_wire(p) for p in projects])


@routes.post(
    PROJECTS,
    Permission.CONNECTIONS,
    "Create a project (an id is made up when none is given)",
    body=project_schema,
    responses={201: ProjectOutSchema()},
    errors=(409,),
)
async def create_project(request: web.Request, body: dict[str, Any]) -> web.Response:
    record = ProjectRecord(
        id=body.get("id") or str(uuid.uuid4()),
        name=body["name"],
        description=body.get("description"),
    )
    created = await request.app[projects_key].insert(record)
    return web.json_response(to_wire(created), status=201)


@routes.get(PROJECT, Permission.READ, "One project", responses={200: ProjectOutSchema()})
async def get_project(request: web.Request) -> web.Response:
    project_id = request.match_info["projectId"]
    project = await request.app[projects_key].get(project_id)
    if project is None:
        raise not_found(project_id)
    return web.json_response(to_wire(project))


@routes.put(
    PROJECT,
    Permission.CONNECTIONS,
    "Change a project's name and description",
    body=project_schema,
    responses={200: ProjectOutSchema()},
)
async def update_project(request: web.Request, body: dict[str, Any]) -> web.Response:
    project_id = request.match_info["projectId"]
    if body.get("id", project_id) != project_id:
        raise InvalidInput(
            "The id in the body does not match the URL",
            info={"id": ["Must match the project id in the URL."]},
        )
    record = ProjectRecord(project_id, body["name"], body.get("description"))
    updated = await request.app[projects_key].update(record)
    if updated is None:
        raise not_found(project_id)
    return web.json_response(to_wire(updated))


@routes.delete(
    PROJECT,
    Permission.CONNECTIONS,
    "Delete a project that has no brokers",
    responses={204: None},
    errors=(409,),
)
async def delete_project(request: web.Request) -> web.Response:
    project_id = request.match_info["projectId"]
    if project_id == DEFAULT_PROJECT_ID:
        raise Conflict("The default project cannot be deleted")
    connections = request.app[connections_key]
    # The store checks for connections in the transaction that deletes, serialised
    # with every connection write: none can join the project meanwhile.
    outcome = await request.app[projects_key].delete(project_id)
    if outcome is Deletion.MISSING:
        raise not_found(project_id)
    if outcome is Deletion.IN_USE:
        brokers = [link.id for link in connections.pool if link.record.project_id == project_id]
        raise Conflict(
            f"Project {project_id} still has brokers; delete or move them first",
            info={"brokers": brokers},
        )
    return web.Response(status=204)
