"""CORS (``cors_origins``): pages of the origins named may call the API from a browser.

On ``/api/*`` and the session routes (``/auth``, ``/logout``, ``/validate-session``), for
an ``Origin`` in ``cors_origins``:

- a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered here, before
  authentication (browsers send no credentials with it): 204 with the methods the path
  serves, the request headers a client needs (``Authorization``, ``Content-Type``,
  ``X-Request-ID``), ``Access-Control-Allow-Credentials`` and a max age;
- every other answer, errors included, carries ``Access-Control-Allow-Origin`` (that
  origin, never ``*``), ``Access-Control-Allow-Credentials: true`` and the headers a
  client may read (``X-Request-ID``, ``Retry-After``, ``Allow``).

Any other origin gets no CORS header at all (its preflight is answered as without CORS:
401/405), so the browser keeps the answer from its page. ``Vary: Origin`` is on every
answer of those paths once CORS is on, so no cache hands one origin's answer to another.
The cross-site check of cookie sessions (mmc.web.auth) trusts these origins too.

Not aiohttp-cors: it answers preflights from an OPTIONS route it adds to every resource,
which would be routes without a declaration (mmc.web.routing) that the auth middleware
refuses, and it sends no ``Vary: Origin``; this is the little that is needed.
"""

from __future__ import annotations

import functools
from collections.abc import MutableMapping

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from mmc.appkeys import settings_key
from mmc.config import parse_origins

ALLOWED_HEADERS = "Authorization, Content-Type, X-Request-ID"
EXPOSED_HEADERS = "X-Request-ID, Retry-After, Allow"
# Seconds a browser may reuse a preflight answer.
MAX_AGE = "600"
SESSION_PATHS = frozenset({"/auth", "/logout", "/validate-session"})


@functools.cache
def allowed_origins(text: str) -> frozenset[str]:
    return parse_origins(text)


def trusted_origin(request: web.Request) -> bool:
    """Whether the request's ``Origin`` is one of ``cors_origins``."""
    origin = request.headers.get(hdrs.ORIGIN)
    if not origin:
        return False
    return origin in allowed_origins(request.app[settings_key].cors_origins)


def _covered(path: str, base_path: str) -> bool:
    if base_path:
        if not path.startswith(base_path + "/"):
            return False
        path = path[len(base_path) :]
    return path.startswith("/api/") or path in SESSION_PATHS


def _decorate(headers: MutableMapping[str, str], origin: str | None) -> None:
    vary = headers.get(hdrs.VARY)
    if vary is None:
        headers[hdrs.VARY] = hdrs.ORIGIN
    elif "origin" not in {v.strip().lower() for v in vary.split(",")}:
        headers[hdrs.VARY] = f"{vary}, {hdrs.ORIGIN}"
    if origin is not None:
        headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
        headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS


def decorate(request: web.Request, headers: MutableMapping[str, str]) -> None:
    """The CORS headers of ``request``'s answer, for a handler that sends its head itself
    (an event stream): the middleware's would come after it."""
    settings = request.app[settings_key]
    if settings.cors_origins and _covered(request.path, settings.base_path):
        _decorate(headers, request.headers.get(hdrs.ORIGIN) if trusted_origin(request) else None)


def _preflight(request: web.Request, origin: str) -> web.StreamResponse | None:
    """The answer to a preflight for a path that exists; None when it does not."""
    exc = request.match_info.http_exception
    if not isinstance(exc, web.HTTPMethodNotAllowed):
        return None  # no such path (or an OPTIONS route of its own): not ours to answer
    methods = sorted(exc.allowed_methods - {hdrs.METH_HEAD})
    response = web.Response(status=204)
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = ", ".join(methods)
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ALLOWED_HEADERS
    response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = MAX_AGE
    _decorate(response.headers, origin)
    return response


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[settings_key]
    if not settings.cors_origins or not _covered(request.path, settings.base_path):
        return await handler(request)
    origin = request.headers.get(hdrs.ORIGIN) if trusted_origin(request) else None
    if (
        origin is not None
        and request.method == hdrs.METH_OPTIONS
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    ):
        response = _preflight(request, origin)
        if response is not None:
            return response
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _decorate(exc.headers, origin)
        raise
    _decorate(response.headers, origin)
    return response
