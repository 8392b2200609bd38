"""Request bodies of the client-control API (``/client-control/disconnect|subscribe|unsubscribe``).

Wire names are the seed's: ``clientid``, ``topic``, ``qos`` and snake_case options.

The seed (Client Control) requires nothing: a field the operation can do without has a
default (``qos`` 0, no ``options``: the MQTT defaults); ``clientid`` and ``topic`` stay
required, since there is nothing to disconnect or (un)subscribe without them. Fields mmc
does not use are ignored (mmc.schemas.base).
"""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, post_load, validate

from mmc.broker_strings import check_name, check_topic
from mmc.schemas.base import InputSchema

SEND_RETAIN = ("always", "new", "never", "null")


class _Qos(fields.Field[int]):
    """0, 1 or 2; the seed types it as a number, so 1.0 is 1 (but true is not)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value not in (0, 1, 2):
            raise ValidationError("Must be one of: 0, 1, 2.")
        return int(value)


class ClientIdSchema(InputSchema):
    clientid = fields.String(required=True, validate=[validate.Length(min=1), check_name])


class TopicSchema(ClientIdSchema):
    topic = fields.String(required=True, validate=[validate.Length(min=1), check_topic])


class SubscribeOptionsSchema(InputSchema):
    no_local = fields.Boolean()
    retain_as_published = fields.Boolean()
    # The seed lists the string "null"; JSON null is taken to mean the same: the default.
    send_retain = fields.String(allow_none=True, validate=validate.OneOf(SEND_RETAIN))

    @post_load
    def _drop_defaults(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if data.get("send_retain") in (None, "null"):
            data.pop("send_retain", None)
        return data


class SubscribeSchema(TopicSchema):
    # Missing: 0, the MQTT default; the seed does not require it.
    qos = _Qos(load_default=0)
    options = fields.Nested(SubscribeOptionsSchema, allow_none=True)


disconnect_schema = ClientIdSchema()
subscribe_schema = SubscribeSchema()
unsubscribe_schema = TopicSchema()
