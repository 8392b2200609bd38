"""The Connections service: validates, stores and (re)opens broker links.

Changes to one connection happen one at a time, in order; changes to different connections
only share a short lock around the checks, the store write and the in-memory bookkeeping.
Replacing a link (stopping the old one can wait for its connect attempt in flight) happens
outside that lock, so a broker stuck in its handshake delays only its own connection."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmc.brokers.link import BrokerLink, LinkConfig
from mmc.brokers.pool import BrokerPool
from mmc.brokers.status import LinkError, LinkStatus
from mmc.brokers.tls import certificate_info, context_from_base64
from mmc.clock import now_ms
from mmc.endpoint import Endpoint
from mmc.errors import InvalidInput, NotAllowed, NotFound, StoreUnavailable
from mmc.store.connections import DUPLICATE_MESSAGE, ConnectionRecord, ConnectionRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What a create/update did: the listing, and the reason if the broker could not be reached."""

    connections: list[dict[str, Any]]
    connect_error: str | None


def _blob_wire(data: str) -> dict[str, Any]:
    out: dict[str, Any] = {"data": data, "encoding": "base64"}
    info = certificate_info(data)
    if info is not None:
        out.update(info.to_wire())
    return out


def to_wire(record: ConnectionRecord) -> dict[str, Any]:
    """The connection as the API shows it: no password, no key material."""
    out: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "url": record.url,
        "projectId": record.project_id,
    }
    credentials: dict[str, Any] = {}
    if record.username is not None:
        credentials["username"] = record.username
    if record.client_id is not None:
        credentials["clientId"] = record.client_id
    if credentials or record.password is not None:
        out["credentials"] = credentials
    if record.ca is not None:
        out["ca"] = _blob_wire(record.ca)
    if record.cert is not None:
        out["cert"] = _blob_wire(record.cert)
    if record.key is not None:
        out["key"] = {"encoding": "base64"}
    out["rejectUnauthorized"] = record.reject_unauthorized
    return out


def link_config(record: ConnectionRecord) -> LinkConfig:
    """What a link needs of a stored connection."""
    return LinkConfig(
        id=record.id,
        url=record.url,
        client_id=record.client_id,
        username=record.username,
        password=record.password,
        ca=record.ca,
        cert=record.cert,
        key=record.key,
        reject_unauthorized=record.reject_unauthorized,
        name=record.name,
        project_id=record.project_id,
        version=record.updated_at,
    )


def target(url: str) -> tuple[bool, bool, str, int]:
    """Where a URL sends the login: (TLS, WebSocket, host, port), normalised so that only a
    real change of address counts (``tcp``/``mqtt`` and ``ssl``/``tls``/``mqtts`` are the
    same transport; default ports; host case; a trailing dot; IPv6 spelling)."""
    endpoint = Endpoint.from_url(url)
    host = endpoint.host.lower().rstrip(".")
    with contextlib.suppress(ValueError):
        host = ipaddress.ip_address(host).compressed
    return endpoint.tls, endpoint.websocket_path is not None, host, endpoint.port


def _resend_message(stored: ConnectionRecord, url: str, what: str) -> list[str]:
    return [
        f"The URL now points at another broker ({stored.url} -> {url}): the stored {what} "
        "is only sent to the address it was given for. Send it again, or null to connect "
        "without it."
    ]


def merge(data: Mapping[str, Any], stored: ConnectionRecord | None) -> ConnectionRecord:
    """Build the record a request asks for. Secrets it leaves out are kept from ``stored``:
    a client that sends back what it read keeps the password and key it cannot read.

    Only while the connection points at the same broker (see ``target``): when the scheme,
    host or port change, stored secrets are never kept, so whoever may edit a connection
    cannot have its password or key sent to an address of their choice. A request that
    would have kept one (a username without ``password``, a ``cert`` without ``key.data``)
    is refused with 400 naming it, rather than connecting without it unnoticed.
    """
    moved = stored is not None and target(stored.url) != target(data["url"])
    problems: dict[str, Any] = {}
    credentials = data.get("credentials")
    username = password = client_id = None
    if credentials:
        username = credentials.get("username")
        client_id = credentials.get("client_id")
        if "password" in credentials:
            password = credentials["password"]
        elif stored is not None and username is not None:
            if not moved:
                password = stored.password
            elif stored.password is not None:
                problems["credentials"] = {
                    "password": _resend_message(stored, data["url"], "password")
                }
    cert = (data.get("cert") or {}).get("data")
    key = None
    if "key" in data and data["key"] is not None:
        key = data["key"].get("data")
        keeps_key = key is None
    else:
        keeps_key = "key" not in data and cert is not None
    if keeps_key and stored is not None:
        if not moved:
            key = stored.key
        elif stored.key is not None:
            problems["key"] = {"data": _resend_message(stored, data["url"], "client private key")}
    if problems:
        names = [
            n
            for f, n in (("credentials", "credentials.password"), ("key", "key.data"))
            if f in problems
        ]
        raise InvalidInput(
            f"The connection now points at another broker: send {' and '.join(names)} "
            "again (or null to connect without)",
            info=problems,
        )
    return ConnectionRecord(
        id=data["id"],
        name=data["name"],
        url=data["url"],
        project_id=data.get("project_id", "default"),
        client_id=client_id,
        username=username,
        password=password,
        ca=(data.get("ca") or {}).get("data"),
        cert=cert,
        key=key,
        reject_unauthorized=data.get("reject_unauthorized", True),
        created_at=stored.created_at if stored else 0,
        # A change to a disconnected connection leaves it disconnected.
        disconnected_at=stored.disconnected_at if stored else None,
    )


async def tls_context(record: ConnectionRecord) -> ssl.SSLContext | None:
    """The TLS context of a record's link (None without TLS); InvalidInput when its
    material is unusable or given with a URL that does not use TLS."""
    endpoint = Endpoint.from_url(record.url)
    if not endpoint.tls:
        if record.ca or record.cert or record.key:
            raise InvalidInput(
                "ca/cert/key are only used with a TLS URL (mqtts://, ssl://, tls://, wss://)",
                info={"url": ["Use a TLS scheme to connect with the given certificates."]},
            )
        return None
    loop = asyncio.get_running_loop()

    def build() -> ssl.SSLContext:
        # Warm the listing's certificate cache while we are off the loop anyway.
        for data in (record.ca, record.cert):
            if data is not None:
                certificate_info(data)
        return context_from_base64(
            record.ca, record.cert, record.key, reject_unauthorized=record.reject_unauthorized
        )

    return await loop.run_in_executor(None, build)


@dataclass
class _Turn:
    """Changes to one connection wait here for the one before them."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ConnectionService:
    def __init__(
        self,
        repo: ConnectionRepository,
        pool: BrokerPool,
        *,
        max_connections: int,
        connect_timeout: float,
        on_follow: Callable[[str, str], None] | None = None,
    ) -> None:
        self._repo = repo
        # (trigger, action) for every link changed to follow another process's write.
        self._on_follow = on_follow
        self._pool = pool
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._wire: dict[str, dict[str, Any]] = {}
        # Each entry of the listing as JSON, with the wire dict and status it was made of:
        # both are replaced, never changed in place, so identity tells when it is stale.
        self._entry_json: dict[str, tuple[dict[str, Any], LinkStatus, str]] = {}
        # Checks (duplicates, limit), store writes and the bookkeeping below must not
        # interleave; nothing that waits on a broker runs under it.
        self._lock = asyncio.Lock()
        # Per connection: its changes in order (kept while anyone holds or awaits it).
        self._turns: dict[str, _Turn] = {}
        # Links taken out of the pool and still stopping.
        self._stopping: set[BrokerLink] = set()
        # Syncs started by the change feed (strong references until they finish).
        self._syncs: set[asyncio.Task[None]] = set()

    @property
    def pool(self) -> BrokerPool:
        return self._pool

    def listing(self) -> list[dict[str, Any]]:
        return [{**self._wire[link.id], "status": link.status.to_wire()} for link in self._pool]

    def listing_json(self) -> str:
        """``json.dumps(self.listing())``, made from entries encoded once per change."""
        parts: list[str] = []
        cache = self._entry_json
        for link in self._pool:
            wire = self._wire[link.id]
            status = link.status
            cached = cache.get(link.id)
            if cached is None or cached[0] is not wire or cached[1] is not status:
                cached = (wire, status, json.dumps({**wire, "status": status.to_wire()}))
                cache[link.id] = cached
            parts.append(cached[2])
        return "[" + ", ".join(parts) + "]"

    def get(self, connection_id: str) -> dict[str, Any]:
        link = self._pool.get(connection_id)
        if link is None:
            raise NotFound(f"Connection {connection_id} not found")
        return {**self._wire[link.id], "status": link.status.to_wire()}

    async def start(self) -> None:
        """Open a link for every stored connection, without waiting for them to connect."""
        for record in await self._repo.list():
            link, _, start = await self._open_stored(record)
            if start:
                link.start()

    async def stop(self) -> None:
        for task in list(self._syncs):
            task.cancel()
        await asyncio.gather(*self._syncs, return_exceptions=True)
        await asyncio.gather(
            self._pool.close_all(),
            *(link.stop() for link in list(self._stopping)),
            return_exceptions=True,
        )

    # -- other replicas' changes (a shared store) ---------------------------------------

    def changed(self, connection_id: str) -> None:
        """The change feed says another process wrote this connection: follow it."""
        self._spawn(self.sync(connection_id, trigger="notify"))

    def resync(self) -> None:
        """Changes may have gone unheard (the feed was down): compare everything."""
        self._spawn(self.sync(trigger="resync"))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work, name="mmc-connections-sync")
        self._syncs.add(task)
        task.add_done_callback(self._syncs.discard)

    async def reconcile_forever(self, interval: float) -> None:
        """The safety net under the change feed: a full comparison every ``interval`` s."""
        while True:
            await asyncio.sleep(interval)
            await self.sync(trigger="reconcile")

    async def sync(self, connection_id: str | None = None, *, trigger: str = "resync") -> None:
        """Make this process's links what the store holds, for one connection or (None) all:
        open what is new, reopen what changed, close what is gone."""
        try:
            if connection_id is None:
                # Every write sets updated_at: only what differs is read and decrypted.
                # (A hint: each connection is read again in its own turn below.)
                versions = await self._repo.versions()
                gone = [link.id for link in self._pool if link.id not in versions]
                ids = [
                    cid
                    for cid, updated_at in versions.items()
                    if (link := self._pool.get(cid)) is None or link.record.version != updated_at
                ]
                ids += gone
            else:
                ids = [connection_id]
            # Side by side: one connection whose old link is slow to stop holds up no other.
            results = await asyncio.gather(
                *(self._follow(cid) for cid in ids), return_exceptions=True
            )
        except StoreUnavailable as exc:
            # The next notification, resync or reconciliation tries again.
            log.warning("connections not synchronised with the store: %s", exc.message)
            return
        except Exception:  # a background task: log it, and let the next sync try again
            log.exception("connections not synchronised with the store")
            return
        for cid, result in zip(ids, results, strict=True):
            if isinstance(result, StoreUnavailable):
                log.warning(
                    "connection %s not synchronised with the store: %s", cid, result.message
                )
            elif isinstance(result, BaseException):
                log.error("connection %s not synchronised with the store", cid, exc_info=result)
            elif result is not None and self._on_follow is not None:
                self._on_follow(trigger, result)

    async def _follow(self, connection_id: str) -> str | None:
        """Make the link what the store holds: what was done to it (opened, reopened,
        closed), None when it was right."""
        async with self._turn(connection_id):
            new: BrokerLink | None = None
            start = False
            async with self._lock:
                record = await self._repo.get(connection_id)
                link = self._pool.get(connection_id)
                if record is None:
                    if link is None:
                        return None
                    log.info("connection %s was deleted elsewhere: closing its link", connection_id)
                    self._forget(connection_id)
                    old = self._pool.pop(connection_id)
                    action = "closed"
                elif link is not None and link.record == link_config(record):
                    return None
                else:
                    log.info(
                        "connection %s was %s elsewhere: %s its link",
                        connection_id,
                        "created" if link is None else "changed",
                        "opening" if link is None else "reopening",
                    )
                    new, old, start = await self._open_stored(record)
                    action = "opened" if link is None else "reopened"
            await self._swap(new, old, start=start)
            return action

    async def _open_stored(
        self, record: ConnectionRecord
    ) -> tuple[BrokerLink, BrokerLink | None, bool]:
        """Put a link for a record from the store in the pool (see ``_replace``), and
        whether to start it: unusable TLS material fails the link with a reason instead of
        failing start-up."""
        try:
            ctx = await self._tls_context(record)
        except InvalidInput as exc:
            log.error("connection %s: stored TLS material is unusable: %s", record.id, exc.message)
            ctx = None
        unusable = ctx is None and Endpoint.from_url(record.url).tls
        link, old = self._replace(record, ctx)
        if link.status.disconnected:
            return link, old, False
        if unusable:
            link.fail(
                LinkError(code="INVALID_TLS_MATERIAL", message="Stored TLS material is unusable")
            )
        return link, old, not unusable

    def _forget(self, connection_id: str) -> None:
        self._wire.pop(connection_id, None)
        self._entry_json.pop(connection_id, None)

    # -- changes through this process --------------------------------------------------

    async def create(self, data: Mapping[str, Any]) -> Outcome:
        async with self._turn(data["id"]):
            async with self._lock:
                stored = await self._repo.get(data["id"])
                self._check_name(data["name"], data["id"])
                if stored is not None:
                    link = self._pool.get(stored.id)
                    # Only a connection whose attempt failed may be replaced by a new POST;
                    # one that is connected or still trying is a duplicate.
                    if (
                        link is None
                        or link.connected
                        or link.status.error is None
                        or stored.disconnected_at is not None
                    ):
                        raise NotAllowed(DUPLICATE_MESSAGE)
                record = merge(data, stored)
                ctx = await self._tls_context(record)
                if stored is None:
                    record = await self._repo.insert(record, limit=self._max)
                else:
                    record = await self._repo.update(record)
                link, old = self._replace(record, ctx)
            await self._swap(link, old)
        return await self._outcome(link)

    async def update(self, connection_id: str, data: Mapping[str, Any]) -> Outcome:
        if data["id"] != connection_id:
            raise InvalidInput(
                "The id in the body does not match the URL",
                info={"id": ["Must match the connection id in the URL."]},
            )
        async with self._turn(connection_id):
            async with self._lock:
                stored = await self._repo.get(connection_id)
                if stored is None:
                    raise NotFound(f"Connection {connection_id} not found")
                self._check_name(data["name"], connection_id)
                record = merge(data, stored)
                ctx = await self._tls_context(record)
                record = await self._repo.update(record)
                link, old = self._replace(record, ctx)
            await self._swap(link, old)
        return await self._outcome(link)

    async def delete(self, connection_id: str) -> list[dict[str, Any]]:
        async with self._turn(connection_id):
            async with self._lock:
                if not await self._repo.delete(connection_id):
                    raise NotFound(f"Connection {connection_id} not found")
                self._forget(connection_id)
                old = self._pool.pop(connection_id)
            await self._swap(None, old)
        return self.listing()

    async def disconnect(self, connection_id: str) -> list[dict[str, Any]]:
        """Close the connection's link and keep it closed, across restarts and on every
        replica (stored), until ``connect``; the connection stays listed."""
        async with self._turn(connection_id):
            async with self._lock:
                stored = await self._repo.get(connection_id)
                if stored is None:
                    raise NotFound(f"Connection {connection_id} not found")
                if stored.disconnected_at is not None:
                    return self.listing()
                record = await self._repo.update(stored.replace(disconnected_at=now_ms()))
                link, old = self._replace(record, None)
            await self._swap(link, old)
        return self.listing()

    async def connect(self, connection_id: str) -> list[dict[str, Any]]:
        """Undo ``disconnect``: open the link again and wait for its first attempt (up to
        connect_timeout), so that the listing shows how it went. On a connection that is
        not disconnected, cut a reconnect backoff short."""
        async with self._turn(connection_id):
            async with self._lock:
                stored = await self._repo.get(connection_id)
                if stored is None:
                    raise NotFound(f"Connection {connection_id} not found")
                if stored.disconnected_at is None:
                    link = self._pool.get(connection_id)
                    if link is not None:
                        link.reconnect_now()
                    return self.listing()
                record = await self._repo.update(stored.replace(disconnected_at=None))
                link, old, start = await self._open_stored(record)
            await self._swap(link, old, start=start)
        await link.wait_first_attempt(self._connect_timeout)
        return self.listing()

    async def test(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """One connection attempt with these settings, nothing stored and nothing kept
        open: ``{connected: true}`` or ``{connected: false, error}`` (the codes of a
        link's status). With the id of a stored connection, its secrets are used where
        the body leaves them out, as a PUT would (only for the same broker address)."""
        given = data.get("id")
        stored = await self._repo.get(given) if given else None
        connection_id = given or "test"
        data = {**data, "id": connection_id, "name": data.get("name") or connection_id}
        record = merge(data, stored).replace(disconnected_at=None)
        ctx = await self._tls_context(record)
        config = link_config(record)
        if config.client_id is not None and any(
            link.client_id == config.client_id + self._pool.options.client_id_suffix
            for link in self._pool
        ):
            # A link of ours logs in with this client id: the test must not take over
            # its session (the broker would disconnect it).
            config = config.replace(client_id=f"{config.client_id}-test-{secrets.token_hex(4)}")
        probe = BrokerLink(config, ctx, self._pool.options)
        # A link's attempt takes up to connect_timeout for the socket and TLS and as long
        # again for the CONNACK; the test answers within about one.
        status = await probe.attempt(self._connect_timeout + 1)
        if status.connected:
            return {"connected": True}
        error = status.error or LinkError(code="ECONNCLOSED", message="Connection failed")
        return {"connected": False, "error": error.to_wire()}

    async def store_broker_password(
        self, connection_ids: Sequence[str], username: str, password: str
    ) -> list[str]:
        """mmc changed ``username``'s password on the broker these connections log in to:
        store it for each of them that still logs in as that user, and give their links the
        stored record (same ``updated_at``: the change feed does not reopen them). The ids
        stored; raises when the store cannot be written."""
        done: list[str] = []
        async with self._lock:
            for connection_id in connection_ids:
                stored = await self._repo.get(connection_id)
                if stored is None or stored.username != username:
                    continue
                record = await self._repo.update(stored.replace(password=password))
                link = self._pool.get(connection_id)
                if link is not None:
                    link.record = link_config(record)
                    self._wire[connection_id] = to_wire(record)
                done.append(connection_id)
        return done

    def _check_name(self, name: str, connection_id: str) -> None:
        for link in self._pool:
            if link.record.name == name and link.id != connection_id:
                raise NotAllowed(DUPLICATE_MESSAGE)

    async def _tls_context(self, record: ConnectionRecord) -> ssl.SSLContext | None:
        return await tls_context(record)

    @contextlib.asynccontextmanager
    async def _turn(self, connection_id: str) -> AsyncIterator[None]:
        """Hold this connection's turn: its changes in order, other connections' not
        waiting. Take it before ``_lock``, never while holding that."""
        turn = self._turns.get(connection_id)
        if turn is None:
            turn = self._turns[connection_id] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[connection_id]

    def _replace(
        self, record: ConnectionRecord, ctx: ssl.SSLContext | None
    ) -> tuple[BrokerLink, BrokerLink | None]:
        """The record's new link in the pool at once (not started), and the one it replaced."""
        link, old = self._pool.replace(link_config(record), ctx)
        if record.disconnected_at is not None:
            link.hold(record.disconnected_at)
        self._wire[record.id] = to_wire(record)
        return link, old

    async def _swap(
        self, link: BrokerLink | None, old: BrokerLink | None, *, start: bool = True
    ) -> None:
        """Stop the replaced link, then start its successor: outside ``_lock``, in the
        connection's turn (stopping waits for a connect attempt in flight, up to a
        connect timeout, and two links must not log in with one client id)."""
        try:
            if old is not None:
                self._stopping.add(old)
                try:
                    await old.stop()
                finally:
                    self._stopping.discard(old)
        finally:
            # Even when cancelled: a link left in the pool unstarted would never connect.
            # Not when it has been replaced or removed meanwhile (stop() closed the pool).
            if (
                link is not None
                and start
                and not link.status.disconnected
                and self._pool.get(link.id) is link
            ):
                link.start()

    async def _outcome(self, link: BrokerLink) -> Outcome:
        status = await link.wait_first_attempt(self._connect_timeout)
        if status is not None and status.disconnected:
            # Changed while disconnected: stored, and kept disconnected as asked.
            reason = None
        elif status is None:
            reason = f"No answer from {link.record.url} within {self._connect_timeout:g} s"
        elif status.connected:
            reason = None
        else:
            reason = status.error.message if status.error else "Connection failed"
        return Outcome(self.listing(), reason)
