"""Application tokens for scripts: POST returns the token once; only a hash is kept."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from mmc.appkeys import auth_key, identity_key
from mmc.auth.permissions import Permission
from mmc.clock import now_ms
from mmc.schemas.responses import TokenCreatedSchema, TokenSchema
from mmc.schemas.users import token_create_schema
from mmc.store.tokens import TokenRecord
from mmc.web.routing import Routes

routes = Routes()


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def token_wire(record: TokenRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "role": record.role,
        "createdBy": record.created_by,
        "createdAt": _iso(record.created_at),
        "validUntil": _iso(record.valid_until),
        "expired": record.valid_until is not None and record.valid_until <= now_ms(),
    }


@routes.get(
    "/api/tokens",
    Permission.ADMIN,
    "List application tokens (never their secret)",
    responses={200: TokenSchema(many=True)},
)
async def list_tokens(request: web.Request) -> web.Response:
    tokens = await request.app[auth_key].list_tokens()
    return web.json_response([token_wire(t) for t in tokens])


@routes.post(
    "/api/tokens",
    Permission.ADMIN,
    "Create an application token; the token is in this answer only",
    body=token_create_schema,
    responses={201: TokenCreatedSchema()},
)
async def create_token(request: web.Request, body: dict[str, Any]) -> web.Response:
    until = body.get("valid_until")
    record, token = await request.app[auth_key].create_token(
        body["name"],
        body["role"],
        int(until.timestamp() * 1000) if until is not None else None,
        request[identity_key].username,
    )
    return web.json_response({**token_wire(record), "token": token}, status=201)


@routes.delete("/api/tokens/{tokenId}", Permission.ADMIN, "Revoke a token", responses={204: None})
async def revoke_token(request: web.Request) -> web.Response:
    await request.app[auth_key].revoke_token(request.match_info["tokenId"])
    return web.Response(status=204)
