"""User management like the MMC's: /api/user-management/... (admin only)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mmc.appkeys import auth_key
from mmc.auth.passwords import usable
from mmc.auth.permissions import Permission, Role
from mmc.errors import InvalidInput, NotFound
from mmc.schemas.responses import STRING_LIST, UserSchema
from mmc.schemas.users import user_create_schema, user_update_schema
from mmc.store.users import UserRecord
from mmc.web.routing import Routes

routes = Routes()

USERS = "/api/user-management/users"


def user_wire(user: UserRecord) -> dict[str, Any]:
    wire: dict[str, Any] = {"username": user.username, "roles": list(user.roles)}
    if not usable(user.password_hash):
        wire["disabled"] = True
    return wire


@routes.get(USERS, Permission.ADMIN, "List users", responses={200: UserSchema(many=True)})
async def list_users(request: web.Request) -> web.Response:
    users = await request.app[auth_key].users.list()
    return web.json_response([user_wire(u) for u in users])


@routes.post(
    USERS,
    Permission.ADMIN,
    "Create a user",
    body=user_create_schema,
    responses={201: UserSchema()},
    errors=(409,),
)
async def create_user(request: web.Request, body: dict[str, Any]) -> web.Response:
    user = await request.app[auth_key].create_user(
        body["username"], body["password"], tuple(body["roles"])
    )
    return web.json_response(user_wire(user), status=201)


@routes.get(USERS + "/{username}", Permission.ADMIN, "One user", responses={200: UserSchema()})
async def get_user(request: web.Request) -> web.Response:
    username = request.match_info["username"]
    user = await request.app[auth_key].users.get(username)
    if user is None:
        raise NotFound(f"User {username} not found")
    return web.json_response(user_wire(user))


@routes.put(
    USERS + "/{username}",
    Permission.ADMIN,
    "Change a user's password or roles (a new password ends their sessions)",
    body=user_update_schema,
    responses={200: UserSchema()},
    errors=(409,),
)
async def update_user(request: web.Request, body: dict[str, Any]) -> web.Response:
    username = request.match_info["username"]
    if body.get("username", username) != username:
        raise InvalidInput("Users cannot be renamed", info={"username": ["Must match the URL."]})
    roles = body.get("roles")
    user = await request.app[auth_key].update_user(
        username,
        password=body.get("password"),
        roles=tuple(roles) if roles is not None else None,
    )
    return web.json_response(user_wire(user))


@routes.delete(
    USERS + "/{username}",
    Permission.ADMIN,
    "Delete a user (never the last admin)",
    responses={204: None},
    errors=(409,),
)
async def delete_user(request: web.Request) -> web.Response:
    await request.app[auth_key].delete_user(request.match_info["username"])
    return web.Response(status=204)


@routes.get(
    "/api/user-management/roles",
    Permission.ADMIN,
    "The roles a user can have",
    responses={200: STRING_LIST},
)
async def roles(request: web.Request) -> web.Response:
    return web.json_response([role.value for role in Role])
