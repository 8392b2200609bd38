"""Migration from the Cedalo MMC: the connections of its ``config.json`` and the users of a
users file, into mmc's store (``mmc import-mmc``).

Each connection is checked as ``POST /api/connections`` checks it (the same schema, the same
TLS checks, so an entry is refused with the same messages) and stored by the same
repository (secrets encrypted). Nothing here opens a broker link: running servers follow
the store (PostgreSQL: its change feed; SQLite: at their next start).

The MMC's users live in its licensed user-management plugin, whose file format is not
published. A users file is read as a list of ``{username, roles | role, password?}``,
``{"users": [...]}`` or ``{"users": {name: {...}}}``. A ``password`` is a hash: mmc keeps
it when it is one of its own (scrypt), and otherwise creates the user disabled (it cannot
log in until a password is set), since the MMC's hashes cannot be verified here. A value is
never taken for a clear password.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marshmallow import ValidationError

from mmc.auth.passwords import locked, usable
from mmc.auth.permissions import Role
from mmc.errors import Conflict, InvalidInput, NotAllowed
from mmc.schemas.connections import connection_schema
from mmc.schemas.users import USERNAME
from mmc.services.connections import merge, tls_context
from mmc.store.connections import MAX_CONNECTIONS_MESSAGE, ConnectionRepository
from mmc.store.users import UserRepository

# What the MMC's roles are called in mmc (they have the same names; matched ignoring case).
ROLE_MAP: dict[str, Role] = {role.value.lower(): role for role in Role}
DISABLED_MARK = locked("imported from the Cedalo MMC")

CREATED = "created"
REPLACED = "replaced"
SKIPPED = "skipped"  # already in mmc under that id or username
CONFLICT = "conflict"  # not imported: its name belongs to another connection
INVALID = "invalid"  # not imported: refused by the checks the API applies
REFUSED = "refused"  # not imported: the store refused it (connection limit)
NOT_IMPORTED = frozenset({CONFLICT, INVALID, REFUSED})


class ImportFileError(ValueError):
    """A file that is not what the import reads: nothing was imported."""


@dataclass(frozen=True)
class Item:
    kind: str  # "connection" or "user"
    label: str  # its id or username, or "#n" (its place in the file) when it has none
    outcome: str
    detail: str = ""
    disabled: bool = False


@dataclass
class ImportReport:
    dry_run: bool
    items: list[Item] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def of(self, kind: str, outcome: str | None = None) -> list[Item]:
        return [
            i for i in self.items if i.kind == kind and (outcome is None or i.outcome == outcome)
        ]

    @property
    def complete(self) -> bool:
        """Every entry of the files is in mmc now (or would be, in a dry run)."""
        return not any(i.outcome in NOT_IMPORTED for i in self.items)

    def summary(self, kind: str) -> str:
        counts = [
            f"{len(found)} {outcome}"
            for outcome in (CREATED, REPLACED, SKIPPED, CONFLICT, INVALID, REFUSED)
            if (found := self.of(kind, outcome))
        ]
        disabled = [i for i in self.of(kind, CREATED) if i.disabled]
        if disabled:
            counts.append(f"{len(disabled)} of them disabled")
        return ", ".join(counts) or "none"

    def lines(self) -> list[str]:
        out: list[str] = []
        if self.dry_run:
            out.append("dry run: nothing was changed; this is what the import would do")
        for kind, title in (("connection", "connections"), ("user", "users")):
            items = self.of(kind)
            if not items:
                continue
            out.append(f"{title}:")
            width = max(len(i.label) for i in items)
            for item in items:
                verb = item.outcome
                if self.dry_run and verb in (CREATED, REPLACED):
                    verb = "would be " + verb
                out.append(f"  {verb:<20} {item.label:<{width}}  {item.detail}".rstrip())
        out.extend(f"note: {note}" for note in self.notes)
        for kind, title in (("connection", "connections"), ("user", "users")):
            if self.of(kind):
                out.append(f"{title}: {self.summary(kind)}")
        return out


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFileError(f"cannot read {path}: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ImportFileError(f"{path} is not JSON: {exc}") from None


def read_config(path: Path) -> list[Any]:
    """The ``connections`` of an MMC ``config.json``."""
    document = _read_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("connections"), list):
        raise ImportFileError(
            f'{path} is not an MMC config.json: it needs a list of connections at "connections"'
        )
    connections: list[Any] = document["connections"]
    return connections


def read_users(path: Path) -> list[tuple[str | None, Any]]:
    """The entries of a users file, each with the key it was found under (if any)."""
    document = _read_json(path)
    users = document.get("users") if isinstance(document, dict) else document
    if isinstance(users, list):
        return [(None, entry) for entry in users]
    if isinstance(users, dict):
        return [(str(key), entry) for key, entry in users.items()]
    raise ImportFileError(
        f'{path} is not a users file: it needs a list of users, or one at "users"'
    )


def _flatten(messages: Any, prefix: str = "") -> list[str]:
    """marshmallow's nested messages as ``field.sub: message`` lines."""
    if isinstance(messages, Mapping):
        out: list[str] = []
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.extend(_flatten(value, name))
        return out
    if isinstance(messages, list | tuple):
        return [line for m in messages for line in _flatten(m, prefix)]
    return [f"{prefix}: {messages}" if prefix else str(messages)]


def _label(value: Any, index: int) -> str:
    """How the report names an entry: its id or username when that prints as one word,
    else its place in the file."""
    printable = isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable()
    if printable and not any(c.isspace() for c in value):
        return str(value)
    return f"#{index}"


class MmcImport:
    """One run over an open store (None: a store that does not exist yet, for a dry run)."""

    def __init__(
        self,
        connections: ConnectionRepository | None,
        users: UserRepository | None,
        *,
        replace: bool,
        dry_run: bool,
        max_connections: int,
    ) -> None:
        assert dry_run or (connections is not None and users is not None)
        self._connections = connections
        self._users = users
        self._replace = replace
        self._dry_run = dry_run
        self._max = max_connections

    async def run(
        self, connections: Iterable[Any], users: Iterable[tuple[str | None, Any]]
    ) -> ImportReport:
        report = ImportReport(self._dry_run)
        await self._import_connections(list(connections), report)
        await self._import_users(list(users), report)
        return report

    # -- connections ----------------------------------------------------------------

    async def _import_connections(self, entries: list[Any], report: ImportReport) -> None:
        names = await self._connections.names() if self._connections else {}
        by_name = {name: cid for cid, name in names.items()}
        seen_ids: dict[str, int] = {}
        seen_names: dict[str, int] = {}
        for index, entry in enumerate(entries, start=1):
            label = _label(entry.get("id") if isinstance(entry, dict) else None, index)

            def add(outcome: str, detail: str, label: str = label) -> None:
                report.items.append(Item("connection", label, outcome, detail))

            if not isinstance(entry, dict):
                add(INVALID, "not an object")
                continue
            try:
                data = connection_schema.load(entry)
            except ValidationError as exc:
                add(INVALID, "; ".join(_flatten(exc.messages)))
                continue
            cid, name = data["id"], data["name"]
            if cid in seen_ids:
                add(INVALID, f"the id repeats entry #{seen_ids[cid]} of the file")
                continue
            if name in seen_names:
                add(INVALID, f"the name {name!r} repeats entry #{seen_names[name]} of the file")
                continue
            seen_ids[cid] = seen_names[name] = index
            record = merge(data, None)
            try:
                await tls_context(record)
            except InvalidInput as exc:
                # The info repeats the message when it names no other field.
                details = [
                    line
                    for line in (_flatten(exc.info) if exc.info else [])
                    if line.partition(": ")[2] not in exc.message
                ]
                add(INVALID, "; ".join([exc.message, *details]))
                continue
            owner = by_name.get(name)
            what = f"{name!r} {record.url}"
            if cid in names:
                if not self._replace:
                    add(SKIPPED, "exists already (--replace overwrites it)")
                    continue
                if owner not in (None, cid):
                    add(CONFLICT, f"its name {name!r} is connection {owner}'s; not replaced")
                    continue
                if not self._dry_run:
                    assert self._connections is not None
                    stored = await self._connections.get(cid)
                    if stored is not None:
                        record = record.replace(created_at=stored.created_at)
                    try:
                        await self._connections.update(record)
                    except (NotAllowed, InvalidInput) as exc:
                        # Another process took the name meanwhile, or the project is unknown.
                        add(REFUSED, exc.message)
                        continue
                del by_name[names[cid]]
                names[cid] = name
                by_name[name] = cid
                add(REPLACED, what)
                continue
            if owner is not None:
                add(CONFLICT, f"its name {name!r} is connection {owner}'s")
                continue
            if self._max and len(names) >= self._max:
                add(REFUSED, f"{MAX_CONNECTIONS_MESSAGE} ({self._max}, MMC_MAX_CONNECTIONS)")
                continue
            if not self._dry_run:
                assert self._connections is not None
                try:
                    await self._connections.insert(record, limit=self._max)
                except (NotAllowed, InvalidInput) as exc:
                    # Another process stored one meanwhile, the limit was reached, or the
                    # project is unknown.
                    add(REFUSED, exc.message)
                    continue
            names[cid] = name
            by_name[name] = cid
            add(CREATED, what)

    # -- users ------------------------------------------------------------------------

    async def _import_users(
        self, entries: list[tuple[str | None, Any]], report: ImportReport
    ) -> None:
        existing = {u.username: u for u in await self._users.list()} if self._users else {}
        seen: dict[str, int] = {}
        admin_can_log_in = any(
            Role.ADMIN.value in u.roles and usable(u.password_hash) for u in existing.values()
        )
        for index, (key, entry) in enumerate(entries, start=1):
            username: Any = key
            if isinstance(entry, dict) and "username" in entry:
                username = entry["username"]
            label = _label(username, index)

            def add(outcome: str, detail: str, disabled: bool = False, label: str = label) -> None:
                report.items.append(Item("user", label, outcome, detail, disabled))

            if not isinstance(entry, dict):
                add(INVALID, "not an object")
                continue
            if not isinstance(username, str):
                add(INVALID, "username: Missing data for required field.")
                continue
            try:
                USERNAME(username)
            except ValidationError as exc:
                add(INVALID, "; ".join(_flatten({"username": exc.messages})))
                continue
            roles, unknown = _roles(entry)
            if not roles:
                known = ", ".join(r.value for r in Role)
                given = ", ".join(unknown) or "none"
                add(INVALID, f"no role mmc knows (given: {given}; known: {known})")
                continue
            if username in seen:
                add(INVALID, f"the username repeats entry #{seen[username]} of the file")
                continue
            seen[username] = index
            if username in existing:
                add(SKIPPED, "exists already (users are never replaced)")
                continue
            password = entry.get("password")
            keep = isinstance(password, str) and usable(password)
            stored_hash = password if keep and isinstance(password, str) else DISABLED_MARK
            detail = ",".join(roles)
            if unknown:
                detail += f" (roles mmc does not have, left out: {', '.join(unknown)})"
            if not keep:
                why = (
                    "no password in the file"
                    if password is None
                    else "its password hash is of a format mmc cannot verify"
                )
                detail += (
                    f"; DISABLED: {why}; it can log in once a password is set: "
                    f"mmc users passwd {username}"
                )
            if not self._dry_run:
                assert self._users is not None
                try:
                    await self._users.insert(username, stored_hash, roles)
                except Conflict:
                    add(SKIPPED, "exists already (users are never replaced)")
                    continue
            add(CREATED, detail, not keep)
            admin_can_log_in |= keep and Role.ADMIN.value in roles
        if report.of("user") and not admin_can_log_in:
            report.notes.append(
                "no admin can log in yet: give one a password with `mmc users passwd NAME`"
            )


def _roles(entry: Mapping[str, Any]) -> tuple[tuple[str, ...], list[str]]:
    """mmc's names of the entry's roles, and the names it does not know."""
    given = entry.get("roles")
    if given is None and "role" in entry:
        given = [entry["role"]]
    if not isinstance(given, list):
        return (), []
    roles: list[str] = []
    unknown: list[str] = []
    for name in given:
        role = ROLE_MAP.get(name.lower()) if isinstance(name, str) else None
        if role is None:
            unknown.append(name if isinstance(name, str) else repr(name))
        elif role.value not in roles:
            roles.append(role.value)
    return tuple(roles), unknown
