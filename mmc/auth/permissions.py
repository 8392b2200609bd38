"""The role model: the permissions a route may require, and the roles that have them.

Each route states the one permission it requires in its declaration (mmc.web.routing);
mmc.web.auth checks it against the caller's roles here. Paths appear nowhere in this file.
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
