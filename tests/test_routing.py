"""A route declaration reads, validates and passes in its input, and is checked at import."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from marshmallow import Schema, fields
from pytest_aiohttp import AiohttpClient

from mmc.appkeys import settings_key
from mmc.auth.permissions import Permission
from mmc.config import Settings
from mmc.errors import NotFound
from mmc.web.middlewares import error_middleware
from mmc.web.own_user import force_schema
from mmc.web.routing import Routes, add_routes, declarations
from tests.conftest import Client

KEY = Schema.from_dict({"name": fields.String(required=True)})
WITH_ID = Schema.from_dict({"id": fields.String(required=True), "size": fields.Integer()})


def _app() -> web.Application:
    routes = Routes()

    @routes.delete(
        "/things/{id}/parts",
        Permission.PUBLIC,
        "Remove a part",
        body=KEY(),
        query=force_schema,
        body_in_query=True,
    )
    async def remove(
        request: web.Request, query: dict[str, Any], body: dict[str, Any]
    ) -> web.Response:
        return web.json_response({"query": query, "body": body})

    @routes.put(
        "/things/{thingId}",
        Permission.PUBLIC,
        "Change a thing",
        body=WITH_ID(),
        path_defaults={"id": "thingId"},
    )
    async def change(request: web.Request, body: dict[str, Any]) -> web.Response:
        return web.json_response(body)

    app = web.Application(middlewares=[error_middleware])
    app[settings_key] = Settings()
    add_routes(app, routes, "")
    return app


async def test_input_is_validated_and_passed_in(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(_app())
    assert {(r.method, r.path) for r in declarations(client.app)} == {
        ("DELETE", "/things/{id}/parts"),
        ("PUT", "/things/{thingId}"),
    }
    # A DELETE's key in the query string, without the fields the query schema claims.
    resp = await client.delete("/things/1/parts?name=a&force=true")
    assert await resp.json() == {"query": {"force": True}, "body": {"name": "a"}}
    resp = await client.delete("/things/1/parts", json={"name": "b"})
    assert await resp.json() == {"query": {"force": False}, "body": {"name": "b"}}
    resp = await client.delete("/things/1/parts?force=maybe&name=a")
    assert resp.status == 400
    assert (await resp.json())["info"] == {"force": ["Not a valid boolean."]}
    resp = await client.delete("/things/1/parts")
    assert resp.status == 400
    assert (await resp.json())["info"] == {"name": ["Missing data for required field."]}
    # A body field that defaults to the path parameter.
    resp = await client.put("/things/7", json={"size": 3})
    assert await resp.json() == {"id": "7", "size": 3}
    resp = await client.put("/things/7", json={"id": "8"})
    assert await resp.json() == {"id": "8"}
    resp = await client.put("/things/7", json=[1])
    assert resp.status == 400
    assert (await resp.json())["message"] == "The JSON body must be an object"


def test_a_handler_takes_what_its_declaration_reads() -> None:
    routes = Routes()
    with pytest.raises(TypeError, match="must take 'body'"):

        @routes.post("/x", Permission.SELF, "x", body=KEY())
        async def no_body(request: web.Request) -> web.Response:
            raise AssertionError

    with pytest.raises(TypeError, match="takes 'query', which is not declared"):

        @routes.get("/x", Permission.SELF, "x")
        async def stray(request: web.Request, query: dict[str, Any]) -> web.Response:
            raise AssertionError


async def test_what_the_path_names_is_resolved_before_the_input(
    aiohttp_client: AiohttpClient,
) -> None:
    routes = Routes()

    def thing(request: web.Request) -> str:
        if request.match_info["id"] != "1":
            raise NotFound("No such thing")
        return "one"

    @routes.post("/things/{id}", Permission.PUBLIC, "x", before={"thing": thing}, body=KEY())
    async def post(request: web.Request, thing: str, body: dict[str, Any]) -> web.Response:
        return web.json_response({"thing": thing, **body})

    app = web.Application(middlewares=[error_middleware])
    app[settings_key] = Settings()
    add_routes(app, routes, "")
    client = await aiohttp_client(app)
    assert (await client.post("/things/2", json={})).status == 404
    assert (await client.post("/things/1", json={})).status == 400
    resp = await client.post("/things/1", json={"name": "n"})
    assert await resp.json() == {"thing": "one", "name": "n"}


async def test_a_missing_broker_is_named_before_a_bad_body(client: Client) -> None:
    """As before declarations: the path's broker (404) comes before the body (400)."""
    base = "/api/projects/default/brokers/nope"
    for method, path in (
        ("POST", "/dynsec/clients"),
        ("PATCH", "/dynsec/clients/u"),
        ("DELETE", "/dynsec/clients/u/roles"),
        ("PUT", "/dynsec/default-acl"),
        ("POST", "/dynsec/import"),
        ("POST", "/dynamic-security"),
        ("PUT", "/bridges/b/config"),
    ):
        resp = await client.request(method, base + path, json=[])
        assert resp.status == 404, (method, path, await resp.text())
    resp = await client.post("/api/dynamic-security/nope/command", json=[])
    assert resp.status == 404


def _unknown_rules(schema: Schema, unknown: str | None = None) -> set[str]:
    """What every level of a schema does with unknown fields (nested ones included)."""
    rules = {unknown or schema.unknown}
    for field in schema.fields.values():
        inner = field.inner if isinstance(field, fields.List) else field
        if isinstance(inner, fields.Nested) and isinstance(inner.schema, Schema):
            rules |= _unknown_rules(inner.schema, inner.unknown)
    return rules


async def test_bodies_and_queries_ignore_unknown_fields_except_what_is_forwarded(
    client: Client,
) -> None:
    """Every route's body and query string ignore fields mmc does not use, at every level,
    except the bodies passed on to a broker (passthrough commands, import documents, the
    bridge configuration), whose every level refuses or forwards them, import's ?dryRun
    (a misspelt one ignored would be a real import) and the audit query (mmc's own)."""
    strict: set[tuple[str, str, str]] = set()
    for route in declarations(client.app):
        for part, schema in (("body", route.body), ("query", route.query)):
            if schema is None:
                continue
            rules = _unknown_rules(schema)
            if rules == {"exclude"}:
                continue
            assert "exclude" not in rules, (route.method, route.path, part, rules)
            strict.add((route.method, route.path, part))
    broker = "/api/projects/{projectId}/brokers/{brokerId}"
    assert strict == {
        ("POST", "/api/dynamic-security/{brokerId}/command", "body"),
        ("POST", f"{broker}/dynamic-security", "body"),
        ("POST", f"{broker}/dynsec/import", "body"),
        ("POST", f"{broker}/dynsec/import", "query"),
        ("POST", "/api/projects/{projectId}/dynsec/apply", "body"),
        ("PUT", f"{broker}/bridges/{{bridgeId}}/config", "body"),
        ("GET", "/api/audit", "query"),
    }


def test_an_empty_query_is_loaded_once_only_where_the_answer_cannot_change() -> None:
    from mmc.web.routing import _empty_query

    first = _empty_query(force_schema)
    assert first == {"force": False}
    assert _empty_query(force_schema) is first  # cached: read_query hands out copies
    counter = iter(range(100))
    fresh = Schema.from_dict({"n": fields.Integer(load_default=lambda: next(counter))})()
    assert _empty_query(fresh) is None  # a callable default: loaded every time
    assert _empty_query(KEY()) is None  # a required field: the 400 comes from load


async def test_an_empty_query_answer_is_a_copy(aiohttp_client: AiohttpClient) -> None:
    routes = Routes()

    @routes.get("/q", Permission.PUBLIC, "Query", query=force_schema)
    async def q(request: web.Request, query: dict[str, Any]) -> web.Response:
        seen = dict(query)
        query["force"] = "changed by a handler"
        return web.json_response(seen)

    app = web.Application(middlewares=[error_middleware])
    app[settings_key] = Settings()
    add_routes(app, routes, "")
    client = await aiohttp_client(app)
    for _ in range(2):
        resp = await client.get("/q")
        assert await resp.json() == {"force": False}
    resp = await client.get("/q?force=true")
    assert await resp.json() == {"force": True}
