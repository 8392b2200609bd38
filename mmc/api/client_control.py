"""Client control: /api/projects/{projectId}/brokers/{brokerId}/client-control/*.

Disconnect a client, or subscribe/unsubscribe it on its behalf, through the broker's
client-control plugin (Pro Mosquitto's, or mmc's own for open-source mosquitto).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mmc.auth.permissions import Permission
from mmc.brokers import client_control
from mmc.schemas.client_control import disconnect_schema, subscribe_schema, unsubscribe_schema
from mmc.schemas.responses import OBJECT
from mmc.web.brokers import connected_project_broker
from mmc.web.routing import Routes

routes = Routes()

BASE = "/api/projects/{projectId}/brokers/{brokerId}/client-control"


@routes.put(
    f"{BASE}/disconnect",
    Permission.CONTROL,
    "Disconnect a client",
    body=disconnect_schema,
    responses={200: OBJECT},
)
async def disconnect(request: web.Request, body: dict[str, Any]) -> web.Response:
    await client_control.disconnect(connected_project_broker(request), body["clientid"])
    return web.json_response({})


@routes.put(
    f"{BASE}/subscribe",
    Permission.CONTROL,
    "Subscribe a client to a topic filter",
    body=subscribe_schema,
    responses={204: None},
)
async def subscribe(request: web.Request, body: dict[str, Any]) -> web.Response:
    await client_control.subscribe(
        connected_project_broker(request),
        body["clientid"],
        body["topic"],
        body["qos"],
        body.get("options"),
    )
    return web.Response(status=204)


@routes.put(
    f"{BASE}/unsubscribe",
    Permission.CONTROL,
    "Unsubscribe a client from a topic filter",
    body=unsubscribe_schema,
    responses={204: None},
)
async def unsubscribe(request: web.Request, body: dict[str, Any]) -> web.Response:
    await client_control.unsubscribe(
        connected_project_broker(request), body["clientid"], body["topic"]
    )
    return web.Response(status=204)
