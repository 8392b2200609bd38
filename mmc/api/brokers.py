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
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from mmc.auth.permissions import Permission
from mmc.brokers import mappings
from mmc.brokers.link import BrokerLink
from mmc.brokers.sys_tree import snapshot
from mmc.errors import BrokerUnavailable, MmcError, NotFound
from mmc.keys import connections_key, projects_key, settings_key
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
from mmc.store.db import now_ms
from mmc.web.routing import Routes

routes = Routes()

BASE = "/api/projects/{projectId}/brokers"
LICENSE_API = "cedalo/license"
BROKER_API = "broker"


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


def project_broker(request: web.Request) -> BrokerLink | None:
    """The link of the path's ``brokerId`` when it belongs to the path's ``projectId``."""
    link = request.app[connections_key].pool.get(request.match_info["brokerId"])
    project_id = request.match_info.get("projectId")
    if link is None or (project_id is not None and link.record.project_id != project_id):
        return None
    return link


def connected_project_broker(request: web.Request) -> BrokerLink:
    """The path's broker for a request to it: 404 unless it is in the path's project,
    503 unless its link is connected."""
    link = project_broker(request)
    if link is None:
        project_id = request.match_info.get("projectId")
        where = f" in project {project_id}" if project_id is not None else ""
        raise NotFound(f"Broker {request.match_info['brokerId']} not found{where}")
    return request.app[connections_key].pool.require_connected(link.id)


async def _require_project(request: web.Request, project_id: str) -> None:
    if not await request.app[projects_key].exists(project_id):
        raise NotFound(f"Project {project_id} not found")


async def fetch_license(link: BrokerLink) -> dict[str, Any]:
    await link.require_feature("license")
    response = await link.control.request(LICENSE_API, {"command": "getLicenseInformation"})
    data = response.get("data")
    return mappings.license_info(data if isinstance(data, dict) else {})


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
    "$SYS values and their history; tries to connect a broker that is down",
    responses={200: BrokerInfoSchema()},
)
async def broker_info(request: web.Request) -> web.Response:
    link = await _link(request)
    settings = request.app[settings_key]
    # "Tries to connect": a link that is down skips its backoff and gets a bounded
    # time; once up, its retained $SYS values are on their way: give them a moment.
    if (
        not link.connected
        and link.reconnect_now()
        and await link.wait_connected(settings.connect_timeout)
    ):
        await link.wait_sys_values(settings.probe_timeout)
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
            body["licenseInfo"] = await fetch_license(link)
    return web.json_response(body)


@routes.get(
    BASE + "/{brokerId}/license",
    Permission.READ,
    "The broker's license (Pro)",
    responses={200: LicenseSchema()},
)
async def broker_license(request: web.Request) -> web.Response:
    return web.json_response(await fetch_license(await _link(request)))


@routes.get(
    BASE + "/{brokerId}/listeners",
    Permission.READ,
    "The broker's listeners (2.1, Pro)",
    responses={200: ListenerSchema(many=True)},
)
async def broker_listeners(request: web.Request) -> web.Response:
    link = await _link(request)
    await link.require_feature("brokerControl")
    response = await link.control.request(BROKER_API, {"command": "listListeners"})
    data = response.get("data")
    return web.json_response(mappings.listeners(data if isinstance(data, dict) else {}))


@routes.get(
    BASE + "/{brokerId}/bridges",
    Permission.READ,
    "Bridges from mosquitto.conf ($SYS) and bridge plugins",
    responses={200: BridgeSchema(many=True)},
)
async def list_bridges(request: web.Request) -> web.Response:
    link = await _link(request)
    capabilities = link.capabilities
    licensed: list[str] | None = None
    if link.connected:
        try:
            capabilities = await link.ensure_capabilities()
            if "license" in capabilities.features:
                licensed = (await fetch_license(link))["features"]
        except MmcError:
            pass  # the bridges of mosquitto.conf are still known from $SYS
    bridge_apis = capabilities.bridge_apis if capabilities is not None else ()
    return web.json_response(mappings.bridge_listing(link.sys_values, bridge_apis, licensed))


@dataclass(frozen=True)
class Bridge:
    id: str
    # Remote client id of a mosquitto.conf bridge, or None for a plugin.
    client_id: str | None = None
    # $CONTROL API of a bridge plugin, or None for a mosquitto.conf bridge.
    api: str | None = None


async def _bridge(request: web.Request, link: BrokerLink) -> Bridge:
    """The path's bridge by its id; a mosquitto.conf bridge also by its connection name."""
    bridge_id = request.match_info["bridgeId"]
    configured = mappings.conf_bridges(link.sys_values)
    if bridge_id in configured:
        return Bridge(bridge_id, client_id=bridge_id)
    by_name = [c for c in configured if mappings.bridge_name(c) == bridge_id]
    if len(by_name) == 1:
        return Bridge(by_name[0], client_id=by_name[0])
    if link.connected:
        capabilities = await link.ensure_capabilities()
        api = mappings.plugin_bridge_api(bridge_id)
        if api in capabilities.bridge_apis:
            return Bridge(bridge_id, api=api)
    raise NotFound(f"Bridge {bridge_id} not found on broker {link.id}")


async def _plugin_api(request: web.Request, link: BrokerLink) -> str:
    bridge = await _bridge(request, link)
    if bridge.api is None:
        raise NotFound(
            f"Bridge {bridge.id} is configured in mosquitto.conf, which has no "
            "configuration API: change the broker's mosquitto.conf instead",
            info={"bridge": bridge.id, "source": "config"},
        )
    return bridge.api


async def _plugin_target(request: web.Request) -> tuple[BrokerLink, str]:
    """The path's broker and its bridge plugin's API: their 404s before a bad body's 400."""
    link = await _link(request)
    return link, await _plugin_api(request, link)


BRIDGE = BASE + "/{brokerId}/bridges/{bridgeId}"


@routes.get(
    BRIDGE + "/status",
    Permission.READ,
    "Whether a bridge is connected",
    responses={200: BridgeStatusSchema()},
)
async def bridge_status(request: web.Request) -> web.Response:
    link = await _link(request)
    bridge = await _bridge(request, link)
    if not link.connected:
        raise BrokerUnavailable(f"Broker {link.id} is not connected")
    if bridge.client_id is not None:
        topic = f"$SYS/broker/connection/{bridge.client_id}/state"
        state = link.sys_values.get(topic, "0")
        since = link.sys_changed_at.get(topic)
        return web.json_response(mappings.conf_bridge_status(bridge.id, state, since))
    assert bridge.api is not None
    response = await link.control.request(bridge.api, {"command": "getStatus"})
    data = response.get("data")
    return web.json_response(
        mappings.plugin_bridge_status(bridge.id, data if isinstance(data, dict) else {})
    )


@routes.get(
    BRIDGE + "/config",
    Permission.READ,
    "A bridge plugin's configuration",
    responses={200: OBJECT},
)
async def bridge_config(request: web.Request) -> web.Response:
    link = await _link(request)
    api = await _plugin_api(request, link)
    response = await link.control.request(api, {"command": "getConfig"})
    return web.json_response(response.get("data", {}))


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
    await link.control.request(api, {"command": "updateConfig", "configChange": body})
    return web.Response(status=204)
