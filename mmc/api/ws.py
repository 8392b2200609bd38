"""GET /api/ws: the WebSocket channel, speaking the MMC UI's protocol (mmc.web.ws_protocol).

``websocket_handler`` authenticates on its own (session cookie or Bearer token) so that it
can also serve an upgrade that arrives where no route declaration applies (the UI's own
root path). A session's upgrade is refused when it comes from another site's page, as a
cookie-authenticated write is (mmc.web.auth): a browser sends ``Origin`` with every
WebSocket upgrade, and the socket's commands change brokers.
"""

from __future__ import annotations

from aiohttp import web

from mmc.appkeys import identity_key, settings_key
from mmc.auth.permissions import Permission, allowed
from mmc.errors import InvalidInput, NotAllowed, Unauthorized
from mmc.web.auth import CROSS_SITE_MESSAGE, cross_site, identify
from mmc.web.routing import Routes
from mmc.web.ws_protocol import ROUTE, Channel

routes = Routes()


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """Upgrade to the MMC UI's WebSocket protocol and serve it until either side closes."""
    identity = request.get(identity_key) or await identify(request)
    if identity is None:
        raise Unauthorized()
    request[identity_key] = identity
    if not allowed(identity.roles, Permission.MONITOR):
        raise NotAllowed()
    if identity.method == "session" and cross_site(request):
        raise NotAllowed(CROSS_SITE_MESSAGE)
    settings = request.app[settings_key]
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_body_size,
        # Pings find a peer that went away without closing; browsers answer them.
        heartbeat=settings.events_heartbeat,
    )
    if not ws.can_prepare(request).ok:
        raise InvalidInput("A WebSocket upgrade is expected here")
    await ws.prepare(request)
    await Channel(request, ws, identity).run()
    return ws


@routes.get(
    ROUTE,
    Permission.MONITOR,
    "WebSocket channel in the MMC UI's protocol: requests, broker commands, events",
    responses={101: None},
    description=(
        "Upgrade to a WebSocket. Frames in: requests {id, type: 'request', request, ...}, "
        "commands {id, type: 'command', api, command: {command, ...}, broker?} and pings. "
        "Frames out: {type: 'response', requestId, response} or {type: 'response', "
        "requestId, command, data, done: true}, with a truthy error (text) instead on "
        "failure; events {type: 'event', event: {type, payload}} (connections, "
        "system_status). Each request and command needs what the REST route doing the same "
        "needs. A session's upgrade from another site's page is refused (403)."
    ),
)
async def websocket(request: web.Request) -> web.StreamResponse:
    return await websocket_handler(request)
