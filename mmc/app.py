"""create_app(settings) -> web.Application. No I/O here: resources live in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from mmc.api import audit as audit_api
from mmc.api import auth as auth_api
from mmc.api import brokers as brokers_api
from mmc.api import client_control as client_control_api
from mmc.api import connections as connections_api
from mmc.api import docs as docs_api
from mmc.api import dynsec as dynsec_api
from mmc.api import events as events_api
from mmc.api import health as health_api
from mmc.api import inspect as inspect_api
from mmc.api import projects as projects_api
from mmc.api import tokens as tokens_api
from mmc.api import ui as ui_api
from mmc.api import users as users_api
from mmc.api import ws as ws_api
from mmc.appkeys import (
    audit_key,
    auth_key,
    connections_key,
    db_key,
    events_key,
    metrics_key,
    projects_key,
    secret_box_key,
    settings_key,
    ui_selections_key,
)
from mmc.brokers.link import LinkOptions
from mmc.brokers.pool import BrokerPool
from mmc.config import Settings
from mmc.crypto import (
    KEY_CHECK_PLAINTEXT,
    SecretBox,
    SecretKeyError,
    check_token_matches,
    load_secret_keys,
)
from mmc.metrics import Metrics
from mmc.services.auth import AuthService
from mmc.services.connections import ConnectionService
from mmc.services.events import EventHub
from mmc.services.ui import UiSelections
from mmc.store import open_database
from mmc.store.audit import AuditRepository
from mmc.store.connections import ConnectionRepository
from mmc.store.db import CONNECTIONS_CHANNEL
from mmc.store.projects import ProjectRepository
from mmc.web.audit import audit_middleware
from mmc.web.auth import auth_middleware
from mmc.web.cors import cors_middleware
from mmc.web.hosts import allowed_hosts_middleware
from mmc.web.middlewares import body_timeout_middleware, error_middleware, observe_middleware
from mmc.web.routing import Routes, add_routes
from mmc.web.ui import add_ui

log = logging.getLogger(__name__)


async def executor_ctx(app: web.Application) -> AsyncIterator[None]:
    # MQTT connects (socket + TLS handshake) run in worker threads; one slow or
    # black-holed broker must not hold up the others, so allow many at once.
    executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="mmc-worker")
    asyncio.get_running_loop().set_default_executor(executor)
    yield
    executor.shutdown(wait=False, cancel_futures=True)


async def loop_lag_ctx(app: web.Application) -> AsyncIterator[None]:
    app[metrics_key].watch_loop(asyncio.get_running_loop())
    task = asyncio.get_running_loop().create_task(
        app[metrics_key].measure_loop_lag(), name="mmc-loop-lag"
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    loop = asyncio.get_running_loop()
    # open_database creates the data directory of a SQLite store (0700).
    if settings.database_backend != "sqlite" and not settings.secret_key:
        # A key file in each replica's data directory would differ between replicas:
        # each would refuse the connections another one stored.
        raise SecretKeyError(
            "MMC_SECRET_KEY is required with a PostgreSQL store: every replica must "
            "decrypt the same secrets (create one with: mmc secrets generate)"
        )
    async with open_database(settings) as db:
        log.info("store: %s (replica %s)", db.backend, settings.replica)
        keys = await loop.run_in_executor(
            None, load_secret_keys, settings.secret_key, settings.data_dir
        )
        box = SecretBox(keys)
        # A wrong MMC_SECRET_KEY must stop start-up, not surface later as broken links.
        token = await db.get_meta("key_check")
        if token is None:
            await db.set_meta("key_check", box.encrypt(KEY_CHECK_PLAINTEXT))
        else:
            check_token_matches(box, token)
            if not box.primary_opens(token):
                # Started with "new,old" before `mmc secrets rotate`: from now on the store
                # belongs to the new key (servers that only know the old one stop writing
                # connections); rotate re-encrypts what the old key still holds.
                await db.set_meta("key_check", box.rotate(token))
                log.warning(
                    "the store's secrets are under an older key of MMC_SECRET_KEY: "
                    "run `mmc secrets rotate` to re-encrypt them under the first key"
                )
        app[db_key] = db
        app[secret_box_key] = box
        app[audit_key] = AuditRepository(
            db,
            max_rows=settings.audit_max_rows,
            retention_days=settings.audit_retention_days,
            max_refusals=settings.audit_max_refusals,
        )
        yield


async def auth_ctx(app: web.Application) -> AsyncIterator[None]:
    auth = AuthService(app[db_key], app[settings_key])
    await auth.bootstrap()
    await auth.purge_sessions()
    app[auth_key] = auth
    yield


async def projects_ctx(app: web.Application) -> AsyncIterator[None]:
    projects = ProjectRepository(app[db_key])
    await projects.ensure_default()
    app[projects_key] = projects
    yield


async def connections_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    options = LinkOptions(
        connect_timeout=settings.connect_timeout,
        request_timeout=settings.request_timeout,
        keepalive=settings.keepalive,
        reconnect_min_delay=settings.reconnect_min_delay,
        reconnect_max_delay=settings.reconnect_max_delay,
        reconnect_fast_period=settings.reconnect_fast_period,
        reconnect_fast_max_delay=settings.reconnect_fast_max_delay,
        max_connecting=settings.max_connecting,
        probe_timeout=settings.probe_timeout,
        capability_recheck_interval=settings.capability_recheck_interval,
        sys_history_interval=settings.sys_history_interval,
        sys_history_length=settings.sys_history_length,
        client_id_suffix=f"-{settings.replica}" if app[db_key].shared else "",
    )
    pool = BrokerPool(options, app[metrics_key])
    app[metrics_key].watch_pool(pool)
    db = app[db_key]
    service = ConnectionService(
        ConnectionRepository(db, app[secret_box_key]),
        pool,
        max_connections=settings.max_connections,
        connect_timeout=settings.connect_timeout,
        on_follow=app[metrics_key].observe_follow,
    )
    app[connections_key] = service
    hub = EventHub(
        pool,
        service.listing,
        service.listing_json,
        buffer=settings.events_buffer,
        queue=settings.events_queue,
    )
    hub.listen(pool)
    app[events_key] = hub
    app[metrics_key].watch_store(lambda: db.listening)
    await service.start()
    reconcile: asyncio.Task[None] | None = None
    try:
        # Other replicas' changes: at once by the change feed; the periodic full
        # comparison catches whatever a lost notification left behind.
        async with db.listen(CONNECTIONS_CHANNEL, service.changed, service.resync):
            if db.shared:
                reconcile = asyncio.get_running_loop().create_task(
                    service.reconcile_forever(settings.reconcile_interval),
                    name="mmc-reconcile",
                )
            yield
    finally:
        if reconcile is not None:
            reconcile.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconcile
        hub.close()
        # Links say DISCONNECT to their brokers before the process goes.
        await service.stop()


async def close_events(app: web.Application) -> None:
    # on_shutdown runs before the server waits for its handlers: event streams never
    # end by themselves and would hold shutdown for all of MMC_SHUTDOWN_TIMEOUT.
    hub = app.get(events_key)
    if hub is not None:
        hub.close()


# Every API module's route declarations, in registration order.
API: tuple[Routes, ...] = (
    health_api.routes,
    auth_api.routes,
    users_api.routes,
    tokens_api.routes,
    audit_api.routes,
    connections_api.routes,
    projects_api.routes,
    brokers_api.routes,
    dynsec_api.routes,
    client_control_api.routes,
    inspect_api.routes,
    events_api.routes,
    ws_api.routes,
    docs_api.routes,
    ui_api.routes,
)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[
            observe_middleware,
            allowed_hosts_middleware,
            cors_middleware,
            audit_middleware,
            error_middleware,
            body_timeout_middleware,
            auth_middleware,
        ],
        client_max_size=settings.max_body_size,
        # aiohttp's keep-alive timer runs from the connection and from each response until
        # a request head is parsed: the header timeout (idle and trickling clients).
        handler_args={"keepalive_timeout": settings.http_header_timeout},
    )
    app[settings_key] = settings
    app[metrics_key] = Metrics()
    app[ui_selections_key] = UiSelections()
    app.cleanup_ctx.extend(
        [executor_ctx, loop_lag_ctx, store_ctx, auth_ctx, projects_ctx, connections_ctx]
    )
    app.on_shutdown.append(close_events)
    for routes in API:
        add_routes(app, routes, settings.base_path)
    docs_api.setup(app, settings.base_path)
    if settings.ui_dir is not None:
        # Last: every other route wins over the UI's files and client routes.
        # The UI opens its WebSocket on its own root: the same channel as /api/ws.
        add_ui(app, settings.base_path, settings.ui_dir, websocket=ws_api.websocket_handler)
    return app
