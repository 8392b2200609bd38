"""What the API answers, for the OpenAPI document (handlers build these dicts directly)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import Schema, fields, validate


class ErrorSchema(Schema):
    code = fields.String(required=True, metadata={"example": "NOT_FOUND"})
    message = fields.String(required=True)
    status = fields.Integer(required=True)
    info = fields.Raw(metadata={"description": "Details, e.g. marshmallow's messages per field"})


class AcceptedSchema(Schema):
    code = fields.String(required=True, metadata={"example": "ACCEPTED"})
    message = fields.String(required=True)


class SuccessSchema(Schema):
    code = fields.String(required=True, metadata={"example": "SUCCESS"})
    message = fields.String(required=True)


class LinkErrorSchema(Schema):
    code = fields.String(required=True, metadata={"example": "ECONNREFUSED"})
    errno = fields.Integer()
    syscall = fields.String()
    address = fields.String()
    port = fields.Integer()
    message = fields.String(required=True)


class StatusSchema(Schema):
    connected = fields.Boolean(required=True)
    timestamp = fields.Integer(required=True, metadata={"description": "ms of the last change"})
    error = fields.Nested(LinkErrorSchema)
    dropped_at = fields.Integer(
        data_key="droppedAt",
        metadata={"description": "ms the last established session dropped; gone once connected"},
    )
    disconnected = fields.Boolean(
        metadata={
            "description": "Present (true) while a user keeps the connection disconnected "
            "(PUT .../disconnect); error.code is then EDISCONNECTED"
        }
    )


class ConnectionTestResultSchema(Schema):
    connected = fields.Boolean(required=True)
    error = fields.Nested(LinkErrorSchema)


class VersionSchema(Schema):
    name = fields.String(required=True, metadata={"example": "mmc"})
    version = fields.String(required=True, metadata={"example": "0.1.0"})


class CertificateOutSchema(Schema):
    data = fields.String(required=True)
    encoding = fields.String(required=True)
    subject = fields.String()
    not_after = fields.String(data_key="notAfter")
    fingerprint_sha256 = fields.String(data_key="fingerprintSha256")


class KeyOutSchema(Schema):
    encoding = fields.String(required=True)


class CredentialsOutSchema(Schema):
    username = fields.String()
    client_id = fields.String(data_key="clientId")


class ConnectionOutSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    url = fields.String(required=True)
    project_id = fields.String(data_key="projectId", required=True)
    credentials = fields.Nested(CredentialsOutSchema)
    ca = fields.Nested(CertificateOutSchema)
    cert = fields.Nested(CertificateOutSchema)
    key = fields.Nested(KeyOutSchema)
    reject_unauthorized = fields.Boolean(data_key="rejectUnauthorized", required=True)
    status = fields.Nested(StatusSchema, required=True)


class ProjectOutSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    description = fields.String()


class BrokerSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    url = fields.String(required=True)
    project_id = fields.String(required=True)
    is_connected = fields.Boolean(data_key="isConnected", required=True)
    status = fields.Nested(StatusSchema, required=True)
    features = fields.List(fields.String(), allow_none=True, required=True)


class SysTopicsSchema(Schema):
    topics = fields.Dict(required=True)
    date = fields.Integer(allow_none=True)


class BrokerInfoSchema(Schema):
    id = fields.String(required=True)
    url = fields.String(required=True)
    name = fields.String(required=True)
    project_id = fields.String(required=True)
    sys_topics = fields.Nested(SysTopicsSchema, data_key="sysTopics", required=True)
    sys_topics_history = fields.List(
        fields.Nested(SysTopicsSchema), data_key="sysTopicsHistory", required=True
    )
    is_connected = fields.Boolean(data_key="isConnected", required=True)
    status = fields.Nested(StatusSchema)
    license_info = fields.Dict(data_key="licenseInfo")


class LicenseSchema(Schema):
    plan = fields.String()
    edition = fields.String()
    issued_by = fields.String(data_key="issuedBy")
    issued_to = fields.String(data_key="issuedTo")
    valid_since = fields.Float(data_key="validSince", allow_none=True)
    valid_until = fields.Float(data_key="validUntil", allow_none=True)
    features = fields.List(fields.String())


class ListenerSchema(Schema):
    id = fields.Raw()
    port = fields.Integer(allow_none=True)
    bind_address = fields.String(data_key="bindAddress", allow_none=True)
    tls = fields.Boolean()
    protocol = fields.String()
    require_certificate = fields.Boolean(data_key="requireCertificate", allow_none=True)
    certs = fields.List(fields.Raw())
    socket_path = fields.String(data_key="socketPath")


# Whose a listed bridge is: "own", or "unknown" when mmc cannot tell it from the far
# end of another broker's bridge (no companion plugin on the broker).
BRIDGE_ORIGINS = ("own", "unknown")


class BridgeSchema(Schema):
    id = fields.String(required=True)
    is_active = fields.Boolean(data_key="isActive", required=True)
    name = fields.String()
    source = fields.String(validate=validate.OneOf(("config", "plugin", "license")))
    origin = fields.String(validate=validate.OneOf(BRIDGE_ORIGINS))


class BridgeStatusSchema(Schema):
    id = fields.String(required=True)
    connected = fields.Boolean(required=True)
    since = fields.Integer()
    origin = fields.String(validate=validate.OneOf(BRIDGE_ORIGINS))
    is_active = fields.Boolean(data_key="isActive")


class UserSchema(Schema):
    username = fields.String(required=True)
    roles = fields.List(fields.String(), required=True)
    disabled = fields.Boolean(
        metadata={
            "description": "Only present, true, for a user without a usable password (migrated "
            "from the Cedalo MMC): no login until a password is set."
        }
    )


class TokenSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    role = fields.String(required=True)
    created_by = fields.String(data_key="createdBy", required=True)
    created_at = fields.String(data_key="createdAt", required=True)
    valid_until = fields.String(data_key="validUntil", allow_none=True, required=True)
    expired = fields.Boolean(required=True)


class TokenCreatedSchema(TokenSchema):
    token = fields.String(required=True, metadata={"description": "Shown once"})


class TokenRefSchema(Schema):
    id = fields.String()
    name = fields.String()


class ProfileSchema(Schema):
    username = fields.String(required=True)
    roles = fields.List(fields.String(), required=True)
    authenticated_by = fields.String(data_key="authenticatedBy", required=True)
    token = fields.Nested(TokenRefSchema)


class AuditEntrySchema(Schema):
    id = fields.Integer(required=True)
    at = fields.String(required=True, metadata={"description": "ISO 8601, UTC"})
    request_id = fields.String(data_key="requestId", required=True)
    user = fields.String(allow_none=True, required=True)
    auth_method = fields.String(
        data_key="authMethod",
        allow_none=True,
        required=True,
        metadata={"description": "session, token, password (a login), cli"},
    )
    client = fields.String(required=True)
    method = fields.String(required=True)
    route = fields.String(required=True, metadata={"description": "The route template"})
    target = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        required=True,
        metadata={"description": "The path parameters"},
    )
    status = fields.Integer(required=True)
    outcome = fields.String(required=True, metadata={"enum": ["success", "denied", "failure"]})
    error_code = fields.String(data_key="errorCode")
    duration_ms = fields.Integer(data_key="durationMs", required=True)


class AuditPageSchema(Schema):
    entries = fields.List(fields.Nested(AuditEntrySchema), required=True)
    next_cursor = fields.String(
        data_key="nextCursor",
        allow_none=True,
        required=True,
        metadata={"description": "Pass as cursor (with the same filters) for the next page"},
    )


class ValidSessionSchema(Schema):
    valid = fields.Boolean(required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)


class DatabaseStateSchema(Schema):
    backend = fields.String(required=True, metadata={"enum": ["sqlite", "postgresql"]})
    status = fields.String(required=True, metadata={"enum": ["ok", "unavailable"]})
    # PostgreSQL: whether this replica hears the others' changes right now.
    listening = fields.Boolean(required=True)


class ReadySchema(Schema):
    status = fields.String(required=True)
    reasons = fields.List(fields.String(), required=True)
    database = fields.Nested(DatabaseStateSchema)


class ObjectSchema(Schema):
    """A JSON object as the broker's plugin returns it."""

    class Meta:
        unknown = "include"


class BridgeConfigSchema(ObjectSchema):
    """A bridge plugin's configuration change, passed on as sent."""

    error_messages = {  # noqa: RUF012 - marshmallow's own class attribute
        "not_object": "The bridge configuration must be a JSON object"
    }


STRING_LIST: dict[str, object] = {"type": "array", "items": {"type": "string"}}
OBJECT: dict[str, object] = {"type": "object"}


# ------------------------------------------------------------ dynamic security
# The plugin's own answers (mosquitto's plugins/dynamic-security, 2.0 and 2.1), passed on as
# the plugin gives them: JSON schemas, since a list answers names or objects (``verbose``).
# Fields a later mosquitto adds (2.1's client ``connections``, role ``allowwildcardsubs``)
# are allowed: no additionalProperties: false.


def _obj(required: tuple[str, ...], **properties: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    return out


_STRING: dict[str, Any] = {"type": "string"}
_INTEGER: dict[str, Any] = {"type": "integer"}
_BOOLEAN: dict[str, Any] = {"type": "boolean"}


def _list(items: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _ref(key: str) -> dict[str, Any]:
    return _obj((key,), **{key: _STRING, "priority": _INTEGER})


ACL = _obj(("acltype", "topic"), acltype=_STRING, topic=_STRING, priority=_INTEGER, allow=_BOOLEAN)
DEFAULT_ACL = _obj(("acltype", "allow"), acltype=_STRING, allow=_BOOLEAN)
_TEXT = {"textname": _STRING, "textdescription": _STRING}
DYNSEC_CLIENT = _obj(
    ("username",),
    username=_STRING,
    clientid=_STRING,
    **_TEXT,
    disabled=_BOOLEAN,
    roles=_list(_ref("rolename")),
    groups=_list(_ref("groupname")),
    connections=_list(_obj((), address=_STRING)),
)
DYNSEC_GROUP = _obj(
    ("groupname",),
    groupname=_STRING,
    **_TEXT,
    roles=_list(_ref("rolename")),
    clients=_list(_ref("username")),
)
DYNSEC_ROLE = _obj(
    ("rolename",), rolename=_STRING, **_TEXT, acls=_list(ACL), allowwildcardsubs=_BOOLEAN
)


def dynsec_listing(plural: str, entity: Mapping[str, Any]) -> dict[str, Any]:
    """listClients/listGroups/listRoles: names, or whole entities with ``verbose``."""
    return _obj(
        ("totalCount", plural),
        totalCount=_INTEGER,
        **{plural: _list({"oneOf": [_STRING, entity]})},
    )


DEFAULT_ACL_ACCESS = _obj(("acls",), acls=_list(DEFAULT_ACL))

# ------------------------------------------------------------ inspect
# Pro Mosquitto's inspect plugin and mmc's companion plugin (plugin/mmc_inspect.c) use the
# same field names; Pro has more (queues, inflight, tls, listener, will, counters), which
# pass through. Times are ms since the epoch.
_NULLABLE_STRING: dict[str, Any] = {**_STRING, "nullable": True}
INSPECT_CLIENT = _obj(
    ("clientid", "connected"),
    clientid=_STRING,
    username=_NULLABLE_STRING,
    connected=_BOOLEAN,
    address=_NULLABLE_STRING,
    protocol={**_STRING, "example": "MQTT"},
    protocolVersion={**_STRING, "example": "v3.1.1"},
    lastConnect=_INTEGER,
    lastDisconnect={**_INTEGER, "nullable": True, "description": "null: never disconnected"},
    keepalive=_INTEGER,
    cleanSession=_BOOLEAN,
    numSubscriptions={**_INTEGER, "description": "connected clients only"},
    subscriptions={"type": "array", "items": {}},
    queues={"type": "object"},
)
INSPECT_LISTING = _obj(
    ("clients",),
    totalCount={**_INTEGER, "description": "clients remembered (mmc's plugin)"},
    clients=_list(INSPECT_CLIENT),
)
DYNSEC_DETAILS = _obj(
    ("clientCount", "groupCount", "roleCount", "changeIndex"),
    clientCount=_INTEGER,
    groupCount=_INTEGER,
    roleCount=_INTEGER,
    changeIndex={**_INTEGER, "description": "Grows with every change the plugin saves"},
)
ANONYMOUS_GROUP = _obj(("groupname",), groupname={**_STRING, "description": "'' when none"})
DYNSEC_DOCUMENT = _obj(
    ("defaultACLAccess", "anonymousGroup", "roles", "groups", "clients"),
    defaultACLAccess=_list(DEFAULT_ACL),
    anonymousGroup={**_STRING, "nullable": True},
    roles=_list(DYNSEC_ROLE),
    groups=_list(_obj(("groupname",), groupname=_STRING, **_TEXT, roles=_list(_ref("rolename")))),
    clients=_list(DYNSEC_CLIENT),
)
_COMMANDS = _list(_obj(("command",), command=_STRING))
IMPORT_REPORT = _obj(
    ("changed", "dryRun", "commands", "errors", "skipped", "withoutPassword"),
    changed=_BOOLEAN,
    dryRun=_BOOLEAN,
    commands={**_COMMANDS, "description": "Sent (or, with dryRun, to send); no passwords"},
    errors=_list(_obj(("command", "error"), command=_STRING, error=_STRING)),
    skipped=_list({"type": "object"}),
    withoutPassword={
        **_list(_STRING),
        "description": "New clients created without a password (none in the document)",
    },
)
# A plugin response entry; ``error`` is in it only in the envelope's answer (the single
# command endpoint answers an error in the error shape).
COMMAND_ANSWER = _obj(
    ("command",),
    command=_STRING,
    data={"type": "object"},
    error=_STRING,
    correlationData={"description": "As sent"},
)
COMMAND_ANSWERS = _obj(("responses",), responses=_list(COMMAND_ANSWER))
APPLY_ANSWER = {
    "type": "object",
    "description": "Broker id -> its answer: status 200 with the responses or the import "
    "report, or an error in the error shape",
    "additionalProperties": _obj(("status",), status=_INTEGER),
}
