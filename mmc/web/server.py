"""The HTTP server under ``mmc serve``: aiohttp's, with limits for hostile clients.

What a middleware cannot do, because it happens before there is a request:

- a cap on open connections, overall and per client address (a trusted proxy's address
  is not capped per address: all its clients share it). A connection past a cap is
  answered at once (429 for its address, 503 overall) and closed;
- requests aiohttp's parser refuses (a request line over 8,190 bytes, garbage) are
  answered in mmc's error shape, and logged as one debug line, not a traceback;
- accept() failing for want of file descriptors is logged at most once per
  LOG_INTERVAL seconds with a count (asyncio then pauses accepting for a second).

The header timeout is aiohttp's keep-alive timeout (``create_app`` sets it): it runs from
the connection, and from the end of each response, until a whole request head has been
parsed, so it closes idle connections and trickled headers alike. The body timeout is a
middleware (``mmc.web.middlewares.body_timeout_middleware``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import resource
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from mmc.appkeys import metrics_key
from mmc.config import Settings
from mmc.errors import BrokerTimeout, InvalidInput, MmcError, ServerBusy, TooManyRequests
from mmc.metrics import Metrics
from mmc.web.middlewares import error_body, error_response, status_of
from mmc.web.proxy import trusted_peer

log = logging.getLogger("mmc.http")

# Seconds between two log lines about the same kind of refused or failed connection.
LOG_INTERVAL = 10.0
# File descriptors kept for what is not an HTTP connection: the store, logs, TLS files...
RESERVED_FDS = 256
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Throttled:
    """Counts occurrences of one event; logs a warning about them at most every
    ``interval`` seconds, so a flood of them is a few lines with a count."""

    def __init__(self, message: str, interval: float = LOG_INTERVAL) -> None:
        self._message = message
        self._interval = interval
        self._count = 0
        self._next = 0.0

    def __call__(self, detail: object) -> None:
        self._count += 1
        now = time.monotonic()
        if now >= self._next:
            log.warning(self._message, self._count, detail)
            self._count = 0
            self._next = now + self._interval


@dataclass(frozen=True)
class ConnectionLimits:
    total: int
    per_address: int
    trusted: Sequence[IPv4Network | IPv6Network]

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            settings.http_max_connections,
            settings.http_max_connections_per_address,
            settings.trusted_networks,
        )


def _raw_response(error: MmcError) -> bytes:
    body = json.dumps(error_body(error)).encode()
    retry = f"Retry-After: {error.retry_after}\r\n" if isinstance(error, TooManyRequests) else ""
    head = (
        f"HTTP/1.1 {status_of(error)} {HTTPStatus(status_of(error)).phrase}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n{retry}Connection: close\r\n\r\n"
    )
    return head.encode() + body


class EdgeRequestHandler(RequestHandler):
    """aiohttp's protocol, turning away connections over the caps and answering what its
    parser refuses in mmc's error shape."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        assert isinstance(manager, EdgeServer)
        refusal = manager.refusal(transport)
        if refusal is None:
            super().connection_made(transport)
            return
        # Never handed to aiohttp: no request task, and connection_lost does nothing.
        self._manager = None
        assert isinstance(transport, asyncio.Transport)
        transport.write(_raw_response(refusal))
        transport.close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 and status != 504:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            # A malformed request is the client's doing: one quiet line, not a traceback
            # anybody can have written into the log as often as they like.
            log.debug("refused a malformed request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send an error response")
        error: MmcError
        if status == 400:
            error = InvalidInput(f"Malformed HTTP request: {message or 'cannot be parsed'}"[:300])
        elif status == 504:
            error = BrokerTimeout("The request took too long")
        else:
            error = MmcError()
        response = error_response(error)
        response.force_close()
        return response


class EdgeServer(web.Server):
    """aiohttp's Server (one per listening process) that counts connections per address."""

    def __init__(
        self, handler: Any, *, limits: ConnectionLimits, metrics: Metrics, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self._metrics = metrics
        metrics.watch_connections(lambda: len(self._address_of))
        self._address_of: dict[RequestHandler, str | None] = {}
        self._per_address: Counter[str] = Counter()
        self._refused_address = Throttled(
            "refused %d connection(s) over http_max_connections_per_address (last from %s)"
        )
        self._refused_total = Throttled(
            "refused %d connection(s) over http_max_connections (%s open)"
        )

    def __call__(self) -> RequestHandler:
        return EdgeRequestHandler(self, loop=self._loop, **self._kwargs)

    @property
    def open_connections(self) -> int:
        return len(self._address_of)

    def _address(self, transport: asyncio.BaseTransport) -> str | None:
        """The peer's address, or None for a trusted proxy (only counted in the total)."""
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        if address is not None and trusted_peer(address, self._limits.trusted):
            return None
        return address

    def refusal(self, transport: asyncio.BaseTransport) -> MmcError | None:
        """Why a new connection must be turned away, if it must."""
        if len(self._address_of) >= self._limits.total:
            self._refused_total(len(self._address_of))
            self._metrics.http_connections_refused.labels("total").inc()
            return ServerBusy()
        address = self._address(transport)
        if address is not None and self._per_address[address] >= self._limits.per_address:
            self._refused_address(address)
            self._metrics.http_connections_refused.labels("address").inc()
            return TooManyRequests("Too many open connections from your address", retry_after=1)
        return None

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        address = self._address(transport)
        self._address_of[handler] = address
        if address is not None:
            self._per_address[address] += 1

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        if handler in self._address_of:
            address = self._address_of.pop(handler)
            if address is not None:
                self._per_address[address] -= 1
                if self._per_address[address] <= 0:
                    del self._per_address[address]
        super().connection_lost(handler, exc)


class EdgeRunner(web.AppRunner):
    """AppRunner serving through EdgeServer."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        # The app's own Server (after its start-up), rebuilt as an EdgeServer with the
        # same handler, request factory and protocol arguments.
        plain = await super()._make_server()
        return EdgeServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            limits=self._limits,
            metrics=self.app[metrics_key],
            **plain._kwargs,
        )


class AcceptErrorLog:
    """The event loop's exception handler: accept() failing for want of file descriptors
    or memory (EMFILE...) is counted and logged every LOG_INTERVAL seconds at most, not
    once per attempt with a traceback; anything else goes to asyncio's default handler.
    (asyncio itself stops accepting for a second after such a failure.)"""

    def __init__(self, metrics: Metrics) -> None:
        self._log = Throttled("accept() failed %d time(s), last with: %s")
        self._errors = metrics.http_accept_errors

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (
            isinstance(exc, OSError)
            and exc.errno in _OUT_OF_RESOURCES
            and "accept" in str(context.get("message", ""))
        ):
            self._errors.inc()
            self._log(exc.strerror or exc)
            return
        loop.default_exception_handler(context)


def raise_open_file_limit(settings: Settings) -> None:
    """Raise the soft limit on open files towards what the settings can use (up to the
    hard limit), and warn when that is still short: connections past it then wait in
    the listen queue (accept() fails with EMFILE) instead of being answered."""
    wanted = settings.http_max_connections + settings.max_connections + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError) as exc:
                log.debug("cannot raise the open-file limit to %d: %s", target, exc)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "the open-file limit (%d, ulimit -n) is below http_max_connections + "
            "max_connections + %d (%d): raise it, or lower those settings",
            soft,
            RESERVED_FDS,
            wanted,
        )
