"""Who is connected: /api/projects/{projectId}/brokers/{brokerId}/clients[/{clientid}].

Through the broker's inspect API (Pro Mosquitto's, or mmc's companion plugin on
open-source mosquitto). Not the dynamic-security clients (``…/dynsec/clients``): these
are the MQTT connections the broker has seen.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import ValidationError

from mmc.auth.permissions import Permission
from mmc.broker_strings import check_name
from mmc.brokers import inspect
from mmc.brokers.link import BrokerLink
from mmc.errors import InvalidInput
from mmc.schemas.inspect import list_clients_query_schema
from mmc.schemas.responses import INSPECT_CLIENT, INSPECT_LISTING
from mmc.web.brokers import connected_project_broker
from mmc.web.routing import Routes

routes = Routes()

BASE = "/api/projects/{projectId}/brokers/{brokerId}/clients"
LINK = {"link": connected_project_broker}


def _path_clientid(request: web.Request) -> str:
    """The path's client id, held to the broker's rule (``a%00b`` would be ``a`` to it)."""
    clientid = request.match_info["clientid"]
    try:
        check_name(clientid)
    except ValidationError as exc:
        raise InvalidInput("Invalid input", info={"clientid": exc.messages}) from None
    return clientid


@routes.get(
    BASE,
    Permission.READ,
    "List the clients the broker has seen (connected, and recently disconnected)",
    before=LINK,
    query=list_clients_query_schema,
    responses={200: INSPECT_LISTING},
)
async def list_clients(
    request: web.Request, link: BrokerLink, query: dict[str, Any]
) -> web.Response:
    return web.json_response(await inspect.list_clients(link, **query))


@routes.get(
    f"{BASE}/{{clientid}}",
    Permission.READ,
    "One client the broker has seen",
    before={**LINK, "clientid": _path_clientid},
    responses={200: INSPECT_CLIENT},
)
async def get_client(request: web.Request, link: BrokerLink, clientid: str) -> web.Response:
    return web.json_response(await inspect.get_client(link, clientid))
