"""Reading a JSON request body strictly, and validating it with a schema."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError

from mmc.errors import InvalidInput

JSON_TYPES = frozenset({"application/json"})


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
    raw = await request.read()  # raises 413 past client_max_size; the middleware renders it
    if not raw.strip():
        raise InvalidInput("Request body is empty; a JSON document is required")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("Request body is not valid UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"Malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidInput("JSON document is nested too deeply") from None


def load(schema: Schema, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInput("The JSON body must be an object")
    try:
        result = schema.load(data)
    except ValidationError as exc:
        raise InvalidInput("Invalid input", info=exc.messages) from None
    assert isinstance(result, dict)
    return result


async def read_valid(request: web.Request, schema: Schema) -> dict[str, Any]:
    return load(schema, await read_json(request))
