"""Route declarations: each route is declared once, next to its handler.

An API module holds ``routes = Routes()`` and declares each operation on its handler::

    @routes.post(
        "/api/tokens",
        Permission.ADMIN,
        "Create an application token",
        body=token_create_schema,
        responses={201: TokenCreatedSchema()},
    )
    async def create_token(request: web.Request, body: dict[str, Any]) -> web.Response: ...

The declaration (a ``Route``) is the one place that says what the route is:

- ``add_routes`` registers it under the base path (MMC_BASE_PATH);
- before the handler runs, what the path names (``before=``, a connected broker), the query
  string (``query=``) and the body (``body=``) are resolved, read and validated, in that
  order, and passed in as arguments (mmc.web.body);
- mmc.web.auth requires its ``permission`` (mmc.auth.permissions: roles, not paths);
- mmc.openapi documents it: summary, parameters, body, responses, the errors it may give.

Like aiohttp's ``RouteTableDef`` (plain function handlers, one table per module), with the
input validation of Home Assistant's ``RequestDataValidator`` in front of the handler.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar, Unpack

from aiohttp import web
from marshmallow import Schema

from mmc.appkeys import settings_key
from mmc.auth.permissions import Permission
from mmc.errors import InvalidInput
from mmc.web.body import FORM_TYPES, load, read_form, read_json

Handler = Callable[..., Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
Resolver = Callable[[web.Request], Any]
# A marshmallow schema or a JSON schema dict (JSON answer), (media type, description) for a
# text answer, or None (no body).
ResponseSpec = Schema | Mapping[str, Any] | tuple[str, str] | None
FORM = "application/x-www-form-urlencoded"
# Static files (the API browser's) are for anybody logged in.
STATIC_PERMISSION = Permission.SELF
_ATTR = "__mmc_route__"


@dataclass(frozen=True)
class Route:
    """One operation: what it is, who may call it, what it takes and what it answers."""

    method: str
    path: str
    permission: Permission
    summary: str
    handler: Handler
    responses: Mapping[int, ResponseSpec] = field(default_factory=lambda: {200: None})
    body: Schema | None = None
    query: Schema | None = None
    # Without a body, the body's fields may come in the query string instead (a DELETE's
    # key); the fields of ``query`` are left out of them. Documented as query parameters.
    body_in_query: bool = False
    # Body field -> path parameter it defaults to (PUT /things/{id} with no "id").
    path_defaults: Mapping[str, str] | None = None
    # Resolved from the request before the input is read, in this order, and passed in by
    # name: what the path names (a connected broker), whose 404/503 comes before a 400.
    before: Mapping[str, Resolver] | None = None
    errors: tuple[int, ...] = ()
    description: str | None = None
    body_content_types: tuple[str, ...] = ("application/json",)

    @property
    def public(self) -> bool:
        return self.permission is Permission.PUBLIC

    def read_query(self, request: web.Request) -> dict[str, Any]:
        assert self.query is not None
        if not request.query_string:
            empty = _empty_query(self.query)
            if empty is not None:
                return dict(empty)
        return load(self.query, dict(request.query))

    async def read_body(self, request: web.Request) -> dict[str, Any]:
        assert self.body is not None
        document: Any
        if self.body_in_query and not request.body_exists:
            claimed = _data_keys(self.query)
            document = {k: v for k, v in request.query.items() if k not in claimed}
        elif FORM in self.body_content_types and request.content_type in FORM_TYPES:
            document = await read_form(request)
        else:
            document = await read_json(request)
        if self.path_defaults and isinstance(document, dict):
            for name, param in self.path_defaults.items():
                document.setdefault(name, request.match_info[param])
        return load(self.body, document)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        """The handler with its declared input read, validated and passed in."""
        inputs: dict[str, Any] = {}
        for name, resolve in (self.before or {}).items():
            value = resolve(request)
            inputs[name] = await value if inspect.isawaitable(value) else value
        if self.query is not None:
            inputs["query"] = self.read_query(request)
        if self.body is not None:
            inputs["body"] = await self.read_body(request)
        return await self.handler(request, **inputs)


# A schema's answer to an empty query string, for the schemas where it is always the same:
# most requests send none, and a marshmallow load costs more than the rest of routing.
_EMPTY_QUERIES: dict[int, tuple[Schema, dict[str, Any] | None]] = {}
_CONSTANTS = (bool, int, float, str, type(None))


def _empty_query(schema: Schema) -> dict[str, Any] | None:
    """``load(schema, {})`` once, if no hook of the schema and no callable default can make
    it differ between calls and it holds only immutable values; else None (load each time).
    A query that does not load (a required field) is not cached either."""
    known = _EMPTY_QUERIES.get(id(schema))
    if known is not None and known[0] is schema:
        return known[1]
    result: dict[str, Any] | None = None
    constant = not any(schema._hooks.values()) and not any(
        callable(f.load_default) for f in schema.fields.values()
    )
    if constant:
        try:
            loaded = load(schema, {})
        except InvalidInput:
            loaded = None
        if loaded is not None and all(isinstance(v, _CONSTANTS) for v in loaded.values()):
            result = loaded
    _EMPTY_QUERIES[id(schema)] = (schema, result)
    return result


def _data_keys(schema: Schema | None) -> frozenset[str]:
    if schema is None:
        return frozenset()
    return frozenset(f.data_key or name for name, f in schema.fields.items())


class Options(TypedDict, total=False):
    """A declaration's optional parts (see Route)."""

    responses: Mapping[int, ResponseSpec]
    body: Schema | None
    query: Schema | None
    body_in_query: bool
    path_defaults: Mapping[str, str] | None
    before: Mapping[str, Resolver] | None
    errors: tuple[int, ...]
    description: str | None
    body_content_types: tuple[str, ...]


def _check_inputs(handler: Handler, options: Options) -> None:
    """At import: a handler takes ``body``/``query`` exactly when its declaration reads one,
    and whatever ``before`` resolves."""
    parameters = inspect.signature(handler).parameters
    for name in options.get("before") or {}:
        if name not in parameters:
            raise TypeError(f"{handler.__qualname__} must take {name!r}: it is declared")
    for name in ("body", "query"):
        declared = options.get(name) is not None
        parameter = parameters.get(name)
        if declared and parameter is None:
            raise TypeError(f"{handler.__qualname__} must take {name!r}: it is declared")
        if not declared and parameter is not None and parameter.default is parameter.empty:
            raise TypeError(f"{handler.__qualname__} takes {name!r}, which is not declared")


class Routes:
    """A module's route declarations, in the order they were made."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def route(
        self,
        method: str,
        path: str,
        permission: Permission,
        summary: str,
        **options: Unpack[Options],
    ) -> Callable[[H], H]:
        """Declare ``method path`` served by the decorated handler (returned unchanged).

        ``responses`` maps a status to a ResponseSpec (default: 200 without a schema);
        the error responses every route can give are added by mmc.openapi, ``errors``
        names the others (409...)."""

        def declare(handler: H) -> H:
            _check_inputs(handler, options)
            self._routes.append(
                Route(
                    method=method,
                    path=path,
                    permission=permission,
                    summary=summary,
                    handler=handler,
                    **options,
                )
            )
            return handler

        return declare

    def get(
        self, path: str, permission: Permission, summary: str, **options: Unpack[Options]
    ) -> Callable[[H], H]:
        return self.route("GET", path, permission, summary, **options)

    def post(
        self, path: str, permission: Permission, summary: str, **options: Unpack[Options]
    ) -> Callable[[H], H]:
        return self.route("POST", path, permission, summary, **options)

    def put(
        self, path: str, permission: Permission, summary: str, **options: Unpack[Options]
    ) -> Callable[[H], H]:
        return self.route("PUT", path, permission, summary, **options)

    def patch(
        self, path: str, permission: Permission, summary: str, **options: Unpack[Options]
    ) -> Callable[[H], H]:
        return self.route("PATCH", path, permission, summary, **options)

    def delete(
        self, path: str, permission: Permission, summary: str, **options: Unpack[Options]
    ) -> Callable[[H], H]:
        return self.route("DELETE", path, permission, summary, **options)


def _endpoint(route: Route) -> Handler:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        return await route(request)

    setattr(endpoint, _ATTR, route)
    return endpoint


def add_routes(app: web.Application, routes: Routes, base_path: str) -> None:
    """Register a module's routes, every path prefixed with ``base_path`` (MMC_BASE_PATH)."""
    for route in routes:
        app.router.add_route(route.method, base_path + route.path, _endpoint(route))


class FileResource(web.AbstractResource):
    """A resource of files, not operations (the web UI's, mmc.web.ui): like aiohttp's
    static resources, it requires STATIC_PERMISSION and is not in the OpenAPI document.
    A browser that is not logged in is sent to the login page instead of a 401."""


def serves_files(resource: web.AbstractResource | None) -> bool:
    """Whether a resource serves files (aiohttp's static ones, or a FileResource)."""
    return isinstance(resource, web.StaticResource | FileResource)


def declared(handler: object) -> Route | None:
    """The declaration of a registered handler; None for anything else."""
    route = getattr(handler, _ATTR, None)
    return route if isinstance(route, Route) else None


def declarations(app: web.Application) -> Iterator[Route]:
    """Every declared route the application serves."""
    for registered in app.router.routes():
        route = declared(registered.handler)
        if route is not None:
            yield route


def declaration(request: web.Request) -> Route | None:
    """The matched route's declaration; None when nothing (or a static file) matched."""
    return declared(request.match_info.route.handler)


def required_permission(request: web.Request) -> Permission | None:
    """What the matched route requires; None for a route without a declaration."""
    route = declaration(request)
    if route is not None:
        return route.permission
    if serves_files(request.match_info.route.resource):
        return STATIC_PERMISSION
    return None


def route_template(request: web.Request) -> str | None:
    """The matched route as written in the code ("/api/connections/{connectionId}"),
    without the base path; None when nothing matched."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    base = request.app[settings_key].base_path
    canonical = resource.canonical
    return canonical[len(base) :] if base and canonical.startswith(base) else canonical
