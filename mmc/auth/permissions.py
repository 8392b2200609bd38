"""The one permission table: which role may call which route.

Every route the application registers must appear here (a test enforces it);
an unlisted route is refused to everybody but is still a bug.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    EDITOR = "editor"
    VIEWER = "viewer"
    CONNECTION_MANAGER = "connectionManager"
    MONITORING_VIEWER = "monitoringViewer"


class Permission(StrEnum):
    PUBLIC = "public"  # anybody, without logging in: probes, metrics, the login endpoints
    SELF = "self"  # one's own profile and session
    MONITOR = "monitor"  # broker list, broker info and status
    READ = "read"  # every other read
    CONNECTIONS = "connections"  # create, change, delete connections (brokers) and projects
    CONTROL = "control"  # dynamic-security writes and client control
    ADMIN = "admin"  # users, tokens, audit


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.EDITOR: frozenset(
        {Permission.SELF, Permission.MONITOR, Permission.READ, Permission.CONTROL}
    ),
    Role.VIEWER: frozenset({Permission.SELF, Permission.MONITOR, Permission.READ}),
    Role.CONNECTION_MANAGER: frozenset(
        {Permission.SELF, Permission.MONITOR, Permission.READ, Permission.CONNECTIONS}
    ),
    Role.MONITORING_VIEWER: frozenset({Permission.SELF, Permission.MONITOR}),
}

# Open to anybody: probes, metrics, and the login endpoints themselves.
PUBLIC_ROUTES: frozenset[str] = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/status-check",
        "/auth",
        "/logout",
        "/validate-session",
    }
)

_S, _M, _R = Permission.SELF, Permission.MONITOR, Permission.READ
_C, _X, _A = Permission.CONNECTIONS, Permission.CONTROL, Permission.ADMIN

# Route template -> method -> permission. HEAD is checked as GET.
ROUTE_PERMISSIONS: dict[str, dict[str, Permission]] = {
    "/api/profile": {"GET": _S},
    # The API's documentation: for anybody logged in.
    "/api/docs": {"GET": _S},
    "/api/docs/openapi.json": {"GET": _S},
    "/api/docs/static": {"GET": _S},
}


def required_permission(route: str, method: str) -> Permission | None:
    """None when the table has no entry: the caller must refuse."""
    methods = ROUTE_PERMISSIONS.get(route)
    if methods is None:
        return None
    return methods.get("GET" if method == "HEAD" else method)


def allowed(roles: tuple[str, ...], permission: Permission) -> bool:
    if permission is Permission.PUBLIC:
        return True
    for name in roles:
        try:
            role = Role(name)
        except ValueError:
            continue
        if permission in ROLE_PERMISSIONS[role]:
            return True
    return False
