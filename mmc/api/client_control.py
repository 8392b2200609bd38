"""Client control: /api/projects/{projectId}/brokers/{brokerId}/client-control/*.

Disconnect a client, or subscribe/unsubscribe it on its behalf, through the broker's
client-control plugin (Pro Mosquitto's, or mmc's own for open-source mosquitto).
"""

from __future__ import annotations

from aiohttp import web

from mmc.brokers.link import BrokerLink
from mmc.errors import NotFound
from mmc.keys import client_control_key, connections_key
from mmc.schemas.client_control import disconnect_schema, subscribe_schema, unsubscribe_schema
from mmc.web.body import read_valid

routes = web.RouteTableDef()

BASE = "/api/projects/{projectId}/brokers/{brokerId}/client-control"


def _link(request: web.Request) -> BrokerLink:
    """The broker's link: 404 unless it exists in this project, 503 unless connected."""
    project_id = request.match_info["projectId"]
    broker_id = request.match_info["brokerId"]
    pool = request.app[connections_key].pool
    link = pool.get(broker_id)
    if link is None or link.record.project_id != project_id:
        raise NotFound(f"Broker {broker_id} not found in project {project_id}")
    return pool.require_connected(broker_id)


@routes.put(f"{BASE}/disconnect")
async def disconnect(request: web.Request) -> web.Response:
    data = await read_valid(request, disconnect_schema)
    await request.app[client_control_key].disconnect(_link(request), data["clientid"])
    return web.json_response({})


@routes.put(f"{BASE}/subscribe")
async def subscribe(request: web.Request) -> web.Response:
    data = await read_valid(request, subscribe_schema)
    await request.app[client_control_key].subscribe(
        _link(request), data["clientid"], data["topic"], data["qos"], data.get("options")
    )
    return web.Response(status=204)


@routes.put(f"{BASE}/unsubscribe")
async def unsubscribe(request: web.Request) -> web.Response:
    data = await read_valid(request, unsubscribe_schema)
    await request.app[client_control_key].unsubscribe(
        _link(request), data["clientid"], data["topic"]
    )
    return web.Response(status=204)
