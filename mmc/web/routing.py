"""Route registration under the optional base path, and the template of a matched route."""

from __future__ import annotations

from aiohttp import web

from mmc.keys import settings_key


def add_routes(app: web.Application, routes: web.RouteTableDef, base_path: str) -> None:
    """Register a resource's routes, every path prefixed with ``base_path`` (MMC_BASE_PATH)."""
    for route in routes:
        assert isinstance(route, web.RouteDef)
        app.router.add_route(route.method, base_path + route.path, route.handler, **route.kwargs)


def route_template(request: web.Request) -> str | None:
    """The matched route as written in the code ("/api/connections/{connectionId}"),
    without the base path; None when nothing matched."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    base = request.app[settings_key].base_path
    canonical = resource.canonical
    return canonical[len(base) :] if base and canonical.startswith(base) else canonical
