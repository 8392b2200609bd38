"""Bodies of the dynamic-security API, validated before anything is sent to a broker.

Field names are the plugin's own (``username``, ``rolename``, ``acltype``, ``textname``...)
so a body can be copied from, or into, a plugin command.
"""

from __future__ import annotations

from typing import Any

from marshmallow import (
    INCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)
from marshmallow.types import UnknownOption

from mmc.broker_strings import (
    check_name,
    check_new_name,
    check_text,
    check_topic,
    command_problems,
)
from mmc.schemas.base import InputSchema

# ACL types a role may hold, and the ones of the default ACL access.
ROLE_ACL_TYPES = (
    "publishClientSend",
    "publishClientReceive",
    "subscribeLiteral",
    "subscribePattern",
    "unsubscribeLiteral",
    "unsubscribePattern",
)
DEFAULT_ACL_TYPES = ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe")

MAX_COMMANDS = 1000


def name_field(**kwargs: Any) -> fields.String:
    """A name that must exist (a reference): what the broker can represent."""
    return fields.String(validate=[validate.Length(min=1), check_name], **kwargs)


def new_name_field(**kwargs: Any) -> fields.String:
    """A name that may be created: also addressable by URL afterwards."""
    return fields.String(validate=[validate.Length(min=1), check_new_name], **kwargs)


def clientid_field() -> fields.String:
    """A client id: checked like a name by the plugin; "" means none."""
    return fields.String(validate=check_name)


def text_field() -> fields.String:
    return fields.String(validate=check_text)


def priority_field() -> fields.Integer:
    return fields.Integer(strict=True, validate=validate.Range(-(2**31), 2**31 - 1))


def password_field(**kwargs: Any) -> fields.String:
    return fields.String(
        validate=[validate.Length(min=1, error="Empty password is not allowed."), check_text],
        **kwargs,
    )


class RoleRefSchema(InputSchema):
    rolename = name_field(required=True)
    priority = priority_field()


class GroupRefSchema(InputSchema):
    groupname = name_field(required=True)
    priority = priority_field()


class ClientRefSchema(InputSchema):
    username = name_field(required=True)
    priority = priority_field()


class AclType(fields.String):
    """An ACL type in any case, as the plugin reads it (strcasecmp), loaded as the canonical
    spelling (``publishclientsend`` -> ``publishClientSend``), which is what mmc sends."""

    def __init__(self, choices: tuple[str, ...], **kwargs: Any) -> None:
        kwargs.setdefault("metadata", {"description": f"One of {', '.join(choices)}, any case."})
        super().__init__(**kwargs)
        self.choices = choices
        self._canonical = {choice.lower(): choice for choice in choices}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        canonical = self._canonical.get(text.lower())
        if canonical is None:
            raise ValidationError(f"Must be one of: {', '.join(self.choices)}.")
        return canonical


class StrictBoolean(fields.Boolean):
    """JSON true or false only. marshmallow's Boolean reads "yes" and 1 as true, the plugin
    reads anything but JSON true as false: guessing either way could grant what the client
    meant to deny, so anything else is a 400."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false (a JSON boolean).")
        return value


class AclKeySchema(InputSchema):
    acltype = AclType(ROLE_ACL_TYPES, required=True)
    topic = fields.String(required=True, validate=[validate.Length(min=1), check_topic])


class AclSchema(AclKeySchema):
    priority = priority_field()
    allow = StrictBoolean(load_default=False)


class DefaultAclSchema(InputSchema):
    acltype = AclType(DEFAULT_ACL_TYPES, required=True)
    allow = StrictBoolean(required=True)


def _unique(entries: list[dict[str, Any]], key: str) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry[key] in seen:
            raise ValidationError(f"{key} {entry[key]!r} appears more than once.")
        seen.add(entry[key])


def _refs(schema: type[Schema], key: str, unknown: UnknownOption | None = None) -> fields.List[Any]:
    return fields.List(fields.Nested(schema, unknown=unknown), validate=lambda v: _unique(v, key))


class DefaultAclAccessSchema(InputSchema):
    acls = fields.List(
        fields.Nested(DefaultAclSchema),
        required=True,
        validate=[validate.Length(min=1), lambda v: _unique(v, "acltype")],
    )


class _Changes(InputSchema):
    """A PATCH body: at least one field."""

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError(f"Give at least one of: {', '.join(sorted(self.fields))}.")


class ClientModifySchema(_Changes):
    clientid = clientid_field()
    password = password_field()
    textname = text_field()
    textdescription = text_field()
    roles = _refs(RoleRefSchema, "rolename")
    groups = _refs(GroupRefSchema, "groupname")


class ClientCreateSchema(InputSchema):
    username = new_name_field(required=True)
    # Optional, as for the plugin: a client without one cannot log in with a password but
    # can with a certificate (use_identity_as_username) or be given one later.
    password = password_field()
    clientid = clientid_field()
    textname = text_field()
    textdescription = text_field()
    roles = _refs(RoleRefSchema, "rolename")
    groups = _refs(GroupRefSchema, "groupname")


class GroupModifySchema(_Changes):
    textname = text_field()
    textdescription = text_field()
    roles = _refs(RoleRefSchema, "rolename")
    clients = _refs(ClientRefSchema, "username")


class GroupCreateSchema(InputSchema):
    groupname = new_name_field(required=True)
    textname = text_field()
    textdescription = text_field()
    roles = _refs(RoleRefSchema, "rolename")


def _acls(unknown: UnknownOption | None = None) -> fields.List[Any]:
    return fields.List(
        fields.Nested(AclSchema, unknown=unknown),
        validate=lambda v: _unique([{"k": (a["acltype"], a["topic"])} for a in v], "k"),
    )


def allow_wildcard_subs_field() -> StrictBoolean:
    return StrictBoolean(
        metadata={
            "description": "mosquitto 2.1: may the role's holders subscribe with + and #? "
            "(default true; false is refused by 2.0, which always lets them)"
        }
    )


class RoleModifySchema(_Changes):
    textname = text_field()
    textdescription = text_field()
    acls = _acls()
    allowwildcardsubs = allow_wildcard_subs_field()


class RoleCreateSchema(InputSchema):
    rolename = new_name_field(required=True)
    textname = text_field()
    textdescription = text_field()
    acls = _acls()
    allowwildcardsubs = allow_wildcard_subs_field()


class PasswordSchema(InputSchema):
    password = password_field(required=True)


class ClientIdSchema(InputSchema):
    """``null``, ``""`` or a missing clientid removes it."""

    clientid = fields.String(allow_none=True, load_default=None, validate=check_name)


class AnonymousGroupSchema(InputSchema):
    groupname = name_field(required=True)


class ListQuerySchema(InputSchema):
    verbose = fields.Boolean(load_default=False)
    count = fields.Integer(load_default=-1, validate=validate.Range(min=-1))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


# ------------------------------------------------------------ passthrough


class CommandSchema(Schema):
    """One plugin command; parameters other than ``command`` are the plugin's business, but
    every string in it must read the same to the broker as to mmc (broker_strings)."""

    class Meta:
        unknown = INCLUDE

    command = fields.String(required=True, validate=validate.Length(min=1, max=64))

    @validates_schema(pass_original=True)
    def _broker_strings(
        self, data: dict[str, Any], original: dict[str, Any], **kwargs: Any
    ) -> None:
        problems = command_problems(original)
        if problems:
            raise ValidationError(problems)


class CommandsSchema(Schema):
    commands = fields.List(
        fields.Nested(CommandSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_COMMANDS),
    )


# ------------------------------------------------------------ document
# An import document refuses what it does not know, at every level (RAISE): a key dropped
# there would be data silently not imported. The resource routes' bodies ignore unknown
# fields (InputSchema), so the document's nested schemas say RAISE themselves.


class DocumentClientSchema(Schema):
    username = new_name_field(required=True)
    password = password_field()
    clientid = clientid_field()
    textname = text_field()
    textdescription = text_field()
    disabled = fields.Boolean(load_default=False)
    roles = _refs(RoleRefSchema, "rolename", RAISE)
    groups = _refs(GroupRefSchema, "groupname", RAISE)
    # mosquitto 2.1's verbose listClients has the client's live connections: state, not
    # configuration, so a listing fed back in as a document ignores them.
    connections = fields.Raw(load_only=True, metadata={"description": "Ignored"})

    @post_load
    def _without_connections(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data.pop("connections", None)
        return data


class DocumentGroupSchema(Schema):
    groupname = new_name_field(required=True)
    textname = text_field()
    textdescription = text_field()
    roles = _refs(RoleRefSchema, "rolename", RAISE)


class DocumentRoleSchema(RoleCreateSchema):
    class Meta:
        unknown = RAISE

    acls = _acls(RAISE)


class DocumentSchema(Schema):
    """What GET .../dynsec/export answers and POST .../dynsec/import takes."""

    # Named as on the wire (the plugin's and mosquitto's dynsec.json spelling).
    defaultACLAccess = fields.List(
        fields.Nested(DefaultAclSchema, unknown=RAISE), validate=lambda v: _unique(v, "acltype")
    )
    anonymousGroup = fields.String(allow_none=True, validate=check_name)
    roles = fields.List(
        fields.Nested(DocumentRoleSchema), validate=lambda v: _unique(v, "rolename")
    )
    groups = fields.List(
        fields.Nested(DocumentGroupSchema), validate=lambda v: _unique(v, "groupname")
    )
    clients = fields.List(
        fields.Nested(DocumentClientSchema), validate=lambda v: _unique(v, "username")
    )


class ApplySchema(Schema):
    """POST /api/projects/{projectId}/dynsec/apply: commands, or a document to import."""

    commands = fields.List(
        fields.Nested(CommandSchema), validate=validate.Length(min=1, max=MAX_COMMANDS)
    )
    document = fields.Nested(DocumentSchema, data_key="import")
    dry_run = fields.Boolean(data_key="dryRun", load_default=False)

    @validates_schema
    def _one_of(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("commands" in data) == ("document" in data):
            raise ValidationError("Give either 'commands' or 'import'.")
        if "commands" in data and data["dry_run"]:
            raise ValidationError("dryRun only applies to 'import'.", "dryRun")


list_query_schema = ListQuerySchema()
document_schema = DocumentSchema()
