"""Probes for Kubernetes and the MMC's status check. Open without authentication."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import sqlite3
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mmc.appkeys import db_key, metrics_key, settings_key
from mmc.auth.permissions import Permission
from mmc.errors import MmcError, Unauthorized
from mmc.schemas.responses import HealthSchema, ReadySchema
from mmc.web.routing import Routes

log = logging.getLogger(__name__)

routes = Routes()


@routes.get(
    "/healthz",
    Permission.PUBLIC,
    "Liveness: the process and its event loop answer",
    responses={200: HealthSchema()},
)
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process and its event loop answer. Never depends on brokers."""
    return web.json_response({"status": "ok"})


@routes.get(
    "/readyz",
    Permission.PUBLIC,
    "Readiness: start-up finished and the store answers",
    responses={200: ReadySchema(), 503: ReadySchema()},
)
async def readyz(request: web.Request) -> web.Response:
    """Readiness: start-up finished and the store answers a query. Never depends on
    brokers; a replica whose database is gone leaves the Service but stays alive."""
    reasons: list[str] = []
    body: dict[str, Any] = {}
    db = request.app.get(db_key)
    if db is None:
        reasons.append("store not open")
    else:
        state = "ok"
        try:
            async with asyncio.timeout(2):
                await db.ping()
        except (TimeoutError, sqlite3.Error, ValueError, MmcError) as exc:
            state = "unavailable"
            why = exc.message if isinstance(exc, MmcError) else str(exc) or type(exc).__name__
            reasons.append(f"store does not answer: {why}")
        body["database"] = {"backend": db.backend, "status": state, "listening": db.listening}
    if reasons:
        return web.json_response({"status": "unavailable", "reasons": reasons, **body}, status=503)
    return web.json_response({"status": "ok", "reasons": [], **body})


@routes.get(
    "/metrics",
    Permission.PUBLIC,
    "Prometheus metrics (needs the metrics token as Bearer when one is configured)",
    responses={200: ("text/plain", "Prometheus text format")},
    errors=(401,),
)
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format. Open like the probes (scrapers do not log in) unless
    ``metrics_token`` is set: then only a scraper sending it as a Bearer token reads it."""
    token = request.app[settings_key].metrics_token
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # compare_digest over digests: no timing difference tells how much of a guess, or
        # of its length, was right.
        given_digest = hashlib.sha256(given.strip().encode("utf-8", "surrogateescape"))
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given_digest.digest(), hashlib.sha256(token.encode()).digest()
        ):
            raise Unauthorized("/metrics requires the metrics token (Authorization: Bearer)")
    body = generate_latest(request.app[metrics_key].registry)
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


@routes.get(
    "/api/status-check",
    Permission.PUBLIC,
    "The MMC's status check",
    responses={200: HealthSchema()},
)
async def status_check(request: web.Request) -> web.Response:
    return web.json_response({"status": "healthy"})
