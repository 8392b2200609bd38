"""mmc must not cut off its own access to a broker.

Every connection logs in to its broker as a dynamic-security client (its ``username``).
Before dynamic-security commands are sent, ``check`` reads what they touch (getClient,
getGroup, getRole), plays them on that copy and refuses (409 ``CONFLICT``) those that would
lock one of mmc's own logins out of the broker, unless the request says ``force``:

- ``deleteClient`` or ``disableClient`` of an own user;
- a client id (``setClientId``, ``modifyClient``) other than the one mmc connects with:
  the plugin then refuses mmc's CONNECT. Removing the client id is always fine; setting it
  is fine only when every link logging in as that user has that exact, fixed client id
  (not a generated one, and no per-replica suffix);
- any change of roles, groups, memberships or ACLs after which the user loses one of the
  three grants the dynamic-security API needs (see ``NEEDED``) that it had before. Access is
  computed as mosquitto 2.0's plugin decides it: the client's roles, then its groups in
  priority order (ties: by name) with each group's roles, each role's ACLs of the type in
  priority order; the first ACL whose topic matches decides; none matching means denied
  (``$CONTROL`` topics never fall through to the default ACL access). It is checked after
  the last command, before every command that goes to the broker in a message of its own
  (``deleteRole``, ``deleteGroup``, and those after which mosquitto disconnects an own
  login), and after each of the latter (mmc must log back in and send the rest). So a batch
  must grant the new access before it takes the old away.

An own login is the username of every connection reaching the same broker address (host and
port) in this process, not only the one the request goes through: several connections may
log in to one broker as different users. Connections that reach the same broker under
another address or listener are not recognised.

Names are compared as the plugin reads them: up to the first NUL. A ``modifyClient`` of an
own user naming an unknown role is refused (400) too: mosquitto 2.0 would apply its client
id and password, then fail and disconnect mmc, whose answer would be lost.

``check`` also reports password changes of own users, so the caller can keep the stored
connection passwords in step, and which commands make mosquitto disconnect an own login
(see mmc.web.own_user).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmc.brokers.dynsec import Dynsec, Existing
from mmc.errors import Conflict, InvalidInput

# What mmc needs to use the dynamic-security API: send requests, be sent the responses,
# and subscribe to them (on every reconnect).
REQUEST_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"
NEEDED: tuple[tuple[str, str], ...] = (
    ("publishClientSend", REQUEST_TOPIC),
    ("publishClientReceive", RESPONSE_TOPIC),
    ("subscribe", RESPONSE_TOPIC),
)

# Commands that can take access away or change a login, by lower-cased name. The client
# commands matter only for an own user; group and role commands need a look at the broker.
_CLIENT_COMMANDS = frozenset(
    {
        "deleteclient",
        "disableclient",
        "setclientid",
        "modifyclient",
        "removeclientrole",
        "addclientrole",
        "addgroupclient",
        "removegroupclient",
        "setclientpassword",
        "createclient",
    }
)
_GROUP_ROLE_COMMANDS = frozenset(
    {
        "modifygroup",
        "deletegroup",
        "addgrouprole",
        "removegrouprole",
        "modifyrole",
        "deleterole",
        "addroleacl",
        "removeroleacl",
    }
)
# Commands after which mosquitto 2.0 disconnects the clients concerned (before answering).
_CLOSES_CLIENT = frozenset(
    {
        "deleteclient",
        "disableclient",
        "setclientid",
        "setclientpassword",
        "modifyclient",
        "addclientrole",
        "removeclientrole",
        "addgroupclient",
        "removegroupclient",
    }
)
_CLOSES_GROUP = frozenset({"addgrouprole", "removegrouprole", "modifygroup", "deletegroup"})
_CLOSES_ROLE = frozenset({"addroleacl", "removeroleacl", "modifyrole", "deleterole"})
# Sent in a message of their own (mmc.brokers.dynsec.Dynsec.run): access must hold up to them.
_BOUNDARIES = frozenset({"deleterole", "deletegroup"})
_READS = ("get", "list")


@dataclass(frozen=True)
class Login:
    """One of mmc's own logins on the broker: a username and the links that use it."""

    username: str
    connections: tuple[str, ...]
    # The client id every one of those links connects with, when it is fixed and the same
    # for all of them; None when it is generated or differs (then no client id may be set).
    client_id: str | None


@dataclass
class Outcome:
    """What ``check`` found besides conflicts, by index of the command."""

    # New passwords of own users: (username, password).
    passwords: dict[int, tuple[str, str]] = field(default_factory=dict)
    # Commands after which mosquitto disconnects one of mmc's own logins, before answering
    # (it does that to every client a change of its user, groups or roles concerns): they
    # must travel alone, so that no other command's answer is lost with theirs.
    alone: set[int] = field(default_factory=set)


def _lower(command: Mapping[str, Any]) -> str:
    return str(command.get("command", "")).lower()


def _str(value: Any) -> str | None:
    """A name as the plugin reads it: a string, up to the first NUL (C strings end there)."""
    return value.split("\x00", 1)[0] if isinstance(value, str) else None


def _name(command: Mapping[str, Any], key: str) -> str:
    return _str(command.get(key)) or ""


def _refs(refs: Any, key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for ref in refs if isinstance(refs, list) else ():
        name = _str(ref.get(key)) if isinstance(ref, Mapping) else None
        if isinstance(ref, Mapping) and name is not None:
            priority = ref.get("priority", -1)
            out[name] = priority if isinstance(priority, int) else -1
    return out


def _acls(acls: Any) -> list[dict[str, Any]]:
    """A role's ACLs in the order the plugin checks them: by priority, highest first,
    ties in the order they were added (which is the order getRole lists them)."""
    out = [
        {
            "acltype": str(a.get("acltype", "")).lower(),
            "topic": _str(a.get("topic")),
            "priority": a.get("priority", -1) if isinstance(a.get("priority", -1), int) else -1,
            "allow": bool(a.get("allow", False)),
        }
        for a in (acls if isinstance(acls, list) else ())
        if isinstance(a, Mapping) and isinstance(a.get("topic"), str)
    ]
    return sorted(out, key=lambda a: -a["priority"])


# ------------------------------------------------------------------ topic matching


def topic_matches(pattern: str, topic: str) -> bool:
    """``mosquitto_topic_matches_sub``: does an ACL topic (a filter) match a topic?
    A filter starting with a wildcard never matches a ``$`` topic."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    levels = topic.split("/")
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return False
    return len(parts) == len(levels)


def subscription_covered(pattern: str, subscription: str) -> bool:
    """The plugin's ``sub_acl_check``: is a subscription within a subscribePattern ACL?"""
    if pattern == "#":
        return True
    acl = pattern.split("/")
    sub = subscription.split("/")
    acl_hash = acl[-1] == "#"
    sub_hash = sub[-1] == "#"
    acl = acl[:-1] if acl_hash else acl
    sub = sub[:-1] if sub_hash else sub
    if (sub_hash and not acl_hash) or len(acl) > len(sub):
        return False
    if len(sub) > len(acl) and not acl_hash:
        return False
    return all(a in ("+", s) for a, s in zip(acl, sub, strict=False))


# ------------------------------------------------------------------ the model


@dataclass
class State:
    """What the plugin holds for the names a check needs; None: does not exist."""

    clients: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    groups: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    roles: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    # -- access

    def _role_lists(self, client: Mapping[str, Any]) -> list[list[str]]:
        def ordered(refs: Mapping[str, int]) -> list[str]:
            return [name for name, _ in sorted(refs.items(), key=lambda r: (-r[1], r[0]))]

        lists = [ordered(client["roles"])]
        for groupname in ordered(client["groups"]):
            group = self.groups.get(groupname)
            if group is not None:
                lists.append(ordered(group["roles"]))
        return lists

    def allowed(self, username: str, acltype: str, topic: str) -> bool:
        """Would the plugin grant ``username`` this access (see the module docstring)?"""
        client = self.clients.get(username)
        if client is None:
            return False
        for rolenames in self._role_lists(client):
            for rolename in rolenames:
                role = self.roles.get(rolename)
                if role is None:
                    continue
                decision = _decide(role["acls"], acltype, topic)
                if decision is not None:
                    return decision
        return False

    def closes(self, command: Mapping[str, Any], users: Iterable[str]) -> bool:
        """Does mosquitto disconnect one of ``users`` after this command?"""
        name = _lower(command)
        clients = [c for u in users if (c := self.clients.get(u)) is not None]
        if name in _CLOSES_CLIENT:
            return _str(command.get("username")) in set(users)
        if name in _CLOSES_GROUP:
            return any(_str(command.get("groupname")) in c["groups"] for c in clients)
        if name in _CLOSES_ROLE:
            rolename = _str(command.get("rolename"))
            return any(
                rolename in c["roles"]
                or any(
                    rolename in g["roles"]
                    for name in c["groups"]
                    if (g := self.groups.get(name)) is not None
                )
                for c in clients
            )
        return False

    def grants(self, username: str) -> frozenset[tuple[str, str]]:
        return frozenset(need for need in NEEDED if self.allowed(username, *need))

    # -- playing commands

    def _client(self, command: Mapping[str, Any]) -> dict[str, Any] | None:
        return self.clients.get(_str(command.get("username")) or "")

    def apply(self, command: Mapping[str, Any]) -> None:
        """Change the copy as the plugin would; a command the plugin refuses changes nothing."""
        name = _lower(command)
        handler = getattr(self, f"_do_{name}", None)
        if handler is not None:
            handler(command)

    def _do_createclient(self, cmd: Mapping[str, Any]) -> None:
        username = _str(cmd.get("username"))
        if username in self.clients and self.clients[username] is None:
            self.clients[username] = _client_entry(cmd)

    def _do_deleteclient(self, cmd: Mapping[str, Any]) -> None:
        if self._client(cmd) is not None:
            self.clients[_name(cmd, "username")] = None

    def _do_disableclient(self, cmd: Mapping[str, Any]) -> None:
        client = self._client(cmd)
        if client is not None:
            client["disabled"] = True

    def _do_enableclient(self, cmd: Mapping[str, Any]) -> None:
        client = self._client(cmd)
        if client is not None:
            client["disabled"] = False

    def _do_setclientid(self, cmd: Mapping[str, Any]) -> None:
        client = self._client(cmd)
        if client is not None:
            client["clientid"] = _str(cmd.get("clientid")) or None

    def _known(self, refs: Iterable[str], kind: dict[str, dict[str, Any] | None]) -> bool:
        return all(kind.get(name) is not None for name in refs)

    def _do_modifyclient(self, cmd: Mapping[str, Any]) -> None:
        client = self._client(cmd)
        if client is None:
            return
        if "roles" in cmd and not isinstance(cmd["roles"], list):
            return  # the plugin refuses the command
        # (A "groups" that is not a list is ignored by the plugin.)
        roles = _refs(cmd["roles"], "rolename") if "roles" in cmd else None
        groups = _refs(cmd["groups"], "groupname") if _is_list(cmd, "groups") else None
        if (roles and not self._known(roles, self.roles)) or (
            groups and not self._known(groups, self.groups)
        ):
            return
        if "clientid" in cmd:
            client["clientid"] = _str(cmd.get("clientid")) or None
        if roles is not None:
            client["roles"] = roles
        if groups is not None:
            client["groups"] = groups

    def _do_addclientrole(self, cmd: Mapping[str, Any]) -> None:
        client, rolename = self._client(cmd), _str(cmd.get("rolename")) or ""
        if client is not None and self.roles.get(rolename) is not None:
            client["roles"].setdefault(rolename, _priority(cmd))

    def _do_removeclientrole(self, cmd: Mapping[str, Any]) -> None:
        client = self._client(cmd)
        if client is not None:
            client["roles"].pop(_str(cmd.get("rolename")) or "", None)

    def _do_addgroupclient(self, cmd: Mapping[str, Any]) -> None:
        client, groupname = self._client(cmd), _str(cmd.get("groupname")) or ""
        if client is not None and self.groups.get(groupname) is not None:
            client["groups"].setdefault(groupname, _priority(cmd))

    def _do_removegroupclient(self, cmd: Mapping[str, Any]) -> None:
        client = self._client(cmd)
        if client is not None:
            client["groups"].pop(_str(cmd.get("groupname")) or "", None)

    def _group(self, cmd: Mapping[str, Any]) -> dict[str, Any] | None:
        return self.groups.get(_str(cmd.get("groupname")) or "")

    def _do_creategroup(self, cmd: Mapping[str, Any]) -> None:
        groupname = _str(cmd.get("groupname"))
        roles = _refs(cmd.get("roles"), "rolename")
        if (
            groupname in self.groups
            and self.groups[groupname] is None
            and self._known(roles, self.roles)
        ):
            self.groups[groupname] = {"roles": roles}

    def _do_modifygroup(self, cmd: Mapping[str, Any]) -> None:
        group = self._group(cmd)
        if group is None:
            return
        groupname = _name(cmd, "groupname")
        if "roles" in cmd:
            if not isinstance(cmd["roles"], list):
                return  # the plugin refuses the command
            roles = _refs(cmd["roles"], "rolename")
            if not self._known(roles, self.roles):
                return
            group["roles"] = roles
        if _is_list(cmd, "clients"):
            members = _refs(cmd.get("clients"), "username")
            for username, client in self.clients.items():
                if client is None:
                    continue
                if username in members:
                    client["groups"][groupname] = members[username]
                else:
                    client["groups"].pop(groupname, None)

    def _do_deletegroup(self, cmd: Mapping[str, Any]) -> None:
        if self._group(cmd) is None:
            return
        groupname = _name(cmd, "groupname")
        self.groups[groupname] = None
        for client in self.clients.values():
            if client is not None:
                client["groups"].pop(groupname, None)

    def _do_addgrouprole(self, cmd: Mapping[str, Any]) -> None:
        group, rolename = self._group(cmd), _str(cmd.get("rolename")) or ""
        if group is not None and self.roles.get(rolename) is not None:
            group["roles"].setdefault(rolename, _priority(cmd))

    def _do_removegrouprole(self, cmd: Mapping[str, Any]) -> None:
        group = self._group(cmd)
        if group is not None:
            group["roles"].pop(_str(cmd.get("rolename")) or "", None)

    def _role(self, cmd: Mapping[str, Any]) -> dict[str, Any] | None:
        return self.roles.get(_str(cmd.get("rolename")) or "")

    def _do_createrole(self, cmd: Mapping[str, Any]) -> None:
        rolename = _str(cmd.get("rolename"))
        if rolename in self.roles and self.roles[rolename] is None:
            self.roles[rolename] = {"acls": _acls(cmd.get("acls"))}

    def _do_modifyrole(self, cmd: Mapping[str, Any]) -> None:
        role = self._role(cmd)
        if role is not None and _is_list(cmd, "acls"):
            role["acls"] = _acls(cmd.get("acls"))

    def _do_deleterole(self, cmd: Mapping[str, Any]) -> None:
        if self._role(cmd) is None:
            return
        rolename = _name(cmd, "rolename")
        self.roles[rolename] = None
        for owner in (*self.clients.values(), *self.groups.values()):
            if owner is not None:
                owner["roles"].pop(rolename, None)

    def _do_addroleacl(self, cmd: Mapping[str, Any]) -> None:
        role = self._role(cmd)
        new = _acls([cmd])
        if role is None or not new:
            return
        acl = new[0]
        if any((a["acltype"], a["topic"]) == (acl["acltype"], acl["topic"]) for a in role["acls"]):
            return  # the plugin answers "ACL with this topic already exists"
        role["acls"] = sorted([*role["acls"], acl], key=lambda a: -a["priority"])

    def _do_removeroleacl(self, cmd: Mapping[str, Any]) -> None:
        role = self._role(cmd)
        if role is not None:
            key = (str(cmd.get("acltype", "")).lower(), _str(cmd.get("topic")))
            role["acls"] = [a for a in role["acls"] if (a["acltype"], a["topic"]) != key]


def _is_list(cmd: Mapping[str, Any], key: str) -> bool:
    return isinstance(cmd.get(key), list)


def _priority(cmd: Mapping[str, Any]) -> int:
    priority = cmd.get("priority", -1)
    return priority if isinstance(priority, int) else -1


def _client_entry(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "clientid": _str(data.get("clientid")) or None,
        "disabled": bool(data.get("disabled", False)),
        "roles": _refs(data.get("roles"), "rolename"),
        "groups": _refs(data.get("groups"), "groupname"),
    }


def _decide(acls: Sequence[Mapping[str, Any]], acltype: str, topic: str) -> bool | None:
    """One role's answer: allow, deny, or None when no ACL of it matches."""
    if acltype == "subscribe":
        for acl in acls:
            if acl["acltype"] == "subscribeliteral" and acl["topic"] == topic:
                return bool(acl["allow"])
        for acl in acls:
            if acl["acltype"] == "subscribepattern" and subscription_covered(acl["topic"], topic):
                return bool(acl["allow"])
        return None
    wanted = acltype.lower()
    for acl in acls:
        if acl["acltype"] == wanted and topic_matches(acl["topic"], topic):
            return bool(acl["allow"])
    return None


# ------------------------------------------------------------------ reading the broker


async def _read(ds: Dynsec, command: str, key: str, name: str) -> dict[str, Any] | None:
    entry = await ds.send({"command": command, key: name})
    data = entry.get("data")
    if "error" in entry or not isinstance(data, Mapping):
        return None
    found = data.get(key.removesuffix("name") if key != "username" else "client")
    return dict(found) if isinstance(found, Mapping) else None


async def _load(
    ds: Dynsec, state: State, clients: Iterable[str], groups: Iterable[str], roles: Iterable[str]
) -> None:
    """Read what ``state`` lacks: the named clients, groups and roles, then the groups and
    roles those refer to."""
    for _ in range(3):  # clients -> their groups -> the roles of both
        wanted = [
            ("getClient", "username", state.clients, sorted(set(clients) - set(state.clients))),
            ("getGroup", "groupname", state.groups, sorted(set(groups) - set(state.groups))),
            ("getRole", "rolename", state.roles, sorted(set(roles) - set(state.roles))),
        ]
        jobs = [
            (kind, name, _read(ds, cmd, key, name))
            for cmd, key, kind, names in wanted
            for name in names
        ]
        if not jobs:
            return
        found = await asyncio.gather(*(job for _, _, job in jobs))
        for (kind, name, _), entry in zip(jobs, found, strict=True):
            if entry is None:
                kind[name] = None
            elif kind is state.clients:
                kind[name] = _client_entry(entry)
            elif kind is state.groups:
                kind[name] = {"roles": _refs(entry.get("roles"), "rolename")}
            else:
                kind[name] = {"acls": _acls(entry.get("acls"))}
        clients = []
        groups = [g for c in state.clients.values() if c is not None for g in c["groups"]]
        roles = [
            r
            for owner in (*state.clients.values(), *state.groups.values())
            if owner is not None
            for r in owner["roles"]
        ]


def _names(commands: Sequence[Mapping[str, Any]], key: str, plural: str) -> set[str]:
    names: set[str] = set()
    for command in commands:
        name = _str(command.get(key))
        if name is not None:
            names.add(name)
        names |= set(_refs(command.get(plural), key))
    return names


# ------------------------------------------------------------------ the check


def changes_password(command: Mapping[str, Any], users: set[str]) -> bool:
    """Does the command set the password of one of ``users``?"""
    return (
        _lower(command) in ("setclientpassword", "modifyclient")
        and _str(command.get("username")) in users
        # "" is refused by setClientPassword and ignored by modifyClient.
        and bool(_str(command.get("password")))
    )


def _relevant(commands: Sequence[Mapping[str, Any]], users: set[str]) -> bool:
    for command in commands:
        name = _lower(command)
        if name in _GROUP_ROLE_COMMANDS:
            return True
        if name in _CLIENT_COMMANDS and _str(command.get("username")) in users:
            return True
    return False


def _client_id_problem(login: Login, clientid: str | None) -> str | None:
    if not clientid or clientid == login.client_id:
        return None
    used = (
        f"connects with client id {login.client_id!r}"
        if login.client_id
        else ("connects with a client id of its own (generated, or one per replica)")
    )
    return (
        f"mmc {used} as {login.username!r}: the broker would refuse it with client id {clientid!r}"
    )


def _explicit_problem(command: Mapping[str, Any], login: Login) -> str | None:
    """Commands on an own user that lock the login out whatever its roles."""
    name = _lower(command)
    if name == "deleteclient":
        return f"it deletes {login.username!r}, the user mmc logs in with"
    if name == "disableclient":
        return f"it disables {login.username!r}, the user mmc logs in with"
    if name == "setclientid" or (name == "modifyclient" and "clientid" in command):
        return _client_id_problem(login, _str(command.get("clientid")))
    return None


def _check_modify_roles(state: State, command: Mapping[str, Any]) -> None:
    """A modifyClient of an own user whose roles the plugin would refuse: mosquitto 2.0
    changes the client id and password first, then answers the error and disconnects mmc
    (the answer is lost). Refused here, before anything changes."""
    if _lower(command) != "modifyclient" or "roles" not in command:
        return
    roles = command["roles"]
    if not isinstance(roles, list) or not all(
        isinstance(r, Mapping) and isinstance(r.get("rolename"), str) for r in roles
    ):
        raise InvalidInput(
            "'roles' not an array or missing/invalid rolename",
            info={"roles": ["A list of {rolename, priority?}."]},
        )
    unknown = sorted(name for r in roles if state.roles.get(name := _name(r, "rolename")) is None)
    if unknown:
        raise InvalidInput(
            "Role not found",
            info={"roles": [f"Unknown role {name!r}." for name in unknown]},
        )


def _lost(before: frozenset[tuple[str, str]], after: frozenset[tuple[str, str]]) -> str:
    return ", ".join(
        f"{acltype} on {topic}" for acltype, topic in NEEDED if (acltype, topic) in before - after
    )


async def check(
    ds: Dynsec,
    commands: Sequence[Mapping[str, Any]],
    logins: Sequence[Login],
    *,
    force: bool = False,
) -> Outcome:
    """Raise Conflict if ``commands`` would cut one of ``logins`` off the broker (unless
    ``force``); report the new passwords they give own users, and which commands must be
    sent alone."""
    outcome = Outcome()
    by_user = {login.username: login for login in logins}
    users = set(by_user)
    for i, command in enumerate(commands):
        if changes_password(command, users):
            # What the broker keeps: up to a NUL, as for names.
            outcome.passwords[i] = (_name(command, "username"), _name(command, "password"))
    outcome.alone = set(outcome.passwords)
    if not users or not _relevant(commands, users):
        return outcome

    state = State()
    await _load(
        ds,
        state,
        users,
        _names(commands, "groupname", "groups"),
        _names(commands, "rolename", "roles"),
    )
    before = {u: state.grants(u) for u in users if state.clients.get(u) is not None}
    for i, command in enumerate(commands):
        closes = state.closes(command, users)
        if closes:
            outcome.alone.add(i)
        if not force:
            if closes or _lower(command) in _BOUNDARIES:
                # It starts a message of its own: mmc must be able to send it.
                _compare(state, before, by_user, command)
            login = by_user.get(_name(command, "username"))
            if login is not None and state.clients.get(login.username) is not None:
                problem = _explicit_problem(command, login)
                if problem is not None:
                    raise _conflict(command, login, problem)
                _check_modify_roles(state, command)
        state.apply(command)
        if closes and not force:
            # mosquitto disconnects mmc after it: mmc must log back in, and send the rest.
            _compare(state, before, by_user, command)
    if not force:
        _compare(state, before, by_user, None)
    return outcome


def _compare(
    state: State,
    before: Mapping[str, frozenset[tuple[str, str]]],
    logins: Mapping[str, Login],
    command: Mapping[str, Any] | None,
) -> None:
    for username, had in before.items():
        lost = _lost(had, state.grants(username))
        if lost:
            raise _conflict(
                command,
                logins[username],
                f"{username!r}, the user mmc logs in with, would lose {lost}",
            )


def _conflict(command: Mapping[str, Any] | None, login: Login, reason: str) -> Conflict:
    what = f"{command.get('command')} refused" if command is not None else "Refused"
    connections = ", ".join(login.connections)
    return Conflict(
        f"{what}: {reason}, and mmc would lose its access to the broker (connection "
        f"{connections}). Add ?force=true to do it anyway.",
        info={"username": login.username, "connections": list(login.connections)},
    )


# ------------------------------------------------------------------ resource routes


class Recorder(Dynsec):
    """A Dynsec that sends reads but only writes down changes: what a resource route
    would send, as plugin commands, for ``check``."""

    def __init__(self, ds: Dynsec) -> None:
        super().__init__(ds.channel)
        self._ds = ds
        self.commands: list[dict[str, Any]] = []

    async def send(
        self, command: Mapping[str, Any], *, existing: Existing | None = None
    ) -> dict[str, Any]:
        if _lower(command).startswith(_READS):
            return await self._ds.send(command, existing=existing)
        self.commands.append(dict(command))
        return {"command": command.get("command")}


async def recorded(ds: Dynsec, change: Callable[[Dynsec], Awaitable[Any]]) -> list[dict[str, Any]]:
    """The plugin commands ``change`` sends (reads excepted), without sending them."""
    recorder = Recorder(ds)
    await change(recorder)
    return recorder.commands
