"""One command to a plugin API that a broker may or may not offer (client control,
inspect): what the wrappers of those APIs share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mmc.brokers.link import BrokerLink
from mmc.errors import ControlError, ControlNotFound, MmcError, NotFound


async def call(
    link: BrokerLink, feature: str, api: str, command: Mapping[str, Any], *, not_enabled: str
) -> dict[str, Any]:
    """The response entry of ``command`` on ``api``.

    Whether the broker has the API is the link's capability detection: NotFound
    (``not_enabled``) within the probe time, never a request timeout; so is an endpoint
    that went away since (2.1's answer to a topic no plugin handles). The plugin's own
    failures (out of memory and the like) are not the caller's: 500.
    """
    await link.require_feature(feature)
    try:
        return await link.control.request(api, command)
    except ControlNotFound as exc:
        if not exc.command:
            raise NotFound(not_enabled) from None
        raise
    except ControlError as exc:
        if exc.message.lower().startswith("internal error"):
            raise MmcError(exc.message) from None
        raise
