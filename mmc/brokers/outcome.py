"""What happened to a command whose answer was lost.

A command handed to the link may be applied by the broker and its answer never arrive:
the link drops after sending (mosquitto itself closes mmc's connection when the roles of
its user change), or the answer is late. The control channel then waits for the link to
be back and asks here:

- A read (``get*``, ``list*``, ...) changes nothing: it is sent once more.
- A change is checked by reading the broker's state back (``CHECKS``): applied, and it is
  answered as the plugin answers success; not applied, and it is sent once more, so the
  caller gets the broker's own answer (an error such as "Client not found", or success).
  On the same connection a read is processed after the command, and after a reconnect the
  old connection is gone: a command found not applied will not be applied later.
- A change nothing can read back (a password, a client-control command: the plugins report
  no such state), or a read-back that fails too: OutcomeUnknown (502 OUTCOME_UNKNOWN),
  which says what to check.

The check compares the fields the command sets. A state that already matched before the
command reads as applied: a delete of something that did not exist is answered as done
(the broker would have said "not found"; either way it is gone), as is a ``createClient``
of an identical existing client. A concurrent change by someone else can make an applied
command read as not applied; then the repeat answers as the broker does ("already exists").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mmc.broker_strings import ascii_lower
from mmc.errors import OutcomeUnknown

Entry = dict[str, Any]
Read = Callable[[dict[str, Any]], Awaitable[Entry]]
# A check: True applied, False not applied, None cannot be told.
Check = Callable[[Read, Mapping[str, Any]], Awaitable[bool | None]]

DYNSEC = "dynamic-security"

# Commands that change nothing, of every API mmc speaks.
READS = frozenset(
    {
        "getdefaultaclaccess",
        "getclient",
        "listclients",
        "getgroup",
        "listgroups",
        "getanonymousgroup",
        "getrole",
        "listroles",
        "getdetails",
        "getlicenseinformation",
        "listplugins",
        "listlisteners",
        "getstatus",
        "getconfig",
        "getschema",
    }
)

# Fields never shown in an error's info.
_SECRETS = frozenset({"password"})


class _Missing(Exception):
    """The read found no such client, group or role."""


class Unreadable(Exception):
    """The read-back answered with an error, or in a shape that tells nothing."""


def is_read(command: Mapping[str, Any]) -> bool:
    return ascii_lower(str(command.get("command", ""))) in READS


def shown(command: Mapping[str, Any]) -> dict[str, Any]:
    """The command as an error may show it: secrets replaced, no correlation data."""
    return {
        k: ("***" if k in _SECRETS else v) for k, v in command.items() if k != "correlationData"
    }


def unknown(broker_id: str, api: str, command: Mapping[str, Any], why: str) -> OutcomeUnknown:
    name = command.get("command")
    return OutcomeUnknown(
        f"Broker {broker_id}: {name!r} was sent, but {why}. It may have been applied: "
        f"read the state it changes before sending it again.",
        info={"api": api, "command": shown(command)},
    )


def check_for(api: str, command: Mapping[str, Any]) -> Check | None:
    if api != DYNSEC:
        return None
    return CHECKS.get(ascii_lower(str(command.get("command", ""))))


# ------------------------------------------------------------------ reading back


async def _get(read: Read, kind: str, name: Any) -> dict[str, Any]:
    """getClient/getGroup/getRole's object; _Missing when it does not exist."""
    command, key = {
        "client": ("getClient", "username"),
        "group": ("getGroup", "groupname"),
        "role": ("getRole", "rolename"),
    }[kind]
    entry = await read({"command": command, key: name})
    if "error" in entry:
        message = str(entry["error"]).lower()
        if "not found" in message or "does not exist" in message:
            raise _Missing
        raise Unreadable(entry["error"])
    obj = (entry.get("data") or {}).get(kind)
    if not isinstance(obj, dict):
        raise Unreadable(f"{command} answered without a {kind}")
    return obj


def _priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return -1
    return int(value)


def _refs(items: Any, key: str) -> dict[str, int]:
    """[{rolename|groupname, priority?}] as name -> priority (-1: none)."""
    out: dict[str, int] = {}
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and isinstance(item.get(key), str):
                out.setdefault(item[key], _priority(item.get("priority")))
    return out


def _text(obj: Mapping[str, Any], field: str) -> str:
    value = obj.get(field)
    return value if isinstance(value, str) else ""


def _fields_match(
    obj: Mapping[str, Any], command: Mapping[str, Any], fields: tuple[str, ...]
) -> bool:
    return all(_text(obj, f) == (command[f] or "") for f in fields if f in command)


def _acl_key(acl: Mapping[str, Any]) -> tuple[str, str]:
    return ascii_lower(str(acl.get("acltype", ""))), str(acl.get("topic", ""))


def _acls(items: Any) -> dict[tuple[str, str], tuple[bool, int]]:
    out: dict[tuple[str, str], tuple[bool, int]] = {}
    if isinstance(items, list):
        for acl in items:
            if isinstance(acl, dict):
                out[_acl_key(acl)] = (acl.get("allow") is True, _priority(acl.get("priority")))
    return out


async def _exists(read: Read, kind: str, key: str, command: Mapping[str, Any]) -> bool:
    try:
        await _get(read, kind, command.get(key))
    except _Missing:
        return False
    return True


def _creates(kind: str, key: str, fields: tuple[str, ...]) -> Check:
    async def check(read: Read, command: Mapping[str, Any]) -> bool:
        try:
            obj = await _get(read, kind, command.get(key))
        except _Missing:
            return False
        return _fields_match(obj, command, fields)

    return check


def _deletes(kind: str, key: str) -> Check:
    async def check(read: Read, command: Mapping[str, Any]) -> bool:
        return not await _exists(read, kind, key, command)

    return check


def _holds(kind: str, key: str, list_field: str, item_key: str, *, added: bool) -> Check:
    """add/remove of a role or group reference on a client or group."""

    async def check(read: Read, command: Mapping[str, Any]) -> bool:
        try:
            obj = await _get(read, kind, command.get(key))
        except _Missing:
            return False
        refs = _refs(obj.get(list_field), item_key)
        name = command.get(item_key)
        if not added:
            return name not in refs
        if name not in refs:
            return False
        return "priority" not in command or refs[name] == _priority(command["priority"])

    return check


async def _group_client(read: Read, command: Mapping[str, Any], *, added: bool) -> bool:
    try:
        client = await _get(read, "client", command.get("username"))
    except _Missing:
        return False
    groups = _refs(client.get("groups"), "groupname")
    name = command.get("groupname")
    if not added:
        return name not in groups
    if name not in groups:
        return False
    return "priority" not in command or groups[name] == _priority(command["priority"])


async def _add_group_client(read: Read, command: Mapping[str, Any]) -> bool:
    return await _group_client(read, command, added=True)


async def _remove_group_client(read: Read, command: Mapping[str, Any]) -> bool:
    return await _group_client(read, command, added=False)


def _enabled(enabled: bool) -> Check:
    async def check(read: Read, command: Mapping[str, Any]) -> bool:
        try:
            client = await _get(read, "client", command.get("username"))
        except _Missing:
            return False
        return (client.get("disabled") is True) != enabled

    return check


async def _set_client_id(read: Read, command: Mapping[str, Any]) -> bool:
    try:
        client = await _get(read, "client", command.get("username"))
    except _Missing:
        return False
    return _text(client, "clientid") == (command.get("clientid") or "")


async def _modify_client(read: Read, command: Mapping[str, Any]) -> bool | None:
    try:
        client = await _get(read, "client", command.get("username"))
    except _Missing:
        return False
    if not _fields_match(client, command, ("clientid", "textname", "textdescription")):
        return False
    for field, key in (("roles", "rolename"), ("groups", "groupname")):
        if field in command and _refs(client.get(field), key) != _refs(command[field], key):
            return False
    # Everything readable matches; a new password cannot be read back.
    return None if "password" in command else True


async def _modify_group(read: Read, command: Mapping[str, Any]) -> bool:
    try:
        group = await _get(read, "group", command.get("groupname"))
    except _Missing:
        return False
    if not _fields_match(group, command, ("textname", "textdescription")):
        return False
    return "roles" not in command or _refs(group.get("roles"), "rolename") == _refs(
        command["roles"], "rolename"
    )


async def _modify_role(read: Read, command: Mapping[str, Any]) -> bool:
    try:
        role = await _get(read, "role", command.get("rolename"))
    except _Missing:
        return False
    if not _fields_match(role, command, ("textname", "textdescription")):
        return False
    if "acls" not in command:
        return True
    have, want = _acls(role.get("acls")), _acls(command["acls"])
    # A priority the command leaves out is the plugin's default; compare the rest.
    return have.keys() == want.keys() and all(
        have[k][0] == allow and (p == -1 or have[k][1] == p) for k, (allow, p) in want.items()
    )


async def _add_role_acl(read: Read, command: Mapping[str, Any]) -> bool:
    try:
        role = await _get(read, "role", command.get("rolename"))
    except _Missing:
        return False
    found = _acls(role.get("acls")).get(_acl_key(command))
    if found is None or found[0] != (command.get("allow") is True):
        return False
    return "priority" not in command or found[1] == _priority(command["priority"])


async def _remove_role_acl(read: Read, command: Mapping[str, Any]) -> bool:
    try:
        role = await _get(read, "role", command.get("rolename"))
    except _Missing:
        return False
    return _acl_key(command) not in _acls(role.get("acls"))


async def _set_default_acl_access(read: Read, command: Mapping[str, Any]) -> bool:
    entry = await read({"command": "getDefaultACLAccess"})
    if "error" in entry:
        raise Unreadable(entry["error"])
    have = {
        ascii_lower(str(a.get("acltype"))): a.get("allow") is True
        for a in (entry.get("data") or {}).get("acls") or []
        if isinstance(a, dict)
    }
    want = command.get("acls")
    if not isinstance(want, list):
        return False
    return all(
        have.get(ascii_lower(str(a.get("acltype")))) == (a.get("allow") is True)
        for a in want
        if isinstance(a, dict)
    )


async def _set_anonymous_group(read: Read, command: Mapping[str, Any]) -> bool:
    entry = await read({"command": "getAnonymousGroup"})
    if "error" in entry:
        raise Unreadable(entry["error"])
    group = (entry.get("data") or {}).get("group") or {}
    return isinstance(group, dict) and group.get("groupname") == command.get("groupname")


async def _unreadable(read: Read, command: Mapping[str, Any]) -> None:
    return None


CHECKS: dict[str, Check] = {
    "createclient": _creates("client", "username", ("clientid", "textname", "textdescription")),
    "deleteclient": _deletes("client", "username"),
    "enableclient": _enabled(True),
    "disableclient": _enabled(False),
    "setclientid": _set_client_id,
    "setclientpassword": _unreadable,
    "modifyclient": _modify_client,
    "addclientrole": _holds("client", "username", "roles", "rolename", added=True),
    "removeclientrole": _holds("client", "username", "roles", "rolename", added=False),
    "addgroupclient": _add_group_client,
    "removegroupclient": _remove_group_client,
    "creategroup": _creates("group", "groupname", ("textname", "textdescription")),
    "deletegroup": _deletes("group", "groupname"),
    "modifygroup": _modify_group,
    "addgrouprole": _holds("group", "groupname", "roles", "rolename", added=True),
    "removegrouprole": _holds("group", "groupname", "roles", "rolename", added=False),
    "setanonymousgroup": _set_anonymous_group,
    "createrole": _creates("role", "rolename", ("textname", "textdescription")),
    "deleterole": _deletes("role", "rolename"),
    "modifyrole": _modify_role,
    "addroleacl": _add_role_acl,
    "removeroleacl": _remove_role_acl,
    "setdefaultaclaccess": _set_default_acl_access,
}
