"""ControlChannel: request/response over a broker's ``$CONTROL/<api>/v1`` topics.

Requests go out at QoS 0 as ``{"commands": [...]}``; the plugin answers every
command in one ``{"responses": [...]}`` message on ``.../response``, which the
broker sends to *every* subscriber, so replies are matched by a UUID
``correlationData`` and anything that is not ours is ignored.

Commands issued in the same event-loop iteration for the same API are sent in
one message (up to ``MAX_BATCH``): under load this turns N round trips into one.

A command that was handed to the link is never answered "not connected": when the link
drops after sending, or the answer is late, the channel waits for the link to be back
(bounded by the request timeout) and resolves what happened (mmc.brokers.outcome).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Protocol

from mmc.brokers.outcome import Unreadable, check_for, is_read, unknown
from mmc.errors import (
    BrokerTimeout,
    BrokerUnavailable,
    ControlConflict,
    ControlError,
    ControlNotFound,
    MmcError,
    ReplyLost,
)

log = logging.getLogger(__name__)

MAX_BATCH = 100

# Every API whose replies we listen for; request topic is $CONTROL/<api>/v1.
KNOWN_APIS: tuple[str, ...] = (
    "dynamic-security",
    "broker",
    "cedalo/client-control",
    "cedalo/license",
    "cedalo/inspect",
    # Pro bridge plugins (Mosquitto 3.1 docs).
    "cedalo/azure-eventhubs-bridge",
    "cedalo/influxdb-bridge",
    "cedalo/mongodb-bridge",
)


def request_topic(api: str) -> str:
    return f"$CONTROL/{api}/v1"


def response_topic(api: str) -> str:
    return f"$CONTROL/{api}/v1/response"


RESPONSE_TOPICS: dict[str, str] = {response_topic(api): api for api in KNOWN_APIS}
# The bridge docs print these response topics instead of "<request topic>/response";
# which is right is unconfirmed, so listen on both.
RESPONSE_TOPICS.update(
    {
        "$CONTROL/cedalo/influx-db/v1/response": "cedalo/influxdb-bridge",
        "$CONTROL/cedalo/mongo-db/v1/response": "cedalo/mongodb-bridge",
    }
)


# Command names used as metric labels; anything else (passthrough) is counted as "other".
KNOWN_COMMANDS = frozenset(
    {
        "setDefaultACLAccess",
        "getDefaultACLAccess",
        "createClient",
        "deleteClient",
        "enableClient",
        "disableClient",
        "getClient",
        "listClients",
        "modifyClient",
        "setClientId",
        "setClientPassword",
        "addClientRole",
        "removeClientRole",
        "addGroupClient",
        "removeGroupClient",
        "createGroup",
        "deleteGroup",
        "getGroup",
        "listGroups",
        "modifyGroup",
        "addGroupRole",
        "removeGroupRole",
        "setAnonymousGroup",
        "getAnonymousGroup",
        "createRole",
        "getRole",
        "listRoles",
        "modifyRole",
        "deleteRole",
        "addRoleACL",
        "removeRoleACL",
        "getDetails",
        "disconnectClient",
        "subscribeClient",
        "unsubscribeClient",
        "getLicenseInformation",
        "listPlugins",
        "listListeners",
        "getStatus",
        "getConfig",
        "updateConfig",
        "getSchema",
    }
)


# Off where the caller resolves a lost answer itself (lost_answers_raised).
_resolving: ContextVar[bool] = ContextVar("mmc_resolve_lost_answers", default=True)


@contextlib.contextmanager
def lost_answers_raised() -> Iterator[None]:
    """Within: a command whose answer is lost raises ReplyLost instead of being resolved.

    For the own-user guard (mmc.web.own_user), which expects mosquitto to close mmc's
    connection after the command and knows what that means (a new password, for one, can
    only be proven by logging back in with it)."""
    token = _resolving.set(False)
    try:
        yield
    finally:
        _resolving.reset(token)


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one QoS 0 message for sending, or raise (the link is down)."""


class ControlObserver(Protocol):
    def observe_control(self, api: str, command: str, outcome: str, seconds: float) -> None: ...

    def observe_message(self, api: str, commands: int) -> None:
        """One MQTT message of ``commands`` commands went out on ``$CONTROL/<api>/v1``."""


def error_for(command: str, message: str) -> ControlError:
    """Map a plugin's error string to the typed error the API renders."""
    lowered = message.lower()
    if "not found" in lowered or "does not exist" in lowered:
        return ControlNotFound(message, command=command)
    if "already exists" in lowered or "is already in" in lowered:
        return ControlConflict(message, command=command)
    return ControlError(message, command=command)


class ControlChannel:
    def __init__(
        self, broker_id: str, *, timeout: float, observer: ControlObserver | None = None
    ) -> None:
        self.broker_id = broker_id
        self.timeout = timeout
        self._observer = observer
        self._publisher: Publisher | None = None
        # correlationData -> (api, future of the response entry)
        self._pending: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._batches: dict[str, list[dict[str, Any]]] = {}
        # correlationData of the commands handed to the publisher and not yet answered.
        self._sent: set[str] = set()
        self._attached = asyncio.Event()
        # correlationData: unique per channel and process; random, so that two processes
        # (or two channels) sharing a broker never take each other's replies.
        self._correlation_prefix = secrets.token_hex(8) + "-"
        self._correlations = itertools.count()

    @property
    def available(self) -> bool:
        return self._publisher is not None

    def attach(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._attached.set()

    def detach(self) -> None:
        """The link dropped: every waiting request fails now rather than at its timeout;
        one already sent with ReplyLost (it may have been applied), any other with
        BrokerUnavailable (it was not)."""
        self._publisher = None
        self._attached.clear()
        self._batches.clear()
        for correlation, (_, fut) in self._pending.items():
            if fut.done():
                continue
            if correlation in self._sent:
                fut.set_exception(
                    ReplyLost(f"Broker {self.broker_id}: the connection dropped before the answer")
                )
            else:
                fut.set_exception(BrokerUnavailable(f"Broker {self.broker_id} is not connected"))
        self._pending.clear()
        self._sent.clear()

    async def wait_attached(self, timeout: float) -> bool:
        """True once the link is connected (at once if it is), False after ``timeout``."""
        if self._publisher is not None:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._attached.wait()
        except TimeoutError:
            return False
        return self._publisher is not None

    async def request(
        self, api: str, command: Mapping[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one command and return its response entry (``{"command", "data"?}``).

        Raises ControlError (or a subclass) when the plugin answers with an error.
        """
        response = await self.send(api, command, timeout=timeout)
        if "error" in response:
            raise error_for(
                str(response.get("command", command.get("command"))), str(response["error"])
            )
        return response

    async def send(
        self, api: str, command: Mapping[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one command and return its raw response entry, error or not.

        When its answer is lost, what happened is found out (see the module docstring):
        the answer is then the one the broker would have given, or OutcomeUnknown."""
        try:
            return await self._observed(api, command, timeout)
        except ReplyLost as lost:
            if not _resolving.get():
                raise
            return await self._resolve(api, command, timeout, lost)

    async def _resolve(
        self, api: str, command: Mapping[str, Any], timeout: float | None, lost: ReplyLost
    ) -> dict[str, Any]:
        name = command.get("command")
        if is_read(command) and lost.timed_out:
            # Nothing to resolve, and asking again would only double the wait.
            raise BrokerTimeout(lost.message) from None
        why = "the answer did not arrive in time" if lost.timed_out else "the connection dropped"
        if not await self.wait_attached(self.timeout):
            if is_read(command):
                raise BrokerUnavailable(
                    f"Broker {self.broker_id} is not connected: {why} before it answered "
                    f"{name!r}, and it is not back within {self.timeout:g} s"
                )
            raise unknown(
                self.broker_id,
                api,
                command,
                f"{why} before the answer, and the broker is not back within {self.timeout:g} s",
            )
        log.info("broker %s: %s before the answer to %r; resolving", self.broker_id, why, name)
        if is_read(command):
            try:
                return await self._observed(api, command, timeout)
            except ReplyLost as again:
                if again.timed_out:
                    raise BrokerTimeout(again.message) from None
                raise BrokerUnavailable(
                    f"Broker {self.broker_id}: the connection dropped twice before the "
                    f"answer to {name!r}"
                ) from None
        check = check_for(api, command)
        if check is None:
            raise unknown(
                self.broker_id, api, command, f"{why}, and its effect cannot be read back"
            )

        async def read(query: dict[str, Any]) -> dict[str, Any]:
            return await self._observed(api, query, timeout)

        try:
            applied = await check(read, command)
        except (MmcError, Unreadable) as exc:
            detail = exc.message if isinstance(exc, MmcError) else str(exc)
            raise unknown(
                self.broker_id, api, command, f"{why}, and reading the state back failed ({detail})"
            ) from None
        if applied is None:
            raise unknown(
                self.broker_id, api, command, f"{why}, and its effect cannot be read back"
            )
        if applied:
            return {"command": name}
        # Not applied (and it will not be: see mmc.brokers.outcome): the broker's own answer.
        try:
            return await self._observed(api, command, timeout)
        except ReplyLost:
            raise unknown(
                self.broker_id, api, command, f"{why}, and again when it was sent once more"
            ) from None

    async def _observed(
        self, api: str, command: Mapping[str, Any], timeout: float | None
    ) -> dict[str, Any]:
        if self._observer is None:
            return await self._send(api, command, timeout)
        name = str(command.get("command"))
        label = name if name in KNOWN_COMMANDS else "other"
        started = time.perf_counter()
        outcome = "unavailable"
        try:
            response = await self._send(api, command, timeout)
            outcome = "error" if "error" in response else "ok"
            return response
        except ReplyLost as lost:
            outcome = "timeout" if lost.timed_out else "lost"
            raise
        except BrokerTimeout:
            outcome = "timeout"
            raise
        finally:
            self._observer.observe_control(api, label, outcome, time.perf_counter() - started)

    async def _send(
        self, api: str, command: Mapping[str, Any], timeout: float | None
    ) -> dict[str, Any]:
        if self._publisher is None:
            raise BrokerUnavailable(f"Broker {self.broker_id} is not connected")
        correlation = f"{self._correlation_prefix}{next(self._correlations)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[correlation] = (api, fut)
        batch = self._batches.setdefault(api, [])
        batch.append({**command, "correlationData": correlation})
        if len(batch) == 1:
            asyncio.get_running_loop().call_soon(self._flush, api)
        elif len(batch) >= MAX_BATCH:
            self._flush(api)
        try:
            async with asyncio.timeout(timeout or self.timeout):
                return await fut
        except TimeoutError:
            message = (
                f"Broker {self.broker_id} did not answer {command.get('command')!r} "
                f"on {request_topic(api)} within {timeout or self.timeout:g} s"
            )
            if correlation in self._sent:
                raise ReplyLost(message, timed_out=True) from None
            raise BrokerTimeout(message) from None
        finally:
            self._pending.pop(correlation, None)
            self._sent.discard(correlation)

    def _flush(self, api: str) -> None:
        """Send the commands gathered for ``api`` as one message (no task, no wait: a
        QoS 0 publish is queued on the socket at once)."""
        batch = self._batches.pop(api, None)
        if not batch:
            return
        publisher = self._publisher
        try:
            if publisher is None:
                raise BrokerUnavailable(f"Broker {self.broker_id} is not connected")
            payload = json.dumps({"commands": batch}, separators=(",", ":")).encode()
            publisher.publish(request_topic(api), payload)
            # Queued on the socket: from now on the broker may apply them.
            self._sent.update(cmd["correlationData"] for cmd in batch)
            if self._observer is not None:
                self._observer.observe_message(api, len(batch))
        except Exception as exc:  # noqa: BLE001 - every failure must reach the waiting callers
            error = (
                exc
                if isinstance(exc, MmcError)
                else BrokerUnavailable(
                    f"Broker {self.broker_id}: could not send the request ({exc})"
                )
            )
            for cmd in batch:
                pending = self._pending.get(cmd["correlationData"])
                if pending is not None and not pending[1].done():
                    pending[1].set_exception(error)

    def handle_response(self, api: str, payload: bytes | bytearray) -> None:
        """Route one message from ``$CONTROL/<api>/v1/response`` to the waiting requests."""
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            log.warning(
                "broker %s: ignoring a non-JSON reply on %s", self.broker_id, response_topic(api)
            )
            return
        if not isinstance(body, dict):
            return
        responses = body.get("responses")
        if isinstance(responses, list):
            for entry in responses:
                if not isinstance(entry, dict):
                    continue
                pending = self._pending.get(str(entry.get("correlationData")))
                if pending is not None and not pending[1].done():
                    pending[1].set_result(entry)
            return
        if "error" in body:
            # mosquitto 2.1 answers an unhandled $CONTROL topic with only {"error": ...},
            # and only to the sender: every request of ours on that API is concerned.
            error = ControlNotFound(
                f"{api} plugin not enabled on this broker ({body['error']})", command=""
            )
            for pending_api, fut in self._pending.values():
                if pending_api == api and not fut.done():
                    fut.set_exception(error)
