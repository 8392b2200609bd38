"""The dynamic-security routes' side of "mmc must not cut off its own access".

``Guard.of(request, force)`` gives a route what it needs: whether the request says ``?force=true``,
mmc's own logins on the broker (mmc.brokers.own_access.Login, from every connection that
reaches the same host and port), and the connections service.

``Guard.change`` wraps a resource route's change and ``Guard.run`` a list of plugin commands
(passthrough, envelope, apply). Both refuse what would lock mmc out (409 CONFLICT, see
mmc.brokers.own_access), and handle what mosquitto does to its own login:

- After a change of a user, or of that user's groups or roles, mosquitto 2.0 disconnects
  every client of the user before it answers, so mmc's own login never gets the answer.
  Such a command goes to the broker alone (the other commands' answers are not lost with
  its own; a resource route's commands are recorded and sent this way too). mmc waits for
  its link to log back in (not when forced: it may never get back in), and a lost answer
  counts as done: the plugin disconnects only after the change (the modifyClient errors
  after which it disconnects too are refused beforehand by own_access). A delete is checked
  by reading its target: mmc takes a role away from its holders before ``deleteRole``, and
  that alone may disconnect it; then the delete is sent once more.
- mosquitto 2.1 defers the disconnect to its next loop: the answer arrives, then the
  connection closes. After a non-error answer from 2.1, mmc waits for that close (at most
  ``KICK_GRACE``) and then for its link to log back in, as above; the route's read of the
  result would otherwise meet a closing link (503).
- A new password for an own user (setClientPassword, modifyClient with ``password``):
  the links logging in as that user are given it before it is sent, so that they log back
  in with it. An error answer means the broker kept the old one: the links get it back.
  Otherwise mmc waits for the link to log back in, which proves the broker has the new
  password, and stores it for those connections (``ConnectionService.store_broker_password``).
  Should the broker refuse it at that login, the old one is put back and the request fails
  (503). If the store cannot be written after the broker took the password, the request
  fails with 503 STORE_UNAVAILABLE saying so: this process keeps using the new password,
  a restart or another replica would not.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from marshmallow import EXCLUDE, Schema, fields

from mmc.appkeys import connections_key, settings_key
from mmc.brokers import own_access
from mmc.brokers.control import error_for, lost_answers_raised
from mmc.brokers.dynsec import Dynsec, goes_out_as_is
from mmc.brokers.link import BrokerLink, LinkConfig
from mmc.brokers.outcome import is_read
from mmc.errors import BrokerUnavailable, MmcError, StoreUnavailable
from mmc.services.connections import ConnectionService, target

T = TypeVar("T")
Run = Callable[[Dynsec, list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]

force_schema = Schema.from_dict({"force": fields.Boolean(load_default=False)})(unknown=EXCLUDE)
# How to see whether a delete took place: the read that finds its target.
_PROBES = {
    "deleteclient": ("getClient", "username"),
    "deletegroup": ("getGroup", "groupname"),
    "deleterole": ("getRole", "rolename"),
}
# mosquitto's CONNACK refusals of a login (MQTT 3.1.1 and 5 names, see mmc.brokers.status).
_LOGIN_REFUSED = frozenset({"NOT_AUTHORIZED", "BAD_USERNAME_OR_PASSWORD"})
# How long mosquitto 2.1 may take to close mmc's connection after answering a change that
# closes it (it does so on its next loop: milliseconds).
KICK_GRACE = 1.0


async def _closed(link: BrokerLink, reconnects: int, grace: float) -> bool:
    """Whether the link dropped (or dropped and came back) since ``reconnects``, waiting up
    to ``grace`` seconds for it."""
    deadline = asyncio.get_running_loop().time() + grace
    while link.connected and link.reconnects == reconnects:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@functools.lru_cache(maxsize=8192)
def _address(url: str) -> tuple[str, int]:
    # Asked of every link's URL on every write (same_broker): parsed once per URL, not
    # once per link and request (a URL names the same address for ever).
    _, _, host, port = target(url)
    return host, port


def same_broker(service: ConnectionService, link: BrokerLink) -> list[BrokerLink]:
    """The links of this process that reach the broker ``link`` reaches (same host and port)."""
    here = _address(link.record.url)
    return [other for other in service.pool if _address(other.record.url) == here]


def own_usernames(service: ConnectionService, link: BrokerLink) -> list[str]:
    """The users mmc logs in to ``link``'s broker with (an import never changes them)."""
    return [u for other in same_broker(service, link) if (u := other.record.username)]


def logins(links: Sequence[BrokerLink]) -> list[own_access.Login]:
    users: dict[str, list[BrokerLink]] = {}
    for link in links:
        if link.record.username:
            users.setdefault(link.record.username, []).append(link)
    out = []
    for username, mine in users.items():
        ids = {link.client_id for link in mine}
        # A client id the user chose, used as is: no generated one, no per-replica suffix.
        fixed = len(ids) == 1 and all(link.client_id == link.record.client_id for link in mine)
        out.append(
            own_access.Login(
                username, tuple(link.id for link in mine), ids.pop() if fixed else None
            )
        )
    return out


async def _with_read_back(
    ds: Dynsec, command: dict[str, Any], read: Mapping[str, Any]
) -> dict[str, Any] | None:
    """``command``, then ``read`` in the same message (both handed to the channel in this
    loop turn, in this order: see ControlChannel's batching). The change's lost answer is
    resolved as always (mmc.brokers.outcome); the read's is not: a read sent with a change
    whose outcome was unknown tells nothing, the caller reads again after it."""

    async def read_once() -> dict[str, Any]:
        with lost_answers_raised():
            return await ds.send(read)

    results: tuple[dict[str, Any] | BaseException, ...] = await asyncio.gather(
        ds.send(command), read_once(), return_exceptions=True
    )
    changed, answer = results
    if isinstance(changed, BaseException):
        raise changed
    if "error" in changed:
        raise error_for(str(command.get("command")), str(changed["error"]))
    if isinstance(answer, BaseException):
        if not isinstance(answer, MmcError):
            raise answer
        return None
    return answer


@dataclass(frozen=True)
class Guard:
    """One request's protection of mmc's own access (see the module docstring)."""

    service: ConnectionService
    force: bool
    # How long to wait for a link the broker closed after a change to log back in.
    reconnect_timeout: float

    @classmethod
    def of(cls, request: web.Request, force: bool) -> Guard:
        """``force``: ``?force=true`` (force_schema), do it even if it cuts mmc off."""
        return cls(
            request.app[connections_key],
            force,
            request.app[settings_key].connect_timeout + 1,
        )

    async def change(
        self,
        link: BrokerLink,
        ds: Dynsec,
        change: Callable[[Dynsec], Awaitable[None]],
        read_back: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """A resource route's change, checked first (its commands recorded, not sent).

        ``read_back``: a read command to send in the same MQTT message right after the
        change, when the change is one command that goes out as it is (one round trip
        instead of two). Its answer entry is returned, or None when it was not sent that
        way or its answer is not to be trusted (lost: read again once the change's own
        outcome is known)."""
        commands = await own_access.recorded(ds, change)
        mine = same_broker(self.service, link)
        outcome = await own_access.check(ds, commands, logins(mine), force=self.force)
        if not outcome.alone:
            if read_back is not None and len(commands) == 1 and goes_out_as_is(commands[0]):
                return await _with_read_back(ds, commands[0], read_back)
            await change(ds)
            return None

        async def run(d: Dynsec, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return await d.run(chunk)

        # The recorded commands, each one that disconnects mmc alone; the first error stops
        # them, as it stops the route's own calls.
        entries = await self._split(link, mine, ds, commands, outcome, run, stop_on_error=True)
        for command, entry in zip(commands, entries, strict=False):
            if "error" in entry:
                raise error_for(str(command.get("command")), str(entry["error"]))
        return None

    async def run(
        self, link: BrokerLink, ds: Dynsec, commands: list[dict[str, Any]], run: Run
    ) -> list[dict[str, Any]]:
        """Plugin commands, checked first; their answers in order."""
        if all(is_read(command) for command in commands):
            # Reads cut nobody off (own_access.check passes them): spare the check its
            # look at every link's address, per command (the WebSocket's listings).
            return await run(ds, commands)
        mine = same_broker(self.service, link)
        outcome = await own_access.check(ds, commands, logins(mine), force=self.force)
        if not outcome.alone:
            return await run(ds, commands)
        return await self._split(link, mine, ds, commands, outcome, run)

    async def _split(
        self,
        link: BrokerLink,
        mine: Sequence[BrokerLink],
        ds: Dynsec,
        commands: list[dict[str, Any]],
        outcome: own_access.Outcome,
        run: Run,
        *,
        stop_on_error: bool = False,
    ) -> list[dict[str, Any]]:
        """Send ``commands`` in order, each of ``outcome.alone`` in a message of its own."""
        entries: list[dict[str, Any]] = []
        chunk: list[dict[str, Any]] = []
        # 2.1 answers, then closes the connection (see the module docstring).
        closes_after_answer = await ds.is_v2_1()

        async def flush() -> bool:
            """Send the commands gathered so far; False when an error says stop."""
            nonlocal chunk
            if chunk:
                entries.extend(await run(ds, chunk))
                chunk = []
            return not (stop_on_error and any("error" in entry for entry in entries))

        for i, command in enumerate(commands):
            if i not in outcome.alone:
                chunk.append(command)
                continue
            if not await flush():
                return entries

            async def send(one: dict[str, Any] = command) -> dict[str, Any]:
                [entry] = await run(ds, [one])
                return entry

            entry = await self._alone(
                link,
                mine,
                send,
                lambda e: "error" in e,
                outcome.passwords.get(i),
                closes_after_answer=closes_after_answer,
            )
            if entry is None:  # mosquitto closed the connection after the change (_alone)
                entry = await self._confirm(link, ds, command, send)
            entries.append(entry)
            if stop_on_error and "error" in entry:
                return entries
        await flush()
        return entries

    async def _confirm(
        self,
        link: BrokerLink,
        ds: Dynsec,
        command: dict[str, Any],
        send: Callable[[], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """The answer to ``command`` was lost to mosquitto closing mmc's connection. That
        means done, except for a delete whose target is still there: what mmc sends before
        it (removing a role from its holders before ``deleteRole``) closed the connection
        first. Then it is sent once more (the holders are gone: no disconnect this time)."""
        done = {"command": command.get("command")}
        if "correlationData" in command:
            done["correlationData"] = command["correlationData"]
        probe = _PROBES.get(str(command.get("command", "")).lower())
        if probe is None or (self.force and not link.connected):
            return done
        read, key = probe
        found = await ds.send({"command": read, key: command.get(key)})
        if "error" in found:
            return done
        return await send()

    async def _alone(
        self,
        link: BrokerLink,
        mine: Sequence[BrokerLink],
        send: Callable[[], Awaitable[T]],
        refused: Callable[[T], bool],
        password: tuple[str, str] | None,
        *,
        closes_after_answer: bool = False,
    ) -> T | None:
        """Send a change after which mosquitto closes mmc's connection (a change of its
        user, or of that user's groups or roles): its answer, or None when the broker
        closed the connection first, which it does only once the change is made (see the
        module docstring for modifyClient).

        With a new ``password`` for an own user, see the module docstring."""
        if not link.connected:
            raise BrokerUnavailable(f"Broker {link.id} is not connected")
        users: list[BrokerLink] = []
        old: dict[str, LinkConfig] = {}
        if password is not None:
            users = [other for other in mine if other.record.username == password[0]]
            old = {other.id: other.record for other in users}
            for other in users:
                other.record = other.record.replace(password=password[1])

        def restore() -> None:
            for other in users:
                if password is not None and other.record.password == password[1]:
                    other.record = old[other.id]

        answer: T | None = None
        reconnects = link.reconnects
        try:
            # Its answer is expected to be lost: this method resolves what happened, not
            # the control channel (which could not prove a new password).
            with lost_answers_raised():
                answer = await send()
        except BrokerUnavailable:
            if not users and self.force:
                return None  # forced: mmc may well not get back in; do not wait for it
            # Closed on purpose by the broker, which takes us back at once: no backoff.
            link.reconnect_now()
        except BaseException:
            restore()
            raise
        if answer is not None and refused(answer):
            restore()
            return answer
        closed = answer is None
        if not closed and closes_after_answer and not self.force:
            closed = await _closed(link, reconnects, KICK_GRACE)
            if closed:
                link.reconnect_now()
        if closed and not await link.wait_connected(self.reconnect_timeout):
            error = link.status.error
            reason = error.message if error else "no reason given"
            if link in users and error is not None and error.code in _LOGIN_REFUSED:
                restore()
                link.reconnect_now()
                raise BrokerUnavailable(
                    f"The broker closed mmc's connection but refuses the new password of "
                    f"{link.record.username!r}: mmc logs in with the old one again"
                )
            if password is not None:
                await self._store(users, *password)
            raise BrokerUnavailable(
                "The broker closed mmc's connection after the change, and it has not "
                f"logged back in within {self.reconnect_timeout:g} s ({reason})"
                + ("; the new password is stored" if password is not None else "")
            )
        if password is not None:
            await self._store(users, *password)
        return answer

    async def _store(self, users: Sequence[BrokerLink], username: str, password: str) -> None:
        ids = [other.id for other in users]
        try:
            await self.service.store_broker_password(ids, username, password)
        except Exception as exc:
            reason = exc.message if isinstance(exc, MmcError) else type(exc).__name__
            raise StoreUnavailable(
                f"The broker took the new password of {username!r}, but mmc could not store "
                f"it for connection {', '.join(ids)} ({reason}). This process keeps using "
                "it; after a restart, or on another replica, mmc would log in with the old "
                "one: send it with PUT /api/connections/{id}."
            ) from exc


def _answer(entry: Mapping[str, Any], sent: Mapping[str, Any]) -> dict[str, Any]:
    """The plugin's entry with the caller's correlationData (ours is an internal detail)."""
    out = {k: v for k, v in entry.items() if k != "correlationData"}
    if "correlationData" in sent:
        out["correlationData"] = sent["correlationData"]
    return out


async def passthrough(ds: Dynsec, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plugin commands as a caller sent them: the plugin's entries, in order."""
    entries = await ds.run(commands)
    return [_answer(e, c) for e, c in zip(entries, commands, strict=True)]


async def run_command(guard: Guard, link: BrokerLink, command: dict[str, Any]) -> dict[str, Any]:
    """One plugin command as the MMC sends it (REST passthrough, WebSocket): checked by
    the guard, then the plugin's entry, with its ``error`` when the plugin refused it."""
    [entry] = await guard.run(link, await Dynsec.of(link), [command], passthrough)
    return entry
