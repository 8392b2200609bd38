"""The HTTP status of every error mmc raises, written out independently of the middleware's
table: the errors themselves carry none (mmc.errors), so a new error class must be added
here and to mmc.web.middlewares.STATUS."""

from __future__ import annotations

import inspect

from mmc import errors
from mmc.web.middlewares import error_body, status_of

EXPECTED = {
    "MmcError": (500, "INTERNAL_ERROR"),
    "InvalidInput": (400, "INVALID"),
    "UndecodableBody": (400, "INVALID"),
    "Unauthorized": (401, "UNAUTHORIZED"),
    "NotAllowed": (403, "NOT_ALLOWED"),
    "NotFound": (404, "NOT_FOUND"),
    "MethodNotAllowed": (405, "METHOD_NOT_ALLOWED"),
    "RequestTimeout": (408, "REQUEST_TIMEOUT"),
    "Conflict": (409, "CONFLICT"),
    "PayloadTooLarge": (413, "PAYLOAD_TOO_LARGE"),
    "TooManyRequests": (429, "TOO_MANY_REQUESTS"),
    "StoreUnavailable": (503, "STORE_UNAVAILABLE"),
    "ServerBusy": (503, "BUSY"),
    "BrokerUnavailable": (503, "BROKER_UNAVAILABLE"),
    "ReplyLost": (503, "BROKER_UNAVAILABLE"),
    "BrokerTimeout": (504, "TIMEOUT"),
    "OutcomeUnknown": (502, "OUTCOME_UNKNOWN"),
    "ControlError": (400, "INVALID"),
    "ControlNotFound": (404, "NOT_FOUND"),
    "ControlConflict": (409, "CONFLICT"),
}


def _instance(cls: type[errors.MmcError]) -> errors.MmcError:
    if issubclass(cls, errors.TooManyRequests):
        return cls("slow down", retry_after=3)
    if issubclass(cls, errors.ControlError):
        return cls("nope", command="getClient", info={"x": 1})
    return cls()


def test_every_error_has_its_status_and_code() -> None:
    classes = {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.MmcError)
    }
    assert set(classes) == set(EXPECTED)
    for name, cls in classes.items():
        error = _instance(cls)
        assert not hasattr(error, "status"), name
        assert (status_of(error), error.code) == EXPECTED[name], name
        body = error_body(error)
        assert body["status"] == EXPECTED[name][0]
        assert body["code"] == EXPECTED[name][1]
        assert body["message"] == error.message
        assert body.get("info") == error.info
