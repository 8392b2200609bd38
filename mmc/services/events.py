"""The event hub behind GET /api/events: what changed, fanned out to every subscriber.

Sources call in synchronously (a link's status or $SYS values, a client event from
mmc's plugin, an audit entry once written); nothing here ever waits on a subscriber.
Each event is encoded once as a server-sent-events frame and appended to a ring buffer
(clients resuming with Last-Event-ID) and to the queue of every subscriber it concerns.
A subscriber whose queue is full is dropped, with the reason logged: one slow reader
must not make mmc hold events, or memory, for it.

Ids are one counter per process, starting at a random number (below 2**52, exact in
JavaScript): an id from another replica or from before a restart is almost surely not
one this process issued, and such a client gets a ``reset`` event and a new snapshot
rather than the wrong events.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from mmc.auth.permissions import Permission
from mmc.brokers.link import BrokerLink
from mmc.brokers.pool import BrokerPool
from mmc.brokers.sys_tree import fold
from mmc.clock import now_ms

log = logging.getLogger(__name__)

CONNECTIONS = "connections"
SYSTEM_STATUS = "system_status"
CLIENTS = "clients"
AUDIT = "audit"
RESET = "reset"
# What each event type requires: what the REST route showing the same requires.
TYPE_PERMISSIONS: Mapping[str, Permission] = {
    CONNECTIONS: Permission.READ,
    SYSTEM_STATUS: Permission.MONITOR,
    CLIENTS: Permission.READ,
    AUDIT: Permission.ADMIN,
}
# Status changes arriving together (a hundred links dropping at once) make one event.
CONNECTIONS_DELAY = 0.05
CONNECTIONS_DELAY_PER_LINK = 0.00005
# $SYS values come in a burst every sys_interval: gather it, then at most once a second.
SYS_DELAY = 0.1
SYS_INTERVAL = 1.0
# Links' $SYS events fall due together (a broker's burst reaches all its links at once, a
# restarted broker's links come back within a second): asyncio would run every due timer
# in one loop turn, a thousand system_status encodings while no socket is served. They
# are made from one queue instead, SYS_BUDGET seconds of them a turn.
SYS_BUDGET = 0.005
HEARTBEAT = b": heartbeat\n\n"


def frame(event_id: int, name: str, data_json: str) -> bytes:
    # json.dumps never writes a raw newline: one data line per event.
    return f"id: {event_id}\nevent: {name}\ndata: {data_json}\n\n".encode()


class Event:
    """One published event. Its data, JSON text and frame are made when first asked for,
    once for every subscriber: with thousands of links, most system_status events are
    read by no one (they wait in the buffer for a client resuming with Last-Event-ID),
    and encoding each was most of what mmc did between $SYS rounds."""

    __slots__ = ("_data", "_frame", "_make", "_text", "broker_id", "id", "project_id", "type")

    def __init__(
        self,
        event_id: int,
        type_: str,
        make: Callable[[], Any],
        *,
        text: str | None = None,
        broker_id: str | None = None,
        project_id: str | None = None,
    ) -> None:
        self.id = event_id
        self.type = type_
        self.broker_id = broker_id
        self.project_id = project_id
        self._make: Callable[[], Any] | None = make
        self._data: Any = None
        self._text = text
        self._frame: bytes | None = None

    @property
    def data(self) -> Any:
        if self._make is not None:
            self._data = self._make()
            self._make = None
        return self._data

    @property
    def text(self) -> str:
        """``data`` as JSON (WebSockets frame it their way)."""
        if self._text is None:
            self._text = json.dumps(self.data)
        return self._text

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = frame(self.id, self.type, self.text)
        return self._frame


@dataclass(frozen=True)
class Selection:
    """What one subscriber receives: these types, narrowed to a broker and/or project."""

    types: frozenset[str]
    broker_id: str | None = None
    project_id: str | None = None

    @property
    def narrowed(self) -> bool:
        return self.broker_id is not None or self.project_id is not None

    def concerns(self, broker_id: str | None, project_id: str | None) -> bool:
        if self.broker_id is not None and broker_id != self.broker_id:
            return False
        return self.project_id is None or project_id == self.project_id

    def connections(self, listing: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [c for c in listing if self.concerns(c.get("id"), c.get("projectId"))]


class Subscriber:
    """One stream's queue of encoded frames."""

    def __init__(self, hub: EventHub, selection: Selection, limit: int, name: str) -> None:
        self.selection = selection
        self.name = name
        # Why the hub ended this subscription (None while it runs).
        self.closed: str | None = None
        # Called when the hub drops the subscriber: the stream must end even if it is
        # stuck writing to a reader that stopped reading.
        self.on_drop: Callable[[], None] | None = None
        self._hub = hub
        self._limit = limit
        self._frames: deque[bytes] = deque()
        self._wake = asyncio.Event()
        # The last connections list sent to a narrowed subscriber (changes elsewhere
        # are not news to it).
        self._last_connections: str | None = None

    def _put(self, data: bytes) -> None:
        if self.closed is not None:
            return
        if len(self._frames) >= self._limit:
            self._hub.drop(self, f"too slow: {len(self._frames)} events waiting")
            return
        self._frames.append(data)
        self._wake.set()

    def render(self, event: Event) -> bytes | None:
        """The frame this subscriber gets for ``event``; None if it is not for it."""
        selection = self.selection
        if event.type not in selection.types:
            return None
        if event.type == CONNECTIONS:
            if not selection.narrowed:
                return event.frame
            text = json.dumps(selection.connections(event.data))
            if text == self._last_connections:
                return None
            self._last_connections = text
            return frame(event.id, CONNECTIONS, text)
        if selection.concerns(event.broker_id, event.project_id):
            return event.frame
        return None

    def offer(self, event: Event) -> None:
        data = self.render(event)
        if data is not None:
            self._put(data)

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self._wake.set()

    async def next(self, timeout: float) -> list[bytes] | None:
        """Every frame waiting (waits up to ``timeout`` seconds for one; [] if none came);
        None once the subscription has ended."""
        if not self._frames and self.closed is None:
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                return []
        self._wake.clear()
        if self.closed is not None:
            return None
        frames = list(self._frames)
        self._frames.clear()
        return frames


class EventHub:
    def __init__(
        self,
        pool: BrokerPool,
        listing: Callable[[], list[dict[str, Any]]],
        listing_json: Callable[[], str],
        *,
        buffer: int,
        queue: int,
    ) -> None:
        self._pool = pool
        # GET /api/connections' list, and the same as JSON (what the events carry).
        self._listing = listing
        self._listing_json = listing_json
        self._queue = queue
        self._buffer: deque[Event] = deque(maxlen=buffer)
        self._next_id = secrets.randbelow(2**51) + 1
        self._subscribers: set[Subscriber] = set()
        self._last_connections: str | None = None
        self._connections_timer: asyncio.TimerHandle | None = None
        # Links with a system_status event due: link id -> (due time, link), and the same
        # as a heap (entries whose time no longer matches the dict's are stale).
        self._sys_due: dict[str, tuple[float, BrokerLink]] = {}
        self._sys_heap: list[tuple[float, str]] = []
        self._sys_timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._sys_timer_at: float | None = None
        self._sys_sent: dict[str, float] = {}
        self._closed = False

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def listen(self, pool: BrokerPool) -> None:
        """Hear every link of ``pool`` (set before any link is made)."""
        pool.on_status = self._link_status
        pool.on_sys = self._link_sys
        pool.on_client_event = self._client_event
        pool.on_change = self.connections_changed

    # -- publishing --------------------------------------------------------------------

    def publish(
        self,
        type_: str,
        data: Any,
        *,
        broker_id: str | None = None,
        project_id: str | None = None,
    ) -> Event:
        return self._publish(type_, lambda: data, broker_id=broker_id, project_id=project_id)

    def _publish(
        self,
        type_: str,
        make: Callable[[], Any],
        *,
        text: str | None = None,
        broker_id: str | None = None,
        project_id: str | None = None,
    ) -> Event:
        """``make`` gives the event's data when it is first needed: it must not depend on
        anything that changes after this call."""
        event_id = self._next_id
        self._next_id += 1
        event = Event(event_id, type_, make, text=text, broker_id=broker_id, project_id=project_id)
        self._buffer.append(event)
        for subscriber in list(self._subscribers):
            subscriber.offer(event)
        return event

    def connections_changed(self) -> None:
        if self._connections_timer is None and not self._closed:
            loop = asyncio.get_running_loop()
            # The list costs its length to make: with thousands of links coming and
            # going, gather their changes longer (0.25 s at 5,000 links).
            delay = max(CONNECTIONS_DELAY, CONNECTIONS_DELAY_PER_LINK * len(self._pool))
            self._connections_timer = loop.call_later(delay, self._flush_connections)

    def _flush_connections(self) -> None:
        self._connections_timer = None
        # Made from each connection's JSON, encoded once per change of it: with thousands
        # of links coming back, one json.dumps of the whole list every 50 ms was a long
        # stop of the loop.
        text = self._listing_json()
        if text != self._last_connections:
            self._last_connections = text
            self._publish(CONNECTIONS, partial(json.loads, text), text=text)

    def _link_status(self, link: BrokerLink) -> None:
        self.connections_changed()

    def _link_sys(self, link: BrokerLink) -> None:
        if link.id in self._sys_due or self._closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        last = self._sys_sent.get(link.id)
        due = now + (SYS_DELAY if last is None else max(SYS_DELAY, last + SYS_INTERVAL - now))
        self._sys_due[link.id] = (due, link)
        heapq.heappush(self._sys_heap, (due, link.id))
        if self._sys_timer_at is None or due < self._sys_timer_at:
            self._arm_sys(loop, due)

    def _arm_sys(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._sys_timer is not None:
            self._sys_timer.cancel()
        self._sys_timer_at = due
        self._sys_timer = loop.call_at(due, self._drain_sys)

    def _drain_sys(self) -> None:
        """The due system_status events, SYS_BUDGET seconds of them; the rest next turn."""
        self._sys_timer = self._sys_timer_at = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        stop_at = time.perf_counter() + SYS_BUDGET
        heap = self._sys_heap
        while heap and heap[0][0] <= now:
            due, link_id = heapq.heappop(heap)
            entry = self._sys_due.get(link_id)
            if entry is None or entry[0] != due:
                continue
            del self._sys_due[link_id]
            self._flush_sys(entry[1])
            if time.perf_counter() >= stop_at:
                break
        if not heap:
            return
        if heap[0][0] <= now:
            # call_soon runs after the next poll of the sockets: they are served between.
            self._sys_timer_at = now
            self._sys_timer = loop.call_soon(self._drain_sys)
        else:
            self._arm_sys(loop, heap[0][0])

    def _flush_sys(self, link: BrokerLink) -> None:
        if self._pool.get(link.id) is not link:
            self._sys_sent.pop(link.id, None)
            return
        if not link.sys_values:
            return
        self._sys_sent[link.id] = asyncio.get_running_loop().time()
        # The values as they are now (a copy: the link goes on updating its own).
        make = partial(
            _system_status,
            link.id,
            link.record.project_id,
            link.record.name,
            link.sys_updated_at or now_ms(),
            dict(link.sys_values),
        )
        self._publish(SYSTEM_STATUS, make, broker_id=link.id, project_id=link.record.project_id)

    def _client_event(self, link: BrokerLink, event: dict[str, Any]) -> None:
        data = {
            "brokerId": link.id,
            "projectId": link.record.project_id,
            "clientid": event.get("clientid"),
            "username": event.get("username"),
            "address": event.get("address"),
            "event": event.get("event"),
            "timestamp": event.get("timestamp"),
        }
        self.publish(CLIENTS, data, broker_id=link.id, project_id=link.record.project_id)

    def audit(self, entry: dict[str, Any]) -> None:
        """An audit entry (as GET /api/audit shows it) once it is written."""
        target = entry.get("target") or {}
        self.publish(
            AUDIT,
            entry,
            broker_id=target.get("brokerId") or target.get("connectionId"),
            project_id=target.get("projectId"),
        )

    # -- subscribing -------------------------------------------------------------------

    def subscribe(
        self, selection: Selection, name: str, last_event_id: str | None = None
    ) -> tuple[Subscriber, list[bytes]]:
        """A new subscriber and what it gets first: the events after ``last_event_id``
        from the buffer; or, without one or when they are no longer all there, a
        ``reset`` (if it gave one) and a snapshot."""
        subscriber = Subscriber(self, selection, self._queue, name)
        first: list[bytes] = []
        missed = self._since(last_event_id) if last_event_id is not None else None
        if missed is not None:
            first = [data for data in map(subscriber.render, missed) if data is not None]
        else:
            if last_event_id is not None:
                reason = {
                    "reason": "Last-Event-ID is too old or was not issued by this server",
                    "lastEventId": last_event_id,
                }
                first.append(frame(self.last_id, RESET, json.dumps(reason)))
            first.extend(self._snapshot(subscriber))
        if self._closed:
            subscriber.close("shutting down")
        else:
            self._subscribers.add(subscriber)
        return subscriber, first

    def _since(self, text: str) -> list[Event] | None:
        try:
            last_event_id = int(text)
        except ValueError:
            return None  # not an id of ours
        oldest = self._buffer[0].id if self._buffer else self._next_id
        if not oldest - 1 <= last_event_id <= self.last_id:
            return None
        return [event for event in self._buffer if event.id > last_event_id]

    def _snapshot(self, subscriber: Subscriber) -> list[bytes]:
        selection = subscriber.selection
        frames: list[bytes] = []
        if CONNECTIONS in selection.types:
            text = json.dumps(selection.connections(self._listing()))
            subscriber._last_connections = text
            frames.append(frame(self.last_id, CONNECTIONS, text))
        if SYSTEM_STATUS in selection.types:
            for link in self._pool:
                if link.sys_values and selection.concerns(link.id, link.record.project_id):
                    text = json.dumps(system_status(link))
                    frames.append(frame(self.last_id, SYSTEM_STATUS, text))
        return frames

    def attach(self, subscriber: Subscriber) -> None:
        """A subscriber made elsewhere (a WebSocket's, rendering frames its own way): it
        gets what is published from now on, no snapshot."""
        if self._closed:
            subscriber.close("shutting down")
        else:
            self._subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def drop(self, subscriber: Subscriber, reason: str) -> None:
        self._subscribers.discard(subscriber)
        if subscriber.closed is not None:
            return
        log.warning("event stream of %s dropped: %s", subscriber.name, reason)
        subscriber.close(reason)
        if subscriber.on_drop is not None:
            subscriber.on_drop()

    def close(self) -> None:
        """Shutting down: every stream ends now, new ones at once."""
        self._closed = True
        for timer in (self._connections_timer, self._sys_timer):
            if timer is not None:
                timer.cancel()
        self._connections_timer = None
        self._sys_timer = self._sys_timer_at = None
        self._sys_due.clear()
        self._sys_heap.clear()
        for subscriber in list(self._subscribers):
            subscriber.close("shutting down")
        self._subscribers.clear()


def system_status(link: BrokerLink) -> dict[str, Any]:
    return _system_status(
        link.id,
        link.record.project_id,
        link.record.name,
        link.sys_updated_at or now_ms(),
        link.sys_values,
    )


def _system_status(
    broker_id: str, project_id: str, name: str, date: int, values: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "brokerId": broker_id,
        "projectId": project_id,
        "name": name,
        "date": date,
        "topics": fold(values),
    }
