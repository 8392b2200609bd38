"""Frames of the WebSocket channel (``GET /api/ws``, the MMC UI's protocol) and the fields
of its requests. Loaded with mmc.web.body.load: a failure is an InvalidInput with
marshmallow's messages, answered on the socket as an error frame."""

from __future__ import annotations

from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from mmc.broker_strings import check_name
from mmc.schemas.base import InputSchema
from mmc.schemas.connections import ID_MESSAGE, ID_PATTERN

FRAME_TYPES = ("request", "command", "ping")
MAX_ID_LENGTH = 128


class FrameId(fields.Field[str | int]):
    """The client's id of a request or command, echoed as ``requestId``: a string or an
    integer (the UI numbers them), never anything a reply could not carry back as is."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str | int:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValidationError("Must be a string or an integer.")
        if isinstance(value, str) and not 0 < len(value) <= MAX_ID_LENGTH:
            raise ValidationError(f"Length must be between 1 and {MAX_ID_LENGTH}.")
        if isinstance(value, int) and not -(2**53) < value < 2**53:
            raise ValidationError("Must be exact in JavaScript (below 2**53).")
        return value


class FrameSchema(Schema):
    """Any frame from the client; a request's own fields stay in it (INCLUDE)."""

    class Meta:
        unknown = INCLUDE

    id = FrameId()
    type = fields.String(required=True, validate=validate.OneOf(FRAME_TYPES))
    request = fields.String(validate=validate.Length(min=1, max=64))
    api = fields.String(validate=validate.Length(min=1, max=64))
    # A command's body (an object); a request may carry a string of the same name: the
    # UI's disconnectClient request sends ``command: "disconnectClient"`` beside
    # ``request``. Checked by type in _complete.
    command = fields.Raw()
    # mmc's extension: the connection id a command goes to, instead of the socket's broker.
    broker = fields.String(validate=validate.Length(min=1, max=256))

    @validates_schema
    def _complete(self, data: dict[str, Any], **kwargs: Any) -> None:
        kind = data.get("type")
        needed = {"request": ("id", "request"), "command": ("id", "api", "command")}
        missing = [name for name in needed.get(str(kind), ()) if name not in data]
        if missing:
            raise ValidationError({name: ["Missing data for required field."] for name in missing})
        if kind == "command":
            body = data["command"]
            if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
                raise ValidationError({"command": ["Not a valid mapping type."]})
            name = body.get("command")
            if not isinstance(name, str) or not 0 < len(name) <= 64:
                raise ValidationError({"command": {"command": ["Must be a command name."]}})


class BrokerNameSchema(InputSchema):
    broker_name = fields.String(
        data_key="brokerName", required=True, validate=validate.Length(min=1, max=256)
    )


class OptionalBrokerNameSchema(InputSchema):
    broker_name = fields.String(data_key="brokerName", validate=validate.Length(min=1, max=256))


class ConnectionIdSchema(InputSchema):
    # A connection's id as the Connections API admits it: what cannot be one is refused
    # here, before it reaches the store (whose driver cannot even encode a lone surrogate).
    connection_id = fields.String(
        data_key="connectionId",
        required=True,
        validate=validate.Regexp(ID_PATTERN, error=ID_MESSAGE),
    )
    oneshot = fields.Boolean()


class ConnectionBodySchema(InputSchema):
    """``{connection}``: the connection itself is loaded by the REST route's schema."""

    connection = fields.Dict(required=True)


class ModifyConnectionSchema(ConnectionBodySchema):
    old_connection_id = fields.String(
        data_key="oldConnectionId",
        required=True,
        validate=validate.Regexp(ID_PATTERN, error=ID_MESSAGE),
    )


class ClientIdSchema(InputSchema):
    client_id = fields.String(
        data_key="clientId", required=True, validate=[validate.Length(min=1), check_name]
    )


class SettingsValuesSchema(Schema):
    # What mmc's UI settings are; a setting mmc does not have is refused, not ignored.
    allow_tracking_usage_data = fields.Boolean(data_key="allowTrackingUsageData")
    topic_tree_enabled = fields.Boolean(data_key="topicTreeEnabled")


class UpdateSettingsSchema(InputSchema):
    settings = fields.Nested(SettingsValuesSchema, required=True)


frame_schema = FrameSchema()
broker_name_schema = BrokerNameSchema()
optional_broker_name_schema = OptionalBrokerNameSchema()
connection_id_schema = ConnectionIdSchema()
connection_body_schema = ConnectionBodySchema()
modify_connection_schema = ModifyConnectionSchema()
client_id_schema = ClientIdSchema()
update_settings_schema = UpdateSettingsSchema()
