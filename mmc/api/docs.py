"""The API's own documentation: the OpenAPI document and a Swagger UI page to browse it."""

from __future__ import annotations

import json

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from mmc.keys import openapi_key, settings_key
from mmc.openapi import build_spec, doc
from mmc.schemas.responses import OBJECT

routes = web.RouteTableDef()

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
<script>
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


@routes.get("/api/docs/openapi.json")
@doc("The OpenAPI 3.0 document of this API", responses={200: OBJECT})
async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=spec_text(request.app), content_type="application/json")


@routes.get("/api/docs")
@doc("Browse the API (Swagger UI)", responses={200: ("text/html", "An HTML page")})
async def page(request: web.Request) -> web.Response:
    base = request.app[settings_key].base_path
    html = _PAGE.format(static=base + STATIC, spec_url=json.dumps(base + "/api/docs/openapi.json"))
    return web.Response(text=html, content_type="text/html")


def setup(app: web.Application, base_path: str) -> None:
    app[openapi_key] = []
    app.router.add_static(base_path + STATIC, swagger_ui_path)
