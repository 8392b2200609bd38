"""The Connections API of the Cedalo Management Center: /api/connections."""

from __future__ import annotations

from aiohttp import web

from mmc.connections import Outcome
from mmc.keys import connections_key
from mmc.schemas.connections import connection_schema
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
    async def get(self) -> web.Response:
        # The listing is polled (dashboards, probes): its JSON is cached per entry.
        return web.Response(
            text=self.request.app[connections_key].listing_json(), content_type="application/json"
        )

    async def post(self) -> web.Response:
        data = await read_valid(self.request, connection_schema)
        return _answer(await self.request.app[connections_key].create(data))


@routes.view("/api/connections/{connectionId}")
class ConnectionView(web.View):
    @property
    def connection_id(self) -> str:
        return self.request.match_info["connectionId"]

    async def get(self) -> web.Response:
        return web.json_response(self.request.app[connections_key].get(self.connection_id))

    async def put(self) -> web.Response:
        body = await read_json(self.request)
        if isinstance(body, dict):
            body.setdefault("id", self.connection_id)
        data = load(connection_schema, body)
        return _answer(await self.request.app[connections_key].update(self.connection_id, data))

    async def delete(self) -> web.Response:
        return web.json_response(await self.request.app[connections_key].delete(self.connection_id))
