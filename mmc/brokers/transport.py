"""The MQTT transport: aiomqtt's Client as a management link needs it, and the only module
of mmc that imports aiomqtt or paho-mqtt or touches their internals.

The rest of mmc uses what is defined or re-exported here: ``MqttClient`` (connect with
``async with``, then ``subscribe_all``, ``publish_nowait``, ``disconnected_future``,
``raise_disconnected``, ``forget_disconnect_error``), ``Message`` (paho's received
message: ``topic``, ``payload``, ``retain``), ``MqttError`` (what every failure is), and
the failures status.py names: ``ConnectionLost``, ``HandshakeTimeout``,
``SubscribeTimeout``, ``SubscribeLost``, and ``MqttConnectError`` (a refused CONNACK)
with ``ReasonCode``.

Tested with aiomqtt 2.5.0 and 2.5.1, and paho-mqtt 2.2.0 (2.1.0 fails a pin: it bounds
the TLS handshake by the keepalive, not ``connect_timeout``); setup.cfg allows only those
minor versions. ``tests/test_transport_pins.py`` pins every name below, by signature and by
behaviour against a real mosquitto (or a few lines of asyncio server where mosquitto
cannot misbehave that way): an upgrade that changes one fails there, not in production.
Private names used, and why:

aiomqtt's ``Client``
- ``_client``: its paho client. QoS 0 publishes go straight to its ``publish`` (aiomqtt's
  ``publish`` adds an event and a wake-up per message only to learn a QoS 0 packet was
  written); its ``connect_timeout`` bounds the socket connect and TLS handshake, which
  aiomqtt's ``timeout`` does not; its ``keepalive`` and ``loop_misc`` drive
  ``_misc_loop``; its ``_sock_close`` ends a failed attempt.
- ``_on_message`` (overridden): aiomqtt registers it as paho's ``on_message`` when
  constructed. Ours hands every message to the link's handler, in order, in paho's read
  callback: aiomqtt's queue and ``messages`` iterator cost a hop and a task per message.
- ``_on_disconnect`` (overridden, registered the same way): aiomqtt ignores a connection
  that dies before CONNACK (a TLS 1.3 client-certificate alert, a reset) and waits out
  its timeout; ours fails ``_connected`` at once with paho's last logged error.
- ``_misc_loop`` (overridden): started by aiomqtt when the socket opens, runs paho's
  housekeeping (PINGREQ, keepalive timeout) every second; ours every keepalive/4 (at most
  5 s), far fewer timers with a thousand links.
- ``_client_connect`` (overridden): the blocking connect (TCP, TLS, CONNECT sent) aiomqtt
  runs in a worker thread. Ours records that it returned, and whether it succeeded, so a
  given-up attempt's socket is closed once the loop has registered it, and a CONNACK
  timeout is told from a socket one.
- ``_loop``: the event loop aiomqtt captured; the worker thread reaches it through
  ``call_soon_threadsafe``.
- ``_connected``: the CONNACK future; ``_on_disconnect`` fails it.
- ``_disconnected``: the future that ends with the connection (with an exception if it
  dropped); the link waits on it instead of the ``messages`` iterator.
- Behaviours relied on: ``__aenter__`` re-raises a socket or TLS error as
  ``MqttError(str(exc)) from None``, the original kept in ``__context__`` (status.py
  reads it); a CONNACK timeout is a plain ``MqttError`` raised while handling asyncio's
  ``TimeoutError``; a refused CONNACK is ``MqttConnectError`` with paho's ``ReasonCode``;
  ``__aenter__`` raises without closing paho's socket (so we close it); the ``logger``
  argument becomes paho's logger.

paho-mqtt's ``Client``
- ``_sock_close()``: closes the socket and, through aiomqtt's ``on_socket_close``,
  unregisters it from the loop; paho has no public way to abandon a connection attempt.
- ``_on_message_filtered``: the per-filter callbacks (``message_callback_add``), which
  paho matches against every received message with a recursive closure, a reference
  cycle per message; mmc adds none, so ours matches nothing at no cost
  (``tests/test_link_hygiene.py`` counts the cycles).
- ``_packet``: its packet decoders (``decode_publish`` and the acks') make a
  ``Properties`` for every packet through the module's global name, which mmc sets to
  ``_LeanProperties`` (the same properties, without paho's per-instance tables).
- Behaviour relied on: paho logs why a connection died at ERROR through its logger
  (``_PahoLog`` keeps the last such line for ``ConnectionLost``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Self

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt import MqttError
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt import _packet
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = [
    "ConnectionLost",
    "HandshakeTimeout",
    "Message",
    "MessageHandler",
    "MqttClient",
    "MqttConnectError",
    "MqttError",
    "ReasonCode",
    "SubscribeLost",
    "SubscribeTimeout",
]

log = logging.getLogger(__name__)

Message = mqtt.MQTTMessage
MessageHandler = Callable[[Message], None]


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


class SubscribeTimeout(aiomqtt.MqttError):
    """CONNACK arrived, but the broker sent no SUBACK within the timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"No SUBACK within {timeout:g} s")
        self.timeout = timeout


class SubscribeLost(aiomqtt.MqttError):
    """CONNACK arrived, but the connection ended before the SUBACK."""

    def __init__(self) -> None:
        super().__init__("Connection closed before SUBACK")


class _NoTopicCallbacks(MQTTMatcher):
    """paho's per-filter callbacks, of which mmc has none: nothing matches, nothing can
    be added."""

    def __setitem__(self, key: str, value: Any) -> None:
        raise NotImplementedError("mmc's links take every message through on_message")

    def iter_match(self, topic: str) -> Iterator[Any]:
        return iter(())


_NO_TOPIC_CALLBACKS = _NoTopicCallbacks()  # type: ignore[no-untyped-call]

_TABLES = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]


class _LeanProperties(Properties):
    """paho's MQTT v5 properties of a received packet, made without rebuilding paho's
    tables of property names and types for each one, and a packet without properties
    (every ``$SYS`` message mosquitto sends) read without walking them. paho makes one for
    every PUBLISH received: 27 µs here, a third of what a message cost mmc."""

    def __init__(self, packetType: int) -> None:
        object.__setattr__(self, "packetType", packetType)
        # Read-only tables: one copy for all.
        object.__setattr__(self, "types", _TABLES.types)
        object.__setattr__(self, "names", _TABLES.names)
        object.__setattr__(self, "properties", _TABLES.properties)

    def unpack(self, buffer: bytes | bytearray) -> tuple[Properties, int]:
        if buffer[:1] == b"\x00":
            # A property length of 0: nothing to read, and nothing set to clear.
            return self, 1
        result: tuple[Properties, int] = super().unpack(buffer)  # type: ignore[no-untyped-call]
        return result


_packet.Properties = _LeanProperties  # type: ignore[attr-defined]


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
    """One connection of a link (a new client per attempt). Compared with aiomqtt's:
    every message goes to ``on_message``, in order, straight from paho's read callback;
    a connection that dies before CONNACK fails the attempt at once, with the reason; a
    failed attempt closes its socket; timeouts say which phase timed out."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None,
        password: str | None,
        tls_context: ssl.SSLContext | None,
        websocket_path: str | None,
        keepalive: int,
        connect_timeout: float,
        on_message: MessageHandler,
    ) -> None:
        """An MQTT v5 client with a clean start. ``connect_timeout`` bounds each phase of a
        connection attempt: the socket connect with the TLS handshake, then the CONNACK."""
        self.paho_log = _PahoLog()
        self._handler = on_message
        # The blocking connect runs in a worker thread: whether it has returned, and
        # whether the attempt was given up meanwhile (see _close_socket).
        self._connect_returned = False
        self._abandoned = False
        # Set by the worker thread once paho's connect (TCP, TLS, CONNECT sent) succeeded:
        # a timeout after that is the MQTT handshake's, not the socket's.
        self._socket_connected = False
        super().__init__(
            host,
            port,
            username=username,
            password=password,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            transport="websockets" if websocket_path else "tcp",
            websocket_path=websocket_path,
            tls_context=tls_context,
            keepalive=keepalive,
            timeout=connect_timeout,
            clean_start=True,
            logger=self.paho_log,
        )
        # paho's own socket/TLS-handshake timeout (default 5 s); aiomqtt's ``timeout``
        # starts only once that phase is over.
        self._client.connect_timeout = connect_timeout
        self._paho_publish = self._client.publish
        # paho matches every message against the callbacks added per topic filter, which
        # mmc never adds, with a recursive closure: one reference cycle per message, left
        # to the garbage collector. With a thousand links a $SYS round is some 40,000
        # of them, and collecting them stopped the loop for 80-150 ms at a time.
        self._client._on_message_filtered = _NO_TOPIC_CALLBACKS

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

    async def subscribe_all(self, topics: Iterable[str], timeout: float) -> None:
        """Subscribe to ``topics`` at QoS 0 in one SUBSCRIBE. SubscribeTimeout if no SUBACK
        arrives within ``timeout`` seconds; SubscribeLost if the connection ends first."""
        # The deadline is ours (aiomqtt's own would be a plain "Operation timed out", as a
        # CONNACK timeout is), and so is watching the connection: aiomqtt would wait for
        # the SUBACK of a connection that is gone until the deadline.
        subscribing = self._loop.create_task(
            self.subscribe([(topic, 0) for topic in topics], timeout=math.inf)
        )
        dropped = self._disconnected
        watched: set[asyncio.Future[Any]] = {subscribing, dropped}
        try:
            await asyncio.wait(watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            subscribing.cancel()
        if subscribing.done() and not subscribing.cancelled():
            subscribing.result()
            return
        if dropped.done():
            raise SubscribeLost() from None if dropped.cancelled() else dropped.exception()
        raise SubscribeTimeout(timeout)

    def publish_nowait(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 0 without waiting: paho queues the packet and it is written when
        the socket is writable. MqttError if paho refuses it (not connected)."""
        info = self._paho_publish(topic, payload, qos=0)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")

    def forget_disconnect_error(self) -> None:
        """The link has recorded why it dropped; mark aiomqtt's disconnect future as seen
        so asyncio does not report "Future exception was never retrieved"."""
        done = self._disconnected
        if done.done() and not done.cancelled():
            done.exception()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Message) -> None:
        try:
            self._handler(message)
        except Exception:
            # Never into paho: an exception there would take the connection down.
            log.exception("error handling a message on %s", message.topic)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        if not self._connected.done():
            self._connected.set_exception(ConnectionLost(self.paho_log.last_error))
            # The attempt may have timed out already, with nobody left to await this:
            # mark it retrieved so asyncio does not log "exception was never retrieved".
            self._connected.exception()
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

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
