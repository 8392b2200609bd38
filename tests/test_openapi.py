"""The OpenAPI document: valid, complete, and what the API really answers."""

from __future__ import annotations

import uuid
from typing import Any

from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from mmc.web.routing import declarations
from testbed.mosquitto import MosquittoBroker
from tests.conftest import Client, plain_body, registered_operations
from tests.dynsec_helpers import connect, dynsec_path

DYNSEC_BASE = "/api/projects/{projectId}/brokers/{brokerId}/dynsec"


async def _spec(client: Client) -> dict[str, Any]:
    resp = await client.get("/api/docs/openapi.json")
    assert resp.status == 200
    spec: dict[str, Any] = await resp.json()
    return spec


async def test_document_is_valid_and_covers_every_route(client: Client) -> None:
    spec = await _spec(client)
    validate(spec)
    documented = {(m, path) for path, ops in spec["paths"].items() for m in ops}
    public = {(r.method.lower(), r.path) for r in declarations(client.app) if r.public}
    assert documented == {(m.lower(), path) for m, path in registered_operations(client.app)}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            assert "500" in responses, (method, path)
            if (method, path) in public:
                assert op["security"] == [], (method, path)
            else:
                assert {"401", "403"} <= set(responses), (method, path)
                assert op["security"]
            for name in [p["name"] for p in op["parameters"] if p["in"] == "path"]:
                assert f"{{{name}}}" in path
            # The errors the seeds leave out, listed per operation (README: "Errors the
            # seeds do not list").
            if "{brokerId}" in path:
                assert {"503", "504"} <= set(responses), (method, path)
                assert ("502" in responses) == (method != "get"), (method, path)
            if op.get("requestBody"):
                assert {"400", "408", "413"} <= set(responses), (method, path)
            if method != "get" and (method, path) not in public:
                assert "503" in responses, (method, path)  # STORE_UNAVAILABLE
            error = responses["500"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/Error"}
    assert spec["components"]["schemas"]["Error"]["required"] == ["code", "message", "status"]


def _response_schema(spec: dict[str, Any], path: str, method: str, status: int) -> Any:
    response = spec["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    return {**schema, "components": spec["components"]}


async def test_real_answers_match_the_documented_schemas(
    client: Client, broker: MosquittoBroker
) -> None:
    spec = await _spec(client)

    def check(path: str, method: str, status: int, body: Any) -> None:
        OAS30Validator(_response_schema(spec, path, method, status)).validate(body)

    resp = await client.post("/api/connections", json=plain_body(broker))
    check("/api/connections", "post", 200, await resp.json())
    down = plain_body(broker, id="down", name="down", url="mqtt://127.0.0.1:1")
    resp = await client.post("/api/connections", json=down)
    check("/api/connections", "post", 202, await resp.json())
    resp = await client.get("/api/connections/down")
    check("/api/connections/{connectionId}", "get", 200, await resp.json())
    brokers = "/api/projects/{projectId}/brokers"
    resp = await client.get("/api/projects/default/brokers")
    check(brokers, "get", 200, await resp.json())
    resp = await client.get("/api/projects/default/brokers/plain/info")
    check(brokers + "/{brokerId}/info", "get", 200, await resp.json())
    resp = await client.get("/api/profile")
    check("/api/profile", "get", 200, await resp.json())
    resp = await client.get("/api/tokens")
    check("/api/tokens", "get", 200, await resp.json())
    for path, status in (("/api/connections/nope", 404), ("/api/projects/x/brokers", 404)):
        resp = await client.get(path)
        assert resp.status == status
        OAS30Validator({**spec["components"]["schemas"]["Error"]}).validate(await resp.json())


async def test_browsable_docs(client: Client, anon_client: Client) -> None:
    resp = await client.get("/api/docs")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert "/api/docs/openapi.json" in page
    assert (await client.get("/api/docs/static/swagger-ui-bundle.js")).status == 200
    assert (await anon_client.get("/api/docs")).status == 401
    assert (await anon_client.get("/api/docs/static/swagger-ui-bundle.js")).status == 401


async def test_documented_conflicts_are_the_real_ones(
    client: Client, broker: MosquittoBroker
) -> None:
    """Every dynamic-security addition that answers 409 when repeated on a real broker
    documents it. (Not the converse: a change may also be refused 409 for other reasons,
    such as protecting mmc's own broker user.)"""
    spec = await _spec(client)
    uid = uuid.uuid4().hex[:8]
    await connect(client, broker)
    ds = dynsec_path()
    user, group, role = f"u-{uid}", f"g-{uid}", f"r-{uid}"
    creates = [
        ("/clients", {"username": user, "password": "pw-12345"}),
        ("/groups", {"groupname": group}),
        ("/roles", {"rolename": role}),
    ]
    adds: list[tuple[str, str, dict[str, Any]]] = [
        ("/clients/{name}/roles", user, {"rolename": role}),
        ("/clients/{name}/groups", user, {"groupname": group}),
        ("/groups/{name}/clients", group, {"username": user}),
        ("/groups/{name}/roles", group, {"rolename": role}),
        (
            "/roles/{name}/acls",
            role,
            {"acltype": "publishClientSend", "topic": "a/#", "allow": True},
        ),
    ]
    observed: dict[str, int] = {}
    for path, created in creates:
        assert (await client.post(ds + path, json=created)).status == 201
        observed[path] = (await client.post(ds + path, json=created)).status
    for path, name, body in adds:
        url = ds + path.replace("{name}", name)
        first = await client.post(url, json=body)
        assert first.status == 200, (path, await first.text())
        again = await client.post(url, json=body)
        observed[path] = again.status
        # Undo, so that the next addition of the same pair is a first one again.
        key = {k: v for k, v in body.items() if k != "allow"}
        assert (await client.delete(url, json=key)).status == 200
    # The duplicates mosquitto 2.0.11 refuses as such; adding a role a client has already
    # is answered "Internal error" (400).
    assert {path for path, status in observed.items() if status == 409} == {
        "/clients",
        "/groups",
        "/roles",
        "/clients/{name}/groups",
        "/groups/{name}/clients",
        "/groups/{name}/roles",
        "/roles/{name}/acls",
    }, observed
    for path, status in observed.items():
        declared = spec["paths"][DYNSEC_BASE + path]["post"]["responses"]
        if status == 409:
            assert "409" in declared, path
    command = spec["paths"]["/api/dynamic-security/{brokerId}/command"]["post"]["responses"]
    assert "409" in command
    await client.delete(f"{ds}/clients/{user}")
    await client.delete(f"{ds}/groups/{group}")
    await client.delete(f"{ds}/roles/{role}")


async def test_dynamic_security_answers_match_their_schemas(
    client: Client, broker: MosquittoBroker
) -> None:
    """Each dynamic-security operation documents the plugin's answer (not a bare object),
    and a real broker's answers validate against it."""
    spec = await _spec(client)
    await connect(client, broker)
    uid = uuid.uuid4().hex[:8]
    user, group, role = f"u-{uid}", f"g-{uid}", f"r-{uid}"
    ds = dynsec_path()
    checked: set[tuple[str, str]] = set()

    async def check(method: str, template: str, path: str, body: Any = None) -> Any:
        resp = await client.request(method, path, json=body)
        assert resp.status < 300, (method, path, await resp.text())
        answer = await resp.json()
        schema = _response_schema(spec, template, method.lower(), resp.status)
        assert schema.get("properties") or schema.get("additionalProperties"), template
        OAS30Validator(schema).validate(answer)
        checked.add((method, template))
        return answer

    base = DYNSEC_BASE
    acl = {"acltype": "publishClientSend", "topic": "a/#", "allow": True, "priority": 3}
    await check("POST", base + "/roles", ds + "/roles", {"rolename": role, "acls": [acl]})
    await check("POST", base + "/groups", ds + "/groups", {"groupname": group, "textname": "G"})
    created = {"username": user, "password": "pw-12345", "clientid": f"c-{uid}"}
    await check("POST", base + "/clients", ds + "/clients", created)
    await check(
        "POST", base + "/clients/{name}/groups", f"{ds}/clients/{user}/groups", {"groupname": group}
    )
    await check(
        "POST", base + "/groups/{name}/roles", f"{ds}/groups/{group}/roles", {"rolename": role}
    )
    await check("PUT", base + "/clients/{name}/disable", f"{ds}/clients/{user}/disable")
    for kind, name in (("clients", user), ("groups", group), ("roles", role)):
        listing = await check("GET", f"{base}/{kind}", f"{ds}/{kind}")
        assert name in listing[kind]
        verbose = await check("GET", f"{base}/{kind}", f"{ds}/{kind}?verbose=true")
        assert all(isinstance(entry, dict) for entry in verbose[kind])
        await check("GET", f"{base}/{kind}/{{name}}", f"{ds}/{kind}/{name}")
    await check("GET", base + "/default-acl", ds + "/default-acl")
    await check("GET", base + "/anonymous-group", ds + "/anonymous-group")
    document = await check("GET", base + "/export", ds + "/export")
    await check("POST", base + "/import", ds + "/import?dryRun=true", document)
    command = "/api/dynamic-security/{brokerId}/command"
    sent = {"command": "getClient", "username": user, "correlationData": "mine"}
    await check("POST", command, "/api/dynamic-security/plain/command", sent)
    envelope = "/api/projects/{projectId}/brokers/{brokerId}/dynamic-security"
    answers = await check(
        "POST",
        envelope,
        "/api/projects/default/brokers/plain/dynamic-security",
        {"commands": [{"command": "getGroup", "groupname": "nope"}]},
    )
    assert "error" in answers["responses"][0]
    apply = "/api/projects/{projectId}/dynsec/apply"
    await check(
        "POST",
        apply,
        "/api/projects/default/dynsec/apply",
        {"commands": [{"command": "getDefaultACLAccess"}]},
    )
    assert len(checked) == 19, checked
    await client.delete(f"{ds}/clients/{user}")
    await client.delete(f"{ds}/groups/{group}")
    await client.delete(f"{ds}/roles/{role}")
