"""The connection object of the Connections API, as clients send it."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from marshmallow import ValidationError, fields, post_load, pre_load, validate, validates

from mmc.endpoint import DEFAULT_PORTS
from mmc.schemas.base import InputSchema

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ID_MESSAGE = (
    "Must be 1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit."
)
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _printable(value: str) -> None:
    if _CONTROL_CHARS.search(value):
        raise ValidationError("Must not contain control characters.")


class BlobSchema(InputSchema):
    """``{data, encoding: "base64"}``; the seeds' typo ``endoding`` is accepted too."""

    data = fields.String(validate=validate.Length(min=1, max=256 * 1024))
    encoding = fields.String(load_default="base64", validate=validate.OneOf(["base64"]))
    # What the API returns beside the data; accepted so a read object can be sent back.
    subject = fields.String(load_only=True)
    not_after = fields.String(data_key="notAfter", load_only=True)
    fingerprint_sha256 = fields.String(data_key="fingerprintSha256", load_only=True)

    @pre_load
    def _endoding_alias(self, data: Any, **kwargs: Any) -> Any:
        if isinstance(data, dict) and "endoding" in data:
            data = dict(data)
            typo = data.pop("endoding")
            data.setdefault("encoding", typo)
        return data

    @post_load
    def _keep(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k in ("data", "encoding")}


class CertificateBlobSchema(BlobSchema):
    data = fields.String(required=True, validate=validate.Length(min=1, max=256 * 1024))


class CredentialsSchema(InputSchema):
    username = fields.String(
        allow_none=True, validate=[validate.Length(min=1, max=1024), _printable]
    )
    password = fields.String(allow_none=True, validate=validate.Length(max=1024))
    client_id = fields.String(
        data_key="clientId", allow_none=True, validate=[validate.Length(min=1, max=256), _printable]
    )


class ConnectionSchema(InputSchema):
    id = fields.String(required=True, validate=validate.Regexp(ID_PATTERN, error=ID_MESSAGE))
    name = fields.String(required=True, validate=[validate.Length(min=1, max=128), _printable])
    url = fields.String(required=True, validate=validate.Length(min=1, max=2048))
    project_id = fields.String(
        data_key="projectId",
        load_default="default",
        validate=validate.Regexp(ID_PATTERN, error=ID_MESSAGE),
    )
    credentials = fields.Nested(CredentialsSchema, allow_none=True)
    ca = fields.Nested(CertificateBlobSchema, allow_none=True)
    cert = fields.Nested(CertificateBlobSchema, allow_none=True)
    key = fields.Nested(BlobSchema, allow_none=True)
    reject_unauthorized = fields.Boolean(data_key="rejectUnauthorized", load_default=True)
    # Read-only in responses; accepted and ignored so a read object can be sent back.
    status = fields.Raw(load_only=True)

    @validates("url")
    def _url(self, value: str, data_key: str, **kwargs: Any) -> None:
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            raise ValidationError("Not a valid URL (check the port).") from None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValidationError(
                f"Unsupported scheme {parts.scheme!r}: use one of {', '.join(DEFAULT_PORTS)}."
            )
        if not parts.hostname:
            raise ValidationError("The URL has no host.")
        if parts.username is not None or parts.password is not None:
            raise ValidationError("Put credentials in 'credentials', not in the URL.")
        if port == 0:
            raise ValidationError("Port 0 is not a valid broker port.")
        if parts.query or parts.fragment:
            raise ValidationError("The URL must not have a query or fragment.")
        if parts.path not in ("", "/") and scheme not in ("ws", "wss"):
            raise ValidationError("Only ws:// and wss:// URLs may have a path.")
        if _CONTROL_CHARS.search(value) or " " in value:
            raise ValidationError("The URL must not contain spaces or control characters.")

    @post_load
    def _drop_read_only(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data.pop("status", None)
        return data


connection_schema = ConnectionSchema()


class ConnectionTestSchema(ConnectionSchema):
    """A connection to try once (POST /api/connections/test): ``id`` and ``name`` may be
    left out; with the id of a stored connection, its secrets fill in what the body leaves
    out, as in a PUT."""

    id = fields.String(validate=validate.Regexp(ID_PATTERN, error=ID_MESSAGE))
    name = fields.String(validate=[validate.Length(min=1, max=128), _printable])


connection_test_schema = ConnectionTestSchema()
