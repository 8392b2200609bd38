"""The HTTP calls of the MMC web UI's shell (mmc.web.ui serves its files).

The open-source MMC frontend asks these besides its WebSocket; each answers JSON, or a
404 in the error shape where mmc has nothing to say (never the UI's HTML, never a 401
while logged in: a 401 sends the UI back to the login page).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mmc.appkeys import connections_key, settings_key, ui_selections_key
from mmc.auth.permissions import Permission
from mmc.errors import MmcError, NotFound
from mmc.schemas.responses import OBJECT
from mmc.schemas.ui import (
    BackendParametersSchema,
    NewsletterSchema,
    PongSchema,
    UiConfigSchema,
    ping_query_schema,
)
from mmc.services.ui import default_selection, find, system_status
from mmc.web.auth import SESSION_COOKIE
from mmc.web.routing import Routes

routes = Routes()


@routes.get(
    "/api/theme",
    Permission.SELF,
    "The web UI's custom theme: none (404), the UI's own applies",
    responses={},
    errors=(404,),
)
async def theme(request: web.Request) -> web.Response:
    raise NotFound("No custom theme: the UI's own applies")


@routes.get(
    "/api/config",
    Permission.SELF,
    "The web UI's display options",
    responses={200: UiConfigSchema()},
)
async def config(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "hideConnections": False,
            "hideInfoPage": False,
            "hideLogoutButton": False,
            "hideProfileButton": False,
        }
    )


@routes.get(
    "/api/backend-parameters",
    Permission.MONITOR,
    "What the web UI needs to know of this backend, and each broker's $SYS status",
    responses={200: BackendParametersSchema()},
)
async def backend_parameters(request: web.Request) -> web.Response:
    pool = request.app[connections_key].pool
    return web.json_response(
        {
            "isPremium": False,
            "multipleConnectionsAllowed": True,
            "showFeedbackForm": False,
            "showStreemsheets": False,
            "rootUsername": request.app[settings_key].admin_username,
            "ssoUsed": False,
            "treatUsernamesAsClientIds": False,
            "urlMappings": {},
            "systemStatus": {
                link.record.name: system_status(link)
                for link in pool
                if link.connected and link.sys_values
            },
        }
    )


@routes.get(
    "/api/newsletter/subscribe",
    Permission.SELF,
    "Whether the web UI may offer a newsletter: no",
    responses={200: NewsletterSchema()},
)
async def newsletter(request: web.Request) -> web.Response:
    return web.json_response({"newsletterEndpointAvailable": False})


@routes.get(
    "/api/plugins",
    Permission.SELF,
    "The backend plugins the web UI lists: none",
    responses={200: {"type": "array", "items": OBJECT}},
)
async def plugins(request: web.Request) -> web.Response:
    return web.json_response([])


@routes.get(
    "/api/update",
    Permission.SELF,
    "Whether an update is available for the web UI to announce: nothing to announce",
    responses={200: OBJECT},
)
async def update(request: web.Request) -> web.Response:
    return web.json_response({})


@routes.get(
    "/api/tls/ping",
    Permission.SELF,
    "Whether connections may carry TLS material (a CA, a client certificate and key): yes",
    description=(
        "The web UI enables the TLS fields of its connection forms (the files it sends as "
        "ca, cert and key, {data, encoding: base64}, as the Connections API takes them) "
        "only when this answers pong: true."
    ),
    responses={200: PongSchema()},
)
async def tls_ping(request: web.Request) -> web.Response:
    return web.json_response({"pong": True})


@routes.get(
    "/api/client-control/ping",
    Permission.SELF,
    "Whether the selected broker can disconnect clients (client control)",
    description=(
        "The broker is the query's connection (id or name), else the one the session's "
        "web UI selected last (connectToBroker on its WebSocket), else the UI's own "
        "default: the first connected connection. pong is true when that broker is "
        "connected and answers the client-control API (Pro Mosquitto's plugin or mmc's)."
    ),
    query=ping_query_schema,
    responses={200: PongSchema()},
    errors=(404,),
)
async def client_control_ping(request: web.Request, query: dict[str, Any]) -> web.Response:
    links = list(request.app[connections_key].pool)
    wanted = query.get("connection")
    session_id = request.cookies.get(SESSION_COOKIE)
    if wanted is None and session_id:
        wanted = request.app[ui_selections_key].selected(session_id)
    if "connection" in query:
        link = find(links, query["connection"])
        if link is None:
            raise NotFound(f"Connection {query['connection']} not found")
    else:
        link = find(links, wanted) if wanted is not None else default_selection(links)
    if link is None or not link.connected:
        return web.json_response({"pong": False})
    try:
        await link.require_feature("clientControl")
    except MmcError:  # not there (404), or the link dropped meanwhile (503)
        return web.json_response({"pong": False})
    return web.json_response({"pong": True})
