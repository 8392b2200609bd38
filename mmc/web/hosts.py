"""The Host header check (``allowed_hosts``): a defence against DNS rebinding.

A page on an attacker's site can point its own host name at mmc's address; the browser
then sends mmc requests as same-origin requests to the attacker's name. Those carry the
attacker's name in ``Host``: with ``allowed_hosts`` set, they are refused.

Entries are host names or addresses (``[...]`` for IPv6), optionally with ``:port`` (then
only that port matches); the settings schema refuses anything else.
The probes and /metrics answer any Host: kubelets and Prometheus address pods by IP
(protect /metrics with ``metrics_token`` where that matters).
"""

from __future__ import annotations

import functools
import ipaddress
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from mmc.appkeys import error_code_key, settings_key
from mmc.config import Settings
from mmc.errors import InvalidInput
from mmc.web.middlewares import error_response
from mmc.web.proxy import public_host
from mmc.web.routing import route_template

log = logging.getLogger(__name__)

ANY_HOST_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def split_host(value: str) -> tuple[str, str | None]:
    """``host[:port]`` -> (lower-case host without IPv6 brackets, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") and rest[1:] else None
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, port or None
    return value, None


@functools.cache
def parse_allowed_hosts(text: str) -> tuple[tuple[str, str | None], ...]:
    return tuple(split_host(part) for part in text.split(",") if part.strip())


def host_allowed(host_header: str, allowed: tuple[tuple[str, str | None], ...]) -> bool:
    host, port = split_host(host_header)
    if not host:
        return False
    for name, allowed_port in allowed:
        if allowed_port is not None and allowed_port != port:
            continue
        # A trailing dot (a fully qualified name) names the same host.
        if host.rstrip(".") == name.rstrip("."):
            return True
    return False


@web.middleware
async def allowed_hosts_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[settings_key]
    if settings.allowed_hosts and route_template(request) not in ANY_HOST_ROUTES:
        host = public_host(request, settings.trusted_networks)
        if not host_allowed(host, parse_allowed_hosts(settings.allowed_hosts)):
            error = InvalidInput(f"Host {host[:100]!r} is not served here (allowed_hosts)")
            request[error_code_key] = error.code
            return error_response(error)
    return await handler(request)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_without_allowed_hosts(settings: Settings) -> None:
    if not settings.allowed_hosts.strip() and not _loopback(settings.host):
        log.warning(
            "listening on %s without allowed_hosts (MMC_ALLOWED_HOSTS): any Host header is "
            "accepted, so a browser can be pointed at mmc by DNS rebinding; set it to the "
            "names clients use",
            settings.host,
        )
