"""Shared fixtures: real mosquitto brokers, TLS material, and an mmc app on a temp data dir."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from mmc.app import create_app
from mmc.config import Settings
from tests.brokers import MosquittoBroker, TlsMaterial, make_tls_material, mosquitto_available

Client = TestClient[web.Request, web.Application]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def blob(data: bytes, *, typo: bool = False) -> dict[str, str]:
    return {"data": b64(data), ("endoding" if typo else "encoding"): "base64"}


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def _require_mosquitto() -> None:
    reason = mosquitto_available()
    if reason is not None:
        pytest.fail(reason)


@pytest.fixture(scope="session")
def tls_material() -> TlsMaterial:
    return make_tls_material()


@pytest.fixture(scope="session")
def broker(
    tmp_path_factory: pytest.TempPathFactory, tls_material: TlsMaterial
) -> Iterator[MosquittoBroker]:
    """One long-lived broker with every listener; tests must not stop it."""
    _require_mosquitto()
    with MosquittoBroker(tmp_path_factory.mktemp("broker"), tls_material) as running:
        yield running


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A plain broker a test may kill and restart."""
    _require_mosquitto()
    with MosquittoBroker(tmp_path / "own-broker") as running:
        yield running


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        connect_timeout=3.0,
        request_timeout=2.0,
        keepalive=5,
        reconnect_min_delay=0.1,
        reconnect_max_delay=0.5,
    )


@pytest.fixture
def make_client(
    aiohttp_client: AiohttpClient,
) -> Callable[[Settings], Awaitable[Client]]:
    async def make(settings: Settings) -> Client:
        return await aiohttp_client(create_app(settings))

    return make


@pytest.fixture
async def client(
    make_client: Callable[[Settings], Awaitable[Client]], settings: Settings
) -> Client:
    return await make_client(settings)


def plain_body(broker: MosquittoBroker, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "plain",
        "name": "Plain broker",
        "url": f"mqtt://127.0.0.1:{broker.port}",
        "credentials": {"username": broker.admin_username, "password": broker.admin_password},
    }
    body.update(overrides)
    return body


def tls_body(
    broker: MosquittoBroker, tls: TlsMaterial, port: int | None, **overrides: Any
) -> dict[str, Any]:
    body = plain_body(
        broker,
        id="tls",
        name="TLS broker",
        url=f"mqtts://localhost:{port}",
        ca=blob(tls.ca_cert),
    )
    body.update(overrides)
    return body
