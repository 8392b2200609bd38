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

from mmc.brokers import bridges, broker_control
from mmc.brokers import license as broker_license
from mmc.brokers.link import BrokerLink
from mmc.brokers.sys_tree import snapshot
from mmc.clock import now_ms
from mmc.errors import InvalidInput, MmcError, NotFound
from mmc.keys import connections_key, projects_key, settings_key
from mmc.openapi import doc
from mmc.schemas.responses import (
    OBJECT,
    BridgeSchema,
    BridgeStatusSchema,
    BrokerInfoSchema,
    BrokerSchema,
    LicenseSchema,
    ListenerSchema,
    ObjectSchema,
)
from mmc.web.body import read_json
from mmc.web.brokers import project_broker

routes = web.RouteTableDef()

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


@routes.view(BASE)
class BrokersView(web.View):
    @doc("The project's brokers", responses={200: BrokerSchema(many=True)})
    async def get(self) -> web.Response:
        project_id = self.request.match_info["projectId"]
        await _require_project(self.request, project_id)
        pool = self.request.app[connections_key].pool
        return web.json_response(
            [broker_wire(link) for link in pool if link.record.project_id == project_id]
        )


class _BrokerView(web.View):
    """A view of one broker of one project."""

    @property
    def project_id(self) -> str:
        return self.request.match_info["projectId"]

    @property
    def broker_id(self) -> str:
        return self.request.match_info["brokerId"]

    async def link(self) -> BrokerLink:
        link = project_broker(self.request)
        if link is not None:
            return link
        await _require_project(self.request, self.project_id)
        raise NotFound(f"Broker {self.broker_id} not found in project {self.project_id}")


@routes.view(BASE + "/{brokerId}")
class BrokerView(_BrokerView):
    @doc("One broker", responses={200: BrokerSchema()})
    async def get(self) -> web.Response:
        return web.json_response(broker_wire(await self.link()))

    @doc("Remove the broker (its connection)", responses={204: None})
    async def delete(self) -> web.Response:
        link = await self.link()
        # Through the service: the record goes and the link is closed.
        await self.request.app[connections_key].delete(link.id)
        return web.Response(status=204)


@routes.view(BASE + "/{brokerId}/info")
class BrokerInfoView(_BrokerView):
    @doc(
        "$SYS values and their history; tries to connect a broker that is down",
        responses={200: BrokerInfoSchema()},
    )
    async def get(self) -> web.Response:
        link = await self.link()
        settings = self.request.app[settings_key]
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
                body["licenseInfo"] = await broker_license.information(link)
        return web.json_response(body)


@routes.view(BASE + "/{brokerId}/license")
class BrokerLicenseView(_BrokerView):
    @doc("The broker's license (Pro)", responses={200: LicenseSchema()})
    async def get(self) -> web.Response:
        return web.json_response(await broker_license.information(await self.link()))


@routes.view(BASE + "/{brokerId}/listeners")
class BrokerListenersView(_BrokerView):
    @doc("The broker's listeners (2.1, Pro)", responses={200: ListenerSchema(many=True)})
    async def get(self) -> web.Response:
        return web.json_response(await broker_control.listeners(await self.link()))


@routes.view(BASE + "/{brokerId}/bridges")
class BridgesView(_BrokerView):
    @doc(
        "Bridges from mosquitto.conf ($SYS) and bridge plugins",
        responses={200: BridgeSchema(many=True)},
    )
    async def get(self) -> web.Response:
        return web.json_response(await bridges.listing(await self.link()))


class _BridgeView(_BrokerView):
    @property
    def bridge_id(self) -> str:
        return self.request.match_info["bridgeId"]


@routes.view(BASE + "/{brokerId}/bridges/{bridgeId}/status")
class BridgeStatusView(_BridgeView):
    @doc("Whether a bridge is connected", responses={200: BridgeStatusSchema()})
    async def get(self) -> web.Response:
        return web.json_response(await bridges.status(await self.link(), self.bridge_id))


@routes.view(BASE + "/{brokerId}/bridges/{bridgeId}/config")
class BridgeConfigView(_BridgeView):
    @doc("A bridge plugin's configuration", responses={200: OBJECT})
    async def get(self) -> web.Response:
        link = await self.link()
        api = await bridges.config_api(link, self.bridge_id)
        return web.json_response(await bridges.get_config(link, api))

    @doc("Change a bridge plugin's configuration", body=ObjectSchema(), responses={204: None})
    async def put(self) -> web.Response:
        link = await self.link()
        api = await bridges.config_api(link, self.bridge_id)
        body = await read_json(self.request)
        if not isinstance(body, dict):
            raise InvalidInput("The bridge configuration must be a JSON object")
        await bridges.update_config(link, api, body)
        return web.Response(status=204)
