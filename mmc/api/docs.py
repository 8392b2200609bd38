"""The API's own documentation: the OpenAPI document and a Swagger UI page to browse it."""

from __future__ import annotations

import json
import secrets

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from mmc import __version__
from mmc.appkeys import openapi_key, settings_key
from mmc.auth.permissions import Permission
from mmc.openapi import build_spec
from mmc.schemas.responses import OBJECT, VersionSchema
from mmc.web.routing import Routes

routes = Routes()

STATIC = "/api/docs/static"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mmc API</title>
<link rel="stylesheet" href="{static}/swagger-ui.css">
</head>
<body>
<div id="ui"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script nonce="{nonce}">
window.ui = SwaggerUIBundle({{url: {spec_url}, dom_id: "#ui", withCredentials: true}});
</script>
</body>
</html>
"""


def spec_text(app: web.Application) -> str:
    """Built once, on first use: the routes do not change while the process runs."""
    cache = app[openapi_key]
    if not cache:
        spec, _ = build_spec(app, app[settings_key].base_path)
        cache.append(json.dumps(spec))
    return cache[0]


# The API's documentation: for anybody logged in.
@routes.get(
    "/api/docs/openapi.json",
    Permission.SELF,
    "The OpenAPI 3.0 document of this API",
    responses={200: OBJECT},
)
async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=spec_text(request.app), content_type="application/json")


# The Cedalo MMC serves its document here; clients and scripts written for it keep working.
@routes.get(
    "/api/docs/export",
    Permission.SELF,
    "The OpenAPI 3.0 document of this API (the Cedalo MMC's path)",
    responses={200: OBJECT},
)
async def export(request: web.Request) -> web.Response:
    return await openapi(request)


@routes.get(
    "/api/version",
    Permission.SELF,
    "The name and version of this mmc",
    responses={200: VersionSchema()},
)
async def version(request: web.Request) -> web.Response:
    return web.json_response({"name": "mmc", "version": __version__})


@routes.get(
    "/api/docs",
    Permission.SELF,
    "Browse the API (Swagger UI)",
    responses={200: ("text/html", "An HTML page")},
)
async def page(request: web.Request) -> web.Response:
    base = request.app[settings_key].base_path
    nonce = secrets.token_urlsafe(16)
    html = _PAGE.format(
        static=base + STATIC,
        spec_url=json.dumps(base + "/api/docs/openapi.json"),
        nonce=nonce,
    )
    response = web.Response(text=html, content_type="text/html")
    # Swagger UI's own files and the one inline script (by its nonce); inline styles and
    # data: images are Swagger UI's; no framing (clickjacking), no plug-ins, no <base>.
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'self' 'nonce-{nonce}'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    return response


def setup(app: web.Application, base_path: str) -> None:
    app[openapi_key] = []
    # Its files need a login like the page (mmc.web.routing.STATIC_PERMISSION).
    app.router.add_static(base_path + STATIC, swagger_ui_path)
