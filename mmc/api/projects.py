"""The Projects API: /api/projects. Every connection belongs to one; ``default`` always exists."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from mmc.errors import Conflict, InvalidInput, NotFound
from mmc.keys import connections_key, projects_key
from mmc.openapi import doc
from mmc.schemas.projects import project_schema
from mmc.schemas.responses import ProjectOutSchema
from mmc.store.projects import DEFAULT_PROJECT_ID, Deletion, ProjectRecord
from mmc.web.body import read_valid

routes = web.RouteTableDef()


def to_wire(project: ProjectRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"id": project.id, "name": project.name}
    if project.description is not None:
        out["description"] = project.description
    return out


def not_found(project_id: str) -> NotFound:
    return NotFound(f"Project {project_id} not found")


@routes.view("/api/projects")
class ProjectsView(web.View):
    @doc("List projects", responses={200: ProjectOutSchema(many=True)})
    async def get(self) -> web.Response:
        projects = await self.request.app[projects_key].list()
        return web.json_response([to_wire(p) for p in projects])

    @doc(
        "Create a project (an id is made up when none is given)",
        body=project_schema,
        responses={201: ProjectOutSchema()},
        errors=(409,),
    )
    async def post(self) -> web.Response:
        data = await read_valid(self.request, project_schema)
        record = ProjectRecord(
            id=data.get("id") or str(uuid.uuid4()),
            name=data["name"],
            description=data.get("description"),
        )
        created = await self.request.app[projects_key].insert(record)
        return web.json_response(to_wire(created), status=201)


@routes.view("/api/projects/{projectId}")
class ProjectView(web.View):
    @property
    def project_id(self) -> str:
        return self.request.match_info["projectId"]

    @doc("One project", responses={200: ProjectOutSchema()})
    async def get(self) -> web.Response:
        project = await self.request.app[projects_key].get(self.project_id)
        if project is None:
            raise not_found(self.project_id)
        return web.json_response(to_wire(project))

    @doc(
        "Change a project's name and description",
        body=project_schema,
        responses={200: ProjectOutSchema()},
    )
    async def put(self) -> web.Response:
        data = await read_valid(self.request, project_schema)
        if data.get("id", self.project_id) != self.project_id:
            raise InvalidInput(
                "The id in the body does not match the URL",
                info={"id": ["Must match the project id in the URL."]},
            )
        record = ProjectRecord(self.project_id, data["name"], data.get("description"))
        updated = await self.request.app[projects_key].update(record)
        if updated is None:
            raise not_found(self.project_id)
        return web.json_response(to_wire(updated))

    @doc("Delete a project that has no brokers", responses={204: None}, errors=(409,))
    async def delete(self) -> web.Response:
        if self.project_id == DEFAULT_PROJECT_ID:
            raise Conflict("The default project cannot be deleted")
        connections = self.request.app[connections_key]
        # The store checks for connections in the transaction that deletes, serialised
        # with every connection write: none can join the project meanwhile.
        outcome = await self.request.app[projects_key].delete(self.project_id)
        if outcome is Deletion.MISSING:
            raise not_found(self.project_id)
        if outcome is Deletion.IN_USE:
            brokers = [
                link.id for link in connections.pool if link.record.project_id == self.project_id
            ]
            raise Conflict(
                f"Project {self.project_id} still has brokers; delete or move them first",
                info={"brokers": brokers},
            )
        return web.Response(status=204)
