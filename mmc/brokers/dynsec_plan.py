"""A broker's dynamic-security state as one document, and the commands that make a broker match one.

Pure functions, no I/O: the import algorithm is tested without a broker.

The document uses the plugin's own field names::

    {
      "defaultACLAccess": [{"acltype", "allow"}, ...],
      "anonymousGroup": "<groupname>" | null,
      "roles":   [{"rolename", "textname"?, "textdescription"?,
                   "allowwildcardsubs"? (mosquitto 2.1),
                   "acls": [{"acltype", "topic", "priority", "allow"}]}],
      "groups":  [{"groupname", "textname"?, "textdescription"?,
                   "roles": [{"rolename", "priority"?}]}],
      "clients": [{"username", "password"? (import only), "clientid"?,
                   "textname"?, "textdescription"?, "disabled"?,
                   "roles": [{"rolename", "priority"?}],
                   "groups": [{"groupname", "priority"?}]}]
    }

Group membership lives on the clients only (the plugin reports it on both sides).

Import rules (``plan_import``):

- A section missing from the document is left alone; a present one (even ``[]``) is made to
  match: missing entries are created, different ones changed, extra ones deleted.
  ``anonymousGroup: null`` leaves the anonymous group alone (the plugin cannot unset it).
- Omitted text fields, client ids and priorities mean "none" (``""`` and absent are equal).
- A role's ``allowwildcardsubs`` (mosquitto 2.1) is exported as the broker reports it, true
  or false, so that two brokers' exports differ whenever what their clients may subscribe to
  does; omitted (a 2.0 export) it means true, which is what 2.0 does.
- Passwords are never exported (the plugin never returns them). A client the broker does not
  have yet is created with the document's ``password``, or without one, as the plugin allows
  (certificate logins); the report lists those (``withoutPassword``), since a client of an
  export imported elsewhere arrives without its password and cannot log in with one until
  it is given (PUT .../password). For an existing client the password is ignored, so the
  same import twice changes nothing.
- The client mmc itself logs in as (``protected_client``: every user a connection of mmc logs
  in to this broker with), its groups and their roles and its own roles, are never
  changed or deleted: losing them would cut mmc off the broker mid-import. Differences there
  are reported in ``skipped``, as is deleting the anonymous group.
- Commands come in phases: inside a phase order does not matter (they are sent as one batch);
  phases run one after the other. Memberships are removed before anything is deleted, roles
  are created before the groups and clients that use them, the anonymous group is moved
  before its old group is deleted, and roles are deleted last (mosquitto 2.0.11 corrupts
  memory when a role still referenced by a client or group is deleted).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Command = dict[str, Any]
Entity = Mapping[str, Any]

TEXT_FIELDS = ("textname", "textdescription")
SECTIONS = ("defaultACLAccess", "anonymousGroup", "roles", "groups", "clients")

# Phases, run one after the other.
REMOVE, ROLES, GROUPS, CLIENTS, SETTINGS, DELETE_GROUPS, DELETE_ROLES = range(7)
PHASES = 7

PROTECTED_REASON = "mmc connects to the broker as this client; an import never changes it"
PROTECTED_DEPENDENCY = "the client mmc connects as depends on it; an import never changes it"
ANONYMOUS_REASON = "it is the anonymous group, which cannot be deleted"


class PlanError(ValueError):
    """The document cannot be applied to this broker: ``problems`` says why, per entry."""

    def __init__(self, problems: dict[str, list[str]]) -> None:
        super().__init__("The document cannot be imported on this broker")
        self.problems = problems


@dataclass
class Plan:
    phases: list[list[Command]] = field(default_factory=lambda: [[] for _ in range(PHASES)])
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def commands(self) -> list[Command]:
        return [cmd for phase in self.phases for cmd in phase]

    def add(self, phase: int, command: Command) -> None:
        self.phases[phase].append(command)


def summarize(command: Mapping[str, Any]) -> dict[str, Any]:
    """A command as reports and logs may show it: never a password."""
    return {k: v for k, v in command.items() if k not in ("password", "correlationData")}


# ---------------------------------------------------------------- export


def _text(entry: Entity) -> dict[str, str]:
    return {f: entry[f] for f in TEXT_FIELDS if entry.get(f)}


def _refs(refs: Iterable[Entity], key: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ref in refs:
        item: dict[str, Any] = {key: ref[key]}
        if ref.get("priority", -1) != -1:
            item["priority"] = ref["priority"]
        out.append(item)
    return sorted(out, key=lambda r: str(r[key]))


def wildcard_subs(role: Entity) -> bool:
    """A role's allowwildcardsubs; true when absent (2.0, or a document that omits it)."""
    return role.get("allowwildcardsubs", True) is not False


def _wildcard_field(role: Entity) -> dict[str, bool]:
    """The field as the broker reported it (2.1), nothing when it did not (2.0)."""
    if "allowwildcardsubs" not in role:
        return {}
    return {"allowwildcardsubs": wildcard_subs(role)}


def _acl(acl: Entity) -> dict[str, Any]:
    return {
        "acltype": acl["acltype"],
        "topic": acl["topic"],
        "priority": acl.get("priority", 0),
        "allow": bool(acl.get("allow", False)),
    }


def document_from(
    *,
    clients: Iterable[Entity],
    groups: Iterable[Entity],
    roles: Iterable[Entity],
    default_acls: Iterable[Entity],
    anonymous_group: str | None,
) -> dict[str, Any]:
    """Build the document from verbose listClients/listGroups/listRoles and the two getters."""
    doc_clients = []
    for c in clients:
        client: dict[str, Any] = {"username": c["username"]}
        if c.get("clientid"):
            client["clientid"] = c["clientid"]
        client.update(_text(c))
        if c.get("disabled"):
            client["disabled"] = True
        client["roles"] = _refs(c.get("roles", []), "rolename")
        client["groups"] = _refs(c.get("groups", []), "groupname")
        doc_clients.append(client)
    return {
        "defaultACLAccess": [
            {"acltype": a["acltype"], "allow": bool(a["allow"])} for a in default_acls
        ],
        "anonymousGroup": anonymous_group or None,
        "roles": [
            {
                "rolename": r["rolename"],
                **_text(r),
                **_wildcard_field(r),
                "acls": sorted(
                    (_acl(a) for a in r.get("acls", [])), key=lambda a: (a["acltype"], a["topic"])
                ),
            }
            for r in roles
        ],
        "groups": [
            {
                "groupname": g["groupname"],
                **_text(g),
                "roles": _refs(g.get("roles", []), "rolename"),
            }
            for g in groups
        ],
        "clients": doc_clients,
    }


# ------------------------------------------------------------------ diff


def _by(entries: Iterable[Entity] | None, key: str) -> dict[str, Entity]:
    return {str(e[key]): e for e in entries or ()}


def _ref_map(refs: Iterable[Entity] | None, key: str) -> dict[str, int]:
    return {str(r[key]): int(r.get("priority", -1)) for r in refs or ()}


def _changed_text(current: Entity, wanted: Entity) -> dict[str, str]:
    return {
        f: wanted.get(f) or ""
        for f in TEXT_FIELDS
        if (current.get(f) or "") != (wanted.get(f) or "")
    }


def _ref_diff(
    current: Iterable[Entity] | None,
    wanted: Iterable[Entity] | None,
    key: str,
    remove: Command,
    add: Command,
    add_phase: int,
) -> list[tuple[int, Command]]:
    """Remove what is gone or re-prioritised (phase REMOVE), add what is new (``add_phase``)."""
    have, want = _ref_map(current, key), _ref_map(wanted, key)
    out: list[tuple[int, Command]] = []
    for name, priority in sorted(have.items()):
        if want.get(name) != priority:
            out.append((REMOVE, {**remove, key: name}))
    for name, priority in sorted(want.items()):
        if have.get(name) != priority:
            cmd = {**add, key: name}
            if priority != -1:
                cmd["priority"] = priority
            out.append((add_phase, cmd))
    return out


def _acl_key(acl: Entity) -> tuple[str, str]:
    return str(acl["acltype"]), str(acl["topic"])


def _role_changes(name: str, current: Entity | None, wanted: Entity) -> list[tuple[int, Command]]:
    if current is None:
        return [
            (
                ROLES,
                {
                    "command": "createRole",
                    "rolename": name,
                    **_text(wanted),
                    # Only when false: a 2.0 broker refuses the field (mmc.brokers.dynsec).
                    **({} if wildcard_subs(wanted) else {"allowwildcardsubs": False}),
                    "acls": [_acl(a) for a in wanted.get("acls", [])],
                },
            )
        ]
    out: list[tuple[int, Command]] = []
    changes: dict[str, Any] = _changed_text(current, wanted)
    if wildcard_subs(current) != wildcard_subs(wanted):
        changes["allowwildcardsubs"] = wildcard_subs(wanted)
    if changes:
        out.append((ROLES, {"command": "modifyRole", "rolename": name, **changes}))
    have = {_acl_key(a): _acl(a) for a in current.get("acls", [])}
    want = {_acl_key(a): _acl(a) for a in wanted.get("acls", [])}
    for key, acl in sorted(have.items()):
        if want.get(key) != acl:
            out.append(
                (
                    REMOVE,
                    {
                        "command": "removeRoleACL",
                        "rolename": name,
                        "acltype": key[0],
                        "topic": key[1],
                    },
                )
            )
    for key, acl in sorted(want.items()):
        if have.get(key) != acl:
            out.append((ROLES, {"command": "addRoleACL", "rolename": name, **acl}))
    return out


def _group_changes(name: str, current: Entity | None, wanted: Entity) -> list[tuple[int, Command]]:
    if current is None:
        cmd: Command = {"command": "createGroup", "groupname": name, **_text(wanted)}
        cmd["roles"] = _refs(wanted.get("roles", []), "rolename")
        return [(GROUPS, cmd)]
    out: list[tuple[int, Command]] = []
    text = _changed_text(current, wanted)
    if text:
        out.append((GROUPS, {"command": "modifyGroup", "groupname": name, **text}))
    out += _ref_diff(
        current.get("roles"),
        wanted.get("roles"),
        "rolename",
        {"command": "removeGroupRole", "groupname": name},
        {
            "command": "addGroupRole",
            "groupname": name,
        },
        GROUPS,
    )
    return out


def _client_changes(name: str, current: Entity | None, wanted: Entity) -> list[tuple[int, Command]]:
    out: list[tuple[int, Command]] = []
    disabled = bool(wanted.get("disabled", False))
    if current is None:
        cmd: Command = {"command": "createClient", "username": name}
        if wanted.get("password"):
            cmd["password"] = wanted["password"]
        if wanted.get("clientid"):
            cmd["clientid"] = wanted["clientid"]
        cmd.update(_text(wanted))
        cmd["roles"] = _refs(wanted.get("roles", []), "rolename")
        cmd["groups"] = _refs(wanted.get("groups", []), "groupname")
        out.append((CLIENTS, cmd))
        if disabled:
            out.append((SETTINGS, {"command": "disableClient", "username": name}))
        return out
    text = _changed_text(current, wanted)
    if text:
        out.append((CLIENTS, {"command": "modifyClient", "username": name, **text}))
    if (current.get("clientid") or "") != (wanted.get("clientid") or ""):
        cmd = {"command": "setClientId", "username": name}
        if wanted.get("clientid"):
            cmd["clientid"] = wanted["clientid"]
        out.append((CLIENTS, cmd))
    out += _ref_diff(
        current.get("roles"),
        wanted.get("roles"),
        "rolename",
        {"command": "removeClientRole", "username": name},
        {
            "command": "addClientRole",
            "username": name,
        },
        CLIENTS,
    )
    out += _ref_diff(
        current.get("groups"),
        wanted.get("groups"),
        "groupname",
        {"command": "removeGroupClient", "username": name},
        {
            "command": "addGroupClient",
            "username": name,
        },
        CLIENTS,
    )
    if bool(current.get("disabled", False)) != disabled:
        verb = "disableClient" if disabled else "enableClient"
        out.append((SETTINGS, {"command": verb, "username": name}))
    return out


@dataclass(frozen=True)
class _Protected:
    clients: frozenset[str]
    groups: frozenset[str]
    roles: frozenset[str]

    @classmethod
    def of(cls, current: Mapping[str, Any], usernames: str | Iterable[str] | None) -> _Protected:
        """What the users mmc logs in as (one, or every connection's to this broker) hold."""
        names = {usernames} if isinstance(usernames, str) else set(usernames or ())
        have = _by(current.get("clients"), "username")
        current_groups = _by(current.get("groups"), "groupname")
        clients: set[str] = set()
        groups: set[str] = set()
        roles: set[str] = set()
        for name in names:
            client = have.get(name)
            if client is None:
                continue
            clients.add(str(client["username"]))
            mine = set(_ref_map(client.get("groups"), "groupname"))
            groups |= mine
            roles |= set(_ref_map(client.get("roles"), "rolename"))
            for g in mine:
                roles |= set(_ref_map(current_groups.get(g, {}).get("roles"), "rolename"))
        return cls(frozenset(clients), frozenset(groups), frozenset(roles))


def _check_references(
    desired: Mapping[str, Any], current: Mapping[str, Any], final: dict[str, set[str]]
) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {}

    def missing(refs: Iterable[Entity] | None, key: str, section: str) -> list[str]:
        return [
            f"{key} {ref[key]!r} is neither in the document nor on the broker"
            for ref in refs or ()
            if ref[key] not in final[section]
        ]

    for g in desired.get("groups") or ():
        found = missing(g.get("roles"), "rolename", "roles")
        if found:
            problems[f"groups.{g['groupname']}"] = found
    for c in desired.get("clients") or ():
        found = missing(c.get("roles"), "rolename", "roles")
        found += missing(c.get("groups"), "groupname", "groups")
        if found:
            problems[f"clients.{c['username']}"] = found
    anonymous = desired.get("anonymousGroup")
    if anonymous and anonymous not in final["groups"]:
        problems["anonymousGroup"] = [
            f"group {anonymous!r} is neither in the document nor on the broker"
        ]
    return problems


def plan_import(
    current: Mapping[str, Any],
    desired: Mapping[str, Any],
    *,
    protected_client: str | Iterable[str] | None = None,
) -> Plan:
    """The commands that turn the ``current`` document into the ``desired`` one.

    Raises PlanError when the desired document cannot be applied (dangling references).
    """
    plan = Plan()
    protected = _Protected.of(current, protected_client)
    kinds = (
        ("roles", "rolename", protected.roles, _role_changes, "deleteRole", DELETE_ROLES),
        ("groups", "groupname", protected.groups, _group_changes, "deleteGroup", DELETE_GROUPS),
        ("clients", "username", protected.clients, _client_changes, "deleteClient", REMOVE),
    )
    have_anonymous = current.get("anonymousGroup") or None
    anonymous = desired.get("anonymousGroup") or have_anonymous

    # What exists once the import is done (protected and anonymous entries always stay).
    final: dict[str, set[str]] = {}
    deletions: dict[str, list[str]] = {}
    for section, key, keep, _, _, _ in kinds:
        have = _by(current.get(section), key)
        if section not in desired:
            final[section], deletions[section] = set(have), []
            continue
        want = _by(desired[section], key)
        gone = sorted(set(have) - set(want))
        stays = {n for n in gone if n in keep or (section == "groups" and n == anonymous)}
        final[section] = set(want) | stays
        deletions[section] = [n for n in gone if n not in stays]
        for name in sorted(stays):
            reason = ANONYMOUS_REASON if name == anonymous and section == "groups" else None
            plan.skipped.append(
                {key: name, "action": "delete", "reason": reason or _keep_reason(section)}
            )
    problems = _check_references(desired, current, final)
    if problems:
        raise PlanError(problems)

    for section, key, keep, changes, delete, delete_phase in kinds:
        if section not in desired:
            continue
        have = _by(current.get(section), key)
        for name, wanted in sorted(_by(desired[section], key).items()):
            found = changes(name, have.get(name), wanted)
            if found and name in keep:
                plan.skipped.append(
                    {key: name, "action": "change", "reason": _keep_reason(section)}
                )
                continue
            for phase, cmd in found:
                plan.add(phase, cmd)
        for name in deletions[section]:
            plan.add(delete_phase, {"command": delete, key: name})

    _detach_deleted_roles(plan, current, deletions)
    if anonymous and anonymous != have_anonymous:
        plan.add(SETTINGS, {"command": "setAnonymousGroup", "groupname": anonymous})
    if "defaultACLAccess" in desired:
        have_acl = {a["acltype"]: bool(a["allow"]) for a in current.get("defaultACLAccess", [])}
        changed = [
            {"acltype": a["acltype"], "allow": bool(a["allow"])}
            for a in desired["defaultACLAccess"]
            if have_acl.get(a["acltype"]) != bool(a["allow"])
        ]
        if changed:
            plan.add(SETTINGS, {"command": "setDefaultACLAccess", "acls": changed})
    return plan


def _keep_reason(section: str) -> str:
    return PROTECTED_REASON if section == "clients" else PROTECTED_DEPENDENCY


def _detach_deleted_roles(
    plan: Plan, current: Mapping[str, Any], deletions: dict[str, list[str]]
) -> None:
    """Make sure no surviving client or group still holds a role when it is deleted."""
    doomed = set(deletions["roles"])
    if not doomed:
        return
    planned = {
        (c["command"], c.get("username") or c.get("groupname"), c.get("rolename"))
        for c in plan.phases[REMOVE]
    }
    owners = (
        ("clients", "username", "removeClientRole"),
        ("groups", "groupname", "removeGroupRole"),
    )
    for section, key, command in owners:
        gone = set(deletions[section])
        for name, entry in sorted(_by(current.get(section), key).items()):
            if name in gone:
                continue
            for role in sorted(doomed & set(_ref_map(entry.get("roles"), "rolename"))):
                if (command, name, role) not in planned:
                    plan.add(REMOVE, {"command": command, key: name, "rolename": role})
