"""Every route x every role: 401 without credentials, 403 without the right, else through.

The expectations are written out here, independently of the route declarations and
mmc.auth.permissions, and the test fails when a route exists that this table does not name.
"""

from __future__ import annotations

import re

import pytest
from aiohttp import web

from mmc.auth.permissions import Role, allowed
from mmc.config import Settings
from mmc.web.routing import declarations
from tests.conftest import BACKENDS, Client, MakeClient, create_token, login, registered_operations

pytestmark = pytest.mark.backends(*BACKENDS)

ALL = frozenset(Role)
READERS = ALL - {Role.MONITORING_VIEWER}
CONNECTION_WRITERS = frozenset({Role.ADMIN, Role.CONNECTION_MANAGER})
ADMINS = frozenset({Role.ADMIN})
CONTROLLERS = frozenset({Role.ADMIN, Role.EDITOR})
CLIENT_CONTROL = "/api/projects/{projectId}/brokers/{brokerId}/client-control"

EXPECTED: dict[tuple[str, str], frozenset[Role]] = {
    ("GET", "/api/profile"): ALL,
    ("GET", "/api/docs"): ALL,
    ("GET", "/api/docs/openapi.json"): ALL,
    ("GET", "/api/docs/export"): ALL,
    ("GET", "/api/version"): ALL,
    # The web UI's shell (mmc/api/ui.py): every logged-in user loads the UI.
    ("GET", "/api/theme"): ALL,
    ("GET", "/api/config"): ALL,
    ("GET", "/api/backend-parameters"): ALL,
    ("GET", "/api/newsletter/subscribe"): ALL,
    ("GET", "/api/plugins"): ALL,
    ("GET", "/api/update"): ALL,
    ("GET", "/api/client-control/ping"): ALL,
    ("GET", "/api/tls/ping"): ALL,
    ("GET", "/api/connections"): READERS,
    ("POST", "/api/connections"): CONNECTION_WRITERS,
    ("GET", "/api/connections/{connectionId}"): READERS,
    ("PUT", "/api/connections/{connectionId}"): CONNECTION_WRITERS,
    ("DELETE", "/api/connections/{connectionId}"): CONNECTION_WRITERS,
    ("POST", "/api/connections/test"): CONNECTION_WRITERS,
    ("PUT", "/api/connections/{connectionId}/disconnect"): CONNECTION_WRITERS,
    ("PUT", "/api/connections/{connectionId}/connect"): CONNECTION_WRITERS,
    ("GET", "/api/user-management/users"): ADMINS,
    ("POST", "/api/user-management/users"): ADMINS,
    ("GET", "/api/user-management/users/{username}"): ADMINS,
    ("PUT", "/api/user-management/users/{username}"): ADMINS,
    ("DELETE", "/api/user-management/users/{username}"): ADMINS,
    ("GET", "/api/user-management/roles"): ADMINS,
    ("GET", "/api/tokens"): ADMINS,
    ("POST", "/api/tokens"): ADMINS,
    ("DELETE", "/api/tokens/{tokenId}"): ADMINS,
    ("GET", "/api/audit"): ADMINS,
    # Each event type then requires its own (tests/test_events.py).
    ("GET", "/api/events"): ALL,
    # Each request and command then requires its own (tests/test_ws.py).
    ("GET", "/api/ws"): ALL,
    ("POST", "/api/dynamic-security/{brokerId}/command"): CONTROLLERS,
    ("POST", "/api/projects/{projectId}/brokers/{brokerId}/dynamic-security"): CONTROLLERS,
    ("POST", "/api/projects/{projectId}/dynsec/apply"): CONTROLLERS,
    ("GET", "/api/projects"): READERS,
    ("POST", "/api/projects"): CONNECTION_WRITERS,
    ("GET", "/api/projects/{projectId}"): READERS,
    ("PUT", "/api/projects/{projectId}"): CONNECTION_WRITERS,
    ("DELETE", "/api/projects/{projectId}"): CONNECTION_WRITERS,
    ("GET", "/api/projects/{projectId}/brokers"): ALL,
    ("GET", "/api/projects/{projectId}/brokers/{brokerId}"): ALL,
    ("DELETE", "/api/projects/{projectId}/brokers/{brokerId}"): CONNECTION_WRITERS,
    ("GET", "/api/projects/{projectId}/brokers/{brokerId}/info"): ALL,
    # As licenseInfo inside /info, which monitoringViewer reads.
    ("GET", "/api/projects/{projectId}/brokers/{brokerId}/license"): ALL,
    ("GET", "/api/projects/{projectId}/brokers/{brokerId}/listeners"): READERS,
    ("GET", "/api/projects/{projectId}/brokers/{brokerId}/bridges"): READERS,
    ("GET", "/api/projects/{projectId}/brokers/{brokerId}/bridges/{bridgeId}/status"): READERS,
    ("GET", "/api/projects/{projectId}/brokers/{brokerId}/bridges/{bridgeId}/config"): READERS,
    ("PUT", "/api/projects/{projectId}/brokers/{brokerId}/bridges/{bridgeId}/config"): CONTROLLERS,
    ("PUT", f"{CLIENT_CONTROL}/disconnect"): CONTROLLERS,
    ("PUT", f"{CLIENT_CONTROL}/subscribe"): CONTROLLERS,
    ("PUT", f"{CLIENT_CONTROL}/unsubscribe"): CONTROLLERS,
    # Who is connected: client ids, usernames and addresses, like the dynsec client list.
    ("GET", "/api/projects/{projectId}/brokers/{brokerId}/clients"): READERS,
    ("GET", "/api/projects/{projectId}/brokers/{brokerId}/clients/{clientid}"): READERS,
}

# Dynamic security on one broker: every read for readers, every change for controllers.
_DYNSEC = "/api/projects/{projectId}/brokers/{brokerId}/dynsec"
for _kind in ("clients", "groups", "roles"):
    EXPECTED[("GET", f"{_DYNSEC}/{_kind}")] = READERS
    EXPECTED[("POST", f"{_DYNSEC}/{_kind}")] = CONTROLLERS
    EXPECTED[("GET", f"{_DYNSEC}/{_kind}/{{name}}")] = READERS
    EXPECTED[("PATCH", f"{_DYNSEC}/{_kind}/{{name}}")] = CONTROLLERS
    EXPECTED[("DELETE", f"{_DYNSEC}/{_kind}/{{name}}")] = CONTROLLERS
for _sub in (
    "clients/{name}/roles",
    "clients/{name}/groups",
    "groups/{name}/clients",
    "groups/{name}/roles",
    "roles/{name}/acls",
):
    EXPECTED[("POST", f"{_DYNSEC}/{_sub}")] = CONTROLLERS
    EXPECTED[("DELETE", f"{_DYNSEC}/{_sub}")] = CONTROLLERS
for _action in ("enable", "disable", "password", "clientid"):
    EXPECTED[("PUT", f"{_DYNSEC}/clients/{{name}}/{_action}")] = CONTROLLERS
for _single in ("default-acl", "anonymous-group"):
    EXPECTED[("GET", f"{_DYNSEC}/{_single}")] = READERS
    EXPECTED[("PUT", f"{_DYNSEC}/{_single}")] = CONTROLLERS
EXPECTED[("GET", f"{_DYNSEC}/details")] = READERS
EXPECTED[("GET", f"{_DYNSEC}/export")] = READERS
EXPECTED[("POST", f"{_DYNSEC}/import")] = CONTROLLERS


def _registered(app: web.Application) -> set[tuple[str, str]]:
    public = {(r.method, r.path) for r in declarations(app) if r.public}
    return registered_operations(app) - public


async def test_every_route_is_in_the_matrix_and_declares_its_permission(client: Client) -> None:
    registered = _registered(client.app)
    assert registered == set(EXPECTED), "update EXPECTED for new or removed routes"
    declared = {(r.method, r.path): r for r in declarations(client.app)}
    assert set(declared) == registered_operations(client.app), "every route is declared"
    # Each declaration's permission lets exactly the roles of the specification in.
    for op, roles in EXPECTED.items():
        permission = declared[op].permission
        assert {role for role in Role if allowed((role.value,), permission)} == roles, op


def _concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "no-such-thing", template)


@pytest.fixture
async def tokens(client: Client) -> dict[Role, str]:
    return {role: await create_token(client, role.value) for role in Role}


@pytest.mark.parametrize(("method", "route"), sorted(EXPECTED))
async def test_matrix(
    make_client: MakeClient,
    settings: Settings,
    tokens: dict[Role, str],
    method: str,
    route: str,
) -> None:
    anon = await make_client(settings, authenticated=False)
    path = _concrete(route)
    resp = await anon.request(method, path, json={})
    assert resp.status == 401, (method, route)
    assert await resp.json() == {"code": "UNAUTHORIZED", "message": "Unauthorized", "status": 401}

    for role, token in tokens.items():
        resp = await anon.request(
            method, path, json={}, headers={"Authorization": f"Bearer {token}"}
        )
        if role in EXPECTED[(method, route)]:
            assert resp.status not in (401, 403), (method, route, role, await resp.text())
        else:
            assert resp.status == 403, (method, route, role)
            body = await resp.json()
            assert body == {"code": "NOT_ALLOWED", "message": "Not allowed", "status": 403}


async def test_public_routes_need_no_login(anon_client: Client) -> None:
    for path in ("/healthz", "/readyz", "/api/status-check", "/validate-session", "/login"):
        resp = await anon_client.get(path)
        assert resp.status == 200, path


async def test_unknown_routes_ask_for_login_first(anon_client: Client) -> None:
    assert (await anon_client.get("/api/nothing")).status == 401
    await login(anon_client)
    assert (await anon_client.get("/api/nothing")).status == 404


async def test_method_override_headers_do_not_bypass(
    make_client: MakeClient, settings: Settings, tokens: dict[Role, str]
) -> None:
    viewer = await make_client(settings, authenticated=False)
    headers = {
        "Authorization": f"Bearer {tokens[Role.VIEWER]}",
        "X-HTTP-Method-Override": "DELETE",
        "X-Method-Override": "DELETE",
    }
    resp = await viewer.post("/api/connections/anything", headers=headers, json={})
    assert resp.status == 405
    resp = await viewer.get("/api/connections/../user-management/users", headers=headers)
    assert resp.status in (403, 404)
