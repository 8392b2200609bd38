"""Shared fixtures: real mosquitto brokers, TLS material, and an mmc app on a temp data dir."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.fernet import Fernet
from pytest_aiohttp import AiohttpClient

from mmc.app import create_app
from mmc.config import Settings
from mmc.web.routing import serves_files
from testbed.mosquitto import (
    MOSQUITTO_20,
    MOSQUITTO_VERSIONS,
    Mosquitto,
    MosquittoBroker,
    TlsMaterial,
    make_tls_material,
)
from testbed.postgres import postgres_database

Client = TestClient[web.Request, web.Application]


def registered_operations(app: web.Application) -> set[tuple[str, str]]:
    """Every (METHOD, route template) the app serves: View methods expanded; HEAD and
    static files left out."""
    found: set[tuple[str, str]] = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or serves_files(resource):
            continue
        handler = route.handler
        if route.method == "*":
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                if isinstance(handler, type) and hasattr(handler, method.lower()):
                    found.add((method, resource.canonical))
        elif route.method != "HEAD":
            found.add((route.method, resource.canonical))
    return found


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def blob(data: bytes, *, typo: bool = False) -> dict[str, str]:
    return {"data": b64(data), ("endoding" if typo else "encoding"): "base64"}


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    interval: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll a predicate (plain or async) until it holds; fail after ``timeout`` seconds,
    with ``detail()`` (a log tail, say) in the message."""
    deadline = time.monotonic() + timeout
    while True:
        held = predicate()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"condition not met within {timeout} s{extra}")
        await asyncio.sleep(interval)


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    **kwargs: Any,
) -> tuple[int, Any]:
    """One request to a server in another process: its status and JSON body (or None)."""
    headers = kwargs.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with session.request(method, url, headers=headers, **kwargs) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body


REPO_ROOT = Path(__file__).resolve().parent.parent


def _make(target: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# The mosquitto versions a broker-facing test runs on: those its `mosquitto_versions` marker
# names (on the test or its module), else MMC_TEST_MOSQUITTO_VERSIONS (comma separated,
# e.g. "2.0,2.1" for the whole suite on both), else 2.0. Test ids show the version
# ("[mosquitto-2.1]") whenever a test is parametrized over it.
DEFAULT_VERSIONS = tuple(
    v.strip() for v in os.environ.get("MMC_TEST_MOSQUITTO_VERSIONS", "2.0").split(",") if v.strip()
)


# The files that take minutes, slowest first. They run before the rest so that, in
# pytest-xdist workers (`--dist loadfile --no-loadscope-reorder` hands out whole files in
# collection order; without it, files with many tests go first), they overlap the many
# short files instead of ending the run alone.
LONG_FILES = tuple(
    f"test_{name}.py"
    for name in (
        "fuzz",
        "permissions",
        "dynsec_fuzz",
        "own_access",
        "import_mmc",
        "auth",
        "cli_process",
        "lost_answers",
        "secrets",
        "soak",
    )
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


def pytest_report_header(config: pytest.Config) -> list[str]:
    found = {v: m.installed_version() or "not built" for v, m in MOSQUITTO_VERSIONS.items()}
    return ["mosquitto: " + ", ".join(f"{v} -> {full}" for v, full in found.items())]


def _mosquitto_versions(metafunc: pytest.Metafunc) -> tuple[str, ...] | None:
    marker = metafunc.definition.get_closest_marker("mosquitto_versions")
    versions = tuple(marker.args) if marker is not None else DEFAULT_VERSIONS
    assert versions, "no mosquitto version named"
    assert set(versions) <= set(MOSQUITTO_VERSIONS), versions
    return versions if marker is not None or versions != ("2.0",) else None


@pytest.fixture(scope="session")
def mosquitto(request: pytest.FixtureRequest) -> Mosquitto:
    """The mosquitto the test's brokers run (2.0, bookworm's, unless parametrized); 2.1 is
    built by `make mosquitto-2.1` when missing, and a failed build fails the tests."""
    chosen = MOSQUITTO_VERSIONS[getattr(request, "param", "2.0")]
    if chosen is not MOSQUITTO_20 and chosen.available() is not None:
        result = _make("mosquitto-2.1", timeout=900)
        if result.returncode != 0:
            pytest.fail(f"`make mosquitto-2.1` failed:\n{result.stdout}{result.stderr}")
    reason = chosen.available()
    if reason is not None:
        pytest.fail(reason)
    return chosen


@pytest.fixture(scope="session")
def client_control_plugin(mosquitto: Mosquitto) -> Path:
    """The client-control plugin built for ``mosquitto`` (`make plugin`, or for 2.1 against
    2.1's headers by `make mosquitto-2.1`); a failed build fails the tests."""
    target, path = "plugin", REPO_ROOT / "plugin" / "mmc_client_control.so"
    if mosquitto.client_control_plugin is not None:
        target, path = "mosquitto-2.1", mosquitto.client_control_plugin
    result = _make(target, timeout=900)
    if result.returncode != 0 or not path.is_file():
        pytest.fail(
            f"`make {target}` could not build the client-control plugin (it needs gcc and "
            "Debian's mosquitto-dev, libmosquitto-dev and libcjson-dev; `make check-system` "
            f"installs them):\n{result.stdout}{result.stderr}"
        )
    return path


@pytest.fixture(scope="session")
def tls_material() -> TlsMaterial:
    return make_tls_material()


@pytest.fixture(scope="session")
def broker(
    tmp_path_factory: pytest.TempPathFactory, tls_material: TlsMaterial, mosquitto: Mosquitto
) -> Iterator[MosquittoBroker]:
    """One long-lived broker with every listener; tests must not stop it."""
    with MosquittoBroker(
        tmp_path_factory.mktemp("broker"), tls_material, mosquitto=mosquitto
    ) as running:
        yield running


@pytest.fixture
def own_broker(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[MosquittoBroker]:
    """A plain broker a test may kill and restart."""
    with MosquittoBroker(tmp_path / "own-broker", mosquitto=mosquitto) as running:
        yield running


ADMIN_PASSWORD = "admin-password-for-tests"
# Replicas on one PostgreSQL store must share the key (SQLite tests use the key file).
SECRET_KEY = Fernet.generate_key().decode()
BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mosquitto" in metafunc.fixturenames and (versions := _mosquitto_versions(metafunc)):
        metafunc.parametrize(
            "mosquitto", versions, indirect=True, scope="session", ids=lambda v: f"mosquitto-{v}"
        )
    # `@pytest.mark.backends("sqlite", "postgresql")` (on a test or a module) runs the test
    # once per store backend named; unmarked tests use SQLite.
    marker = metafunc.definition.get_closest_marker("backends")
    if "database_url" in metafunc.fixturenames and marker is not None:
        assert set(marker.args) <= set(BACKENDS), marker.args
        metafunc.parametrize("database_url", marker.args, indirect=True)


@pytest.fixture
async def database_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """None (SQLite in the test's data dir), or a new PostgreSQL database's URL."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield None
    else:
        async with postgres_database() as url:
            yield url


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key=SECRET_KEY if database_url else None,
        data_dir=tmp_path / "data",
        connect_timeout=3.0,
        request_timeout=2.0,
        # Twice the shipped 1 s: with several pytest-xdist workers on two cores a broker's
        # first answer can be late, and a probe that times out marks a feature missing.
        probe_timeout=2.0,
        keepalive=5,
        reconnect_min_delay=0.1,
        reconnect_max_delay=0.5,
        admin_password=ADMIN_PASSWORD,
        # Cheap hashes keep the suite fast; production uses 15 (tested in test_passwords).
        password_hash_cost=10,
    )


def origin(client: Client) -> dict[str, str]:
    """The header a browser sends with a same-origin POST."""
    return {"Origin": f"http://{client.host}:{client.port}"}


async def login(client: Client, username: str = "admin", password: str = ADMIN_PASSWORD) -> None:
    resp = await client.post("/auth", json={"username": username, "password": password})
    assert resp.status == 200, await resp.text()


async def create_token(client: Client, role: str) -> str:
    """A token of the given role, made through the API by the (logged-in) admin."""
    resp = await client.post(
        "/api/tokens", json={"name": f"{role}-token", "role": role}, headers=origin(client)
    )
    assert resp.status == 201, await resp.text()
    token: str = (await resp.json())["token"]
    return token


MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(database_url: str | None, aiohttp_client: AiohttpClient) -> MakeClient:
    """An mmc app on a test server; by default every request carries an admin token.
    (After the database in setup, so the apps stop before their database is dropped.)"""

    async def make(settings: Settings, *, authenticated: bool = True) -> Client:
        client = await aiohttp_client(create_app(settings))
        if authenticated:
            await login(client)
            token = await create_token(client, "admin")
            client.session.cookie_jar.clear()
            client.session.headers["Authorization"] = f"Bearer {token}"
        return client

    return make


@pytest.fixture
async def client(make_client: MakeClient, settings: Settings) -> Client:
    return await make_client(settings)


@pytest.fixture
async def anon_client(make_client: MakeClient, settings: Settings) -> Client:
    return await make_client(settings, authenticated=False)


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
