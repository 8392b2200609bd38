"""Authentication and authorisation of every request, in one place.

Who: a ``Bearer`` application token, or the session cookie set by ``POST /auth``.
Nobody: 401, except a browser opening a page of the web UI (mmc.web.ui), which is sent
to the login page.
What: the permission the matched route's declaration requires (mmc.web.routing), held
against the caller's roles (mmc.auth.permissions).
Cross-site: a state-changing request authenticated by cookie is refused when it says it
comes from another site (``Origin``, else ``Referer``, not ours nor one of
``cors_origins``; ``Origin: null`` too).
One that sends neither is a script's (curl with a cookie jar): browsers always send
``Origin`` on a cross-site POST, and the SameSite=Lax cookie is not sent on cross-site
subrequests at all. Token requests are not exposed to any of this.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from mmc.appkeys import auth_key, identity_key, settings_key
from mmc.auth.identity import Identity
from mmc.auth.permissions import allowed
from mmc.errors import NotAllowed, Unauthorized
from mmc.web.cors import trusted_origin
from mmc.web.pages import login_url, redirect, wants_html
from mmc.web.proxy import is_https, public_host
from mmc.web.routing import FileResource, declaration, required_permission, route_template

log = logging.getLogger(__name__)

SESSION_COOKIE = "mmc_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def identify(request: web.Request) -> Identity | None:
    auth = request.app[auth_key]
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return None
        return await auth.from_bearer(credentials.strip())
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        return await auth.from_session(session_id)
    return None


CROSS_SITE_MESSAGE = "Cross-site request refused: Origin or Referer must be this site"


def _ours(request: web.Request, source: str) -> bool:
    parts = urlsplit(source)
    networks = request.app[settings_key].trusted_networks
    expected_scheme = "https" if is_https(request, networks) else "http"
    return (
        parts.scheme == expected_scheme
        and parts.netloc.lower() == public_host(request, networks).lower()
    )


def _source(request: web.Request) -> str | None:
    return request.headers.get("Origin") or request.headers.get("Referer") or None


def cross_site(request: web.Request) -> bool:
    """Whether the request says it comes from another site: an ``Origin`` (else
    ``Referer``) not ours, ``null`` included, or, with neither, a browser's
    ``Sec-Fetch-Site`` saying so. Neither header at all: not a browser's cross-site
    request (those always carry ``Origin`` when they are POSTs)."""
    if trusted_origin(request):
        return False  # a page of cors_origins: the operator trusts it (mmc.web.cors)
    source = _source(request)
    if source is not None:
        return source == "null" or not _ours(request, source)
    return request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site")


def same_origin(request: web.Request) -> bool:
    """Whether the request shows it comes from our own pages (``Origin``/``Referer``
    ours), or from the user (``Sec-Fetch-Site: none``: typed, a bookmark)."""
    source = _source(request)
    if source is not None:
        return source != "null" and _ours(request, source)
    return request.headers.get("Sec-Fetch-Site", "").lower() in ("same-origin", "none")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = declaration(request)
    if route is not None and route.public:
        return await handler(request)
    identity = await identify(request)
    if identity is None:
        if isinstance(request.match_info.route.resource, FileResource) and wants_html(request):
            return redirect(login_url(request))  # the web UI, opened by a stranger
        raise Unauthorized()
    request[identity_key] = identity
    if request.match_info.http_exception is not None:
        return await handler(request)  # 404 / 405, now that we know who asks
    permission = required_permission(request)
    if permission is None:
        log.error("route %s has no declaration", route_template(request))
        raise NotAllowed()
    if not allowed(identity.roles, permission):
        raise NotAllowed()
    if identity.method == "session" and request.method not in SAFE_METHODS and cross_site(request):
        raise NotAllowed(CROSS_SITE_MESSAGE)
    return await handler(request)
