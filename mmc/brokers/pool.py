"""BrokerPool: connection id -> its live BrokerLink."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator

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
        link = BrokerLink(record, ssl_context, self.options, self._observer, self._detection)
        # Assigning over the old entry keeps the connection's place in the listing.
        self._links[record.id] = link
        return link, old

    def pop(self, connection_id: str) -> BrokerLink | None:
        """Take the link out of the pool at once; the caller stops it."""
        return self._links.pop(connection_id, None)

    async def close(self, connection_id: str) -> None:
        link = self.pop(connection_id)
        if link is not None:
            await link.stop()

    async def close_all(self) -> None:
        links = list(self._links.values())
        self._links.clear()
        await asyncio.gather(*(link.stop() for link in links), return_exceptions=True)
