"""The Brokers API of the Cedalo Platform: a broker is a connection seen through its project.

    /api/projects/{projectId}/brokers                                   GET
    /api/projects/{projectId}/brokers/{brokerId}                        GET DELETE
    /api/projects/{projectId}/brokers/{brokerId}/info                   GET
    /api/projects/{projectId}/brokers/{brokerId}/license                GET
    /api/projects/{projectId}/brokers/{brokerId}/listeners              GET
    /api/projects/{projectId}/brokers/{brokerId}/bridges                GET
    /api/projects/{projectId}/brokers/{brokerId}/bridges/{bridgeId}/status   GET
    /api/projects/{projectId}/brokers/{brokerId}/bridges/{bridgeId}/config   GET PUT

A feature the broker lacks answers 404 "<feature> plugin not enabled on this broker"
within the probe timeout (see mmc.brokers.capabilities).
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from mmc.appkeys import connections_key, projects_key
from mmc.auth.permissions import Permission
from mmc.brokers import bridges, broker_control
from mmc.brokers import license as broker_license
from mmc.brokers.link import BrokerLink
from mmc.brokers.sys_tree import snapshot
from mmc.clock import now_ms
from mmc.errors import MmcError, NotFound
from mmc.schemas.responses import (
    OBJECT,
    BridgeConfigSchema,
    BridgeSchema,
    BridgeStatusSchema,
    BrokerInfoSchema,
    BrokerSchema,
    LicenseSchema,
    ListenerSchema,
)
from mmc.web.brokers import project_broker
from mmc.web.routing import Routes

routes = Routes()

BASE = "/api/projects/{projectId}/brokers"


def broker_wire(link: BrokerLink) -> dict[str, Any]:
    features = link.features
    return {
        "id": link.id,
        "name": link.record.name,
        "url": link.record.url,
        "project_id": link.record.project_id,
        "isConnected": link.connected,
        "status": link.status.to_wire(),
        "features": sorted(features) if features is not None else None,
    }


async def _require_project(request: web.Request, project_id: str) -> None:
    if not await request.app[projects_key].exists(project_id):
        raise NotFound(f"Project {project_id} not found")


@routes.get(
    BASE, Permission.MONITOR, "The project's brokers", responses={200: BrokerSchema(many=True)}
)
async def list_brokers(request: web.Request) -> web.Response:
    project_id = request.match_info["projectId"]
    await _require_project(request, project_id)
    pool = request.app[connections_key].pool
    return web.json_response(
        [broker_wire(link) for link in pool if link.record.project_id == project_id]
    )


async def _link(request: web.Request) -> BrokerLink:
    """The path's broker of the path's project: 404 naming what is missing."""
    link = project_broker(request)
    if link is not None:
        return link
    project_id = request.match_info["projectId"]
    await _require_project(request, project_id)
    raise NotFound(f"Broker {request.match_info['brokerId']} not found in project {project_id}")


@routes.get(BASE + "/{brokerId}", Permission.MONITOR, "One broker", responses={200: BrokerSchema()})
async def get_broker(request: web.Request) -> web.Response:
    return web.json_response(broker_wire(await _link(request)))


@routes.delete(
    BASE + "/{brokerId}",
    Permission.CONNECTIONS,
    "Remove the broker (its connection)",
    responses={204: None},
)
async def delete_broker(request: web.Request) -> web.Response:
    link = await _link(request)
    # Through the service: the record goes and the link is closed.
    await request.app[connections_key].delete(link.id)
    return web.Response(status=204)


@routes.get(
    BASE + "/{brokerId}/info",
    Permission.MONITOR,
    "$SYS values and their history, and the link's status, as mmc knows them now",
    responses={200: BrokerInfoSchema()},
)
async def broker_info(request: web.Request) -> web.Response:
    link = await _link(request)
    # Answered from what the link knows, without waking it: a link that is down is
    # already retrying on its own backoff, and a dashboard polling /info must neither
    # wait out a connect timeout per poll nor turn that backoff into a retry per poll.
    body: dict[str, Any] = {
        "id": link.id,
        "url": link.record.url,
        "name": link.record.name,
        "project_id": link.record.project_id,
        "sysTopics": snapshot(link.sys_values, link.sys_updated_at or now_ms()),
        "sysTopicsHistory": link.sys_history.entries(),
        "isConnected": link.connected,
        "status": link.status.to_wire(),
    }
    if link.connected:
        # No license plugin, or it did not answer: licenseInfo is optional.
        with contextlib.suppress(MmcError):
            body["licenseInfo"] = await broker_license.information(link)
    return web.json_response(body)


@routes.get(
    BASE + "/{brokerId}/license",
    # What /info already shows as licenseInfo, and what the MMC pushes to every logged-in
    # UI (its "license" event): broker monitoring, for every role.
    Permission.MONITOR,
    "The broker's license (Pro)",
    responses={200: LicenseSchema()},
)
async def get_license(request: web.Request) -> web.Response:
    return web.json_response(await broker_license.information(await _link(request)))


@routes.get(
    BASE + "/{brokerId}/listeners",
    Permission.READ,
    "The broker's listeners (2.1, Pro)",
    responses={200: ListenerSchema(many=True)},
)
async def get_listeners(request: web.Request) -> web.Response:
    return web.json_response(await broker_control.listeners(await _link(request)))


@routes.get(
    BASE + "/{brokerId}/bridges",
    Permission.READ,
    "Bridges from mosquitto.conf ($SYS) and bridge plugins",
    responses={200: BridgeSchema(many=True)},
    description=(
        "The broker's own bridges only: the far end of another broker's bridge (its state "
        "notification in this broker's $SYS) is left out when the companion plugin tells "
        "them apart, and listed with origin `unknown` when nothing can. A broker mmc has "
        "never reached answers 503 (its bridges are unknown, not none)."
    ),
)
async def list_bridges(request: web.Request) -> web.Response:
    return web.json_response(await bridges.listing(await _link(request)))


BRIDGE = BASE + "/{brokerId}/bridges/{bridgeId}"


async def _plugin_target(request: web.Request) -> tuple[BrokerLink, str]:
    """The path's broker and its bridge plugin's API: their 404s before a bad body's 400."""
    link = await _link(request)
    return link, await bridges.config_api(link, request.match_info["bridgeId"])


@routes.get(
    BRIDGE + "/status",
    Permission.READ,
    "Whether a bridge is connected",
    responses={200: BridgeStatusSchema()},
    description=(
        "Every listed bridge answers (a licensed bridge plugin that is not loaded: "
        "`connected: false`, `isActive: false`); another broker's bridge is 404."
    ),
)
async def bridge_status(request: web.Request) -> web.Response:
    link = await _link(request)
    return web.json_response(await bridges.status(link, request.match_info["bridgeId"]))


@routes.get(
    BRIDGE + "/config",
    Permission.READ,
    "A bridge plugin's configuration",
    responses={200: OBJECT},
)
async def bridge_config(request: web.Request) -> web.Response:
    link, api = await _plugin_target(request)
    return web.json_response(await bridges.get_config(link, api))


# Changing a bridge changes what the broker does: the same right as dynsec changes.
@routes.put(
    BRIDGE + "/config",
    Permission.CONTROL,
    "Change a bridge plugin's configuration",
    before={"target": _plugin_target},
    body=BridgeConfigSchema(),
    responses={204: None},
)
async def change_bridge_config(
    request: web.Request, target: tuple[BrokerLink, str], body: dict[str, Any]
) -> web.Response:
    link, api = target
    await bridges.update_config(link, api, body)
    return web.Response(status=204)
