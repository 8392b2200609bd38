"""GET /api/events: server-sent events (connections, system_status, clients, audit).

The route needs MONITOR (the least any event type needs); each type then requires what
the REST route showing the same requires (mmc.services.events.TYPE_PERMISSIONS): asking
for a type one may not see is 403, leaving ``types`` out selects every type one may see.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import ValidationError, fields, validate

from mmc.appkeys import events_key, identity_key, request_id_key, settings_key
from mmc.auth.permissions import Permission, allowed
from mmc.errors import InvalidInput, NotAllowed
from mmc.schemas.base import InputSchema
from mmc.services.events import HEARTBEAT, TYPE_PERMISSIONS, Selection
from mmc.web import cors
from mmc.web.routing import Routes

routes = Routes()

_TYPES = ", ".join(TYPE_PERMISSIONS)


def _check_types(value: str) -> None:
    unknown = sorted({t.strip() for t in value.split(",")} - set(TYPE_PERMISSIONS))
    if unknown:
        raise ValidationError(f"unknown event types: {', '.join(unknown)} (known: {_TYPES})")


class EventsQuerySchema(InputSchema):
    types = fields.String(
        validate=_check_types,
        metadata={"description": f"comma-separated event types ({_TYPES}); default: all allowed"},
    )
    broker_id = fields.String(
        data_key="brokerId",
        validate=validate.Length(min=1),
        metadata={"description": "only this broker's events"},
    )
    project_id = fields.String(
        data_key="projectId",
        validate=validate.Length(min=1),
        metadata={"description": "only this project's events"},
    )
    once = fields.Boolean(
        load_default=False,
        metadata={
            "description": "send the snapshot (or the events missed since Last-Event-ID) "
            "and end the stream"
        },
    )


_query_schema = EventsQuerySchema()


@routes.get(
    "/api/events",
    Permission.MONITOR,
    "Live events (server-sent events): connections, system_status, clients, audit",
    query=_query_schema,
    responses={200: ("text/event-stream", "An endless stream of server-sent events")},
    description=(
        "Each event has an id, an event name and JSON data. `connections` (readers): the "
        "list as GET /api/connections answers it, first as a snapshot, then on every "
        "change. `system_status` (monitoring): a broker's $SYS values, at most once a "
        "second per broker, the current ones first. `clients` (readers): a client "
        "connected to or disconnected from a broker running mmc's plugin. `audit` "
        "(admins): each audit entry as it is written. Reconnect with Last-Event-ID to get "
        "the events missed, or a `reset` event and a new snapshot when they are no longer "
        "kept. Comment lines keep an idle stream open."
    ),
)
async def events(request: web.Request, query: dict[str, Any]) -> web.StreamResponse:
    identity = request[identity_key]
    may = {t for t, p in TYPE_PERMISSIONS.items() if allowed(identity.roles, p)}
    if "types" in query:
        wanted = {t.strip() for t in query["types"].split(",")}
        if not wanted <= may:
            raise NotAllowed("Not allowed", info={"types": sorted(wanted - may)})
    else:
        wanted = may
    if not wanted:
        raise InvalidInput("Invalid input", info={"types": ["no event type selected"]})
    selection = Selection(
        frozenset(wanted), broker_id=query.get("broker_id"), project_id=query.get("project_id")
    )
    hub = request.app[events_key]
    subscriber, first = hub.subscribe(
        selection,
        f"{identity.username} (request {request[request_id_key]})",
        request.headers.get("Last-Event-ID", "").strip() or None,
    )
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            # nginx: pass each event on at once instead of buffering the answer.
            "X-Accel-Buffering": "no",
            # Set here: the middlewares' headers come after a streamed answer's head.
            "X-Request-ID": request[request_id_key],
            "X-Content-Type-Options": "nosniff",
        }
    )
    transport = request.transport

    def abort() -> None:
        # A reader that stopped reading leaves write() waiting for the socket to
        # drain: close it under the stream.
        if transport is not None:
            transport.abort()

    subscriber.on_drop = abort
    cors.decorate(request, response.headers)
    try:
        await response.prepare(request)
        if first:
            await response.write(b"".join(first))
        if query["once"]:
            await response.write_eof()
            return response
        heartbeat = request.app[settings_key].events_heartbeat
        while True:
            frames = await subscriber.next(heartbeat)
            if frames is None:
                break
            await response.write(b"".join(frames) if frames else HEARTBEAT)
        await response.write_eof()
    except ConnectionResetError:
        # The reader went away (or was dropped): nothing more to say.
        pass
    finally:
        hub.unsubscribe(subscriber)
    return response
