"""What the client really is when mmc sits behind a reverse proxy.

``X-Forwarded-*`` headers are believed only when the direct peer is one of the
configured trusted proxies; anybody else could forge them.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address

from aiohttp import web

Networks = Sequence[IPv4Network | IPv6Network]


def _trusted(address: str | None, networks: Networks) -> bool:
    if not address or not networks:
        return False
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def trusted_peer(address: str | None, networks: Networks) -> bool:
    """Whether ``address`` (a direct peer) is one of the trusted proxies."""
    return _trusted(address, networks)


def client_address(request: web.Request, networks: Networks) -> str:
    """The peer, or when the peer is a trusted proxy the right-most untrusted X-Forwarded-For."""
    peer = request.remote or "unknown"
    if not _trusted(peer, networks):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else peer


def is_https(request: web.Request, networks: Networks) -> bool:
    if request.scheme == "https":
        return True
    if _trusted(request.remote, networks):
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return proto == "https"
    return False


def public_host(request: web.Request, networks: Networks) -> str:
    """host[:port] the client addressed."""
    if _trusted(request.remote, networks):
        forwarded = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        if forwarded:
            return forwarded
    return request.host
