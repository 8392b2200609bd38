"""Every typed key mmc stores on the application or a request."""

from __future__ import annotations

from aiohttp import web

from mmc.auth.identity import Identity
from mmc.config import Settings
from mmc.crypto import SecretBox
from mmc.metrics import Metrics
from mmc.services.auth import AuthService
from mmc.services.connections import ConnectionService
from mmc.services.events import EventHub
from mmc.services.ui import UiSelections
from mmc.store.audit import AuditRepository
from mmc.store.db import Database
from mmc.store.projects import ProjectRepository

settings_key = web.AppKey("settings", Settings)
db_key = web.AppKey("db", Database)
secret_box_key = web.AppKey("secret_box", SecretBox)
connections_key = web.AppKey("connections", ConnectionService)
auth_key = web.AppKey("auth", AuthService)
metrics_key = web.AppKey("metrics", Metrics)
# The OpenAPI document as JSON text, built on first request (list: the app is frozen then).
openapi_key = web.AppKey("openapi", list[str])
projects_key = web.AppKey("projects", ProjectRepository)
audit_key = web.AppKey("audit", AuditRepository)
events_key = web.AppKey("events", EventHub)
# The broker each browser session's web UI selected (mmc.services.ui).
ui_selections_key = web.AppKey("ui_selections", UiSelections)

request_id_key = web.RequestKey("request_id", str)
identity_key = web.RequestKey("identity", Identity)
# The error code of a non-2xx answer, for the audit trail.
error_code_key = web.RequestKey("error_code", str)
# Who tried to log in (POST /auth has no identity yet), for the audit trail.
audit_user_key = web.RequestKey("audit_user", str)
# Set by a handler whose request turned out to change nothing (a passthrough of read
# commands only): the audit trail does not record it (mmc.web.audit).
audit_read_key = web.RequestKey("audit_read", bool)
