"""A broker's bridges: those of mosquitto.conf, known from ``$SYS``, and Pro's bridge
plugins, each with its own ``$CONTROL/cedalo/<name>-bridge/v1`` API (Mosquitto 3.1 docs).

A mosquitto.conf bridge is named by its remote client id, or by the ``connection`` name
in it; it has a status (its ``$SYS`` state topic) and no configuration API.

A bridge with ``notifications true`` (mosquitto's default) also publishes its state into
the *far* broker's ``$SYS/broker/connection/<id>/state``, over its client connection:
there it is someone else's bridge. The companion plugin (plugin/README.md) sees which
state topics a client published and answers ``listIncomingBridges``; those are never
listed as the broker's. Without the plugin mmc cannot tell, and says so: ``origin``
``unknown`` instead of ``own``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mmc.brokers import client_control, mappings
from mmc.brokers import license as broker_license
from mmc.brokers.link import BrokerLink
from mmc.brokers.mappings import BridgeOrigins
from mmc.errors import BrokerUnavailable, ControlError, MmcError, NotFound


@dataclass(frozen=True)
class Bridge:
    id: str
    # Remote client id of a mosquitto.conf bridge, or None for a plugin.
    client_id: str | None = None
    # $CONTROL API of a loaded bridge plugin, or None.
    api: str | None = None
    origin: str = mappings.OWN
    # False for a bridge feature the license offers that is not loaded.
    active: bool = True


def _require_reached(link: BrokerLink) -> None:
    """A broker never reached has bridges mmc knows nothing about: not an empty list."""
    if not link.connected and link.sys_updated_at is None:
        raise BrokerUnavailable(
            f"Broker {link.id} has not been reached yet: its bridges are unknown",
            info={"bridges": "unknown"},
        )


async def _origins(link: BrokerLink, seen: Iterable[str]) -> BridgeOrigins | None:
    """Whose the state ids ``seen`` are, from the companion plugin; its last answer while
    the broker is down; None when there is no plugin to ask.

    ``seen`` must be read before asking: the plugin records a publish before the broker
    passes it on, so every id seen is one the answer covers.
    """
    if not link.connected:
        return link.bridge_origins
    try:
        capabilities = await link.ensure_capabilities()
        if "clientControl" not in capabilities.features:
            return None
        # Optional: a plugin that ignores the command must not hold the listing up for
        # a whole request timeout.
        response = await link.control.request(
            client_control.API, {"command": "listIncomingBridges"}, timeout=link.probe_timeout
        )
    except ControlError:
        return None  # Pro's own client-control, or an older companion plugin
    except MmcError:
        return link.bridge_origins
    origins = mappings.incoming_bridges(seen, response.get("data"))
    if origins is not None:
        link.bridge_origins = origins
    return origins


async def _licensed(link: BrokerLink) -> list[str] | None:
    try:
        capabilities = await link.ensure_capabilities()
        if "license" in capabilities.features:
            features: list[str] = (await broker_license.information(link))["features"]
            return features
    except MmcError:
        pass  # the bridges of mosquitto.conf are still known from $SYS
    return None


async def listing(link: BrokerLink) -> list[dict[str, Any]]:
    """``[{id, name, isActive, source, origin}]`` (mappings.bridge_listing). A broker that
    is down lists the bridges of mosquitto.conf it last published; one never reached
    answers 503 (its bridges are unknown, not none)."""
    _require_reached(link)
    sys_values = dict(link.sys_values)
    origins = await _origins(link, mappings.conf_bridges(sys_values))
    capabilities = link.capabilities
    licensed = None
    if link.connected:
        # The bridges of mosquitto.conf are still known from $SYS.
        with contextlib.suppress(MmcError):
            capabilities = await link.ensure_capabilities()
        licensed = await _licensed(link)
    bridge_apis = capabilities.bridge_apis if capabilities is not None else ()
    return mappings.bridge_listing(sys_values, bridge_apis, licensed, origins)


async def find(link: BrokerLink, bridge_id: str) -> Bridge:
    """The bridge by its id; a mosquitto.conf bridge also by its connection name. Another
    broker's bridge, seen here through its notification, is not found."""
    _require_reached(link)
    configured = mappings.conf_bridges(link.sys_values)
    origins = await _origins(link, configured)
    origin = {c: origins.origin(c) if origins is not None else mappings.UNKNOWN for c in configured}
    theirs = [c for c in configured if origin[c] == mappings.INCOMING]
    ours = [c for c in configured if origin[c] != mappings.INCOMING]
    if bridge_id in ours:
        return Bridge(bridge_id, client_id=bridge_id, origin=origin[bridge_id])
    by_name = [c for c in ours if mappings.bridge_name(c) == bridge_id]
    if len(by_name) == 1:
        return Bridge(by_name[0], client_id=by_name[0], origin=origin[by_name[0]])
    if link.connected:
        capabilities = await link.ensure_capabilities()
        api = mappings.plugin_bridge_api(bridge_id)
        if api in capabilities.bridge_apis:
            return Bridge(bridge_id, api=api)
        if bridge_id.endswith("-bridge") and bridge_id in (await _licensed(link) or ()):
            return Bridge(bridge_id, active=False)
    incoming = [c for c in theirs if bridge_id in (c, mappings.bridge_name(c))]
    if incoming and origins is not None:
        raise NotFound(
            f"Bridge {bridge_id} is not broker {link.id}'s: it is another broker's bridge "
            f"connected to it as client {origins.incoming[incoming[0]] or incoming[0]}",
            info={"bridge": incoming[0], "origin": mappings.INCOMING},
        )
    raise NotFound(f"Bridge {bridge_id} not found on broker {link.id}")


async def status(link: BrokerLink, bridge_id: str) -> dict[str, Any]:
    """``{id, connected, since?, origin, isActive}`` of one bridge."""
    bridge = await find(link, bridge_id)
    if not link.connected:
        raise BrokerUnavailable(f"Broker {link.id} is not connected")
    if bridge.client_id is not None:
        topic = f"$SYS/broker/connection/{bridge.client_id}/state"
        state = link.sys_values.get(topic, "0")
        since = link.sys_changed_at.get(topic)
        answer = mappings.conf_bridge_status(bridge.id, state, since)
    elif bridge.api is not None:
        response = await link.control.request(bridge.api, {"command": "getStatus"})
        data = response.get("data")
        answer = mappings.plugin_bridge_status(bridge.id, data if isinstance(data, dict) else {})
    else:
        # Licensed but not loaded: listed as inactive, and not running.
        answer = {"id": bridge.id, "connected": False}
    return {**answer, "origin": bridge.origin, "isActive": bridge.active}


async def config_api(link: BrokerLink, bridge_id: str) -> str:
    """The ``$CONTROL`` API of a bridge plugin; 404 for a mosquitto.conf bridge, which has
    no configuration API."""
    bridge = await find(link, bridge_id)
    if bridge.api is None and not bridge.active:
        raise NotFound(
            f"Bridge {bridge.id} is licensed but not loaded on broker {link.id}: "
            "enable its plugin in mosquitto.conf first",
            info={"bridge": bridge.id, "source": "license"},
        )
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
