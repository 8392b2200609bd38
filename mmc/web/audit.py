"""The audit middleware: one row in the audit trail per state-changing request.

Recorded for every POST/PUT/PATCH/DELETE that matched a route, whatever the
outcome, refusals (401/403/429) included: who (identity and how it was
authenticated), from where (client address, proxies resolved), what (method and
route template), the target (the path parameters), the outcome (status, error
code), the duration and the request id. Never a body, a header or a query string,
so never a password, key or token.

Entries of strangers (no login, and not a login that succeeded) are kept under a cap
of their own (``audit_max_refusals``) and evict only each other: anonymous requests
cannot flush the record of what logged-in users did (see ``mmc.store.audit``).

A POST that only reads is not recorded, as no GET is: the dynamic-security passthroughs
classify their commands (``mark_read``): an envelope of read commands only (listClients,
getClient, getRole, ...) writes no row and never waits for the store; one write command in
it and the whole request is recorded, durably, before the answer. Requests refused before
the handler classified them (401, 403, 400) are recorded whatever they carried.

The row is written after the handler has answered and before the answer is sent,
with the status the client gets: a failed write is never recorded as a success.

Fail-open: if the row cannot be stored (disk full, store locked), the mutation
has already happened (in the store, or on a broker, where it cannot be undone);
turning its answer into a 500 would make a successful change look failed and invite
a retry. The entry is logged at ERROR level instead (the log is the fallback trail)
and counted in ``mmc_audit_write_failures``, which operators should alert on.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from mmc.appkeys import (
    audit_key,
    audit_read_key,
    audit_user_key,
    error_code_key,
    events_key,
    identity_key,
    metrics_key,
    request_id_key,
    settings_key,
)
from mmc.store.audit import AuditEntry, entry_wire
from mmc.web.proxy import client_address
from mmc.web.routing import route_template

log = logging.getLogger(__name__)

AUDITED_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_TARGET_LENGTH = 256
# Not an HTTP status the client saw: the request was cancelled before it was answered.
CANCELLED = 499


def mark_read(request: web.Request) -> None:
    """This request changes nothing: it is not recorded (see the module docstring)."""
    request[audit_read_key] = True


def _entry(request: web.Request, status: int, seconds: float) -> AuditEntry:
    identity = request.get(identity_key)
    if identity is not None:
        username: str | None = identity.username
        method: str | None = identity.method
    else:
        username = request.get(audit_user_key)
        method = "password" if username is not None else None
    return AuditEntry(
        request_id=request.get(request_id_key, "-"),
        username=username,
        auth_method=method,
        client=client_address(request, request.app[settings_key].trusted_networks),
        method=request.method,
        route=route_template(request) or "unmatched",
        target={k: v[:MAX_TARGET_LENGTH] for k, v in request.match_info.items()},
        status=status,
        error_code=request.get(error_code_key) if status >= 400 else None,
        duration_ms=round(seconds * 1000),
    )


async def _store(request: web.Request, entry: AuditEntry) -> None:
    await record(request.app, entry)


async def record(app: web.Application, entry: AuditEntry) -> None:
    """Write ``entry`` (fail-open, see the module docstring) and publish it as an event;
    also for what arrives other than as an HTTP request (a WebSocket's commands)."""
    try:
        await app[audit_key].insert(entry)
    except Exception as exc:  # noqa: BLE001 - fail-open, see the module docstring
        app[metrics_key].audit_failures.inc()
        log.error(
            "audit entry could not be stored (%s): %s %s by %s from %s -> %d (request %s)",
            exc,
            entry.method,
            entry.route,
            entry.username,
            entry.client,
            entry.status,
            entry.request_id,
            extra={"audit": {**entry.__dict__, "outcome": entry.outcome}},
        )
        return
    hub = app.get(events_key)
    if hub is not None and app[audit_key].keeps(entry):
        wire = entry_wire(entry)
        del wire["id"]  # numbered by the store, unknown here
        hub.audit(wire)


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method not in AUDITED_METHODS or request.match_info.http_exception is not None:
        return await handler(request)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if request.get(audit_read_key):
            raise
        await _store(request, _entry(request, exc.status, time.perf_counter() - started))
        raise
    except asyncio.CancelledError:
        if request.get(audit_read_key):
            raise
        entry = _entry(request, CANCELLED, time.perf_counter() - started)
        await asyncio.shield(_store(request, entry))
        raise
    if not request.get(audit_read_key):
        await _store(request, _entry(request, response.status, time.perf_counter() - started))
    return response
