"""The license API of Pro Mosquitto: ``$CONTROL/cedalo/license/v1``."""

from __future__ import annotations

from typing import Any

from mmc.brokers import mappings
from mmc.brokers.link import BrokerLink

API = "cedalo/license"


async def information(link: BrokerLink) -> dict[str, Any]:
    """``getLicenseInformation`` as the Brokers API shows it (mappings.license_info);
    404 within the probe time when the broker has no license plugin."""
    await link.require_feature("license")
    response = await link.control.request(API, {"command": "getLicenseInformation"})
    data = response.get("data")
    return mappings.license_info(data if isinstance(data, dict) else {})


async def raw_information(link: BrokerLink) -> Any:
    """``getLicenseInformation``'s data as the broker gives it (the MMC UI's command);
    404 within the probe time when the broker has no license plugin."""
    await link.require_feature("license")
    response = await link.control.request(API, {"command": "getLicenseInformation"})
    return response.get("data", {})
