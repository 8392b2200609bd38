"""aiomqtt.Client with the three things a management link needs that it lacks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import aiomqtt
import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

MessageHandler = Callable[[mqtt.MQTTMessage], None]


class ConnectionLost(aiomqtt.MqttError):
    """The broker closed the connection before answering CONNECT."""

    def __init__(self, detail: str | None) -> None:
        super().__init__(detail or "Connection closed by the broker before CONNACK")
        self.detail = detail


class HandshakeTimeout(aiomqtt.MqttError):
    """TCP (and TLS) connected, but the broker sent no CONNACK within the timeout.

    aiomqtt reports this as a bare "Operation timed out" whose context is asyncio's
    TimeoutError, which reads like a TCP connect timeout; it is not one."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"No CONNACK within {timeout:g} s")
        self.timeout = timeout


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
    alert, a reset) and waits out its timeout; fail the attempt at once with the reason.

    With ``on_message``, every message goes straight from paho's read callback to that
    function, in order: aiomqtt's ``messages`` iterator costs a queue hop and a new task
    per message, which under a reply or ``$SYS`` flood is most of the receive path.
    """

    def __init__(self, *args: Any, on_message: MessageHandler | None = None, **kwargs: Any) -> None:
        self.paho_log = _PahoLog()
        self._handler = on_message
        # The blocking connect runs in a worker thread: whether it has returned, and
        # whether the attempt was given up meanwhile (see _close_socket).
        self._connect_returned = False
        self._abandoned = False
        # Set by the worker thread once paho's connect (TCP, TLS, CONNECT sent) succeeded:
        # a timeout after that is the MQTT handshake's, not the socket's.
        self._socket_connected = False
        super().__init__(*args, logger=self.paho_log, **kwargs)

    async def __aenter__(self) -> Self:
        # aiomqtt raises on a CONNACK timeout (or a refused CONNACK, or cancellation)
        # without closing paho's socket: the loop keeps reading it, so a broker that
        # never answers would cost a descriptor per attempt, and a late CONNACK would
        # give the broker a session for a client nobody uses.
        self._connect_returned = self._abandoned = self._socket_connected = False
        try:
            return await super().__aenter__()
        except aiomqtt.MqttError as exc:
            self._close_socket()
            # aiomqtt's CONNACK wait: a plain MqttError raised from asyncio's timeout.
            if (
                self._socket_connected
                and type(exc) is aiomqtt.MqttError
                and isinstance(exc.__context__, TimeoutError)
            ):
                raise HandshakeTimeout(self.timeout) from exc
            raise
        except BaseException:
            self._close_socket()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A graceful DISCONNECT that times out leaves the socket open too.
        try:
            await super().__aexit__(exc_type, exc, tb)
        finally:
            self._close_socket()

    def _client_connect(self) -> None:
        # Worker thread. paho announces the new socket to the loop (add_reader) with
        # call_soon_threadsafe; this is queued after that, so the loop closes the socket
        # only once the reader is registered.
        try:
            super()._client_connect()
            self._socket_connected = True
        finally:
            self._loop.call_soon_threadsafe(self._connect_finished)

    def _connect_finished(self) -> None:
        self._connect_returned = True
        if self._abandoned:
            self._close_socket()

    def _close_socket(self) -> None:
        """Close paho's socket (unregistering it from the loop); a connect still running in
        its thread has it closed when it returns."""
        self._abandoned = True
        if self._connect_returned:
            self._client._sock_close()

    def forget_disconnect_error(self) -> None:
        """The link has recorded why it dropped; mark aiomqtt's disconnect future as seen
        so asyncio does not report "Future exception was never retrieved"."""
        done = self._disconnected
        if done.done() and not done.cancelled():
            done.exception()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._handler is None:
            super()._on_message(client, userdata, message)
            return
        try:
            self._handler(message)
        except Exception:
            # Never into paho: an exception there would take the connection down.
            log.exception("error handling a message on %s", message.topic)

    def _on_disconnect(self, *args: Any, **kwargs: Any) -> None:
        if not self._connected.done():
            self._connected.set_exception(ConnectionLost(self.paho_log.last_error))
            # The attempt may have timed out already, with nobody left to await this:
            # mark it retrieved so asyncio does not log "exception was never retrieved".
            self._connected.exception()
            return
        super()._on_disconnect(*args, **kwargs)

    def disconnected_future(self) -> asyncio.Future[None]:
        """Done when the connection has ended (with an exception if it dropped)."""
        return self._disconnected

    def raise_disconnected(self) -> None:
        """Raise MqttError for the ended connection, as the messages iterator does."""
        exc = self._disconnected.exception() if self._disconnected.done() else None
        raise aiomqtt.MqttError("Disconnected during message iteration") from exc

    async def _misc_loop(self) -> None:
        # paho's housekeeping (keepalive PINGREQ, its timeouts): aiomqtt runs it every
        # second per client; a quarter of the keepalive is enough and, with a thousand
        # clients, makes far fewer short-lived timers for the garbage collector.
        interval = max(1.0, min(5.0, self._client.keepalive / 4))
        while self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:  # noqa: ASYNC110
            await asyncio.sleep(interval)
