"""The project object of the Projects API: ``{id, name, description?}``."""

from __future__ import annotations

from marshmallow import fields, validate

from mmc.schemas.base import InputSchema
from mmc.schemas.connections import ID_MESSAGE, ID_PATTERN, _printable


class ProjectSchema(InputSchema):
    # Optional on POST (a new id is made up), ignored-or-checked on PUT.
    id = fields.String(validate=validate.Regexp(ID_PATTERN, error=ID_MESSAGE))
    name = fields.String(required=True, validate=[validate.Length(min=1, max=128), _printable])
    description = fields.String(allow_none=True, validate=validate.Length(max=1024))


project_schema = ProjectSchema()
