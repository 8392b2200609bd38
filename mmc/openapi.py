"""The OpenAPI document, generated from the route declarations and their schemas.

``build_spec`` walks the router and documents each route from its declaration
(mmc.web.routing); a route without one is reported (a test requires every route to be
documented).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema

from mmc import __version__
from mmc.schemas.responses import ErrorSchema
from mmc.web.hosts import ANY_HOST_ROUTES
from mmc.web.routing import ResponseSpec, Route, declared, serves_files

_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid input, or a Host header not in allowed_hosts (INVALID)",
    401: "Not logged in (UNAUTHORIZED)",
    403: "Not allowed (NOT_ALLOWED)",
    404: "Not found (NOT_FOUND)",
    405: "Method not allowed (METHOD_NOT_ALLOWED)",
    408: "Body not sent within http_body_timeout (REQUEST_TIMEOUT)",
    409: "Conflict (CONFLICT)",
    413: "Body too large (PAYLOAD_TOO_LARGE)",
    429: "Too many attempts (TOO_MANY_REQUESTS)",
    500: "Internal error (INTERNAL_ERROR)",
    502: (
        "A command was sent, its answer was lost, and reading the broker's state back could "
        "not tell whether it was applied (OUTCOME_UNKNOWN; info.command says what to check)"
    ),
    503: "Broker not connected, or store not writable (BROKER_UNAVAILABLE, STORE_UNAVAILABLE)",
    504: "Broker did not answer in time (TIMEOUT)",
}


def _tag(template: str) -> str:
    if "/dynsec" in template or "dynamic-security" in template:
        return "dynamic security"
    if "/client-control" in template:
        return "client control"
    if "/brokers" in template:
        return "brokers"
    for prefix, tag in (
        ("/api/connections", "connections"),
        ("/api/projects", "projects"),
        ("/api/user-management", "users"),
        ("/api/tokens", "tokens"),
        ("/api/audit", "audit"),
        ("/api/docs", "docs"),
    ):
        if template.startswith(prefix):
            return tag
    return "service"


# A server-sent-events stream is described one event at a time (as OpenAPI 3.2's
# itemSchema does, and as tools reading 3.0 documents take the schema of this type).
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "event": {"type": "string"},
        "data": {"type": "string", "description": "JSON"},
    },
    "required": ["id", "event", "data"],
}


def _response(status: int, spec: ResponseSpec) -> dict[str, Any]:
    if spec is None:
        if 300 <= status < 400:
            return {"description": "Redirect to the Location header's page"}
        return {"description": "No content" if status == 204 else "Success"}
    if isinstance(spec, tuple):
        media, description = spec
        schema = _SSE_EVENT if media == "text/event-stream" else {"type": "string"}
        return {"description": description, "content": {media: {"schema": schema}}}
    return {"description": "Success", "content": {"application/json": {"schema": spec}}}


def _operation(template: str, method: str, route: Route) -> dict[str, Any]:
    params = _PARAM.findall(template)
    public = route.public
    # A body that may come in the query string instead is documented as query parameters.
    body = None if route.body_in_query else route.body
    query = route.body if route.body_in_query else route.query
    parameters: list[dict[str, Any]] = [
        {"in": "path", "name": name, "required": True, "schema": {"type": "string"}}
        for name in params
    ]
    if query is not None:
        parameters.append({"in": "query", "schema": query})
    responses = {str(status): _response(status, spec) for status, spec in route.responses.items()}
    errors = set(route.errors) | {500}
    if body is not None or query is not None or params or template not in ANY_HOST_ROUTES:
        errors.add(400)
    if body is not None:
        errors |= {408, 413}
    if not public:
        errors |= {401, 403, 405}
    if params:
        errors.add(404)
    if "{brokerId}" in template:
        errors |= {503, 504}
        if method.upper() != "GET":
            errors.add(502)  # a change whose answer was lost (mmc.brokers.outcome)
    if method.upper() != "GET":
        errors.add(503)  # any write may meet a full or read-only store (STORE_UNAVAILABLE)
    for status in sorted(errors):
        responses.setdefault(
            str(status),
            {
                "description": ERROR_DESCRIPTIONS[status],
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        )
    out: dict[str, Any] = {
        "summary": route.summary,
        "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{method.lower()}{template}").strip("_"),
        "tags": [_tag(template)],
        "parameters": parameters,
        "responses": responses,
        "security": [] if public else [{"bearer": []}, {"session": []}],
    }
    if route.description:
        out["description"] = route.description
    if body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {ct: {"schema": body} for ct in route.body_content_types},
        }
    return out


def _inline(schema: Schema) -> None:
    """Nested schemas stay inline: names never collide, nothing is shared by accident."""
    return


def build_spec(app: web.Application, base_path: str = "") -> tuple[dict[str, Any], list[str]]:
    """The document, and the ``METHOD /path`` of every handler that has no declaration."""
    spec = APISpec(
        title="mmc",
        version=__version__,
        openapi_version="3.0.3",
        # apispec documents None (inline) as a valid resolver answer; its stub says str.
        plugins=[MarshmallowPlugin(schema_name_resolver=_inline)],  # type: ignore[arg-type]
        info={
            "description": (
                "Manage fleets of Eclipse Mosquitto brokers over HTTP: the Cedalo Management "
                "Center / Platform REST API. Every error is {code, message, status, info?}."
            )
        },
        servers=[{"url": base_path or "/"}],
    )
    spec.components.schema("Error", schema=ErrorSchema)
    spec.components.security_scheme(
        "bearer", {"type": "http", "scheme": "bearer", "description": "POST /api/tokens"}
    )
    spec.components.security_scheme(
        "session",
        {"type": "apiKey", "in": "cookie", "name": "mmc_session", "description": "POST /auth"},
    )
    paths: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None or serves_files(resource):
            continue
        template = resource.canonical
        if base_path and template.startswith(base_path):
            template = template[len(base_path) :]
        declaration = declared(route.handler)
        if declaration is None:
            missing.append(f"{route.method} {template}")
            continue
        operation = _operation(template, route.method, declaration)
        paths.setdefault(template, {})[route.method.lower()] = operation
    for template in sorted(paths):
        spec.path(path=template, operations=paths[template])
    return spec.to_dict(), missing
