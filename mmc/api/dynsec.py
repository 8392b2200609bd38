"""Dynamic security over REST: one broker's clients, groups, roles and ACLs, the plugin's
protocol passed through, export/import, and the same applied to every broker of a project.

Under ``/api/projects/{projectId}/brokers/{brokerId}/dynsec``:

- ``clients``, ``groups``, ``roles``: GET (``offset``, ``count``, ``verbose``) and POST;
  ``{kind}/{name}``: GET, PATCH, DELETE; membership collections (``clients/{u}/roles``,
  ``clients/{u}/groups``, ``groups/{g}/clients``, ``groups/{g}/roles``, ``roles/{r}/acls``):
  POST adds, DELETE removes (key in the JSON body or the query string);
  ``clients/{u}/enable|disable|password|clientid``: PUT.
- ``default-acl`` and ``anonymous-group``: GET and PUT; ``details`` (GET, 2.1's getDetails).
- ``export`` (GET) and ``import`` (POST, ``?dryRun=true``).

Every change answers the resource as it is afterwards (201 on create); DELETE of a resource
answers 204. Bodies are validated before anything is sent to the broker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError, fields

from mmc.appkeys import connections_key
from mmc.auth.permissions import Permission
from mmc.broker_strings import ascii_lower, check_name
from mmc.brokers.control import error_for
from mmc.brokers.dynsec import Dynsec
from mmc.brokers.link import BrokerLink
from mmc.brokers.outcome import READS
from mmc.errors import BrokerUnavailable, InvalidInput, MmcError, NotFound
from mmc.schemas import dynsec as schemas
from mmc.schemas.responses import (
    ANONYMOUS_GROUP,
    APPLY_ANSWER,
    COMMAND_ANSWER,
    COMMAND_ANSWERS,
    DEFAULT_ACL_ACCESS,
    DYNSEC_CLIENT,
    DYNSEC_DETAILS,
    DYNSEC_DOCUMENT,
    DYNSEC_GROUP,
    DYNSEC_ROLE,
    IMPORT_REPORT,
    dynsec_listing,
)
from mmc.web.audit import mark_read
from mmc.web.brokers import connected_project_broker
from mmc.web.middlewares import error_body
from mmc.web.own_user import Guard, force_schema, own_usernames, passthrough, run_command
from mmc.web.routing import Routes

log = logging.getLogger(__name__)

routes = Routes()

BROKER = "/api/projects/{projectId}/brokers/{brokerId}"
BASE = f"{BROKER}/dynsec"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Change = Callable[[Dynsec, str, dict[str, Any]], Awaitable[None]]

OWN_ACCESS_NOTE = (
    "409 CONFLICT when the change would cut mmc off the broker (deleting, disabling or "
    "changing the client id of a user mmc logs in with, or taking away its "
    "$CONTROL/dynamic-security grants); ?force=true does it anyway."
)

# The path's broker, connected: resolved before the input is read (its 404/503 first).
LINK = {"link": connected_project_broker}

# Strict (unlike other query strings): a misspelt ?dryrun=true ignored would be a real import.
_dry_run_schema = Schema.from_dict({"dryRun": fields.Boolean(load_default=False)})()


def _path_name(request: web.Request, kind: Kind) -> str:
    """The ``{name}`` of the path, held to the rule of names in bodies (``a%00b`` is ``a``
    to the broker)."""
    name = request.match_info["name"]
    try:
        check_name(name)
    except ValidationError as exc:
        raise InvalidInput("Invalid input", info={kind.key: exc.messages}) from None
    return name


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


# ------------------------------------------------------- clients, groups, roles


@dataclass(frozen=True)
class Kind:
    plural: str
    key: str
    # What the plugin answers for one (OpenAPI; a JSON schema).
    entity: Mapping[str, Any]
    create_schema: Schema
    modify_schema: Schema
    list: Callable[..., Awaitable[dict[str, Any]]]
    get: Callable[[Dynsec, str], Awaitable[dict[str, Any]]]
    create: Callable[..., Awaitable[None]]
    modify: Callable[..., Awaitable[None]]
    delete: Callable[[Dynsec, str], Awaitable[None]]
    # The plugin's read of one, and where its answer holds it: what ``get`` sends.
    read: str
    answer_key: str

    def read_command(self, name: str) -> dict[str, Any]:
        return {"command": self.read, self.key: name}

    def from_answer(self, entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The entity in a ``read`` answer entry, or None when it does not hold one."""
        data = entry.get("data") if entry is not None and "error" not in entry else None
        found = data.get(self.answer_key) if isinstance(data, dict) else None
        return found if isinstance(found, dict) else None


CLIENTS = Kind(
    "clients",
    "username",
    DYNSEC_CLIENT,
    schemas.ClientCreateSchema(),
    schemas.ClientModifySchema(),
    Dynsec.list_clients,
    Dynsec.get_client,
    Dynsec.create_client,
    Dynsec.modify_client,
    Dynsec.delete_client,
    "getClient",
    "client",
)
GROUPS = Kind(
    "groups",
    "groupname",
    DYNSEC_GROUP,
    schemas.GroupCreateSchema(),
    schemas.GroupModifySchema(),
    Dynsec.list_groups,
    Dynsec.get_group,
    Dynsec.create_group,
    Dynsec.modify_group,
    Dynsec.delete_group,
    "getGroup",
    "group",
)
ROLES = Kind(
    "roles",
    "rolename",
    DYNSEC_ROLE,
    schemas.RoleCreateSchema(),
    schemas.RoleModifySchema(),
    Dynsec.list_roles,
    Dynsec.get_role,
    Dynsec.create_role,
    Dynsec.modify_role,
    Dynsec.delete_role,
    "getRole",
    "role",
)


@dataclass(frozen=True)
class Members:
    """A collection under a resource that POST adds to and DELETE removes from."""

    owner: Kind
    segment: str
    add_schema: Schema
    remove_schema: Schema
    add: Change
    remove: Change


MEMBERS = (
    Members(
        CLIENTS,
        "roles",
        schemas.RoleRefSchema(),
        schemas.RoleRefSchema(),
        lambda ds, user, b: ds.add_client_role(user, b["rolename"], b.get("priority")),
        lambda ds, user, b: ds.remove_client_role(user, b["rolename"]),
    ),
    Members(
        CLIENTS,
        "groups",
        schemas.GroupRefSchema(),
        schemas.GroupRefSchema(),
        lambda ds, user, b: ds.add_group_client(b["groupname"], user, b.get("priority")),
        lambda ds, user, b: ds.remove_group_client(b["groupname"], user),
    ),
    Members(
        GROUPS,
        "clients",
        schemas.ClientRefSchema(),
        schemas.ClientRefSchema(),
        lambda ds, group, b: ds.add_group_client(group, b["username"], b.get("priority")),
        lambda ds, group, b: ds.remove_group_client(group, b["username"]),
    ),
    Members(
        GROUPS,
        "roles",
        schemas.RoleRefSchema(),
        schemas.RoleRefSchema(),
        lambda ds, group, b: ds.add_group_role(group, b["rolename"], b.get("priority")),
        lambda ds, group, b: ds.remove_group_role(group, b["rolename"]),
    ),
    Members(
        ROLES,
        "acls",
        schemas.AclSchema(),
        schemas.AclKeySchema(),
        lambda ds, role, b: ds.add_role_acl(role, **b),
        lambda ds, role, b: ds.remove_role_acl(role, **b),
    ),
)

# PUT clients/{username}/<action>: the body schema (None: no body) and the change.
CLIENT_ACTIONS: dict[str, tuple[Schema | None, Change]] = {
    "enable": (None, lambda ds, user, _: ds.enable_client(user)),
    "disable": (None, lambda ds, user, _: ds.disable_client(user)),
    "password": (
        schemas.PasswordSchema(),
        lambda ds, user, b: ds.set_client_password(user, b["password"]),
    ),
    "clientid": (
        schemas.ClientIdSchema(),
        lambda ds, user, b: ds.set_client_id(user, b["clientid"]),
    ),
}


def _declare_change(
    method: str,
    path: str,
    kind: Kind,
    schema: Schema | None,
    change: Change,
    summary: str,
    *,
    or_query: bool = False,
) -> None:
    """A change of the named resource: validated, applied, answered with the resource as
    it is afterwards. ``or_query``: without a body, the fields may come in the query
    string (DELETE)."""

    async def handler(
        request: web.Request,
        link: BrokerLink,
        name: str,
        query: dict[str, Any],
        body: dict[str, Any] | None = None,
    ) -> web.Response:
        data = body or {}
        ds = await Dynsec.of(link)
        guard = Guard.of(request, query["force"])
        # The read-back goes in the change's own message where it can (Guard.change).
        entry = await guard.change(
            link, ds, lambda d: change(d, name, data), read_back=kind.read_command(name)
        )
        found = kind.from_answer(entry)
        return _json(found if found is not None else await kind.get(ds, name))

    routes.route(
        method,
        path,
        Permission.CONTROL,
        summary,
        before={**LINK, "name": functools.partial(_path_name, kind=kind)},
        body=schema,
        query=force_schema,
        body_in_query=or_query,
        responses={200: kind.entity},
        errors=(409,),
        description=OWN_ACCESS_NOTE,
    )(handler)


def _add_kind_routes(kind: Kind) -> None:
    collection = f"{BASE}/{kind.plural}"
    item = f"{collection}/{{name}}"

    one = kind.key.removesuffix("name")

    @routes.get(
        collection,
        Permission.READ,
        f"List {kind.plural}",
        before=LINK,
        query=schemas.list_query_schema,
        responses={200: dynsec_listing(kind.plural, kind.entity)},
    )
    async def list_(request: web.Request, link: BrokerLink, query: dict[str, Any]) -> web.Response:
        return _json(await kind.list(await Dynsec.of(link), **query))

    @routes.post(
        collection,
        Permission.CONTROL,
        f"Create a {one}",
        before=LINK,
        body=kind.create_schema,
        responses={201: kind.entity},
        errors=(409,),
    )
    async def create(request: web.Request, link: BrokerLink, body: dict[str, Any]) -> web.Response:
        ds = await Dynsec.of(link)
        await kind.create(ds, **body)
        return _json(await kind.get(ds, body[kind.key]), status=201)

    @routes.get(item, Permission.READ, f"One {one}", responses={200: kind.entity})
    async def get(request: web.Request) -> web.Response:
        link = connected_project_broker(request)
        return _json(await kind.get(await Dynsec.of(link), _path_name(request, kind)))

    @routes.delete(
        item,
        Permission.CONTROL,
        f"Delete a {one}",
        before={**LINK, "name": functools.partial(_path_name, kind=kind)},
        query=force_schema,
        responses={204: None},
        errors=(409,),
        description=OWN_ACCESS_NOTE,
    )
    async def delete(
        request: web.Request, link: BrokerLink, name: str, query: dict[str, Any]
    ) -> web.Response:
        guard = Guard.of(request, query["force"])
        await guard.change(link, await Dynsec.of(link), lambda d: kind.delete(d, name))
        return web.Response(status=204)

    async def modify(ds: Dynsec, name: str, data: dict[str, Any]) -> None:
        await kind.modify(ds, name, **data)

    _declare_change("PATCH", item, kind, kind.modify_schema, modify, f"Change a {one}")
    for members in MEMBERS:
        if members.owner is kind:
            path = f"{item}/{members.segment}"
            what = f"{members.segment} of a {one}"
            _declare_change(
                "POST", path, kind, members.add_schema, members.add, f"Add to the {what}"
            )
            _declare_change(
                "DELETE",
                path,
                kind,
                members.remove_schema,
                members.remove,
                f"Remove from the {what}",
                or_query=True,
            )


for _kind in (CLIENTS, GROUPS, ROLES):
    _add_kind_routes(_kind)
for _action, (_schema, _change) in CLIENT_ACTIONS.items():
    _declare_change(
        "PUT", f"{BASE}/clients/{{name}}/{_action}", CLIENTS, _schema, _change, f"Client: {_action}"
    )


# ------------------------------------------------------------ broker-wide settings


@routes.get(
    f"{BASE}/default-acl",
    Permission.READ,
    "Default ACL access",
    responses={200: DEFAULT_ACL_ACCESS},
)
async def get_default_acl(request: web.Request) -> web.Response:
    ds = await Dynsec.of(connected_project_broker(request))
    return _json({"acls": await ds.get_default_acl_access()})


@routes.put(
    f"{BASE}/default-acl",
    Permission.CONTROL,
    "Set default ACL access",
    before=LINK,
    body=schemas.DefaultAclAccessSchema(),
    responses={200: DEFAULT_ACL_ACCESS},
)
async def put_default_acl(
    request: web.Request, link: BrokerLink, body: dict[str, Any]
) -> web.Response:
    ds = await Dynsec.of(link)
    await ds.set_default_acl_access(body["acls"])
    return _json({"acls": await ds.get_default_acl_access()})


@routes.get(
    f"{BASE}/anonymous-group",
    Permission.READ,
    "The anonymous group",
    responses={200: ANONYMOUS_GROUP},
)
async def get_anonymous_group(request: web.Request) -> web.Response:
    ds = await Dynsec.of(connected_project_broker(request))
    return _json({"groupname": await ds.get_anonymous_group()})


@routes.put(
    f"{BASE}/anonymous-group",
    Permission.CONTROL,
    "Set the anonymous group",
    before=LINK,
    body=schemas.AnonymousGroupSchema(),
    responses={200: ANONYMOUS_GROUP},
)
async def put_anonymous_group(
    request: web.Request, link: BrokerLink, body: dict[str, Any]
) -> web.Response:
    ds = await Dynsec.of(link)
    await ds.set_anonymous_group(body["groupname"])
    return _json({"groupname": await ds.get_anonymous_group()})


@routes.get(
    f"{BASE}/details",
    Permission.READ,
    "Counts of clients, groups and roles, and the change index (mosquitto 2.1)",
    responses={200: DYNSEC_DETAILS},
    description="404 on a broker whose plugin has no getDetails (mosquitto 2.0).",
)
async def get_details(request: web.Request) -> web.Response:
    ds = await Dynsec.of(connected_project_broker(request))
    return _json(await ds.get_details())


# ------------------------------------------------------------------ export/import


@routes.get(
    f"{BASE}/export",
    Permission.READ,
    "The broker's whole dynamic-security state (no passwords)",
    responses={200: DYNSEC_DOCUMENT},
)
async def export(request: web.Request) -> web.Response:
    ds = await Dynsec.of(connected_project_broker(request))
    return _json(await ds.export())


@routes.post(
    f"{BASE}/import",
    Permission.CONTROL,
    "Make the broker match a document (idempotent); ?dryRun=true only reports",
    before=LINK,
    body=schemas.document_schema,
    query=_dry_run_schema,
    responses={200: IMPORT_REPORT},
)
async def import_(
    request: web.Request, link: BrokerLink, query: dict[str, Any], body: dict[str, Any]
) -> web.Response:
    ds = await Dynsec.of(link)
    report = await ds.import_document(
        body,
        dry_run=query["dryRun"],
        protected_client=own_usernames(request.app[connections_key], link),
    )
    return _json(report)


# --------------------------------------------------------------------- passthrough


def _classify(request: web.Request, commands: list[dict[str, Any]]) -> None:
    """Commands that only read make a read, whatever the HTTP method: not audited (see
    mmc.web.audit). By command name as the plugin matches it; an unknown one is a change."""
    if all(ascii_lower(str(c.get("command", ""))) in READS for c in commands):
        mark_read(request)


@routes.post(
    "/api/dynamic-security/{brokerId}/command",
    Permission.CONTROL,
    "Send one plugin command (the MMC's endpoint)",
    before=LINK,
    body=schemas.CommandSchema(),
    query=force_schema,
    responses={200: COMMAND_ANSWER},
    errors=(409,),
    description=OWN_ACCESS_NOTE,
)
async def command(
    request: web.Request, link: BrokerLink, query: dict[str, Any], body: dict[str, Any]
) -> web.Response:
    """The MMC's endpoint: one plugin command in, ``{command, data?}`` out."""
    _classify(request, [body])
    entry = await run_command(Guard.of(request, query["force"]), link, body)
    if "error" in entry:
        raise error_for(body["command"], str(entry["error"]))
    return _json(entry)


@routes.post(
    f"{BROKER}/dynamic-security",
    Permission.CONTROL,
    "Send the plugin's own envelope {commands}",
    before=LINK,
    body=schemas.CommandsSchema(),
    query=force_schema,
    responses={200: COMMAND_ANSWERS},
    errors=(409,),
    description=OWN_ACCESS_NOTE,
)
async def commands(
    request: web.Request, link: BrokerLink, query: dict[str, Any], body: dict[str, Any]
) -> web.Response:
    """The plugin's own envelope: ``{commands: [...]}`` in, ``{responses: [...]}`` out."""
    _classify(request, body["commands"])
    ds = await Dynsec.of(link)
    guard = Guard.of(request, query["force"])
    return _json({"responses": await guard.run(link, ds, body["commands"], passthrough)})


# ---------------------------------------------------------------------- project


async def _apply_to(link: BrokerLink, body: Mapping[str, Any], guard: Guard) -> dict[str, Any]:
    if not link.connected:
        raise BrokerUnavailable(f"Broker {link.id} is not connected")
    ds = await Dynsec.of(link)
    if "commands" in body:
        return {"responses": await guard.run(link, ds, body["commands"], passthrough)}
    return await ds.import_document(
        body["document"],
        dry_run=body["dry_run"],
        protected_client=own_usernames(guard.service, link),
    )


async def _apply_one(link: BrokerLink, body: Mapping[str, Any], guard: Guard) -> dict[str, Any]:
    """One broker's entry of the multi-status answer: its own failure never spreads."""
    try:
        return {"status": 200, **await _apply_to(link, body, guard)}
    except MmcError as exc:
        return error_body(exc)
    except Exception:
        log.exception("dynsec apply on broker %s failed", link.id)
        return error_body(MmcError())


@routes.post(
    "/api/projects/{projectId}/dynsec/apply",
    Permission.CONTROL,
    "Run commands or an import on every broker of the project (one entry per broker)",
    body=schemas.ApplySchema(),
    query=force_schema,
    responses={207: APPLY_ANSWER},
    description="A broker whose own access the commands would cut off gets a 409 entry "
    "unless ?force=true.",
)
async def apply(request: web.Request, query: dict[str, Any], body: dict[str, Any]) -> web.Response:
    """Run the same commands, or the same import, on every broker of the project (207)."""
    if "commands" in body:
        _classify(request, body["commands"])
    project_id = request.match_info["projectId"]
    links = [
        link for link in request.app[connections_key].pool if link.record.project_id == project_id
    ]
    if not links:
        raise NotFound(f"Project {project_id} has no brokers")
    guard = Guard.of(request, query["force"])
    results = await asyncio.gather(*(_apply_one(link, body, guard) for link in links))
    return _json({link.id: result for link, result in zip(links, results, strict=True)}, 207)
