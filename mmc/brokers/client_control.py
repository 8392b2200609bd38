"""Client control: ``$CONTROL/cedalo/client-control/v1``.

Pro Mosquitto answers it with Cedalo's client-control plugin; open-source mosquitto
2.0+ with mmc's companion plugin (``plugin/``). Both take the same commands
(``disconnectClient``, ``subscribeClient``, ``unsubscribeClient``) in the envelope of
the dynamic-security API, so this wrapper does not care which one is there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mmc.brokers import plugin_call
from mmc.brokers.link import BrokerLink

API = "cedalo/client-control"
NOT_ENABLED = "client-control plugin not enabled on this broker"


async def disconnect(link: BrokerLink, clientid: str) -> None:
    await _command(link, {"command": "disconnectClient", "clientid": clientid})


async def subscribe(
    link: BrokerLink,
    clientid: str,
    topic: str,
    qos: int,
    options: Mapping[str, Any] | None = None,
) -> None:
    command: dict[str, Any] = {
        "command": "subscribeClient",
        "clientid": clientid,
        "topic": topic,
        "qos": qos,
    }
    if options:
        command["options"] = dict(options)
    await _command(link, command)


async def unsubscribe(link: BrokerLink, clientid: str, topic: str) -> None:
    await _command(link, {"command": "unsubscribeClient", "clientid": clientid, "topic": topic})


async def _command(link: BrokerLink, command: Mapping[str, Any]) -> dict[str, Any]:
    return await plugin_call.call(link, "clientControl", API, command, not_enabled=NOT_ENABLED)
