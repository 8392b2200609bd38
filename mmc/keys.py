"""Every typed key mmc stores on the application or a request."""

from __future__ import annotations

from aiohttp import web

from mmc.auth.service import AuthService, Identity
from mmc.brokers.client_control import ClientControl
from mmc.config import Settings
from mmc.connections import ConnectionService
from mmc.crypto import SecretBox
from mmc.store.db import Database

settings_key = web.AppKey("settings", Settings)
db_key = web.AppKey("db", Database)
secret_box_key = web.AppKey("secret_box", SecretBox)
connections_key = web.AppKey("connections", ConnectionService)
auth_key = web.AppKey("auth", AuthService)
client_control_key = web.AppKey("client_control", ClientControl)

request_id_key = web.RequestKey("request_id", str)
identity_key = web.RequestKey("identity", Identity)
