"""A broker's bridges: those of mosquitto.conf, known from ``$SYS``, and Pro's bridge
plugins, each with its own ``$CONTROL/cedalo/<name>-bridge/v1`` API (Mosquitto 3.1 docs).

A mosquitto.conf bridge is named by its remote client id, or by the ``connection`` name
in it; it has a status (its ``$SYS`` state topic) and no configuration API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmc.brokers import license as broker_license
from mmc.brokers import mappings
from mmc.brokers.link import BrokerLink
from mmc.errors import BrokerUnavailable, MmcError, NotFound


@dataclass(frozen=True)
class Bridge:
    id: str
    # Remote client id of a mosquitto.conf bridge, or None for a plugin.
    client_id: str | None = None
    # $CONTROL API of a bridge plugin, or None for a mosquitto.conf bridge.
    api: str | None = None


async def listing(link: BrokerLink) -> list[dict[str, Any]]:
    """``[{id, name, isActive, source}]`` (mappings.bridge_listing). A broker that is down
    or does not answer still lists the bridges of mosquitto.conf it last published."""
    capabilities = link.capabilities
    licensed: list[str] | None = None
    if link.connected:
        try:
            capabilities = await link.ensure_capabilities()
            if "license" in capabilities.features:
                licensed = (await broker_license.information(link))["features"]
        except MmcError:
            pass  # the bridges of mosquitto.conf are still known from $SYS
    bridge_apis = capabilities.bridge_apis if capabilities is not None else ()
    return mappings.bridge_listing(link.sys_values, bridge_apis, licensed)


async def find(link: BrokerLink, bridge_id: str) -> Bridge:
    """The bridge by its id; a mosquitto.conf bridge also by its connection name."""
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


async def status(link: BrokerLink, bridge_id: str) -> dict[str, Any]:
    """``{id, connected, since?}`` of one bridge."""
    bridge = await find(link, bridge_id)
    if not link.connected:
        raise BrokerUnavailable(f"Broker {link.id} is not connected")
    if bridge.client_id is not None:
        topic = f"$SYS/broker/connection/{bridge.client_id}/state"
        state = link.sys_values.get(topic, "0")
        since = link.sys_changed_at.get(topic)
        return mappings.conf_bridge_status(bridge.id, state, since)
    assert bridge.api is not None
    response = await link.control.request(bridge.api, {"command": "getStatus"})
    data = response.get("data")
    return mappings.plugin_bridge_status(bridge.id, data if isinstance(data, dict) else {})


async def config_api(link: BrokerLink, bridge_id: str) -> str:
    """The ``$CONTROL`` API of a bridge plugin; 404 for a mosquitto.conf bridge, which has
    no configuration API."""
    bridge = await find(link, bridge_id)
    if bridge.api is None:
        raise NotFound(
            f"Bridge {bridge.id} is configured in mosquitto.conf, which has no "
            "configuration API: change the broker's mosquitto.conf instead",
            info={"bridge": bridge.id, "source": "config"},
        )
    return bridge.api


async def get_config(link: BrokerLink, api: str) -> Any:
    """A bridge plugin's ``getConfig`` data, as the plugin sent it (``api``: config_api)."""
    response = await link.control.request(api, {"command": "getConfig"})
    return response.get("data", {})


async def update_config(link: BrokerLink, api: str, change: Mapping[str, Any]) -> None:
    """A bridge plugin's ``updateConfig`` with ``change`` as its ``configChange``."""
    await link.control.request(api, {"command": "updateConfig", "configChange": change})
