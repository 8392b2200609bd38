"""The MMC UI's WebSocket protocol, one ``Channel`` per socket (served by mmc.api.ws).

Frames in: requests ``{id, type:"request", request, ...}``, commands ``{id, type:"command",
api, command:{command, ...}}`` (mmc's extension: ``broker``, a connection id), pings
``{type:"ping"}`` (no answer). Frames out: ``{type:"response", requestId, response}``,
``{type:"response", requestId, command, data, done:true}``, either one with a truthy
``error`` (text; mmc adds its ``code`` and, for invalid input, ``info``), and events
``{type:"event", event:{type, payload}}``.

Every request and command is held to what the REST route doing the same requires
(permission, validation, mmc's own-access guard) and goes through the same code: the
connections service, the dynamic-security passthrough (``run_command``), the inspect,
license and client-control wrappers, and so the same coalescing control channel. Those
that change something are written to the audit trail (method ``WS``, route
``/api/ws <request>`` or ``/api/ws <api>/<command>``). Each one runs in a task of its own
and is answered when it completes; at most ``MAX_IN_FLIGHT`` at once per socket, beyond
that the socket is not read (TCP pushes back on the client).

Commands go to the socket's broker (``connectToBroker``); before that, to the one its
session selected last, else to the first connected one: the UI's pages send their first
commands as soon as the socket opens. An error about a feature the broker (or mmc) does not
have carries "Client: Timeout" in its text, the one sign by which the UI shows a page as
"not available" rather than empty (``UNAVAILABLE_MARK``).

Events come from the event hub (mmc.services.events) through a bounded per-socket queue:
``connections`` once the socket has had its first ``getBrokerConnections`` answer (the UI
drops one that comes earlier), ``system_status`` ``{_name, $SYS}`` of the socket's broker
(``connectToBroker``). A socket whose queue fills up is closed, the reason logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from mmc.appkeys import (
    connections_key,
    events_key,
    request_id_key,
    settings_key,
    ui_selections_key,
)
from mmc.auth.identity import Identity
from mmc.auth.permissions import Permission, allowed
from mmc.brokers import client_control, inspect, license
from mmc.brokers.control import error_for
from mmc.brokers.link import BrokerLink
from mmc.brokers.outcome import is_read
from mmc.brokers.sys_tree import fold
from mmc.errors import InvalidInput, MmcError, NotAllowed, NotFound
from mmc.schemas import client_control as cc_schemas
from mmc.schemas import ws as schemas
from mmc.schemas.connections import connection_schema, connection_test_schema
from mmc.schemas.dynsec import CommandSchema
from mmc.schemas.inspect import list_clients_query_schema
from mmc.services.connections import ConnectionService
from mmc.services.events import CONNECTIONS, SYSTEM_STATUS, TYPE_PERMISSIONS, Event, Selection
from mmc.services.events import Subscriber as HubSubscriber
from mmc.services.ui import default_selection, find
from mmc.store.audit import AuditEntry
from mmc.web import audit
from mmc.web.auth import SESSION_COOKIE
from mmc.web.body import load
from mmc.web.middlewares import status_of
from mmc.web.own_user import Guard, run_command
from mmc.web.proxy import client_address

log = logging.getLogger(__name__)

ROUTE = "/api/ws"
# Commands and requests of one socket being worked on at once; the socket is not read
# while this many are.
MAX_IN_FLIGHT = 256
# What the UI's settings page shows; mmc collects no usage data and has no topic tree.
SETTINGS: dict[str, Any] = {"allowTrackingUsageData": False, "topicTreeEnabled": False}
# The Cedalo MMC's premium features: asked for by the UI on every page load.
PREMIUM_REQUESTS = frozenset(
    {
        "listClusters",
        "getClusters",
        "getCluster",
        "listTestCollections",
        "listStreams",
        "listPlugins",
        "getPlugins",
    }
)
# Requests of the UI's premium pages: "cluster-management/getClusters" and the like.
PREMIUM_REQUEST_PREFIXES = ("cluster-management/",)
PREMIUM_REQUESTS_MORE = frozenset(
    {
        "listTests",
        "getTest",
        "getTestCollection",
        "exportTestCollection",
        "runTest",
        "runTestCollection",
        "sendTestRequest",
        "loadPlugin",
        "unloadPlugin",
        "setPluginStatusAtNextStartup",
        "restartBroker",
    }
)
PREMIUM_APIS = frozenset(
    {"cluster-management", "stream-processing", "cedalo/stream-processing", "cedalo/ha"}
)
# The UI tells "this broker lacks the feature" (its page then says "not available") from
# "supported, nothing in it" by the error's text alone: its reducer looks for
# "Client: Timeout", which the Cedalo MMC's backend answers when a broker does not reply
# on a plugin's API. mmc knows within the probe time and says so, with that mark.
UNAVAILABLE_MARK = "BaseMosquittoClient: Timeout"
_NOT_ENABLED = frozenset({inspect.NOT_ENABLED, client_control.NOT_ENABLED})


class Unavailable(NotFound):
    """A feature this broker (or mmc: the Cedalo MMC's premium ones) does not have."""


def _is_premium_request(name: str) -> bool:
    return (
        name in PREMIUM_REQUESTS
        or name in PREMIUM_REQUESTS_MORE
        or name.startswith(PREMIUM_REQUEST_PREFIXES)
    )


def _unavailable(error: MmcError) -> bool:
    if isinstance(error, Unavailable):
        return True
    if not isinstance(error, NotFound):
        return False
    # The link's capability check (info names the feature) or a plugin's endpoint gone.
    feature = isinstance(error.info, Mapping) and "feature" in error.info
    return feature or error.message in _NOT_ENABLED


_dynsec_command_schema = CommandSchema()


def _error_text(error: MmcError) -> str:
    if isinstance(error, InvalidInput) and error.info:
        return f"{error.message}: {json.dumps(error.info, sort_keys=True)}"
    if _unavailable(error):
        return f"{error.message} ({UNAVAILABLE_MARK}: not available)"
    return error.message


class Subscriber(HubSubscriber):
    """The hub's bounded queue, holding this socket's event frames (text, encoded)."""

    def __init__(self, channel: Channel, selection: Selection, limit: int, name: str) -> None:
        super().__init__(channel.app[events_key], selection, limit, name)
        self._channel = channel

    def render(self, event: Event) -> bytes | None:
        if event.type not in self.selection.types:
            return None
        if event.type == CONNECTIONS:
            if not self._channel.connections_ready:
                return None
            # The list as the hub encoded it once, not once per socket.
            return _event_frame_text(CONNECTIONS, event.text).encode()
        if event.type == SYSTEM_STATUS:
            if event.broker_id is None or event.broker_id != self._channel.selected:
                return None
            payload = {"_name": event.data["name"], **event.data["topics"]}
            return _event_frame(SYSTEM_STATUS, payload).encode()
        return None


def _event_frame(type_: str, payload: Any) -> str:
    return _event_frame_text(type_, json.dumps(payload))


def _event_frame_text(type_: str, payload_json: str) -> str:
    return (
        f'{{"type": "event", "event": {{"type": {json.dumps(type_)}, "payload": {payload_json}}}}}'
    )


def system_status(link: BrokerLink) -> dict[str, Any]:
    """The UI's ``system_status`` payload: ``{_name, $SYS: {...}}`` (string leaves)."""
    return {"_name": link.record.name, **fold(link.sys_values)}


@dataclass(frozen=True)
class Request:
    """One request of the protocol: what it requires, its fields' schema, whether it
    changes something (audited), and what it does."""

    permission: Permission
    schema: Any | None
    run: Callable[[Channel, dict[str, Any]], Awaitable[Any]]
    changes: bool = False


class Channel:
    """One socket: its identity, the broker it selected, its event subscription and the
    requests and commands it has in flight."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, identity: Identity):
        self.request = request
        self.app = request.app
        self.ws = ws
        self.identity = identity
        self.service: ConnectionService = request.app[connections_key]
        # The connection id of the broker its commands and system_status follow.
        self.selected: str | None = None
        self.connections_ready = False
        self._send_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._name = f"{identity.username} (websocket {request[request_id_key]})"
        settings = request.app[settings_key]
        types = frozenset(
            t for t in (CONNECTIONS, SYSTEM_STATUS) if allowed(identity.roles, TYPE_PERMISSIONS[t])
        )
        self.subscriber = Subscriber(self, Selection(types), settings.events_queue, self._name)

    # -- running ----------------------------------------------------------------------

    async def run(self) -> None:
        hub = self.app[events_key]
        transport = self.request.transport

        def abort() -> None:
            # Dropped as too slow: it is not reading, so a close frame would not get
            # through either.
            if transport is not None:
                transport.abort()

        self.subscriber.on_drop = abort
        hub.attach(self.subscriber)
        events = asyncio.get_running_loop().create_task(self._events(), name="mmc-ws-events")
        try:
            async for message in self.ws:
                if message.type is WSMsgType.TEXT:
                    try:
                        await self._frame(message.data)
                    except Exception:
                        # One frame's failure is not the socket's: logged, answered.
                        log.exception("websocket frame of %s failed", self._name)
                        await self._send_error(None, MmcError())
                elif message.type is WSMsgType.BINARY:
                    await self._send_error(None, InvalidInput("Frames must be JSON text"))
        finally:
            hub.unsubscribe(self.subscriber)
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await events
            # What was sent to a broker finishes (its answer has nowhere to go).
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _events(self) -> None:
        heartbeat = self.app[settings_key].events_heartbeat
        while True:
            frames = await self.subscriber.next(heartbeat)
            if frames is None:
                reason = (self.subscriber.closed or "closed").encode()[:120]
                with contextlib.suppress(Exception):
                    await self.ws.close(code=WSCloseCode.GOING_AWAY, message=reason)
                return
            for data in frames:
                await self._send_text(data.decode())

    async def _send_text(self, text: str) -> None:
        if self.ws.closed:
            return
        async with self._send_lock:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_str(text)

    async def send(self, frame: Mapping[str, Any]) -> None:
        await self._send_text(json.dumps(frame))

    async def _send_error(
        self, request_id: Any, error: MmcError, extra: Mapping[str, Any] | None = None
    ) -> None:
        frame: dict[str, Any] = {
            "type": "response",
            "requestId": request_id,
            **(extra or {}),
            "error": _error_text(error),
            "code": error.code,
        }
        if isinstance(error, InvalidInput) and error.info is not None:
            frame["info"] = error.info
        await self.send(frame)

    async def _frame(self, text: str) -> None:
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):
            # RecursionError: nested deeper than the parser goes ("[[[[...").
            await self._send_error(None, InvalidInput("Frame is not JSON"))
            return
        request_id = document.get("id") if isinstance(document, dict) else None
        try:
            frame = load(schemas.frame_schema, document)
        except InvalidInput as exc:
            # Echo the id only when it could be the client's (a string or a number).
            echo = request_id if isinstance(request_id, str | int) else None
            await self._send_error(echo, exc)
            return
        if frame["type"] == "ping":
            return
        await self._slots.acquire()
        work = self._request(frame) if frame["type"] == "request" else self._command(frame)
        task = asyncio.get_running_loop().create_task(work, name="mmc-ws-request")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    # -- auditing ---------------------------------------------------------------------

    async def _audit(
        self,
        what: str,
        target: dict[str, str],
        error: MmcError | None,
        started: float,
        request_id: Any,
    ) -> None:
        request = self.request
        entry = AuditEntry(
            request_id=f"{request[request_id_key]}:{request_id}"[:200],
            username=self.identity.username,
            auth_method=self.identity.method,
            client=client_address(request, self.app[settings_key].trusted_networks),
            method="WS",
            route=f"{ROUTE} {what}",
            target={k: v[: audit.MAX_TARGET_LENGTH] for k, v in target.items()},
            status=200 if error is None else status_of(error),
            error_code=None if error is None else error.code,
            duration_ms=round((time.perf_counter() - started) * 1000),
        )
        await audit.record(self.app, entry)

    def _require(self, permission: Permission) -> None:
        if not allowed(self.identity.roles, permission):
            raise NotAllowed()

    # -- requests ---------------------------------------------------------------------

    async def _request(self, frame: dict[str, Any]) -> None:
        name = frame["request"]
        request_id = frame["id"]
        spec = REQUESTS.get(name)
        if spec is None:
            refusal = (
                Unavailable(f"{name} is a premium feature of the Cedalo MMC: mmc does not offer it")
                if _is_premium_request(name)
                else NotFound(f"Unsupported request: {name}")
            )
            await self._send_error(request_id, refusal)
            return
        started = time.perf_counter()
        error: MmcError | None = None
        target: dict[str, str] = {}
        try:
            self._require(spec.permission)
            fields = load(spec.schema, frame) if spec.schema is not None else {}
            target = {k: v for k, v in _targets(fields).items() if v}
            response = await spec.run(self, fields)
        except MmcError as exc:
            error = exc
        except Exception:
            log.exception("websocket request %s of %s failed", name, self._name)
            error = MmcError()
        if spec.changes:
            await self._audit(name, target, error, started, request_id)
        if error is not None:
            await self._send_error(request_id, error)
            return
        await self.send({"type": "response", "requestId": request_id, "response": response})
        if name == "getBrokerConnections":
            self.connections_ready = True
        elif name == "connectToBroker" and self.selected is not None:
            link = self.service.pool.get(self.selected)
            if (
                link is not None
                and link.sys_values
                and SYSTEM_STATUS in self.subscriber.selection.types
            ):
                await self._send_text(_event_frame(SYSTEM_STATUS, system_status(link)))

    # -- commands ---------------------------------------------------------------------

    def _link(self, frame: dict[str, Any]) -> BrokerLink:
        connection_id = frame.get("broker") or self.selected or self._session_selection()
        if connection_id is None:
            raise InvalidInput(
                "No broker selected: send connectToBroker first, or name the connection "
                "in the command's broker field"
            )
        return self.service.pool.require_connected(connection_id)

    def _session_selection(self) -> str | None:
        """Before its connectToBroker, the broker a socket's commands go to: the one its
        session selected last, else the one the UI selects by itself. The UI's pages send
        their first commands as soon as the socket opens (a reload of /clients asks
        listClients before the page load selects a broker); the Cedalo MMC, with one
        broker connection per backend, answers them from that broker."""
        session_id = self.request.cookies.get(SESSION_COOKIE)
        if session_id is not None:
            wanted = self.app[ui_selections_key].selected(session_id)
            if wanted is not None and (link := find(self.service.pool, wanted)) is not None:
                return link.id
        link = default_selection(self.service.pool)
        return None if link is None else link.id

    async def _command(self, frame: dict[str, Any]) -> None:
        api: str = frame["api"]
        command: dict[str, Any] = frame["command"]
        name: str = command["command"]
        request_id = frame["id"]
        started = time.perf_counter()
        error: MmcError | None = None
        data: Any = None
        changes = not (api in ("cedalo/inspect", "cedalo/license") or is_read(command))
        target: dict[str, str] = {}
        try:
            handler = COMMANDS.get(api)
            if handler is None:
                if api in PREMIUM_APIS:
                    raise Unavailable(
                        f"{api} is a premium feature of the Cedalo MMC: mmc does not offer it"
                    )
                raise NotFound(f"Unsupported API: {api}")
            self._require(Permission.CONTROL if changes else Permission.READ)
            link = self._link(frame)
            target = {"brokerId": link.id, "projectId": link.record.project_id}
            data = await handler(self, link, command)
        except MmcError as exc:
            error = exc
        except Exception:
            log.exception("websocket command %s %s of %s failed", api, name, self._name)
            error = MmcError()
        if changes and api in COMMANDS:
            await self._audit(f"{api}/{name}", target, error, started, request_id)
        head = {"requestId": request_id, "command": name, "done": True}
        if error is not None:
            await self._send_error(request_id, error, head)
            return
        await self.send({"type": "response", **head, "data": data})


def _targets(fields: Mapping[str, Any]) -> dict[str, str]:
    """What a request names, as the audit trail's target."""
    out: dict[str, str] = {}
    connection = fields.get("connection")
    if isinstance(connection, Mapping) and isinstance(connection.get("id"), str):
        out["connectionId"] = connection["id"]
    for key, wire in (
        ("connection_id", "connectionId"),
        ("old_connection_id", "connectionId"),
        ("client_id", "clientId"),
    ):
        if isinstance(fields.get(key), str):
            out[wire] = fields[key]
    return out


# -------------------------------------------------------------------- the requests


def _by_name(channel: Channel, name: str) -> BrokerLink:
    for link in channel.service.pool:
        if link.record.name == name:
            return link
    raise NotFound(f"Broker {name} not found")


# What a monitoring viewer sees of a connection: what GET /api/projects/{p}/brokers shows
# it (no credentials, no TLS options). The UI's page load stops, and shows no broker at
# all, unless getBrokerConnections and getBrokerConfigurations succeed.
MONITOR_FIELDS = ("id", "name", "url", "projectId", "status")


def _visible(channel: Channel) -> list[dict[str, Any]]:
    listing = channel.service.listing()
    if allowed(channel.identity.roles, Permission.READ):
        return listing
    return [{k: c[k] for k in MONITOR_FIELDS if k in c} for c in listing]


async def _get_connections(channel: Channel, fields: dict[str, Any]) -> Any:
    return _visible(channel)


async def _get_configurations(channel: Channel, fields: dict[str, Any]) -> Any:
    return {"connections": _visible(channel)}


async def _get_settings(channel: Channel, fields: dict[str, Any]) -> Any:
    return dict(SETTINGS)


async def _update_settings(channel: Channel, fields: dict[str, Any]) -> Any:
    wanted = fields["settings"]
    if wanted.get("allow_tracking_usage_data"):
        raise InvalidInput("mmc collects no usage data: allowTrackingUsageData stays false")
    if wanted.get("topic_tree_enabled"):
        raise InvalidInput("mmc has no topic tree: topicTreeEnabled stays false")
    return dict(SETTINGS)


async def _connect_to_broker(channel: Channel, fields: dict[str, Any]) -> Any:
    channel.selected = _by_name(channel, fields["broker_name"]).id
    # The UI's HTTP calls (GET /api/client-control/ping) follow the socket's selection.
    if (session_id := channel.request.cookies.get(SESSION_COOKIE)) is not None:
        channel.app[ui_selections_key].select(session_id, channel.selected)
    return None


async def _disconnect_from_broker(channel: Channel, fields: dict[str, Any]) -> Any:
    name = fields.get("broker_name")
    if name is None or (
        channel.selected is not None
        and (link := channel.service.pool.get(channel.selected)) is not None
        and link.record.name == name
    ):
        channel.selected = None
    return None


async def _connect_server(channel: Channel, fields: dict[str, Any]) -> Any:
    return await channel.service.connect(fields["connection_id"])


async def _disconnect_server(channel: Channel, fields: dict[str, Any]) -> Any:
    return await channel.service.disconnect(fields["connection_id"])


async def _test_connection(channel: Channel, fields: dict[str, Any]) -> Any:
    return await channel.service.test(load(connection_test_schema, fields["connection"]))


async def _create_connection(channel: Channel, fields: dict[str, Any]) -> Any:
    outcome = await channel.service.create(load(connection_schema, fields["connection"]))
    return outcome.connections


async def _modify_connection(channel: Channel, fields: dict[str, Any]) -> Any:
    old = fields["old_connection_id"]
    # As PUT /api/connections/{id}: the body's id defaults to the one it changes.
    body = load(connection_schema, {"id": old, **fields["connection"]})
    outcome = await channel.service.update(old, body)
    return outcome.connections


async def _delete_connection(channel: Channel, fields: dict[str, Any]) -> Any:
    return await channel.service.delete(fields["connection_id"])


async def _disconnect_client(channel: Channel, fields: dict[str, Any]) -> Any:
    link = channel._link({})
    await client_control.disconnect(link, fields["client_id"])
    return None


REQUESTS: dict[str, Request] = {
    "getBrokerConnections": Request(Permission.MONITOR, None, _get_connections),
    "getBrokerConfigurations": Request(Permission.MONITOR, None, _get_configurations),
    "getSettings": Request(Permission.SELF, None, _get_settings),
    "updateSettings": Request(
        Permission.ADMIN, schemas.update_settings_schema, _update_settings, changes=True
    ),
    "connectToBroker": Request(Permission.MONITOR, schemas.broker_name_schema, _connect_to_broker),
    "disconnectFromBroker": Request(
        Permission.MONITOR, schemas.optional_broker_name_schema, _disconnect_from_broker
    ),
    "connectServerToBroker": Request(
        Permission.CONNECTIONS, schemas.connection_id_schema, _connect_server, changes=True
    ),
    "disconnectServerFromBroker": Request(
        Permission.CONNECTIONS, schemas.connection_id_schema, _disconnect_server, changes=True
    ),
    "testConnection": Request(
        Permission.CONNECTIONS, schemas.connection_body_schema, _test_connection, changes=True
    ),
    "createConnection": Request(
        Permission.CONNECTIONS, schemas.connection_body_schema, _create_connection, changes=True
    ),
    "modifyConnection": Request(
        Permission.CONNECTIONS, schemas.modify_connection_schema, _modify_connection, changes=True
    ),
    "deleteConnection": Request(
        Permission.CONNECTIONS, schemas.connection_id_schema, _delete_connection, changes=True
    ),
    "disconnectClient": Request(
        Permission.CONTROL, schemas.client_id_schema, _disconnect_client, changes=True
    ),
}


# -------------------------------------------------------------------- the commands

Command = Callable[[Channel, BrokerLink, dict[str, Any]], Awaitable[Any]]


async def _dynsec(channel: Channel, link: BrokerLink, command: dict[str, Any]) -> Any:
    body = load(_dynsec_command_schema, command)
    # The REST passthrough's path: own-access guard, coalescing channel (never forced).
    entry = await run_command(Guard.of(channel.request, False), link, body)
    if "error" in entry:
        raise error_for(body["command"], str(entry["error"]))
    return entry.get("data")


def _unsupported(api: str, name: str) -> MmcError:
    return NotFound(f"Unsupported command of {api}: {name}")


async def _inspect(channel: Channel, link: BrokerLink, command: dict[str, Any]) -> Any:
    name = command["command"]
    if name == "listClients":
        query = load(list_clients_query_schema, command)
        return await inspect.list_clients(link, **query)
    if name == "getClient":
        return await inspect.get_client(
            link, load(cc_schemas.disconnect_schema, command)["clientid"]
        )
    raise _unsupported(inspect.API, name)


async def _license(channel: Channel, link: BrokerLink, command: dict[str, Any]) -> Any:
    if command["command"] != "getLicenseInformation":
        raise _unsupported(license.API, command["command"])
    return await license.raw_information(link)


async def _client_control(channel: Channel, link: BrokerLink, command: dict[str, Any]) -> Any:
    name = command["command"]
    if name == "disconnectClient":
        body = load(cc_schemas.disconnect_schema, command)
        await client_control.disconnect(link, body["clientid"])
    elif name == "subscribeClient":
        body = load(cc_schemas.subscribe_schema, command)
        await client_control.subscribe(
            link, body["clientid"], body["topic"], body["qos"], body.get("options")
        )
    elif name == "unsubscribeClient":
        body = load(cc_schemas.unsubscribe_schema, command)
        await client_control.unsubscribe(link, body["clientid"], body["topic"])
    else:
        raise _unsupported(client_control.API, name)
    return {}


COMMANDS: dict[str, Command] = {
    "dynamic-security": _dynsec,
    inspect.API: _inspect,
    license.API: _license,
    client_control.API: _client_control,
}
