"""The base of request bodies and query strings: fields mmc does not use are ignored.

A client that reads an object and sends it back (a connection with its ``status``, the
Cedalo MMC's ``noMetricsMode``) or a newer client with extra fields is not refused: none
of the seeds' request schemas says ``additionalProperties: false``. Wrong types and wrong
values of the fields mmc does use are still a 400.

marshmallow's ``unknown`` is per schema (a ``load(unknown=...)`` does not reach nested
schemas), so every request schema, nested ones included, derives from ``InputSchema``.
Bodies forwarded to a broker keep their own rule: a passthrough command is passed on as
sent (``INCLUDE``), an import document and the wrappers around commands and documents
refuse what they do not know (``RAISE``), since a key dropped there would silently be data
not imported or an option (``dryRun``) not applied (mmc.schemas.dynsec).
"""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema


class InputSchema(Schema):
    class Meta:
        unknown = EXCLUDE
