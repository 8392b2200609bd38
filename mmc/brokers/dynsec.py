"""Typed wrapper of mosquitto's dynamic-security plugin (``$CONTROL/dynamic-security/v1``).

One method per plugin command, all through the link's ControlChannel (so commands issued
together travel in one MQTT message), plus export/import of the whole state.

Whether the broker has the plugin is the link's capability detection (run on every
(re)connect, bounded by the probe timeout): a broker without it answers 404 "dynamic-security
plugin not enabled on this broker" quickly, never after a request timeout.

Guards keep brokers sound: mosquitto 2.0.11 frees a role still referenced by a client or
group (use after free) and crashes when the anonymous group is deleted, so ``deleteRole``
first removes the role from every client and group, and ``deleteGroup`` of the anonymous
group is refused with the message newer plugins answer. 2.1.2 needs the ``deleteRole`` guard
too: roles given inline to ``createClient``/``createGroup`` (by any tool) are not linked back
to their holders, and its ``deleteRole`` frees such a role while they still list it
(tests/test_dynsec_versions.py shows it under valgrind). A ``roles`` list is never sent
with ``createClient``, ``createGroup`` or ``modifyGroup``, nor ``groups`` with
``createClient``: 2.0.11 sets the owner's role list without updating the roles' own lists
of owners (deleting the group and then a role it had crashes the broker, SIGSEGV), and
frees a new client still listed by a group when a later group is missing; the lists are
applied with add/remove per entry instead (see ``_lists_one_by_one``). ``modifyClient``
with ``roles`` or ``groups`` updates both sides and goes out as is, after its roles are
checked (the plugin would change the text fields before refusing a missing role).

Every command is checked against the broker-string rule (``mmc.broker_strings``)
before anything is sent, so the guards compare exactly the names the broker will read.

Versions: the typed methods (the resource routes) and imports refuse what a broker would
silently not keep: a role's ``allowwildcardsubs: false`` on 2.0 (whose plugin ignores the
field and lets every role subscribe with wildcards), and on 2.1 a priority beyond
±100,000 (which 2.1 clamps: an import asking for more would never settle). The
passthrough sends commands as they are, as the broker would take them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mmc.broker_strings import ascii_lower, command_problems
from mmc.brokers.control import MAX_BATCH, ControlChannel, error_for
from mmc.brokers.dynsec_plan import Plan, PlanError, document_from, plan_import, summarize
from mmc.brokers.link import BrokerLink
from mmc.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

API = "dynamic-security"
ANONYMOUS_GROUP_FORBIDDEN = "Deleting the anonymous group is forbidden"
UNKNOWN_COMMAND = "Unknown command"
# mosquitto 2.1 clamps every priority to ±PRIORITY_MAX (plugins/dynamic-security).
PRIORITY_LIMIT = 100_000
PRIORITY_CLAMPED = (
    f"priority must be between -{PRIORITY_LIMIT} and {PRIORITY_LIMIT}: "
    f"mosquitto 2.1 keeps no other (it would store ±{PRIORITY_LIMIT})"
)
WILDCARDS_ALWAYS = (
    "allowwildcardsubs false is not supported by this broker: mosquitto 2.0 lets every "
    "role subscribe with wildcards (2.1 or later needed)"
)


# Commands of an import phase in flight at once (a one-by-one command counts each of its
# steps): two messages' worth, so one is on the way while the broker runs the other.
# The plugin answers a message once it has run all of its commands, and mosquitto 2.0
# rewrites its whole dynsec.json after each change: a phase of 1,000 new clients sent at
# once left the last messages queued at the broker past the request timeout (5 s), and the
# import answered 502 for a command the broker had not even read yet.
IMPORT_WINDOW = 2 * MAX_BATCH


def _present(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _lower(command: Mapping[str, Any]) -> str:
    """The command name as the plugin matches it (strcasecmp: ASCII case only)."""
    return ascii_lower(str(command.get("command", "")))


# Commands whose ``roles`` list (and a new client's ``groups``) is applied one entry at a
# time: owner key, add role, remove role.
_ONE_BY_ONE = {
    "createclient": ("username", "addClientRole", "removeClientRole"),
    "creategroup": ("groupname", "addGroupRole", "removeGroupRole"),
    "modifygroup": ("groupname", "addGroupRole", "removeGroupRole"),
}


def _one_by_one(command: Mapping[str, Any]) -> bool:
    name = _lower(command)
    return name in _ONE_BY_ONE and (
        "roles" in command or (name == "createclient" and "groups" in command)
    )


def _steps(command: Mapping[str, Any]) -> int:
    """The commands a command goes out as (at most): a one-by-one command is sent without
    its lists, then one add per entry (and a modifyGroup reads its group first)."""
    if not _one_by_one(command):
        return 1
    lists = (command.get(key) for key in ("roles", "groups"))
    return 2 + sum(len(items) for items in lists if isinstance(items, list))


def _sequential(command: Mapping[str, Any]) -> bool:
    """Commands whose guard or rewrite must see the effect of the commands before them."""
    return _lower(command) in ("deleterole", "deletegroup") or _one_by_one(command)


def goes_out_as_is(command: Mapping[str, Any]) -> bool:
    """Whether ``Dynsec.send`` hands the command to the channel at once, as it is (no guard,
    no rewrite, nothing read before it): a command sent right after it travels in the
    same MQTT message, and the plugin runs it after this one."""
    name = _lower(command)
    return not _sequential(command) and not (
        name == "modifyclient" and isinstance(command.get("roles"), list)
    )


def check_commands(commands: Sequence[Mapping[str, Any]]) -> None:
    """InvalidInput (field -> messages) unless every command reads the same to the broker.

    The routes validate their bodies already; this is the last check before the wire.
    """
    problems = {str(i): p for i, c in enumerate(commands) if (p := command_problems(c))}
    if problems:
        info = problems["0"] if len(commands) == 1 else {"commands": problems}
        raise InvalidInput("Invalid input", info=info)


def _priorities(command: Mapping[str, Any]) -> Iterator[Any]:
    """Every priority in a command: its own, and its ACLs' and references'."""
    yield command.get("priority")
    for key in ("acls", "roles", "groups", "clients"):
        items = command.get(key)
        for item in items if isinstance(items, list) else ():
            if isinstance(item, Mapping):
                yield item.get("priority")


def clamped(command: Mapping[str, Any]) -> bool:
    """Whether mosquitto 2.1 would keep another priority than the command's."""
    return any(
        isinstance(p, int | float) and not isinstance(p, bool) and abs(p) > PRIORITY_LIMIT
        for p in _priorities(command)
    )


def narrows_wildcards(command: Mapping[str, Any]) -> bool:
    """A createRole/modifyRole that denies its role wildcard subscriptions (2.1 only)."""
    return (
        _lower(command) in ("createrole", "modifyrole")
        and command.get("allowwildcardsubs") is False
    )


def _document_entry(command: Mapping[str, Any]) -> str:
    """Where in an import document a planned command comes from (as PlanError names it)."""
    name = _lower(command)
    if name in ("createrole", "modifyrole", "addroleacl"):
        return f"roles.{command['rolename']}"
    if name in ("creategroup", "modifygroup", "addgrouprole"):
        return f"groups.{command['groupname']}"
    return f"clients.{command.get('username')}"


def _priority(ref: Mapping[str, Any]) -> int:
    """A role's priority as the plugin reads it (json_get_int: a number, else -1)."""
    value = ref.get("priority", -1)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return -1
    return int(value)


@dataclass
class Existing:
    """Names of the roles and groups on the broker, listed once for a phase of an import
    (whose commands create no role, and groups only in the phase before their clients').
    Kept current as the phase creates groups. A change by someone else in the meantime
    is not seen: a role deleted then fails its add command instead (reported as the
    command's error), as it would have between a getRole and the add."""

    roles: set[str]
    groups: set[str]


class Dynsec:
    def __init__(self, channel: ControlChannel) -> None:
        self.channel = channel

    @classmethod
    async def of(cls, link: BrokerLink) -> Dynsec:
        """The wrapper for a connected link; NotFound when the broker has no dynsec plugin."""
        await link.require_feature("dynamicSecurity")
        return cls(link.control)

    # ------------------------------------------------------------ transport

    async def send(
        self, command: Mapping[str, Any], *, existing: Existing | None = None
    ) -> dict[str, Any]:
        """Send one command and return the plugin's raw response entry, error or not.

        ``existing``: the roles and groups known to exist (an import lists them once per
        phase), instead of one getRole or getGroup per name the command refers to."""
        check_commands([command])
        name = _lower(command)
        if _one_by_one(command):
            return await self._lists_one_by_one(command, existing)
        if name == "modifyclient" and isinstance(command.get("roles"), list):
            # The plugin changes the text fields, client id and password before it finds
            # that a role is missing: answer "Role not found" before anything changes.
            wanted = {r.get("rolename") for r in command["roles"] if isinstance(r, dict)}
            if not await self._all_exist("roles", {r for r in wanted if isinstance(r, str)}):
                return {"command": command["command"], "error": "Role not found"}
        if name == "deleterole" and isinstance(command.get("rolename"), str):
            await self._detach_roles({command["rolename"]})
        elif (
            name == "deletegroup"
            and command.get("groupname")
            and command["groupname"] == await self.get_anonymous_group()
        ):
            return {"command": command["command"], "error": ANONYMOUS_GROUP_FORBIDDEN}
        return await self.channel.send(API, command)

    async def run(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Send commands in order, as the plugin would run them from one message.

        Consecutive commands go out together (one MQTT message); a guarded delete waits for
        what precedes it, since its guard must see their effect.
        """
        check_commands(commands)
        entries: list[dict[str, Any]] = []
        batch: list[Mapping[str, Any]] = []
        deletes: list[Mapping[str, Any]] = []
        for command in commands:
            if _lower(command) == "deleterole":
                entries += await asyncio.gather(*(self.send(c) for c in batch))
                batch = []
                # Consecutive ones together: one listing finds the holders of them all
                # (taking a role away before the previous one is deleted changes neither).
                deletes.append(command)
                continue
            if deletes:
                entries += await self._delete_roles(deletes)
                deletes = []
            if _sequential(command):
                entries += await asyncio.gather(*(self.send(c) for c in batch))
                batch = []
                entries.append(await self.send(command))
            else:
                batch.append(command)
        if deletes:
            entries += await self._delete_roles(deletes)
        entries += await asyncio.gather(*(self.send(c) for c in batch))
        return entries

    async def call(self, command: str, **params: Any) -> dict[str, Any]:
        """Run one command; its ``data`` (``{}`` for commands that only change something).

        Refused (400) when this broker would not keep what it says (module docstring)."""
        sent = {"command": command, **_present(params)}
        if narrows_wildcards(sent) or clamped(sent):
            problem = self.version_problem(sent, await self.is_v2_1())
            if problem is not None:
                raise InvalidInput(problem)
        entry = await self.send(sent)
        if "error" in entry:
            raise error_for(command, str(entry["error"]))
        data = entry.get("data")
        return data if isinstance(data, dict) else {}

    async def _all_exist(
        self, kind: str, names: set[str], existing: Existing | None = None
    ) -> bool:
        if existing is not None:
            return names <= (existing.roles if kind == "roles" else existing.groups)
        get, key = ("getRole", "rolename") if kind == "roles" else ("getGroup", "groupname")
        checks = await asyncio.gather(
            *(self.channel.send(API, {"command": get, key: n}) for n in names)
        )
        return not any("error" in c for c in checks)

    async def _lists_one_by_one(
        self, command: Mapping[str, Any], existing: Existing | None = None
    ) -> dict[str, Any]:
        """createClient, createGroup or modifyGroup with lists, in a form 2.0.x survives.

        mosquitto 2.0.11 fills (createClient, createGroup) or replaces (modifyGroup) the
        owner's role list without updating each role's list of owners: deleting the owner,
        then a role it had, uses freed memory and crashes the broker. And a createClient
        whose ``groups`` name a missing group after an existing one frees the new client
        while that group still lists it (crash on the next listing). So the command goes
        out without ``roles`` (and a new client without ``groups``), and the lists are
        applied with add/remove per entry (against getGroup for modifyGroup). Like the
        plugin, a role or group that does not exist fails the command before anything
        changes. Not atomic: a concurrent change between the steps is not rolled back.
        """
        verb, name = command["command"], _lower(command)
        key, add, remove = _ONE_BY_ONE[name]
        owner = command.get(key)
        rest = {k: v for k, v in command.items() if k not in ("roles", "groups")}
        if name != "createclient" and "groups" in command:
            rest["groups"] = command["groups"]
        if not isinstance(owner, str):
            return await self.channel.send(API, rest)  # the plugin's own error
        roles = command.get("roles", [])
        if not isinstance(roles, list) or not all(
            isinstance(r, dict) and isinstance(r.get("rolename"), str) for r in roles
        ):
            return {"command": verb, "error": "'roles' not an array or missing/invalid rolename"}
        want: dict[str, int] = {}
        for ref in roles:
            want.setdefault(ref["rolename"], _priority(ref))  # the plugin keeps the first
        groups: dict[str, int] = {}
        if name == "createclient" and isinstance(command.get("groups"), list):
            for ref in command["groups"]:  # the plugin skips entries without a groupname
                if isinstance(ref, dict) and isinstance(ref.get("groupname"), str):
                    groups.setdefault(ref["groupname"], _priority(ref))
        have: dict[str, int] = {}
        if name == "modifygroup":
            found = await self.channel.send(API, {"command": "getGroup", "groupname": owner})
            if "error" in found:
                return {"command": verb, "error": found["error"]}
            group = (found.get("data") or {}).get("group") or {}
            have = {str(r["rolename"]): _priority(r) for r in group.get("roles", [])}
        if not await self._all_exist("roles", set(want), existing):
            return {"command": verb, "error": "Role not found"}
        if not await self._all_exist("groups", set(groups), existing):
            return {"command": verb, "error": "Group not found"}
        if name != "modifygroup" or set(rest) - {"command", key, "correlationData"}:
            entry = await self.channel.send(API, rest)
            if "error" in entry:
                return {"command": verb, "error": entry["error"]}
            if existing is not None and name == "creategroup":
                existing.groups.add(owner)
        removes = [
            {"command": remove, key: owner, "rolename": r}
            for r, p in have.items()
            if want.get(r) != p
        ]
        adds = [
            {"command": add, key: owner, "rolename": r, "priority": p}
            for r, p in want.items()
            if have.get(r) != p
        ] + [
            {"command": "addGroupClient", "groupname": g, "username": owner, "priority": p}
            for g, p in groups.items()
        ]
        for phase in (removes, adds):
            for entry in await asyncio.gather(*(self.channel.send(API, c) for c in phase)):
                if "error" in entry:
                    return {"command": verb, "error": entry["error"]}
        return {"command": verb}

    async def _windowed(
        self, phase: Sequence[Mapping[str, Any]], existing: Existing | None
    ) -> list[dict[str, Any]]:
        """A phase's commands in chunks of up to MAX_BATCH steps (a one-by-one command
        counts each of its steps), two chunks in flight at once: a chunk's commands start
        together, so each of its steps travels in one message, and the broker has the next
        chunk's first message while it runs this one's."""
        chunks: list[list[int]] = [[]]
        weight = 0
        for i, command in enumerate(phase):
            steps = _steps(command)
            if chunks[-1] and weight + steps > MAX_BATCH:
                chunks.append([])
                weight = 0
            chunks[-1].append(i)
            weight += steps
        entries: list[dict[str, Any]] = [{} for _ in phase]
        in_flight = asyncio.Semaphore(IMPORT_WINDOW // MAX_BATCH)

        async def run(chunk: list[int]) -> None:
            async with in_flight:
                found = await asyncio.gather(
                    *(self.send(phase[i], existing=existing) for i in chunk)
                )
            for i, entry in zip(chunk, found, strict=True):
                entries[i] = entry

        tasks = [asyncio.ensure_future(run(chunk)) for chunk in chunks]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # The import stops at its first failure (OUTCOME_UNKNOWN): the chunks not yet
            # sent must not go out after its answer.
            for task in tasks:
                task.cancel()
            raise
        return entries

    async def _existing(self) -> Existing:
        """The roles and groups there are now: two listings, whatever a phase refers to."""
        roles, groups = await asyncio.gather(self.list_roles(), self.list_groups())
        return Existing(set(map(str, roles["roles"])), set(map(str, groups["groups"])))

    async def _detach_roles(self, rolenames: set[str]) -> None:
        """Take the roles away from every client and group that holds them (one listing of
        each, however many roles)."""
        if not rolenames:
            return
        clients, groups = await asyncio.gather(
            self.list_clients(verbose=True), self.list_groups(verbose=True)
        )

        def held(entry: Mapping[str, Any]) -> list[str]:
            return [r["rolename"] for r in entry.get("roles", []) if r.get("rolename") in rolenames]

        await asyncio.gather(
            *(
                self.remove_client_role(c["username"], rolename)
                for c in clients["clients"]
                for rolename in held(c)
            ),
            *(
                self.remove_group_role(g["groupname"], rolename)
                for g in groups["groups"]
                for rolename in held(g)
            ),
        )

    async def _delete_roles(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """deleteRole commands together: their roles detached at once, then deleted."""
        await self._detach_roles(
            {c["rolename"] for c in commands if isinstance(c.get("rolename"), str)}
        )
        return list(await asyncio.gather(*(self.channel.send(API, c) for c in commands)))

    # -------------------------------------------------------------- version

    async def get_details(self) -> dict[str, Any]:
        """getDetails (mosquitto 2.1): the counts of clients, groups and roles, and
        ``changeIndex``; 404 on a plugin without it (2.0)."""
        entry = await self.send({"command": "getDetails"})
        error = entry.get("error")
        if error == UNKNOWN_COMMAND:
            raise NotFound("getDetails is not supported by this broker (mosquitto 2.1 or later)")
        if error is not None:
            raise error_for("getDetails", str(error))
        data = entry.get("data")
        return data if isinstance(data, dict) else {}

    @staticmethod
    def version_problem(command: Mapping[str, Any], v2_1: bool) -> str | None:
        """Why a broker of that version would not keep what ``command`` says, if it would not."""
        if narrows_wildcards(command) and not v2_1:
            return WILDCARDS_ALWAYS
        if clamped(command) and v2_1:
            return PRIORITY_CLAMPED
        return None

    async def is_v2_1(self) -> bool:
        """Whether the plugin is 2.1's or later (it has getDetails): role
        ``allowwildcardsubs``, priorities clamped to ±100,000."""
        entry = await self.channel.send(API, {"command": "getDetails"})
        return entry.get("error") != UNKNOWN_COMMAND

    # -------------------------------------------------------- default ACL

    async def set_default_acl_access(self, acls: list[dict[str, Any]]) -> None:
        await self.call("setDefaultACLAccess", acls=acls)

    async def get_default_acl_access(self) -> list[dict[str, Any]]:
        acls: list[dict[str, Any]] = (await self.call("getDefaultACLAccess"))["acls"]
        return acls

    # ------------------------------------------------------------ clients

    async def list_clients(
        self, *, verbose: bool = False, count: int = -1, offset: int = 0
    ) -> dict[str, Any]:
        return await self.call("listClients", verbose=verbose, count=count, offset=offset)

    async def get_client(self, username: str) -> dict[str, Any]:
        client: dict[str, Any] = (await self.call("getClient", username=username))["client"]
        return client

    async def create_client(
        self, username: str, password: str | None = None, **options: Any
    ) -> None:
        # Without a password (certificate-authenticated clients): the plugin allows it.
        secret = {} if password is None else {"password": password}
        await self.call("createClient", username=username, **secret, **options)

    async def modify_client(self, username: str, **changes: Any) -> None:
        await self.call("modifyClient", username=username, **changes)

    async def delete_client(self, username: str) -> None:
        await self.call("deleteClient", username=username)

    async def enable_client(self, username: str) -> None:
        await self.call("enableClient", username=username)

    async def disable_client(self, username: str) -> None:
        await self.call("disableClient", username=username)

    async def set_client_id(self, username: str, clientid: str | None) -> None:
        await self.call("setClientId", username=username, clientid=clientid or None)

    async def set_client_password(self, username: str, password: str) -> None:
        await self.call("setClientPassword", username=username, password=password)

    async def add_client_role(
        self, username: str, rolename: str, priority: int | None = None
    ) -> None:
        await self.call("addClientRole", username=username, rolename=rolename, priority=priority)

    async def remove_client_role(self, username: str, rolename: str) -> None:
        await self.call("removeClientRole", username=username, rolename=rolename)

    # ------------------------------------------------------------- groups

    async def list_groups(
        self, *, verbose: bool = False, count: int = -1, offset: int = 0
    ) -> dict[str, Any]:
        return await self.call("listGroups", verbose=verbose, count=count, offset=offset)

    async def get_group(self, groupname: str) -> dict[str, Any]:
        group: dict[str, Any] = (await self.call("getGroup", groupname=groupname))["group"]
        return group

    async def create_group(self, groupname: str, **options: Any) -> None:
        await self.call("createGroup", groupname=groupname, **options)

    async def modify_group(self, groupname: str, **changes: Any) -> None:
        await self.call("modifyGroup", groupname=groupname, **changes)

    async def delete_group(self, groupname: str) -> None:
        await self.call("deleteGroup", groupname=groupname)

    async def add_group_client(
        self, groupname: str, username: str, priority: int | None = None
    ) -> None:
        await self.call("addGroupClient", groupname=groupname, username=username, priority=priority)

    async def remove_group_client(self, groupname: str, username: str) -> None:
        await self.call("removeGroupClient", groupname=groupname, username=username)

    async def add_group_role(
        self, groupname: str, rolename: str, priority: int | None = None
    ) -> None:
        await self.call("addGroupRole", groupname=groupname, rolename=rolename, priority=priority)

    async def remove_group_role(self, groupname: str, rolename: str) -> None:
        await self.call("removeGroupRole", groupname=groupname, rolename=rolename)

    async def get_anonymous_group(self) -> str:
        group = (await self.call("getAnonymousGroup"))["group"]
        return str(group.get("groupname") or "")

    async def set_anonymous_group(self, groupname: str) -> None:
        await self.call("setAnonymousGroup", groupname=groupname)

    # -------------------------------------------------------------- roles

    async def list_roles(
        self, *, verbose: bool = False, count: int = -1, offset: int = 0
    ) -> dict[str, Any]:
        return await self.call("listRoles", verbose=verbose, count=count, offset=offset)

    async def get_role(self, rolename: str) -> dict[str, Any]:
        role: dict[str, Any] = (await self.call("getRole", rolename=rolename))["role"]
        return role

    async def create_role(self, rolename: str, **options: Any) -> None:
        await self.call("createRole", rolename=rolename, **options)

    async def modify_role(self, rolename: str, **changes: Any) -> None:
        await self.call("modifyRole", rolename=rolename, **changes)

    async def delete_role(self, rolename: str) -> None:
        await self.call("deleteRole", rolename=rolename)

    async def add_role_acl(
        self, rolename: str, acltype: str, topic: str, *, allow: bool, priority: int | None = None
    ) -> None:
        await self.call(
            "addRoleACL",
            rolename=rolename,
            acltype=acltype,
            topic=topic,
            allow=allow,
            priority=priority,
        )

    async def remove_role_acl(self, rolename: str, acltype: str, topic: str) -> None:
        await self.call("removeRoleACL", rolename=rolename, acltype=acltype, topic=topic)

    # ------------------------------------------------------- export/import

    async def export(self) -> dict[str, Any]:
        """The whole dynsec state as one document (five commands, one message)."""
        clients, groups, roles, default_acls, anonymous = await asyncio.gather(
            self.list_clients(verbose=True),
            self.list_groups(verbose=True),
            self.list_roles(verbose=True),
            self.get_default_acl_access(),
            self.get_anonymous_group(),
        )
        return document_from(
            clients=clients["clients"],
            groups=groups["groups"],
            roles=roles["roles"],
            default_acls=default_acls,
            anonymous_group=anonymous,
        )

    async def plan(
        self, document: Mapping[str, Any], *, protected_client: str | Iterable[str] | None
    ) -> Plan:
        try:
            plan = plan_import(await self.export(), document, protected_client=protected_client)
        except PlanError as exc:
            raise InvalidInput(str(exc), info=exc.problems) from None
        problems: dict[str, list[str]] = {}
        if any(narrows_wildcards(c) or clamped(c) for c in plan.commands):
            v2_1 = await self.is_v2_1()
            for command in plan.commands:
                problem = self.version_problem(command, v2_1)
                if problem is not None:
                    problems.setdefault(_document_entry(command), []).append(problem)
        if problems:
            raise InvalidInput(str(PlanError(problems)), info=problems)
        return plan

    async def import_document(
        self,
        document: Mapping[str, Any],
        *,
        dry_run: bool = False,
        protected_client: str | Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Make the broker match ``document``; what changed (or would, with ``dry_run``)."""
        plan = await self.plan(document, protected_client=protected_client)
        report: dict[str, Any] = {
            "changed": False,
            "dryRun": dry_run,
            "commands": [],
            "errors": [],
            "skipped": plan.skipped,
            # Created without a password (certificate logins, or an export's clients, whose
            # passwords are never exported): they cannot log in with one until it is set.
            "withoutPassword": sorted(
                str(c["username"])
                for c in plan.commands
                if _lower(c) == "createclient" and "password" not in c
            ),
        }
        if dry_run:
            report["commands"] = [summarize(c) for c in plan.commands]
            report["changed"] = bool(plan.commands)
            return report
        for phase in plan.phases:
            if not phase:
                continue
            if all(_lower(c) == "deleterole" for c in phase):
                # The roles go last, together: one listing to find their holders, not
                # one per role.
                check_commands(phase)
                entries = await self._delete_roles(phase)
            else:
                existing = await self._existing() if any(map(_one_by_one, phase)) else None
                entries = await self._windowed(phase, existing)
            for command, entry in zip(phase, entries, strict=True):
                if "error" in entry:
                    report["errors"].append({**summarize(command), "error": entry["error"]})
                else:
                    report["commands"].append(summarize(command))
        report["changed"] = bool(report["commands"])
        log.info(
            "dynsec import on broker %s: %d commands applied, %d failed",
            self.channel.broker_id,
            len(report["commands"]),
            len(report["errors"]),
        )
        return report
