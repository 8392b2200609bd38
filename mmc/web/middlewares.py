"""Request ids and the one error shape: handlers raise, this renders."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from mmc.appkeys import error_code_key, identity_key, metrics_key, request_id_key, settings_key
from mmc.errors import (
    BrokerTimeout,
    BrokerUnavailable,
    Conflict,
    ControlConflict,
    ControlError,
    ControlNotFound,
    InvalidInput,
    MethodNotAllowed,
    MmcError,
    NotAllowed,
    NotFound,
    OutcomeUnknown,
    PayloadTooLarge,
    RequestTimeout,
    ServerBusy,
    StoreUnavailable,
    TooManyRequests,
    Unauthorized,
)
from mmc.web.body import BodyAbandoned, abandon_body
from mmc.web.proxy import client_address
from mmc.web.routing import route_template

log = logging.getLogger(__name__)
access_log = logging.getLogger("mmc.access")

# nginx's status for "the client closed the connection before the answer".
CLIENT_CLOSED = 499

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# The HTTP status of every error mmc raises: the entry of its class, or of the nearest
# base class that has one (UndecodableBody answers as InvalidInput).
STATUS: dict[type[MmcError], int] = {
    MmcError: 500,
    InvalidInput: 400,
    Unauthorized: 401,
    NotAllowed: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    RequestTimeout: 408,
    Conflict: 409,
    PayloadTooLarge: 413,
    TooManyRequests: 429,
    StoreUnavailable: 503,
    ServerBusy: 503,
    BrokerUnavailable: 503,
    BrokerTimeout: 504,
    OutcomeUnknown: 502,
    # A $CONTROL API's error string: the request was refused, unless it says what.
    ControlError: 400,
    ControlNotFound: 404,
    ControlConflict: 409,
}


def status_of(error: MmcError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return STATUS[MmcError]


def error_body(error: MmcError) -> dict[str, Any]:
    """The one error shape: ``{code, message, status, info?}``."""
    body: dict[str, Any] = {
        "code": error.code,
        "message": error.message,
        "status": status_of(error),
    }
    if error.info is not None:
        body["info"] = error.info
    return body


def new_request_id() -> str:
    """What ``uuid.uuid4().hex`` gives (32 hex digits, version 4, RFC 4122 variant), without
    building a UUID object: this runs for every request."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def error_response(error: MmcError) -> web.Response:
    response = web.json_response(error_body(error), status=status_of(error))
    response.headers["X-Content-Type-Options"] = "nosniff"
    if isinstance(error, TooManyRequests):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: a request id for every answer, one log line and the HTTP metrics."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if incoming and _REQUEST_ID.match(incoming) else new_request_id()
    request[request_id_key] = request_id
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-ID"] = request_id
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-ID"] = request_id
        exc.headers["X-Content-Type-Options"] = "nosniff"
        raise
    finally:
        elapsed = time.perf_counter() - started
        app = request.app
        method = request.method
        route = route_template(request) or "unmatched"
        app[metrics_key].observe_http(route, method, status, elapsed)
        if access_log.isEnabledFor(logging.INFO):  # the line's fields cost a little too
            identity = request.get(identity_key)
            access_log.info(
                "%s %s %d %.1fms",
                method,
                request.path,
                status,
                elapsed * 1000,
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "request_id": request_id,
                    "user": identity.username if identity else None,
                    "client": client_address(request, app[settings_key].trusted_networks),
                },
            )


def _render_http_exception(
    exc: web.HTTPException, request: web.Request | None = None
) -> web.Response:
    """aiohttp's own 404/405/413... in our error shape."""
    error: MmcError
    match exc.status:
        case 400:
            error = InvalidInput(exc.text or None)
        case 401:
            error = Unauthorized()
        case 403:
            error = NotAllowed()
        case 404:
            error = NotFound()
        case 405:
            error = MethodNotAllowed(f"Method {getattr(exc, 'method', '')} is not allowed here")
        case 413:
            # aiohttp keeps the limit only in its text: it is the app's client_max_size.
            limit = request.app[settings_key].max_body_size if request is not None else None
            error = PayloadTooLarge(
                f"Request body is too large (limit {limit} bytes)" if limit is not None else None
            )
        case _:
            return web.json_response(
                {"code": "HTTP_ERROR", "message": exc.reason, "status": exc.status},
                status=exc.status,
            )
    response = error_response(error)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MmcError as exc:
        request[error_code_key] = exc.code
        response = error_response(exc)
        if exc.closes_connection:
            response.force_close()  # the rest of the body is not worth waiting for
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _render_http_exception(exc, request)
        request[error_code_key] = _code_of(exc.status)
        return response
    except Exception as exc:
        if isinstance(exc, ConnectionError) and (
            request.transport is None or request.transport.is_closing()
        ):
            # The client went away (mid-body, typically): nobody to answer, nothing wrong
            # here. 499 like nginx; aiohttp drops the answer quietly.
            log.debug("client gone during %s %s", request.method, request.path)
            request[error_code_key] = "CLIENT_CLOSED"
            return web.Response(status=CLIENT_CLOSED)
        log.exception(
            "unhandled error in %s %s (request %s)",
            request.method,
            request.path,
            request.get(request_id_key, "-"),
        )
        request[error_code_key] = MmcError.code
        return error_response(MmcError())


_CODES = {
    400: InvalidInput.code,
    401: Unauthorized.code,
    403: NotAllowed.code,
    404: NotFound.code,
    405: MethodNotAllowed.code,
    413: PayloadTooLarge.code,
}


def _code_of(status: int) -> str:
    return _CODES.get(status, "HTTP_ERROR")


@web.middleware
async def body_timeout_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request body must arrive whole within http_body_timeout seconds of its head: a
    read still waiting then fails, the client gets 408 and the connection is closed."""
    if not request.body_exists:
        return await handler(request)
    content = request.content

    def expire() -> None:
        if not content.is_eof():
            abandon_body(request)

    timer = asyncio.get_running_loop().call_later(
        request.app[settings_key].http_body_timeout, expire
    )
    try:
        return await handler(request)
    except BodyAbandoned:
        raise RequestTimeout(
            "The request body did not arrive within http_body_timeout seconds"
        ) from None
    finally:
        timer.cancel()
