"""aiomqtt.Client with the two things a management link needs that it lacks."""

from __future__ import annotations

import logging
from typing import Any

import aiomqtt


class ConnectionLost(aiomqtt.MqttError):
    """The broker closed the connection before answering CONNECT."""

    def __init__(self, detail: str | None) -> None:
        super().__init__(detail or "Connection closed by the broker before CONNACK")
        self.detail = detail


class _PahoLog(logging.Logger):
    """paho's log for one client: keeps the last error (aiomqtt drops it) and passes
    everything on at DEBUG, since the link reports failures itself."""

    def __init__(self) -> None:
        super().__init__("mqtt")
        self.parent = logging.getLogger("mqtt")
        self.last_error: str | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR:
            self.last_error = str(msg) % args if args else str(msg)
        super().log(logging.DEBUG, msg, *args, **kwargs)


class MqttClient(aiomqtt.Client):
    """aiomqtt ignores a connection that dies before CONNACK (a TLS 1.3 client-certificate
    alert, a reset) and waits out its timeout; fail the attempt at once with the reason."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.paho_log = _PahoLog()
        super().__init__(*args, logger=self.paho_log, **kwargs)

    def forget_disconnect_error(self) -> None:
        """The link has recorded why it dropped; mark aiomqtt's disconnect future as seen
        so asyncio does not report "Future exception was never retrieved"."""
        done = self._disconnected
        if done.done() and not done.cancelled():
            done.exception()

    def _on_disconnect(self, *args: Any, **kwargs: Any) -> None:
        if not self._connected.done():
            self._connected.set_exception(ConnectionLost(self.paho_log.last_error))
            # The attempt may have timed out already, with nobody left to await this:
            # mark it retrieved so asyncio does not log "exception was never retrieved".
            self._connected.exception()
            return
        super()._on_disconnect(*args, **kwargs)
