"""BrokerLink: one supervised, persistent MQTT connection per configured broker.

The link connects, subscribes to the $CONTROL response topics and ``$SYS/broker/#``,
routes replies to its ControlChannel, and on any failure records why, fails the
waiting requests at once and reconnects with capped exponential backoff and jitter.

After every (re)connect it learns in the background what the broker offers
(mmc.brokers.capabilities; the link is marked connected first), and while connected
it keeps a snapshot of ``$SYS`` every ``sys_history_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mmc.brokers.capabilities import Capabilities, SharedDetection, detect, label
from mmc.brokers.control import RESPONSE_TOPICS, ControlChannel, ControlObserver
from mmc.brokers.mappings import BridgeOrigins
from mmc.brokers.status import (
    DISCONNECTED,
    LinkError,
    LinkStatus,
    describe_drop,
    describe_error,
)
from mmc.brokers.sys_tree import SysHistory
from mmc.brokers.transport import Message, MqttClient, MqttError
from mmc.clock import now_ms
from mmc.endpoint import Endpoint
from mmc.errors import BrokerUnavailable, MmcError, NotFound

log = logging.getLogger(__name__)

# mmc's plugin publishes here when a client connects or disconnects (plugin/README.md);
# a broker without it, or that does not let mmc's user read it, sends nothing.
CLIENT_EVENTS_TOPIC = "$CONTROL/cedalo/inspect/v1/events"

_random = secrets.SystemRandom()


@dataclass(frozen=True)
class LinkConfig:
    """One broker as a link connects to it: the broker layer's own view of a configured
    connection (the layers above build it from theirs; this one knows no store)."""

    id: str
    url: str
    client_id: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # The TLS material the link's SSL context was made of (base64 text, PEM or DER
    # inside): a link whose material changed is reopened.
    ca: str | None = None
    cert: str | None = None
    key: str | None = field(default=None, repr=False)
    reject_unauthorized: bool = True
    # Labels for the layers above: the broker's name and the project it belongs to.
    name: str = ""
    project_id: str = "default"
    # Changes whenever the configuration does (the stored connection's updated_at): tells
    # a link made of an older configuration from a current one without comparing secrets.
    version: int = 0

    def replace(self, **changes: object) -> LinkConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LinkOptions:
    connect_timeout: float = 5.0
    request_timeout: float = 5.0
    keepalive: int = 30
    reconnect_min_delay: float = 0.5
    reconnect_max_delay: float = 30.0
    # While an outage is younger than this, the wait between attempts stays at or under
    # reconnect_fast_max_delay: a broker back within a minute is found within a second.
    reconnect_fast_period: float = 60.0
    reconnect_fast_max_delay: float = 0.5
    # Connection attempts in flight at once among the links sharing a gate (a pool's).
    max_connecting: int = 100
    probe_timeout: float = 1.0
    # A feature whose probe met silence is asked about again, by a request that needs it,
    # once this many seconds have passed since the detection.
    capability_recheck_interval: float = 10.0
    sys_history_interval: float = 60.0
    sys_history_length: int = 60
    # Appended to a client id the user chose: replicas sharing a store each connect to
    # every broker, and two clients with one id would take each other's session forever.
    client_id_suffix: str = ""


class ReconnectBackoff:
    """How long a link waits before its next connection attempt.

    The wait's ceiling starts at ``reconnect_min_delay`` and doubles after every failed
    attempt up to ``reconnect_max_delay``; the wait is half to all of it (jitter, so
    links to one broker do not come back in step). While the outage is younger than
    ``reconnect_fast_period`` (timed from the drop, or from the first failed attempt of
    a link that never connected), the ceiling is held at ``reconnect_fast_max_delay``
    (never below the minimum nor above the maximum): a refused attempt is over at once
    (any attempt is bounded by ``connect_timeout``), so a broker that comes back within
    that period is found within about that delay, as the Cedalo MMC finds it. After that
    the ceiling doubles again from there.
    """

    def __init__(self, options: LinkOptions) -> None:
        self._options = options
        self._began: float | None = None
        self._ceiling = options.reconnect_min_delay

    def reset(self) -> None:
        """Connected: the next failure begins a new outage."""
        self._began = None

    def next_delay(self, now: float, rand: float) -> float:
        """The wait after an attempt that failed at ``now`` (loop time, seconds);
        ``rand`` in [0, 1) picks the jitter."""
        options = self._options
        if self._began is None:
            self._began = now
            self._ceiling = options.reconnect_min_delay
        else:
            self._ceiling = min(options.reconnect_max_delay, 2 * self._ceiling)
        if now - self._began < options.reconnect_fast_period:
            fast = max(options.reconnect_fast_max_delay, options.reconnect_min_delay)
            self._ceiling = min(self._ceiling, fast)
        return min(self._ceiling, options.reconnect_max_delay) * (0.5 + 0.5 * rand)


class LinkObserver(ControlObserver, Protocol):
    def observe_link(self, connected: bool) -> None: ...

    def observe_reconnect(self) -> None: ...


class BrokerLink:
    def __init__(
        self,
        record: LinkConfig,
        ssl_context: ssl.SSLContext | None,
        options: LinkOptions,
        observer: LinkObserver | None = None,
        shared_detection: SharedDetection | None = None,
        connecting: asyncio.Semaphore | None = None,
    ) -> None:
        self.record = record
        # Held from the TCP connect to the SUBACK. Without a bound, a start with thousands
        # of links (or a broker carrying hundreds coming back) puts every handshake in
        # flight at once: the loop cannot read the CONNACKs before their timeout, the
        # attempts fail and are retried, and the storm feeds itself.
        self._connecting = connecting
        self.endpoint = Endpoint.from_url(record.url)
        self._ssl_context = ssl_context
        self._options = options
        self._observer = observer
        self.control = ControlChannel(record.id, timeout=options.request_timeout, observer=observer)
        # Latest value of every $SYS/broker/... topic, as the broker published it.
        self.sys_values: dict[str, str] = {}
        # When a $SYS value was last seen changing live (not replayed as retained), in ms.
        self.sys_changed_at: dict[str, int] = {}
        self.sys_updated_at: int | None = None
        # bridges.py's last word from the companion plugin on whose bridge states these
        # are: still used while the broker is down, forgotten with the $SYS values.
        self.bridge_origins: BridgeOrigins | None = None
        self.sys_history = SysHistory(options.sys_history_length)
        # What the broker offers; None until detection after a (re)connect has finished.
        self.capabilities: Capabilities | None = None
        # loop.time() when the current capabilities were learned (or a recheck began).
        self._detected_at = 0.0
        self._detection: asyncio.Task[Capabilities] | None = None
        # Counts connections made and ended: a detection may only record what it learned
        # while the session it started in is still the current one.
        self._session = 0
        self._shared_detection = shared_detection
        # loop.time() of the current connection's start.
        self._connected_at = 0.0
        self._wake = asyncio.Event()
        self._up = asyncio.Event()
        self._sys_seen = asyncio.Event()
        self.client_id = (
            record.client_id + options.client_id_suffix
            if record.client_id
            else f"mmc-{record.id}-{secrets.token_hex(4)}"
        )
        self._status = LinkStatus(connected=False, timestamp=now_ms())
        self._first_attempt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        # While connected: resolved by stop(); and the next $SYS snapshot.
        self._serving: asyncio.Future[None] | None = None
        self._history: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0
        # Called with each client event (``{"event": "connected"|"disconnected", "clientid",
        # "username", "address", "timestamp", ...}``) the broker's plugin publishes.
        self.on_client_event: Callable[[BrokerLink, dict[str, Any]], None] | None = None
        # Called after every change of ``status``, and after every $SYS value received
        # (cheap: the event stream throttles on its side).
        self.on_status: Callable[[BrokerLink], None] | None = None
        self.on_sys: Callable[[BrokerLink], None] | None = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def status(self) -> LinkStatus:
        return self._status

    @property
    def connected(self) -> bool:
        return self._status.connected

    @property
    def probe_timeout(self) -> float:
        """How long an optional question may take (capability probes and the like)."""
        return self._options.probe_timeout

    @property
    def features(self) -> frozenset[str] | None:
        return self.capabilities.features if self.capabilities is not None else None

    def reconnect_now(self) -> bool:
        """Cut the current backoff sleep short. False if the link is not running at all
        (stopped, or never started because its stored TLS material is unusable)."""
        if self._task is None or self._task.done():
            return False
        self._wake.set()
        return True

    def not_connected(self) -> BrokerUnavailable:
        """The 503 of a request to this broker while it is not connected."""
        if self._status.disconnected:
            return BrokerUnavailable(
                f"Broker {self.id} is not connected: a user disconnected it "
                f"(PUT /api/connections/{self.id}/connect connects it again)"
            )
        return BrokerUnavailable(f"Broker {self.id} is not connected")

    async def wait_connected(self, timeout: float) -> bool:
        """True once connected, False if that did not happen within ``timeout``."""
        if self.connected:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            return False
        return self.connected

    async def wait_sys_values(self, timeout: float) -> bool:
        """True once this connection has received a $SYS value, False after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                await self._sys_seen.wait()
        except TimeoutError:
            return False
        return True

    async def ensure_capabilities(self) -> Capabilities:
        """What the broker offers: known, or detected now (bounded by the probe timeout)."""
        if self.capabilities is not None:
            return self.capabilities
        if not self.connected:
            raise self.not_connected()
        task = self._detection
        if task is None or task.done():
            task = self._start_detection()
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The detection was cancelled (the session ended, or stop()), not this caller.
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise BrokerUnavailable(f"Broker {self.id} is not connected") from None
            raise

    async def require_feature(self, feature: str) -> Capabilities:
        """The capabilities, or NotFound "<feature> plugin not enabled on this broker"
        within the probe time (never a request timeout)."""
        capabilities = await self.ensure_capabilities()
        if feature not in capabilities.features and self._recheck_due(capabilities, feature):
            # Silence may have been a busy broker, not a missing plugin: ask again (once per
            # interval, so a broker that lacks it costs one probe time per interval).
            self.capabilities = None
            self._detected_at = asyncio.get_running_loop().time()
            capabilities = await self.ensure_capabilities()
        if feature not in capabilities.features:
            raise NotFound(
                f"{label(feature)} plugin not enabled on this broker", info={"feature": feature}
            )
        return capabilities

    def _recheck_due(self, capabilities: Capabilities, feature: str) -> bool:
        if feature not in capabilities.unanswered:
            return False
        elapsed = asyncio.get_running_loop().time() - self._detected_at
        return elapsed >= self._options.capability_recheck_interval

    def _start_detection(self) -> asyncio.Task[Capabilities]:
        task = asyncio.get_running_loop().create_task(
            self._detect(self._session), name=f"mmc-detect-{self.id}"
        )
        task.add_done_callback(self._detection_done)
        self._detection = task
        return task

    def _cancel_detection(self) -> asyncio.Task[Capabilities] | None:
        task, self._detection = self._detection, None
        if task is None or task.done():
            return None
        task.cancel()
        return task

    async def _detect(self, session: int) -> Capabilities:
        if self._shared_detection is None:
            capabilities = await detect(self.control, self._options.probe_timeout)
        else:
            # The same broker, reached as the same user (TLS client certificate included).
            ep = self.endpoint
            record = self.record
            key = (ep.host, ep.port, ep.tls, ep.websocket_path, record.username, record.cert)
            capabilities = await self._shared_detection.detect(
                key,
                self._connected_at,
                lambda: detect(self.control, self._options.probe_timeout),
            )
        if session != self._session:
            # Awaiting a detection shared with other links, this one reconnected (or
            # dropped): the answer describes a session that is gone.
            raise BrokerUnavailable(f"Broker {self.id} reconnected during detection")
        self.capabilities = capabilities
        self._detected_at = asyncio.get_running_loop().time()
        log.info("broker %s offers %s", self.id, ", ".join(sorted(capabilities.features)) or "-")
        return capabilities

    def _detection_done(self, task: asyncio.Task[Capabilities]) -> None:
        # Detection must never take the link down; a failure leaves features unknown
        # and the next request that needs them tries again.
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, MmcError):
            log.debug("broker %s: capability detection stopped: %s", self.id, exc)
        elif exc is not None:
            log.error("broker %s: capability detection failed", self.id, exc_info=exc)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"mmc-link-{self.id}"
            )

    def fail(self, error: LinkError) -> None:
        """Record why this link cannot run at all (it is not started)."""
        self._set_status(False, error)
        self._settle_first_attempt()

    def hold(self, since: int) -> None:
        """Record that a user disconnected this connection (at ``since``, ms): the link
        stays in the pool, shown, but is not started."""
        self._status = LinkStatus(
            connected=False, timestamp=since, error=DISCONNECTED, disconnected=True
        )
        self._settle_first_attempt()
        self._status_changed()

    async def attempt(self, bound: float) -> LinkStatus:
        """One connection attempt, then a clean disconnect, for a link that is never
        started: what a connection test answers. Bounded like a link's attempts by the
        connect timeout (socket and TLS, then CONNACK), and as a whole by ``bound`` seconds
        (a name lookup is bounded by neither); nothing is kept open."""
        client = self._make_client()
        connected = False
        try:
            async with asyncio.timeout(bound):
                async with client:
                    connected = True
        except TimeoutError:
            # Cancelled in its worker thread, the connect closes its socket when it returns.
            if not connected:
                host, port = self.endpoint.host, self.endpoint.port
                self._set_status(
                    False,
                    LinkError(
                        code="ETIMEDOUT",
                        address=host,
                        port=port,
                        message=f"No answer from {host}:{port} within {bound:g} s",
                    ),
                )
        except MqttError as exc:
            if not connected:
                self._record_failure(exc, established=False)
        except Exception as exc:
            log.exception("broker %s: unexpected failure of a connection test", self.id)
            if not connected:
                self._record_failure(exc, established=False)
        finally:
            client.forget_disconnect_error()
        if connected:
            # Said to the broker already (DISCONNECT, socket closed) when we get here.
            return LinkStatus(connected=True, timestamp=now_ms())
        return self._status

    async def stop(self) -> None:
        """Disconnect cleanly; bounded by the connect timeout of an attempt in flight."""
        self._stop.set()
        if self._serving is not None and not self._serving.done():
            self._serving.set_result(None)
        task = self._task
        if task is not None and not task.done():
            # A connect in progress runs in a worker thread and cannot be interrupted:
            # let it finish (or time out) so that no socket outlives the link.
            bound = 2 * self._options.connect_timeout + 2
            done, _ = await asyncio.wait({task}, timeout=bound)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # A detection (perhaps waiting on one shared with other links) must not outlive
        # the link.
        detection = self._cancel_detection()
        if detection is not None:
            await asyncio.wait({detection})

    async def wait_first_attempt(self, timeout: float) -> LinkStatus | None:
        """The status after the first connection attempt, or None if it is still running."""
        try:
            await asyncio.wait_for(asyncio.shield(self._first_attempt), timeout)
        except TimeoutError:
            return None
        return self._status

    def _record_failure(self, exc: BaseException, established: bool) -> None:
        host, port = self.endpoint.host, self.endpoint.port
        if established:
            # A connection that was up ended: say so (and when) before the errors of the
            # reconnect attempts replace it.
            self._set_status(False, describe_drop(exc, host, port), dropped=True)
        else:
            self._set_status(False, describe_error(exc, host, port))

    def _set_status(
        self, connected: bool, error: LinkError | None = None, *, dropped: bool = False
    ) -> None:
        old = self._status
        if old.connected == connected and old.error == error and not dropped:
            return
        same_state = old.connected == connected and (
            (old.error.code if old.error else None) == (error.code if error else None)
        )
        now = now_ms()
        self._status = LinkStatus(
            connected=connected,
            timestamp=old.timestamp if same_state else now,
            error=error,
            dropped_at=None if connected else now if dropped else old.dropped_at,
        )
        if not same_state:
            if connected:
                log.info(
                    "broker %s connected to %s as %s", self.id, self.record.url, self.client_id
                )
            elif error is not None:
                log.warning("broker %s not connected (%s): %s", self.id, error.code, error.message)
        if connected:
            self._up.set()
        else:
            self._up.clear()
        if self._observer is not None and old.connected != connected:
            self._observer.observe_link(connected)
        self._status_changed()

    def _status_changed(self) -> None:
        if self.on_status is not None:
            try:
                self.on_status(self)
            except Exception:
                log.exception("broker %s: status listener failed", self.id)

    def _make_client(self) -> MqttClient:
        ep = self.endpoint
        if ep.tls and self._ssl_context is None:
            raise RuntimeError(f"broker {self.id}: a TLS endpoint needs an SSL context")
        return MqttClient(
            ep.host,
            ep.port,
            client_id=self.client_id,
            username=self.record.username,
            password=self.record.password,
            tls_context=self._ssl_context if ep.tls else None,
            websocket_path=ep.websocket_path,
            keepalive=self._options.keepalive,
            connect_timeout=self._options.connect_timeout,
            on_message=self._handle_message,
        )

    async def _run(self) -> None:
        backoff = ReconnectBackoff(self._options)
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            client = self._make_client()
            if self._connecting is not None:
                await self._connecting.acquire()
                if self._stop.is_set():
                    self._connecting.release()
                    break
            slot = self._connecting
            established = False
            try:
                async with client:
                    backoff.reset()
                    self._wake.clear()
                    # A broker that restarted republishes its retained $SYS values:
                    # what the last connection saw must not linger as if current.
                    self.sys_values.clear()
                    self._sys_seen.clear()
                    self.sys_changed_at.clear()
                    self.bridge_origins = None
                    self.capabilities = None
                    await client.subscribe_all(
                        [*RESPONSE_TOPICS, "$SYS/broker/#", CLIENT_EVENTS_TOPIC],
                        self._options.request_timeout,
                    )
                    if slot is not None:
                        slot.release()
                        slot = None
                    self.control.attach(_Publisher(client))
                    self._connected_at = asyncio.get_running_loop().time()
                    self._session += 1
                    self._set_status(True)
                    established = True
                    self._settle_first_attempt()
                    self._cancel_detection()
                    self._start_detection()
                    await self._serve(client)
            except MqttError as exc:
                self._record_failure(exc, established)
            except Exception as exc:
                log.exception("broker %s: unexpected link failure", self.id)
                self._record_failure(exc, established)
            finally:
                if slot is not None:
                    slot.release()
                self._session += 1
                self.control.detach()
                client.forget_disconnect_error()
            self._settle_first_attempt()
            if self._stop.is_set():
                break
            self.reconnects += 1
            if self._observer is not None:
                self._observer.observe_reconnect()
            await self._backoff(backoff.next_delay(loop.time(), _random.random()))
        self._set_status(False, self._status.error)

    async def _backoff(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if stop() or reconnect_now() is called."""
        loop = asyncio.get_running_loop()
        waiters = {loop.create_task(self._stop.wait()), loop.create_task(self._wake.wait())}
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._wake.clear()

    async def _serve(self, client: MqttClient) -> None:
        """Wait until the connection drops (raises MqttError) or stop() is called; messages
        reach ``_handle_message`` meanwhile, straight from the client's read callback.

        One future and one timer, no task: with a thousand links, every task and coroutine
        per link is thousands more objects for the garbage collector to walk.
        """
        loop = asyncio.get_running_loop()
        self._serving = ended = loop.create_future()

        def end(done: asyncio.Future[None]) -> None:
            if not done.cancelled():
                done.exception()  # retrieved here, raised below
            if not ended.done():
                ended.set_result(None)

        dropped = client.disconnected_future()
        dropped.add_done_callback(end)
        history = loop.call_later(self._options.sys_history_interval, self._record_history)
        try:
            if self._stop.is_set():
                return
            await ended
        finally:
            self._serving = None
            history.cancel()
            dropped.remove_done_callback(end)
            if self._history is not None:
                self._history.cancel()
                self._history = None
        if dropped.done():
            client.raise_disconnected()

    def _handle_message(self, message: Message) -> None:
        topic = message.topic
        payload = message.payload
        api = RESPONSE_TOPICS.get(topic)
        if api is not None:
            self.control.handle_response(api, payload)
        elif topic.startswith("$SYS/"):
            value = payload.decode("utf-8", errors="replace")
            now = now_ms()
            if message.retain:
                # Replayed on subscribe: we do not know since when it holds.
                self.sys_changed_at.pop(topic, None)
            elif self.sys_values.get(topic) != value:
                self.sys_changed_at[topic] = now
            self.sys_values[topic] = value
            self.sys_updated_at = now
            self._sys_seen.set()
            if self.on_sys is not None:
                self.on_sys(self)
        elif topic == CLIENT_EVENTS_TOPIC:
            self._client_event(payload)

    def _client_event(self, payload: bytes | bytearray) -> None:
        if self.on_client_event is None:
            return
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if not isinstance(event, dict) or not isinstance(event.get("clientid"), str):
            return
        try:
            self.on_client_event(self, event)
        except Exception:
            log.exception("broker %s: client event listener failed", self.id)

    def _record_history(self) -> None:
        """A $SYS snapshot every sys_history_interval seconds while connected."""
        self.sys_history.record(self.sys_values, now_ms())
        self._history = asyncio.get_running_loop().call_later(
            self._options.sys_history_interval, self._record_history
        )

    def _settle_first_attempt(self) -> None:
        if not self._first_attempt.done():
            self._first_attempt.set_result(None)


class _Publisher:
    """The ControlChannel's view of the client: QoS 0 publishes without waiting, nothing
    else."""

    def __init__(self, client: MqttClient) -> None:
        self._publish = client.publish_nowait

    def publish(self, topic: str, payload: bytes) -> None:
        self._publish(topic, payload)
