"""Reading a JSON request body strictly, and validating it with a schema."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from marshmallow import Schema, ValidationError

from mmc.errors import InvalidInput, UndecodableBody

NOT_OBJECT = "The JSON body must be an object"
JSON_TYPES = frozenset({"application/json"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidInput(f"Duplicate key {key!r} in JSON object")
        out[key] = value
    return out


async def read_json(request: web.Request) -> Any:
    """The body as JSON, or InvalidInput/PayloadTooLarge with a message a person can act on."""
    if request.content_type not in JSON_TYPES and not request.content_type.endswith("+json"):
        raise InvalidInput(
            f"Content-Type must be application/json, not {request.content_type or 'empty'!r}"
        )
    try:
        raw = await request.read()  # raises 413 past client_max_size; the middleware renders it
    except RequestPayloadError as exc:
        raise _unreadable(request, exc) from None
    if not raw.strip():
        raise InvalidInput("Request body is empty; a JSON document is required")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("Request body is not valid UTF-8") from None
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"Malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidInput("JSON document is nested too deeply") from None
    except ValueError:
        # int() refuses more than sys.get_int_max_str_digits() (4,300) digits.
        raise InvalidInput("A number in the JSON document is too large") from None
    if _SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogates(document)
    return document


# "\ud800" is valid JSON but no character: json.loads turns it into a lone surrogate that
# no store, log or broker can encode. Only an escape can produce one (the body was valid
# UTF-8), so documents without such an escape skip the walk.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(document: Any) -> None:
    try:
        errors = _utf8_errors(document)
    except RecursionError:
        errors = {"_schema": ["Not valid UTF-8."]}
    if errors:
        raise InvalidInput(
            "Invalid input: a lone surrogate escape (such as \\ud800) is not valid UTF-8",
            info=errors if isinstance(errors, dict) else {"_schema": errors},
        )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utf8_errors(value: Any) -> Any:
    """The strings that cannot be encoded, named like marshmallow names fields."""
    if isinstance(value, str):
        return None if _encodable(value) else ["Not valid UTF-8."]
    if isinstance(value, dict):
        errors: dict[Any, Any] = {}
        for key, item in value.items():
            if not _encodable(key):
                errors["_schema"] = ["A key is not valid UTF-8."]
            elif (error := _utf8_errors(item)) is not None:
                errors[key] = error
        return errors or None
    if isinstance(value, list):
        found = {i: e for i, item in enumerate(value) if (e := _utf8_errors(item)) is not None}
        return found or None
    return None


class BodyAbandoned(TimeoutError):
    """Set on the body stream of a request whose body mmc gave up on (too slow, or
    undecodable). A TimeoutError because of what aiohttp does after the answer: it reads
    what is left of an unread body for a while, stops quietly on a TimeoutError and
    closes the connection; any other error there is logged as a traceback."""


def abandon_body(request: web.Request) -> None:
    request.content.set_exception(BodyAbandoned())


def _unreadable(request: web.Request, exc: RequestPayloadError) -> UndecodableBody:
    abandon_body(request)
    encoding = request.headers.get("Content-Encoding")
    what = f"with Content-Encoding {encoding[:40]!r}" if encoding else "as sent"
    return UndecodableBody(f"The request body cannot be decoded {what}")


async def read_form(request: web.Request) -> dict[str, str]:
    """An urlencoded or multipart form's text fields (files are left out), or InvalidInput."""
    try:
        form = await request.post()
    except web.HTTPException:
        raise  # 413 past client_max_size
    except RequestPayloadError as exc:
        raise _unreadable(request, exc) from None
    except (ValueError, LookupError, RuntimeError, HttpProcessingError) as exc:
        # What aiohttp's form readers raise for a client's broken body: a missing or bad
        # boundary, bad base64 or UTF-8 (ValueError), an unknown charset (LookupError), an
        # unknown Content-Transfer-Encoding (RuntimeError), a malformed part header.
        raise InvalidInput(f"Malformed form body: {exc}"[:200]) from None
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    # aiohttp's form decoders give U+FFFD or an error for bad bytes, not lone surrogates;
    # checked anyway, since neither the store nor the log could take one.
    if not all(_encodable(text) for text in (*fields, *fields.values())):
        raise InvalidInput("A form field is not valid UTF-8")
    return fields


def load(schema: Schema, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        # A schema may say what it expects in its error_messages.
        raise InvalidInput(schema.error_messages.get("not_object", NOT_OBJECT))
    try:
        result = schema.load(data)
    except ValidationError as exc:
        raise InvalidInput("Invalid input", info=exc.messages) from None
    assert isinstance(result, dict)
    return result
