"""Who is connected: ``$CONTROL/cedalo/inspect/v1``.

Pro Mosquitto answers it with Cedalo's inspect plugin; open-source mosquitto 2.0+ with
mmc's companion plugin (``plugin/``), which takes the same commands and answers with the
same field names. Answers are passed on as the broker gives them: fields one broker has
and the other lacks (Pro's queue figures, the plugin's ``totalCount``) go through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mmc.brokers import plugin_call
from mmc.brokers.link import CLIENT_EVENTS_TOPIC, BrokerLink

API = "cedalo/inspect"
FEATURE = "inspect"
NOT_ENABLED = "inspect plugin not enabled on this broker"
# What the companion plugin publishes when a client connects or disconnects; every link
# subscribes to it (BrokerLink.on_client_event).
EVENTS_TOPIC = CLIENT_EVENTS_TOPIC


async def list_clients(link: BrokerLink, *, verbose: bool, count: int, offset: int) -> Any:
    return await _data(
        link, {"command": "listClients", "verbose": verbose, "count": count, "offset": offset}
    )


async def get_client(link: BrokerLink, clientid: str) -> Any:
    return await _data(link, {"command": "getClient", "clientid": clientid})


async def _data(link: BrokerLink, command: Mapping[str, Any]) -> Any:
    response = await plugin_call.call(link, FEATURE, API, command, not_enabled=NOT_ENABLED)
    return response.get("data", {})
