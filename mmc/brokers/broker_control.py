"""Broker control: ``$CONTROL/broker/v1`` (mosquitto 2.1 with ``enable_control_api``, Pro).

Its ``listPlugins`` is sent by capability detection (mmc.brokers.capabilities), which is
what decides whether the API is there at all; the Brokers API reads the listeners here.
"""

from __future__ import annotations

from typing import Any

from mmc.brokers import mappings
from mmc.brokers.link import BrokerLink

API = "broker"


async def listeners(link: BrokerLink) -> list[dict[str, Any]]:
    """``listListeners`` as the Brokers API shows it (mappings.listeners); 404 within the
    probe time when the broker has no broker control."""
    await link.require_feature("brokerControl")
    response = await link.control.request(API, {"command": "listListeners"})
    data = response.get("data")
    return mappings.listeners(data if isinstance(data, dict) else {})
