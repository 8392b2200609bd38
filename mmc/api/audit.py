"""GET /api/audit: the audit trail, newest first, filtered, with cursor pagination (admin).

Query: ``user``, ``method``, ``route`` (a template, e.g. ``/api/connections/{connectionId}``),
``status``, ``outcome`` (``success``, ``denied``, ``failure``), ``since`` and ``until``
(ISO 8601 with a time zone; ``since`` inclusive, ``until`` exclusive), ``limit`` (1-1000,
default 100) and ``cursor`` (the ``nextCursor`` of the previous page; send the same filters).
Answer: ``{"entries": [...], "nextCursor": str | null}``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

from aiohttp import web
from marshmallow import Schema, fields, validate

from mmc.appkeys import audit_key
from mmc.auth.permissions import Permission
from mmc.errors import InvalidInput
from mmc.schemas.responses import AuditPageSchema
from mmc.store.audit import AuditQuery, entry_wire
from mmc.web.audit import AUDITED_METHODS
from mmc.web.routing import Routes

routes = Routes()

MAX_LIMIT = 1000
_CURSOR_PREFIX = "audit:v1:"


class AuditQuerySchema(Schema):
    """Strict (RAISE), unlike the other query strings: mmc's own API, which no Cedalo client
    calls, and an ignored filter or ``?page=2`` would answer the wrong entries silently."""

    user = fields.String(validate=validate.Length(min=1, max=256))
    # "CLI": changes made with the mmc command (users, secrets); "WS": over GET /api/ws.
    method = fields.String(validate=validate.OneOf([*sorted(AUDITED_METHODS), "CLI", "WS"]))
    route = fields.String(validate=validate.Length(min=1, max=1024))
    status = fields.Integer(validate=validate.Range(min=100, max=599), strict=False)
    outcome = fields.String(validate=validate.OneOf(["success", "denied", "failure"]))
    since = fields.AwareDateTime()
    until = fields.AwareDateTime()
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=MAX_LIMIT))
    cursor = fields.String(validate=validate.Length(min=1, max=128))


_query_schema = AuditQuerySchema()


def encode_cursor(entry_id: int) -> str:
    raw = f"{_CURSOR_PREFIX}{entry_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        if not raw.startswith(_CURSOR_PREFIX):
            raise ValueError(cursor)
        value = int(raw[len(_CURSOR_PREFIX) :])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput(
            "cursor is not one this API gave out", info={"cursor": ["Invalid cursor."]}
        ) from None
    if value < 1:
        raise InvalidInput("cursor is not one this API gave out", info={"cursor": ["Invalid."]})
    return value


def _ms(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


@routes.get(
    "/api/audit",
    Permission.ADMIN,
    "The audit trail: every change, newest first (admin)",
    query=_query_schema,
    responses={200: AuditPageSchema()},
    description="Filters combine with AND. Page with `limit` and the `nextCursor` of the "
    "previous answer, sending the same filters again.",
)
async def audit(request: web.Request, query: dict[str, Any]) -> web.Response:
    limit: int = query["limit"]
    wanted = AuditQuery(
        user=query.get("user"),
        method=query.get("method"),
        route=query.get("route"),
        status=query.get("status"),
        outcome=query.get("outcome"),
        since=_ms(query.get("since")),
        until=_ms(query.get("until")),
        before_id=decode_cursor(query["cursor"]) if "cursor" in query else None,
        limit=limit + 1,
    )
    entries = await request.app[audit_key].query(wanted)
    more = len(entries) > limit
    entries = entries[:limit]
    last_id = entries[-1].id if entries else None
    return web.json_response(
        {
            "entries": [entry_wire(e) for e in entries],
            "nextCursor": encode_cursor(last_id) if more and last_id is not None else None,
        }
    )
