"""The errors mmc raises and the one JSON shape they are rendered in.

Handlers and services raise these. They say what went wrong (a code, a message, info),
not how HTTP answers it: ``mmc.web.middlewares`` maps each class to its status (STATUS)
and renders ``{"code", "message", "status", "info"?}``::

    MmcError                      500 INTERNAL_ERROR
    ├── InvalidInput              400 INVALID        (info: marshmallow messages)
    │   └── UndecodableBody       400 INVALID        (bad Content-Encoding; closes)
    ├── Unauthorized              401 UNAUTHORIZED
    ├── NotAllowed                403 NOT_ALLOWED
    ├── NotFound                  404 NOT_FOUND
    ├── MethodNotAllowed          405 METHOD_NOT_ALLOWED
    ├── RequestTimeout            408 REQUEST_TIMEOUT    (body not sent within http_body_timeout)
    ├── Conflict                  409 CONFLICT
    ├── PayloadTooLarge           413 PAYLOAD_TOO_LARGE
    ├── TooManyRequests           429 TOO_MANY_REQUESTS  (Retry-After header)
    ├── StoreUnavailable          503 STORE_UNAVAILABLE
    ├── ServerBusy                503 BUSY           (http_max_connections reached)
    ├── BrokerUnavailable         503 BROKER_UNAVAILABLE
    │   └── ReplyLost             503 BROKER_UNAVAILABLE (sent; answer lost: resolved, never shown)
    ├── BrokerTimeout             504 TIMEOUT
    ├── OutcomeUnknown            502 OUTCOME_UNKNOWN    (sent; may have been applied)
    └── ControlError              400 INVALID        (an error string answered by a $CONTROL API)
        ├── ControlNotFound       404 NOT_FOUND
        └── ControlConflict       409 CONFLICT
"""

from __future__ import annotations

from typing import Any, ClassVar


class MmcError(Exception):
    code: ClassVar[str] = "INTERNAL_ERROR"
    default_message: ClassVar[str] = "An internal server error occurred"
    # The connection cannot carry another request after this one (its body is unread).
    closes_connection: ClassVar[bool] = False

    def __init__(self, message: str | None = None, *, info: Any = None) -> None:
        self.message = message or self.default_message
        self.info = info
        super().__init__(self.message)


class InvalidInput(MmcError):
    code = "INVALID"
    default_message = "Invalid input"


class Unauthorized(MmcError):
    code = "UNAUTHORIZED"
    default_message = "Unauthorized"


class NotAllowed(MmcError):
    code = "NOT_ALLOWED"
    default_message = "Not allowed"


class NotFound(MmcError):
    code = "NOT_FOUND"
    default_message = "Resource not found"


class MethodNotAllowed(MmcError):
    code = "METHOD_NOT_ALLOWED"
    default_message = "Method not allowed"


class RequestTimeout(MmcError):
    code = "REQUEST_TIMEOUT"
    default_message = "The request was not sent in time"
    closes_connection = True


class UndecodableBody(InvalidInput):
    """A body aiohttp cannot decode: bad gzip/deflate, a broken chunked encoding."""

    closes_connection = True


class Conflict(MmcError):
    code = "CONFLICT"
    default_message = "Conflict"


class PayloadTooLarge(MmcError):
    code = "PAYLOAD_TOO_LARGE"
    default_message = "Request body is too large"


class TooManyRequests(MmcError):
    code = "TOO_MANY_REQUESTS"
    default_message = "Too many attempts; try again later"

    def __init__(self, message: str | None = None, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class StoreUnavailable(MmcError):
    code = "STORE_UNAVAILABLE"
    default_message = "The data store cannot be written right now"


class ServerBusy(MmcError):
    code = "BUSY"
    default_message = "Too many open connections; try again later"


class BrokerUnavailable(MmcError):
    code = "BROKER_UNAVAILABLE"
    default_message = "Broker is not connected"


class ReplyLost(BrokerUnavailable):
    """A command was handed to the link, and its answer will not come: the link dropped,
    or the answer did not arrive in time. The broker may have applied it. The control
    channel resolves this (mmc.brokers.outcome) before anyone answers a client; the
    own-user guard, which expects mosquitto to drop mmc's connection, takes it as such."""

    def __init__(self, message: str | None = None, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class BrokerTimeout(MmcError):
    code = "TIMEOUT"
    default_message = "Broker did not answer in time"


class OutcomeUnknown(MmcError):
    """A command reached (or may have reached) the broker, its answer was lost, and reading
    the broker's state back could not tell whether it was applied."""

    code = "OUTCOME_UNKNOWN"
    default_message = "The command may have been applied; its outcome is unknown"


class ControlError(MmcError):
    """A ``$CONTROL`` API answered a command with an ``error`` string."""

    code = "INVALID"

    def __init__(self, message: str, *, command: str, info: Any = None) -> None:
        super().__init__(message, info=info)
        self.command = command


class ControlNotFound(ControlError):
    code = "NOT_FOUND"


class ControlConflict(ControlError):
    code = "CONFLICT"
