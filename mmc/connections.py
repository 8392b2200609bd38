"""The Connections service: validates, stores and (re)opens broker links, one change at a time."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmc.brokers.link import BrokerLink, Endpoint
from mmc.brokers.pool import BrokerPool
from mmc.brokers.status import LinkError, LinkStatus
from mmc.brokers.tls import certificate_info, context_from_base64
from mmc.errors import InvalidInput, NotAllowed, NotFound
from mmc.store.connections import DUPLICATE_MESSAGE, ConnectionRecord, ConnectionRepository
from mmc.store.projects import ProjectRepository

log = logging.getLogger(__name__)

MAX_CONNECTIONS_MESSAGE = "Maximum number of connections reached"


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


def merge(data: Mapping[str, Any], stored: ConnectionRecord | None) -> ConnectionRecord:
    """Build the record a request asks for. Secrets it leaves out are kept from ``stored``:
    a client that sends back what it read keeps the password and key it cannot read."""
    credentials = data.get("credentials")
    username = password = client_id = None
    if credentials:
        username = credentials.get("username")
        client_id = credentials.get("client_id")
        if "password" in credentials:
            password = credentials["password"]
        elif stored is not None and username is not None:
            password = stored.password
    cert = (data.get("cert") or {}).get("data")
    key = None
    if "key" in data and data["key"] is not None:
        key = data["key"].get("data")
        if key is None and stored is not None:
            key = stored.key
    elif "key" not in data and stored is not None and cert is not None:
        key = stored.key
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
    )


class ConnectionService:
    def __init__(
        self,
        repo: ConnectionRepository,
        pool: BrokerPool,
        *,
        max_connections: int,
        connect_timeout: float,
        projects: ProjectRepository | None = None,
    ) -> None:
        self._repo = repo
        self._projects = projects
        self._pool = pool
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._wire: dict[str, dict[str, Any]] = {}
        # Each entry of the listing as JSON, with the wire dict and status it was made of:
        # both are replaced, never changed in place, so identity tells when it is stale.
        self._entry_json: dict[str, tuple[dict[str, Any], LinkStatus, str]] = {}
        # One change at a time: checks (duplicates, limit) and writes must not interleave.
        self._lock = asyncio.Lock()

    @property
    def pool(self) -> BrokerPool:
        return self._pool

    @property
    def lock(self) -> asyncio.Lock:
        """Held during every change of connections: hold it to delete what they refer to."""
        return self._lock

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
            try:
                ctx = await self._tls_context(record)
            except InvalidInput as exc:
                log.error(
                    "connection %s: stored TLS material is unusable: %s", record.id, exc.message
                )
                ctx = None
            unusable = ctx is None and Endpoint.from_url(record.url).tls
            link = await self._open(record, ctx, start=not unusable)
            if unusable:
                link.fail(
                    LinkError(
                        code="INVALID_TLS_MATERIAL", message="Stored TLS material is unusable"
                    )
                )

    async def stop(self) -> None:
        await self._pool.close_all()

    async def create(self, data: Mapping[str, Any]) -> Outcome:
        async with self._lock:
            stored = await self._repo.get(data["id"])
            self._check_name(data["name"], data["id"])
            if stored is not None:
                link = self._pool.get(stored.id)
                # Only a connection whose attempt failed may be replaced by a new POST;
                # one that is connected or still trying is a duplicate.
                if link is None or link.connected or link.status.error is None:
                    raise NotAllowed(DUPLICATE_MESSAGE)
            elif self._max and await self._repo.count() >= self._max:
                raise NotAllowed(MAX_CONNECTIONS_MESSAGE)
            record = merge(data, stored)
            await self._check_project(record.project_id)
            ctx = await self._tls_context(record)
            if stored is None:
                record = await self._repo.insert(record)
            else:
                record = await self._repo.update(record)
            link = await self._open(record, ctx)
        return await self._outcome(link)

    async def update(self, connection_id: str, data: Mapping[str, Any]) -> Outcome:
        if data["id"] != connection_id:
            raise InvalidInput(
                "The id in the body does not match the URL",
                info={"id": ["Must match the connection id in the URL."]},
            )
        async with self._lock:
            stored = await self._repo.get(connection_id)
            if stored is None:
                raise NotFound(f"Connection {connection_id} not found")
            self._check_name(data["name"], connection_id)
            record = merge(data, stored)
            await self._check_project(record.project_id)
            ctx = await self._tls_context(record)
            record = await self._repo.update(record)
            link = await self._open(record, ctx)
        return await self._outcome(link)

    async def delete(self, connection_id: str) -> list[dict[str, Any]]:
        async with self._lock:
            if not await self._repo.delete(connection_id):
                raise NotFound(f"Connection {connection_id} not found")
            self._wire.pop(connection_id, None)
            self._entry_json.pop(connection_id, None)
            await self._pool.close(connection_id)
        return self.listing()

    async def _check_project(self, project_id: str) -> None:
        if self._projects is not None and not await self._projects.exists(project_id):
            raise InvalidInput(
                f"Project {project_id} does not exist",
                info={"projectId": [f"Unknown project {project_id!r}: create it first."]},
            )

    def _check_name(self, name: str, connection_id: str) -> None:
        for link in self._pool:
            if link.record.name == name and link.id != connection_id:
                raise NotAllowed(DUPLICATE_MESSAGE)

    async def _tls_context(self, record: ConnectionRecord) -> ssl.SSLContext | None:
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

    async def _open(
        self, record: ConnectionRecord, ctx: ssl.SSLContext | None, *, start: bool = True
    ) -> BrokerLink:
        link = await self._pool.open(record, ctx, start=start)
        self._wire[record.id] = to_wire(record)
        return link

    async def _outcome(self, link: BrokerLink) -> Outcome:
        status = await link.wait_first_attempt(self._connect_timeout)
        if status is None:
            reason = f"No answer from {link.record.url} within {self._connect_timeout:g} s"
        elif status.connected:
            reason = None
        else:
            reason = status.error.message if status.error else "Connection failed"
        return Outcome(self.listing(), reason)
