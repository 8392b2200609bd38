"""Pure mappings from broker payloads to the Brokers API's shapes.

Sources (the project's research notes, ``../shared/notes/mmc-and-mosquitto.md`` beside
the repository): ``getLicenseInformation`` as the MMC reads it (section 3.1),
``listListeners`` of 2.1 and Pro (2.1), the bridge state topics of ``$SYS`` (4) and the
Pro bridge plugins' ``getStatus`` (3.1, whose payload is unconfirmed: the mapping accepts
the likely spellings).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# ------------------------------------------------------------------ license


def _epoch_ms(value: Any) -> float | None:
    """A number as published; an ISO 8601 date as milliseconds since the epoch."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and value:
        try:
            return float(value)
        except ValueError:
            pass
        try:
            parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.UTC)
        return int(parsed.timestamp() * 1000)
    return None


def _names(features: Any) -> list[str]:
    """``[{name, count}]`` (the MMC's reading) or plain strings -> names."""
    names: list[str] = []
    for item in features if isinstance(features, list) else []:
        name = item.get("name") if isinstance(item, Mapping) else item
        if isinstance(name, str) and name:
            names.append(name)
    return names


def license_info(data: Mapping[str, Any]) -> dict[str, Any]:
    """``getLicenseInformation`` data -> ``{plan, edition, issuedBy, issuedTo, validSince,
    validUntil, features}``. ``plan`` falls back to the edition when the broker has none."""
    edition = str(data.get("edition") or "")
    return {
        "plan": str(data.get("plan") or edition),
        "edition": edition,
        "issuedBy": str(data.get("issuedBy") or ""),
        "issuedTo": str(data.get("issuedTo") or ""),
        "validSince": _epoch_ms(data.get("validSince")),
        "validUntil": _epoch_ms(data.get("validUntil")),
        "features": _names(data.get("features")),
    }


# ---------------------------------------------------------------- listeners


def _cert(item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "certificate_id": str(item.get("certificate_id") or item.get("id") or ""),
        "name": str(item.get("name") or ""),
        "filename": str(item.get("filename") or item.get("file_name") or ""),
    }


def listeners(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``listListeners`` data -> ``[{id, port, bindAddress, tls, protocol,
    requireCertificate, certs}]``.

    Open-source 2.1 sends no ``id``: listeners are numbered from 1 in the broker's
    order, as Pro numbers them for certificate management.
    """
    out: list[dict[str, Any]] = []
    items = data.get("listeners")
    for index, item in enumerate(items if isinstance(items, list) else [], start=1):
        if not isinstance(item, Mapping):
            continue
        listener: dict[str, Any] = {
            "id": item.get("id", index),
            "port": item.get("port"),
            "tls": bool(item.get("tls", False)),
            "protocol": str(item.get("protocol") or "mqtt"),
            "requireCertificate": bool(
                item.get("require-certificate", item.get("requireCertificate", False))
            ),
            "certs": [_cert(c) for c in item.get("certs") or [] if isinstance(c, Mapping)],
        }
        bind = item.get("bind-address", item.get("bindAddress"))
        if bind:
            listener["bindAddress"] = str(bind)
        socket_path = item.get("socket-path", item.get("socketPath"))
        if socket_path:
            listener["socketPath"] = str(socket_path)
        out.append(listener)
    return out


# ------------------------------------------------------------------ bridges

STATE_TOPIC = re.compile(r"^\$SYS/broker/connection/(?P<client_id>[^/]+)/state$")
PLUGIN_PREFIX = "cedalo/"


def conf_bridges(sys_values: Mapping[str, str]) -> dict[str, str]:
    """Bridges of mosquitto.conf, by remote client id -> their state payload ("1"/"0")."""
    found: dict[str, str] = {}
    for topic, value in sys_values.items():
        match = STATE_TOPIC.match(topic)
        if match is not None:
            found[match.group("client_id")] = value
    return found


def bridge_name(client_id: str) -> str:
    """The ``connection <name>`` of a default remote client id ``<hostname>.<name>``."""
    return client_id.rsplit(".", 1)[-1]


def plugin_bridge_id(api: str) -> str:
    """``cedalo/influxdb-bridge`` -> ``influxdb-bridge``."""
    return api.removeprefix(PLUGIN_PREFIX)


def plugin_bridge_api(bridge_id: str) -> str:
    return PLUGIN_PREFIX + bridge_id


# Whose bridge a $SYS state topic is. A bridge with notifications on publishes its
# state into its own broker's $SYS and, over its client connection, into the far
# broker's: the far end of someone else's bridge is not the broker's bridge.
OWN = "own"
INCOMING = "incoming"
# No companion plugin to ask (or it could not answer): mmc cannot tell.
UNKNOWN = "unknown"


@dataclass(frozen=True)
class BridgeOrigins:
    """What the companion plugin's ``listIncomingBridges`` said about the state ids
    ``seen`` in ``$SYS`` just before asking: ``incoming`` ids (published by a client,
    by its client id) are other brokers' bridges; the rest of ``seen`` are the broker's
    own, unless the plugin's list is not ``complete``."""

    seen: frozenset[str]
    incoming: Mapping[str, str]
    complete: bool

    def origin(self, client_id: str) -> str:
        if client_id in self.incoming:
            return INCOMING
        if self.complete and client_id in self.seen:
            return OWN
        return UNKNOWN


def incoming_bridges(seen: Iterable[str], data: Any) -> BridgeOrigins | None:
    """``listIncomingBridges`` data -> BridgeOrigins; None if it is not that shape."""
    if not isinstance(data, Mapping) or not isinstance(data.get("bridges"), list):
        return None
    incoming: dict[str, str] = {}
    for item in data["bridges"]:
        if isinstance(item, Mapping) and isinstance(item.get("id"), str):
            incoming[item["id"]] = str(item.get("clientid") or "")
    return BridgeOrigins(frozenset(seen), incoming, data.get("complete") is True)


def bridge_listing(
    sys_values: Mapping[str, str],
    bridge_apis: Iterable[str] = (),
    licensed_features: Iterable[str] | None = None,
    origins: BridgeOrigins | None = None,
) -> list[dict[str, Any]]:
    """``[{id, isActive, name, source, origin}]``: the bridges of mosquitto.conf that are
    not known to be another broker's (``origin`` ``own``, or ``unknown`` when mmc could
    not tell), the bridge plugins the broker announces, and bridge features the license
    offers that are not loaded (``isActive: false``: not configured in mosquitto.conf)."""
    out: list[dict[str, Any]] = []
    for client_id in sorted(conf_bridges(sys_values)):
        origin = origins.origin(client_id) if origins is not None else UNKNOWN
        if origin != INCOMING:
            out.append(
                {
                    "id": client_id,
                    "name": bridge_name(client_id),
                    "isActive": True,
                    "source": "config",
                    "origin": origin,
                }
            )
    loaded = [plugin_bridge_id(api) for api in bridge_apis]
    out += [
        {"id": b, "name": b, "isActive": True, "source": "plugin", "origin": OWN} for b in loaded
    ]
    for feature in licensed_features or ():
        if feature.endswith("-bridge") and feature not in loaded:
            out.append(
                {
                    "id": feature,
                    "name": feature,
                    "isActive": False,
                    "source": "license",
                    "origin": OWN,
                }
            )
            loaded.append(feature)
    return out


def conf_bridge_status(client_id: str, state: str, since: int | None) -> dict[str, Any]:
    status: dict[str, Any] = {"id": client_id, "connected": state.strip() == "1"}
    if since is not None:
        status["since"] = since
    return status


_CONNECTED_WORDS = frozenset({"connected", "running", "active", "online", "ok", "up"})


def plugin_bridge_status(bridge_id: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """A bridge plugin's ``getStatus`` data -> ``{id, connected, since?}``.

    Accepts ``connected: bool`` or a ``status``/``state`` word, and the time as
    ``since``/``connectedSince``/``lastConnect`` (number or ISO date).
    """
    connected = data.get("connected")
    if not isinstance(connected, bool):
        word = data.get("status", data.get("state"))
        connected = isinstance(word, str) and word.strip().lower() in _CONNECTED_WORDS
    status: dict[str, Any] = {"id": bridge_id, "connected": connected}
    for key in ("since", "connectedSince", "lastConnect", "timestamp"):
        since = _epoch_ms(data.get(key))
        if since is not None:
            status["since"] = since
            break
    return status
