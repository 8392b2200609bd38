"""The event loop ``mmc serve`` runs on: asyncio's, serving at most MAX_EVENTS sockets a turn.

asyncio takes every ready socket from epoll at once and runs all their callbacks before
it looks at its timers or other sockets again. With a thousand broker links that is a
long turn whenever their brokers publish ``$SYS`` together (every ``sys_interval``) or a
broker restarts and replays its retained messages to hundreds of links: the loop lags by
the whole burst, and every HTTP request waits for it. Taking at most MAX_EVENTS sockets
per turn spreads the same work over short turns, between which timers and the HTTP
sockets are served; level-triggered epoll reports the ones left for later again, the
longest-waiting first.
"""

from __future__ import annotations

import asyncio
import math
import select
import selectors
from typing import Any

# One broker message costs paho some 50-100 µs: a turn stays within a few milliseconds.
MAX_EVENTS = 64


if hasattr(selectors, "EpollSelector"):

    class BoundedEpollSelector(selectors.EpollSelector):
        """selectors.EpollSelector.select with ``maxevents`` bounded by MAX_EVENTS."""

        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            if timeout is None:
                timeout = -1
            elif timeout <= 0:
                timeout = 0
            else:
                # epoll_wait() has a resolution of 1 ms: round up to wait at least timeout.
                timeout = math.ceil(timeout * 1e3) * 1e-3
            max_ev = min(MAX_EVENTS, max(len(self.get_map()), 1))
            ready: list[tuple[selectors.SelectorKey, int]] = []
            poller: Any = self._selector  # type: ignore[attr-defined]
            try:
                fd_event_list = poller.poll(timeout, max_ev)
            except InterruptedError:
                return ready
            for fd, event in fd_event_list:
                events = 0
                if event & ~select.EPOLLIN:
                    events |= selectors.EVENT_WRITE
                if event & ~select.EPOLLOUT:
                    events |= selectors.EVENT_READ
                key = self.get_map().get(fd)
                if key:
                    ready.append((key, events & key.events))
            return ready


def new_event_loop() -> asyncio.AbstractEventLoop:
    if hasattr(selectors, "EpollSelector"):
        return asyncio.SelectorEventLoop(BoundedEpollSelector())
    return asyncio.new_event_loop()
