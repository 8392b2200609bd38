"""User management like the MMC's: /api/user-management/... (admin only)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mmc.auth.permissions import Role
from mmc.errors import InvalidInput, NotFound
from mmc.keys import auth_key
from mmc.openapi import doc
from mmc.schemas.responses import STRING_LIST, UserSchema
from mmc.schemas.users import user_create_schema, user_update_schema
from mmc.store.users import UserRecord
from mmc.web.body import read_valid

routes = web.RouteTableDef()


def user_wire(user: UserRecord) -> dict[str, Any]:
    return {"username": user.username, "roles": list(user.roles)}


@routes.view("/api/user-management/users")
class UsersView(web.View):
    @doc("List users", responses={200: UserSchema(many=True)})
    async def get(self) -> web.Response:
        users = await self.request.app[auth_key].users.list()
        return web.json_response([user_wire(u) for u in users])

    @doc("Create a user", body=user_create_schema, responses={201: UserSchema()}, errors=(409,))
    async def post(self) -> web.Response:
        data = await read_valid(self.request, user_create_schema)
        user = await self.request.app[auth_key].create_user(
            data["username"], data["password"], tuple(data["roles"])
        )
        return web.json_response(user_wire(user), status=201)


@routes.view("/api/user-management/users/{username}")
class UserView(web.View):
    @property
    def username(self) -> str:
        return self.request.match_info["username"]

    @doc("One user", responses={200: UserSchema()})
    async def get(self) -> web.Response:
        user = await self.request.app[auth_key].users.get(self.username)
        if user is None:
            raise NotFound(f"User {self.username} not found")
        return web.json_response(user_wire(user))

    @doc(
        "Change a user's password or roles (a new password ends their sessions)",
        body=user_update_schema,
        responses={200: UserSchema()},
        errors=(409,),
    )
    async def put(self) -> web.Response:
        data = await read_valid(self.request, user_update_schema)
        if data.get("username", self.username) != self.username:
            raise InvalidInput(
                "Users cannot be renamed", info={"username": ["Must match the URL."]}
            )
        roles = data.get("roles")
        user = await self.request.app[auth_key].update_user(
            self.username,
            password=data.get("password"),
            roles=tuple(roles) if roles is not None else None,
        )
        return web.json_response(user_wire(user))

    @doc("Delete a user (never the last admin)", responses={204: None}, errors=(409,))
    async def delete(self) -> web.Response:
        await self.request.app[auth_key].delete_user(self.username)
        return web.Response(status=204)


@routes.get("/api/user-management/roles")
@doc("The roles a user can have", responses={200: STRING_LIST})
async def roles(request: web.Request) -> web.Response:
    return web.json_response([role.value for role in Role])
