"""Users, logins and application tokens."""

from __future__ import annotations

import datetime as dt
from typing import Any

from marshmallow import ValidationError, fields, validate, validates

from mmc.auth.permissions import Role
from mmc.schemas.base import InputSchema

USERNAME = validate.Regexp(
    r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$",
    error="Must be 1-64 characters: letters, digits, '.', '_', '@' or '-'.",
)
ROLE_NAMES = [role.value for role in Role]


class LoginSchema(InputSchema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=128))
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024))


def _unique_roles(value: list[str]) -> None:
    if len(set(value)) != len(value):
        raise ValidationError("Roles must not repeat.")


class UserCreateSchema(InputSchema):
    username = fields.String(required=True, validate=USERNAME)
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024))
    roles = fields.List(
        fields.String(validate=validate.OneOf(ROLE_NAMES)),
        required=True,
        validate=[validate.Length(min=1), _unique_roles],
    )


class UserUpdateSchema(InputSchema):
    password = fields.String(validate=validate.Length(min=1, max=1024))
    roles = fields.List(
        fields.String(validate=validate.OneOf(ROLE_NAMES)),
        validate=[validate.Length(min=1), _unique_roles],
    )
    # Sending back a read user object is fine: its name must match the URL.
    username = fields.String(validate=USERNAME)


class TokenCreateSchema(InputSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    role = fields.String(required=True, validate=validate.OneOf(ROLE_NAMES))
    valid_until = fields.AwareDateTime(data_key="validUntil", allow_none=True)

    @validates("valid_until")
    def _future(self, value: dt.datetime | None, data_key: str, **kwargs: Any) -> None:
        if value is not None and value <= dt.datetime.now(dt.UTC):
            raise ValidationError("Must be in the future.")


login_schema = LoginSchema()
user_create_schema = UserCreateSchema()
user_update_schema = UserUpdateSchema()
token_create_schema = TokenCreateSchema()
