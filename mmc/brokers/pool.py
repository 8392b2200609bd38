"""BrokerPool: connection id -> its live BrokerLink."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterator
from typing import Any

from mmc.brokers.capabilities import SharedDetection
from mmc.brokers.link import BrokerLink, LinkConfig, LinkObserver, LinkOptions
from mmc.errors import NotFound

log = logging.getLogger(__name__)


class BrokerPool:
    def __init__(self, options: LinkOptions, observer: LinkObserver | None = None) -> None:
        self.options = options
        self._observer = observer
        self._links: dict[str, BrokerLink] = {}
        self._detection = SharedDetection()
        self._connecting = asyncio.Semaphore(options.max_connecting)
        # Given to every link the pool makes (see BrokerLink), and ``on_change`` called
        # when a link comes or goes: what the event stream listens to.
        self.on_status: Callable[[BrokerLink], None] | None = None
        self.on_sys: Callable[[BrokerLink], None] | None = None
        self.on_client_event: Callable[[BrokerLink, dict[str, Any]], None] | None = None
        self.on_change: Callable[[], None] | None = None

    def __iter__(self) -> Iterator[BrokerLink]:
        return iter(list(self._links.values()))

    def __len__(self) -> int:
        return len(self._links)

    def get(self, connection_id: str) -> BrokerLink | None:
        return self._links.get(connection_id)

    def require(self, connection_id: str) -> BrokerLink:
        link = self._links.get(connection_id)
        if link is None:
            raise NotFound(f"Connection {connection_id} not found")
        return link

    def require_connected(self, connection_id: str) -> BrokerLink:
        link = self.require(connection_id)
        if not link.connected:
            raise link.not_connected()
        return link

    async def open(
        self, record: LinkConfig, ssl_context: ssl.SSLContext | None, *, start: bool = True
    ) -> BrokerLink:
        """Start a link for the record, replacing (and cleanly closing) any previous one."""
        link, old = self.replace(record, ssl_context)
        if old is not None:
            await old.stop()
        if start:
            link.start()
        return link

    def replace(
        self, record: LinkConfig, ssl_context: ssl.SSLContext | None
    ) -> tuple[BrokerLink, BrokerLink | None]:
        """Put a new, not yet started link in the record's place at once; the previous
        one is returned for the caller to stop (which can take a connect timeout) before
        starting the new one."""
        old = self._links.get(record.id)
        link = BrokerLink(
            record, ssl_context, self.options, self._observer, self._detection, self._connecting
        )
        link.on_status = self.on_status
        link.on_sys = self.on_sys
        link.on_client_event = self.on_client_event
        # Assigning over the old entry keeps the connection's place in the listing.
        self._links[record.id] = link
        self._changed()
        return link, old

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def pop(self, connection_id: str) -> BrokerLink | None:
        """Take the link out of the pool at once; the caller stops it."""
        link = self._links.pop(connection_id, None)
        if link is not None:
            self._changed()
        return link

    async def close(self, connection_id: str) -> None:
        link = self.pop(connection_id)
        if link is not None:
            await link.stop()

    async def close_all(self) -> None:
        links = list(self._links.values())
        self._links.clear()
        self._changed()
        await asyncio.gather(*(link.stop() for link in links), return_exceptions=True)
