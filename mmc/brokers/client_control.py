"""Client control: ``$CONTROL/cedalo/client-control/v1``.

Pro Mosquitto answers it with Cedalo's client-control plugin; open-source mosquitto
2.0+ with mmc's companion plugin (``plugin/``). Both take the same commands
(``disconnectClient``, ``subscribeClient``, ``unsubscribeClient``) in the envelope of
the dynamic-security API, so this wrapper does not care which one is there.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from mmc.brokers.link import BrokerLink
from mmc.errors import BrokerTimeout, ControlError, ControlNotFound, MmcError, NotFound

API = "cedalo/client-control"
NOT_ENABLED = "client-control plugin not enabled on this broker"
# A command no client-control implementation knows: it has no effect, and any
# implementation answers it ("Unknown command"), which is all the probe needs.
PROBE_COMMAND = "mmcProbe"


class ClientControl:
    """Sends client-control commands; remembers which links have the plugin."""

    def __init__(self, probe_timeout: float) -> None:
        self.probe_timeout = probe_timeout
        # link -> its reconnect count when the plugin last answered: a broker that
        # restarted may have lost (or gained) the plugin, so a new connection asks again.
        self._answered: weakref.WeakKeyDictionary[BrokerLink, int] = weakref.WeakKeyDictionary()

    async def require_plugin(self, link: BrokerLink) -> None:
        """NotFound unless the broker answers on the client-control topic.

        The one place that decides whether a broker has the feature; it becomes a
        look-up in the link's detected capabilities once those exist. Open-source
        mosquitto 2.0 silently drops a ``$CONTROL`` publish no plugin handles, so
        "no answer within the probe timeout" means "no plugin"; 2.1 answers
        ``{"error": "endpoint not available"}`` at once (ControlNotFound).
        """
        if self._answered.get(link) == link.reconnects:
            return
        try:
            await link.control.send(API, {"command": PROBE_COMMAND}, timeout=self.probe_timeout)
        except (BrokerTimeout, ControlNotFound):
            raise NotFound(NOT_ENABLED) from None
        self._answered[link] = link.reconnects

    async def disconnect(self, link: BrokerLink, clientid: str) -> None:
        await self._command(link, {"command": "disconnectClient", "clientid": clientid})

    async def subscribe(
        self,
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
        await self._command(link, command)

    async def unsubscribe(self, link: BrokerLink, clientid: str, topic: str) -> None:
        await self._command(
            link, {"command": "unsubscribeClient", "clientid": clientid, "topic": topic}
        )

    async def _command(self, link: BrokerLink, command: Mapping[str, Any]) -> dict[str, Any]:
        await self.require_plugin(link)
        try:
            return await link.control.request(API, command)
        except ControlNotFound as exc:
            if not exc.command:  # the endpoint itself went away (2.1's answer)
                raise NotFound(NOT_ENABLED) from None
            raise
        except ControlError as exc:
            # The plugin's own failures (out of memory and the like) are not the caller's.
            if exc.message.lower().startswith("internal error"):
                raise MmcError(exc.message) from None
            raise
