"""create_app(settings) -> web.Application. No I/O here: resources live in cleanup_ctx."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from mmc.api import auth as auth_api
from mmc.api import client_control as client_control_api
from mmc.api import connections as connections_api
from mmc.api import health as health_api
from mmc.api import tokens as tokens_api
from mmc.api import users as users_api
from mmc.auth.service import AuthService
from mmc.brokers.client_control import ClientControl
from mmc.brokers.link import LinkOptions
from mmc.brokers.pool import BrokerPool
from mmc.config import Settings
from mmc.connections import ConnectionService
from mmc.crypto import KEY_CHECK_PLAINTEXT, SecretBox, check_token_matches, load_secret_key
from mmc.keys import (
    auth_key,
    client_control_key,
    connections_key,
    db_key,
    secret_box_key,
    settings_key,
)
from mmc.store.connections import ConnectionRepository
from mmc.store.db import Database
from mmc.web.auth import auth_middleware
from mmc.web.middlewares import error_middleware, request_id_middleware

log = logging.getLogger(__name__)


async def executor_ctx(app: web.Application) -> AsyncIterator[None]:
    # MQTT connects (socket + TLS handshake) run in worker threads; one slow or
    # black-holed broker must not hold up the others, so allow many at once.
    executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="mmc-worker")
    asyncio.get_running_loop().set_default_executor(executor)
    yield
    executor.shutdown(wait=False, cancel_futures=True)


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lambda: settings.data_dir.mkdir(parents=True, exist_ok=True))
    async with Database.open(settings.db_path) as db:
        key = await loop.run_in_executor(
            None, load_secret_key, settings.secret_key, settings.data_dir
        )
        box = SecretBox(key)
        # A wrong MMC_SECRET_KEY must stop start-up, not surface later as broken links.
        token = await db.get_meta("key_check")
        if token is None:
            await db.set_meta("key_check", box.encrypt(KEY_CHECK_PLAINTEXT))
        else:
            check_token_matches(box, token)
        app[db_key] = db
        app[secret_box_key] = box
        yield


async def auth_ctx(app: web.Application) -> AsyncIterator[None]:
    auth = AuthService(app[db_key], app[settings_key])
    await auth.bootstrap()
    await auth.purge_sessions()
    app[auth_key] = auth
    yield


async def connections_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    options = LinkOptions(
        connect_timeout=settings.connect_timeout,
        request_timeout=settings.request_timeout,
        keepalive=settings.keepalive,
        reconnect_min_delay=settings.reconnect_min_delay,
        reconnect_max_delay=settings.reconnect_max_delay,
    )
    service = ConnectionService(
        ConnectionRepository(app[db_key], app[secret_box_key]),
        BrokerPool(options),
        max_connections=settings.max_connections,
        connect_timeout=settings.connect_timeout,
    )
    app[connections_key] = service
    await service.start()
    try:
        yield
    finally:
        await service.stop()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, auth_middleware],
        client_max_size=settings.max_body_size,
    )
    app[settings_key] = settings
    app[client_control_key] = ClientControl(settings.client_control_probe_timeout)
    app.cleanup_ctx.extend([executor_ctx, store_ctx, auth_ctx, connections_ctx])
    app.router.add_routes(health_api.routes)
    app.router.add_routes(auth_api.routes)
    app.router.add_routes(users_api.routes)
    app.router.add_routes(tokens_api.routes)
    app.router.add_routes(connections_api.routes)
    app.router.add_routes(client_control_api.routes)
    return app
