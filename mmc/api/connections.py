"""The Connections API of the Cedalo Management Center: /api/connections."""

from __future__ import annotations

from aiohttp import web

from mmc.keys import connections_key
from mmc.openapi import doc
from mmc.schemas.connections import connection_schema
from mmc.schemas.responses import AcceptedSchema, ConnectionOutSchema
from mmc.services.connections import Outcome
from mmc.web.body import load, read_json, read_valid

routes = web.RouteTableDef()


def _answer(outcome: Outcome) -> web.Response:
    if outcome.connect_error is None:
        return web.json_response(outcome.connections)
    reason = outcome.connect_error
    return web.json_response(
        {
            "code": "ACCEPTED",
            "message": f'Connection created but could not connect. Reason "{reason}"',
        },
        status=202,
    )


@routes.view("/api/connections")
class ConnectionsView(web.View):
    @doc("All connections with their live status", responses={200: ConnectionOutSchema(many=True)})
    async def get(self) -> web.Response:
        # The listing is polled (dashboards, probes): its JSON is cached per entry.
        return web.Response(
            text=self.request.app[connections_key].listing_json(), content_type="application/json"
        )

    @doc(
        "Create a connection and try to connect",
        description=(
            "Connected: 200 with every connection. Stored but not connected: 202. "
            "A POST for a connection whose attempt failed replaces its settings."
        ),
        body=connection_schema,
        responses={200: ConnectionOutSchema(many=True), 202: AcceptedSchema()},
    )
    async def post(self) -> web.Response:
        data = await read_valid(self.request, connection_schema)
        return _answer(await self.request.app[connections_key].create(data))


@routes.view("/api/connections/{connectionId}")
class ConnectionView(web.View):
    @property
    def connection_id(self) -> str:
        return self.request.match_info["connectionId"]

    @doc("One connection", responses={200: ConnectionOutSchema()})
    async def get(self) -> web.Response:
        return web.json_response(self.request.app[connections_key].get(self.connection_id))

    @doc(
        "Change a connection and reconnect; omitted password and key are kept",
        description=(
            "Omitted password and key are kept only while scheme, host and port stay the "
            "same: a connection moved to another broker must send them again (or null), "
            "else 400 naming them."
        ),
        body=connection_schema,
        responses={200: ConnectionOutSchema(many=True), 202: AcceptedSchema()},
    )
    async def put(self) -> web.Response:
        body = await read_json(self.request)
        if isinstance(body, dict):
            body.setdefault("id", self.connection_id)
        data = load(connection_schema, body)
        return _answer(await self.request.app[connections_key].update(self.connection_id, data))

    @doc("Disconnect and delete", responses={200: ConnectionOutSchema(many=True)})
    async def delete(self) -> web.Response:
        return web.json_response(await self.request.app[connections_key].delete(self.connection_id))
