"""Query strings of the inspect API (``/api/projects/{p}/brokers/{b}/clients``)."""

from __future__ import annotations

from marshmallow import fields, validate

from mmc.schemas.base import InputSchema


class ListClientsQuerySchema(InputSchema):
    verbose = fields.Boolean(
        load_default=False,
        metadata={
            "description": "every field of each client, not only clientid/username/connected"
        },
    )
    count = fields.Integer(
        load_default=-1, validate=validate.Range(min=-1), metadata={"description": "-1: all"}
    )
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


list_clients_query_schema = ListClientsQuerySchema()
