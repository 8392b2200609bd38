"""Client control: /api/projects/{projectId}/brokers/{brokerId}/client-control/*.

Disconnect a client, or subscribe/unsubscribe it on its behalf, through the broker's
client-control plugin (Pro Mosquitto's, or mmc's own for open-source mosquitto).
"""

from __future__ import annotations

from aiohttp import web

from mmc.brokers import client_control
from mmc.openapi import doc
from mmc.schemas.client_control import disconnect_schema, subscribe_schema, unsubscribe_schema
from mmc.schemas.responses import OBJECT
from mmc.web.body import read_valid
from mmc.web.brokers import connected_project_broker

routes = web.RouteTableDef()

BASE = "/api/projects/{projectId}/brokers/{brokerId}/client-control"


@routes.put(f"{BASE}/disconnect")
@doc("Disconnect a client", body=disconnect_schema, responses={200: OBJECT})
async def disconnect(request: web.Request) -> web.Response:
    data = await read_valid(request, disconnect_schema)
    await client_control.disconnect(connected_project_broker(request), data["clientid"])
    return web.json_response({})


@routes.put(f"{BASE}/subscribe")
@doc("Subscribe a client to a topic filter", body=subscribe_schema, responses={204: None})
async def subscribe(request: web.Request) -> web.Response:
    data = await read_valid(request, subscribe_schema)
    await client_control.subscribe(
        connected_project_broker(request),
        data["clientid"],
        data["topic"],
        data["qos"],
        data.get("options"),
    )
    return web.Response(status=204)


@routes.put(f"{BASE}/unsubscribe")
@doc("Unsubscribe a client from a topic filter", body=unsubscribe_schema, responses={204: None})
async def unsubscribe(request: web.Request) -> web.Response:
    data = await read_valid(request, unsubscribe_schema)
    await client_control.unsubscribe(
        connected_project_broker(request), data["clientid"], data["topic"]
    )
    return web.Response(status=204)
