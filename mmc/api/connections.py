"""The Connections API of the Cedalo Management Center: /api/connections."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mmc.appkeys import connections_key
from mmc.auth.permissions import Permission
from mmc.schemas.connections import connection_schema, connection_test_schema
from mmc.schemas.responses import AcceptedSchema, ConnectionOutSchema, ConnectionTestResultSchema
from mmc.services.connections import Outcome
from mmc.web.routing import Routes

routes = Routes()

CONNECTIONS = "/api/connections"
CONNECTION = CONNECTIONS + "/{connectionId}"


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


@routes.get(
    CONNECTIONS,
    Permission.READ,
    "All connections with their live status",
    responses={200: ConnectionOutSchema(many=True)},
)
async def list_connections(request: web.Request) -> web.Response:
    # The listing is polled (dashboards, probes): its JSON is cached per entry.
    return web.Response(
        text=request.app[connections_key].listing_json(), content_type="application/json"
    )


@routes.post(
    CONNECTIONS,
    Permission.CONNECTIONS,
    "Create a connection and try to connect",
    description=(
        "Connected: 200 with every connection. Stored but not connected: 202. "
        "A POST for a connection whose attempt failed replaces its settings."
    ),
    body=connection_schema,
    responses={200: ConnectionOutSchema(many=True), 202: AcceptedSchema()},
)
async def create_connection(request: web.Request, body: dict[str, Any]) -> web.Response:
    return _answer(await request.app[connections_key].create(body))


@routes.post(
    CONNECTIONS + "/test",
    Permission.CONNECTIONS,
    "Try to connect with these settings, storing nothing",
    description=(
        "One connection attempt, bounded by connect_timeout, then a clean disconnect: "
        "200 {connected: true} or 200 {connected: false, error} with the codes of a "
        "connection's status.error. Nothing is stored or kept open. id and name may be "
        "left out; with the id of a stored connection, its password and key are used "
        "where the body leaves them out (as a PUT: only for the same broker address)."
    ),
    body=connection_test_schema,
    responses={200: ConnectionTestResultSchema()},
)
async def try_connection(request: web.Request, body: dict[str, Any]) -> web.Response:
    return web.json_response(await request.app[connections_key].test(body))


@routes.get(CONNECTION, Permission.READ, "One connection", responses={200: ConnectionOutSchema()})
async def get_connection(request: web.Request) -> web.Response:
    return web.json_response(request.app[connections_key].get(request.match_info["connectionId"]))


@routes.put(
    CONNECTION,
    Permission.CONNECTIONS,
    "Change a connection and reconnect; omitted password and key are kept",
    description=(
        "Omitted password and key are kept only while scheme, host and port stay the "
        "same: a connection moved to another broker must send them again (or null), "
        "else 400 naming them."
    ),
    body=connection_schema,
    path_defaults={"id": "connectionId"},
    responses={200: ConnectionOutSchema(many=True), 202: AcceptedSchema()},
)
async def update_connection(request: web.Request, body: dict[str, Any]) -> web.Response:
    connection_id = request.match_info["connectionId"]
    return _answer(await request.app[connections_key].update(connection_id, body))


@routes.delete(
    CONNECTION,
    Permission.CONNECTIONS,
    "Disconnect and delete",
    responses={200: ConnectionOutSchema(many=True)},
)
async def delete_connection(request: web.Request) -> web.Response:
    connection_id = request.match_info["connectionId"]
    return web.json_response(await request.app[connections_key].delete(connection_id))


@routes.put(
    CONNECTION + "/disconnect",
    Permission.CONNECTIONS,
    "Disconnect and keep disconnected, without deleting",
    description=(
        "The connection stays listed, its status {connected: false, disconnected: true, "
        "error: {code: EDISCONNECTED}}; it stays disconnected across restarts and "
        "changes until PUT .../connect. 200 with every connection."
    ),
    responses={200: ConnectionOutSchema(many=True)},
)
async def disconnect_connection(request: web.Request) -> web.Response:
    connection_id = request.match_info["connectionId"]
    return web.json_response(await request.app[connections_key].disconnect(connection_id))


@routes.put(
    CONNECTION + "/connect",
    Permission.CONNECTIONS,
    "Connect a disconnected connection again",
    description=(
        "Waits for the first attempt (up to connect_timeout), then 200 with every "
        "connection and its status. On a connection that is not disconnected, a "
        "reconnect waiting out its backoff is tried at once."
    ),
    responses={200: ConnectionOutSchema(many=True)},
)
async def connect_connection(request: web.Request) -> web.Response:
    connection_id = request.match_info["connectionId"]
    return web.json_response(await request.app[connections_key].connect(connection_id))
