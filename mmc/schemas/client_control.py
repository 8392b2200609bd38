"""Request bodies of the client-control API (``/client-control/disconnect|subscribe|unsubscribe``).

Wire names are the seed's: ``clientid``, ``topic``, ``qos`` and snake_case options.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate

MAX_UTF8_BYTES = 65535
# MQTT forbids U+0000; mosquitto also refuses the other control characters.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
SEND_RETAIN = ("always", "new", "never", "null")


def _mqtt_string(value: str) -> None:
    if _CONTROL_CHARS.search(value):
        raise ValidationError("Must not contain control characters.")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Must be valid UTF-8 (no lone surrogates).") from None
    if len(encoded) > MAX_UTF8_BYTES:
        raise ValidationError(f"Must be at most {MAX_UTF8_BYTES} bytes in UTF-8.")


def _topic_filter(value: str) -> None:
    """A valid MQTT topic filter: '#' only as the whole last level, '+' only as a whole level."""
    levels = value.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValidationError("'#' must be the whole last level of the topic filter.")
        if "+" in level and level != "+":
            raise ValidationError("'+' must be a whole level of the topic filter.")


class _Qos(fields.Field[int]):
    """0, 1 or 2; the seed types it as a number, so 1.0 is 1 (but true is not)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value not in (0, 1, 2):
            raise ValidationError("Must be one of: 0, 1, 2.")
        return int(value)


class ClientIdSchema(Schema):
    clientid = fields.String(required=True, validate=[validate.Length(min=1), _mqtt_string])


class TopicSchema(ClientIdSchema):
    topic = fields.String(
        required=True, validate=[validate.Length(min=1), _mqtt_string, _topic_filter]
    )


class SubscribeOptionsSchema(Schema):
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
    qos = _Qos(required=True)
    options = fields.Nested(SubscribeOptionsSchema, allow_none=True)


disconnect_schema = ClientIdSchema()
subscribe_schema = SubscribeSchema()
unsubscribe_schema = TopicSchema()
