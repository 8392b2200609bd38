"""Dynamic security over REST for one broker, against real mosquitto brokers."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from mmc.appkeys import connections_key
from mmc.config import Settings
from testbed.mosquitto import MosquittoBroker
from tests.conftest import Client, MakeClient, wait_until
from tests.dynsec_helpers import (
    call,
    can_login,
    client_entity,
    connect,
    dynsec_path,
    role_entity,
)

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

DS = dynsec_path()


@pytest.fixture
def uid() -> str:
    """Distinct names per test: the session broker is shared."""
    return uuid.uuid4().hex[:8]


async def test_client_lifecycle(client: Client, broker: MosquittoBroker, uid: str) -> None:
    await connect(client, broker)
    user = f"user-{uid}"
    created = await call(
        client,
        "POST",
        f"{DS}/clients",
        {"username": user, "password": "first-pass", "textname": "First"},
        status=201,
    )
    assert created == client_entity(broker, username=user, textname="First", roles=[], groups=[])
    assert await can_login(broker, user, "first-pass")

    listing = await call(client, "GET", f"{DS}/clients")
    assert user in listing["clients"]
    assert listing["totalCount"] == len(listing["clients"])
    verbose = await call(client, "GET", f"{DS}/clients?verbose=true&count=1000")
    assert created in verbose["clients"]
    page = await call(client, "GET", f"{DS}/clients?count=1&offset=1")
    assert page["clients"] == listing["clients"][1:2]

    patched = await call(client, "PATCH", f"{DS}/clients/{user}", {"textdescription": "d"})
    assert patched["textdescription"] == "d"
    assert patched["textname"] == "First"

    with_id = await call(client, "PUT", f"{DS}/clients/{user}/clientid", {"clientid": "dev-1"})
    assert with_id["clientid"] == "dev-1"
    without_id = await call(client, "PUT", f"{DS}/clients/{user}/clientid", {"clientid": None})
    assert "clientid" not in without_id

    await call(client, "PUT", f"{DS}/clients/{user}/password", {"password": "second-pass"})
    assert await can_login(broker, user, "second-pass")
    assert not await can_login(broker, user, "first-pass")

    disabled = await call(client, "PUT", f"{DS}/clients/{user}/disable")
    assert disabled["disabled"] is True
    assert not await can_login(broker, user, "second-pass")
    enabled = await call(client, "PUT", f"{DS}/clients/{user}/enable")
    assert "disabled" not in enabled
    assert await can_login(broker, user, "second-pass")

    assert await call(client, "DELETE", f"{DS}/clients/{user}", status=204) is None
    gone = await call(client, "GET", f"{DS}/clients/{user}", status=404)
    assert gone == {"code": "NOT_FOUND", "message": "Client not found", "status": 404}


async def test_groups_roles_and_memberships(
    client: Client, broker: MosquittoBroker, uid: str
) -> None:
    await connect(client, broker)
    user, group, role, other = f"u-{uid}", f"g-{uid}", f"r-{uid}", f"r2-{uid}"
    acl = {"acltype": "subscribePattern", "topic": f"{uid}/#", "priority": 3, "allow": True}
    made = await call(client, "POST", f"{DS}/roles", {"rolename": role, "acls": [acl]}, status=201)
    assert made == role_entity(broker, rolename=role, acls=[acl])
    await call(client, "POST", f"{DS}/roles", {"rolename": other}, status=201)
    made_group = await call(
        client,
        "POST",
        f"{DS}/groups",
        {"groupname": group, "textname": "G", "roles": [{"rolename": role, "priority": 4}]},
        status=201,
    )
    assert made_group == {
        "groupname": group,
        "textname": "G",
        "clients": [],
        "roles": [{"rolename": role, "priority": 4}],
    }
    await call(client, "POST", f"{DS}/clients", {"username": user, "password": "p"}, status=201)

    # client -> roles / groups
    with_role = await call(
        client, "POST", f"{DS}/clients/{user}/roles", {"rolename": other, "priority": 7}
    )
    assert with_role["roles"] == [{"rolename": other, "priority": 7}]
    in_group = await call(client, "POST", f"{DS}/clients/{user}/groups", {"groupname": group})
    assert in_group["groups"] == [{"groupname": group}]
    # group -> clients / roles
    listed = await call(client, "GET", f"{DS}/groups/{group}")
    assert listed["clients"] == [{"username": user}]
    group_now = await call(client, "POST", f"{DS}/groups/{group}/roles", {"rolename": other})
    assert {"rolename": other} in group_now["roles"]
    # removing: key in the query string, or in a JSON body
    group_now = await call(client, "DELETE", f"{DS}/groups/{group}/roles?rolename={other}")
    assert group_now["roles"] == [{"rolename": role, "priority": 4}]
    group_now = await call(client, "DELETE", f"{DS}/groups/{group}/clients", {"username": user})
    assert group_now["clients"] == []
    group_now = await call(
        client, "POST", f"{DS}/groups/{group}/clients", {"username": user, "priority": 2}
    )
    assert group_now["clients"] == [{"username": user}]
    client_now = await call(client, "DELETE", f"{DS}/clients/{user}/groups", {"groupname": group})
    assert client_now["groups"] == []
    client_now = await call(client, "DELETE", f"{DS}/clients/{user}/roles", {"rolename": other})
    assert client_now["roles"] == []

    # role -> acls
    extra = {"acltype": "publishClientSend", "topic": f"{uid}/+/cmd", "allow": True}
    role_now = await call(client, "POST", f"{DS}/roles/{role}/acls", extra)
    assert {**extra, "priority": 0} in role_now["acls"]
    role_now = await call(
        client,
        "DELETE",
        f"{DS}/roles/{role}/acls",
        {"acltype": "subscribePattern", "topic": f"{uid}/#"},
    )
    assert role_now["acls"] == [{**extra, "priority": 0}]
    role_now = await call(client, "PATCH", f"{DS}/roles/{role}", {"textname": "R", "acls": [acl]})
    assert role_now == role_entity(broker, rolename=role, textname="R", acls=[acl])
    group_now = await call(client, "PATCH", f"{DS}/groups/{group}", {"textdescription": "x"})
    assert group_now["textdescription"] == "x"

    groups = await call(client, "GET", f"{DS}/groups?verbose=true")
    assert group in [g["groupname"] for g in groups["groups"]]
    roles = await call(client, "GET", f"{DS}/roles")
    assert {role, other} <= set(roles["roles"])

    for kind, name in (("clients", user), ("groups", group), ("roles", role), ("roles", other)):
        await call(client, "DELETE", f"{DS}/{kind}/{name}", status=204)
    await call(client, "GET", f"{DS}/roles/{role}", status=404)


async def test_deleting_a_role_in_use_keeps_the_broker_sound(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """mosquitto 2.0.11 frees a role still held by a client or group; we detach it first."""
    await connect(client, own_broker)
    await call(client, "POST", f"{DS}/roles", {"rolename": "doomed"}, status=201)
    await call(client, "POST", f"{DS}/roles", {"rolename": "kept"}, status=201)
    await call(
        client,
        "POST",
        f"{DS}/groups",
        {"groupname": "g", "roles": [{"rolename": "doomed"}, {"rolename": "kept"}]},
        status=201,
    )
    await call(
        client,
        "POST",
        f"{DS}/clients",
        {"username": "u", "password": "p", "roles": [{"rolename": "doomed"}]},
        status=201,
    )
    await call(client, "DELETE", f"{DS}/roles/doomed", status=204)
    group = await call(client, "GET", f"{DS}/groups/g")
    assert group["roles"] == [{"rolename": "kept"}]
    user = await call(client, "GET", f"{DS}/clients/u")
    assert user["roles"] == []
    assert own_broker.is_running


async def test_default_acl_and_anonymous_group(client: Client, own_broker: MosquittoBroker) -> None:
    await connect(client, own_broker)
    acls = await call(client, "GET", f"{DS}/default-acl")
    assert {"acltype": "subscribe", "allow": False} in acls["acls"]
    changed = await call(
        client, "PUT", f"{DS}/default-acl", {"acls": [{"acltype": "subscribe", "allow": True}]}
    )
    assert {"acltype": "subscribe", "allow": True} in changed["acls"]
    assert len(changed["acls"]) == 4

    assert await call(client, "GET", f"{DS}/anonymous-group") == {"groupname": ""}
    await call(client, "POST", f"{DS}/groups", {"groupname": "guests"}, status=201)
    assert await call(client, "PUT", f"{DS}/anonymous-group", {"groupname": "guests"}) == {
        "groupname": "guests"
    }
    await call(client, "PUT", f"{DS}/anonymous-group", {"groupname": "nope"}, status=404)
    # mosquitto 2.0.11 crashes when the anonymous group is deleted; newer ones refuse.
    refused = await call(client, "DELETE", f"{DS}/groups/guests", status=400)
    assert refused["message"] == "Deleting the anonymous group is forbidden"
    assert own_broker.is_running
    assert await call(client, "GET", f"{DS}/anonymous-group") == {"groupname": "guests"}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "clients", {"username": "v-{uid}", "password": ""}, "password"),
        ("POST", "clients", {"username": "", "password": "p"}, "username"),
        (
            "POST",
            "clients",
            {"username": "v-{uid}", "password": "p", "roles": [{"rolename": "r", "priority": "1"}]},
            "roles",
        ),
        (
            "POST",
            "roles",
            {"rolename": "v-{uid}", "acls": [{"acltype": "sub", "topic": "a"}]},
            "acls",
        ),
        (
            "POST",
            "roles",
            {"rolename": "v-{uid}", "acls": [{"acltype": "subscribePattern", "topic": "a/#/b"}]},
            "acls",
        ),
        (
            "POST",
            "roles",
            {
                "rolename": "v-{uid}",
                "acls": [{"acltype": "subscribePattern", "topic": "a", "allow": "yes"}],
            },
            "acls",
        ),
        (
            "POST",
            "roles",
            {
                "rolename": "v-{uid}",
                "acls": [{"acltype": "subscribePattern", "topic": "a", "allow": 1}],
            },
            "acls",
        ),
        (
            "POST",
            "roles",
            {
                "rolename": "v-{uid}",
                "acls": [{"acltype": "subscribePattern", "topic": "a", "allow": "false"}],
            },
            "acls",
        ),
        (
            "POST",
            "roles",
            {
                "rolename": "v-{uid}",
                "acls": [{"acltype": "subscribePattern", "topic": "a", "allow": 0}],
            },
            "acls",
        ),
        (
            "POST",
            "roles",
            {
                "rolename": "v-{uid}",
                "acls": [{"acltype": "subscribePattern", "topic": "a", "allow": None}],
            },
            "acls",
        ),
        (
            "POST",
            "roles",
            {
                "rolename": "v-{uid}",
                "acls": [{"acltype": "subscribePattern", "topic": "a", "allow": "true"}],
            },
            "acls",
        ),
        ("PUT", "clients/admin/password", {"password": ""}, "password"),
        ("PATCH", "clients/admin", {}, "_schema"),
        ("PUT", "default-acl", {"acls": [{"acltype": "subscribeLiteral", "allow": True}]}, "acls"),
        ("PUT", "default-acl", {"acls": [{"acltype": "subscribe", "allow": "false"}]}, "acls"),
        ("PUT", "default-acl", {"acls": [{"acltype": "subscribe", "allow": 1}]}, "acls"),
        ("GET", "clients?count=-2", None, "count"),
    ],
)
async def test_invalid_bodies_are_refused_before_anything_is_sent(
    client: Client,
    broker: MosquittoBroker,
    uid: str,
    method: str,
    path: str,
    body: dict[str, object] | None,
    field: str,
) -> None:
    await connect(client, broker)
    if body is not None and "username" in body:
        body = {**body, "username": str(body["username"]).format(uid=uid)}
    if body is not None and "rolename" in body:
        body = {**body, "rolename": str(body["rolename"]).format(uid=uid)}
    refused = await call(client, method, f"{DS}/{path}", body, status=400)
    assert refused["code"] == "INVALID"
    assert field in refused["info"], refused
    # The plugin itself accepts an empty password on createClient: nothing reached it.
    if method == "POST" and path == "clients" and body and body.get("username"):
        await call(client, "GET", f"{DS}/clients/{body['username']}", status=404)
    if method == "POST" and path == "roles" and body:
        await call(client, "GET", f"{DS}/roles/{body['rolename']}", status=404)


async def test_fields_mmc_does_not_use_are_ignored(
    client: Client, broker: MosquittoBroker, uid: str
) -> None:
    await connect(client, broker)
    role, user = f"r-{uid}", f"u-{uid}"
    acl = {"acltype": "subscribePattern", "topic": f"{uid}/#", "allow": True, "note": "x"}
    made = await call(
        client, "POST", f"{DS}/roles", {"rolename": role, "acls": [acl], "ui": 1}, status=201
    )
    assert made == role_entity(
        broker, rolename=role, acls=[{**_without(acl, "note"), "priority": 0}]
    )
    body = {"username": user, "password": "p", "bogus": 1, "roles": [{"rolename": role, "x": 2}]}
    made = await call(client, "POST", f"{DS}/clients", body, status=201)
    assert made == client_entity(broker, username=user, roles=[{"rolename": role}], groups=[])
    # Only unknown fields: nothing to change, as for an empty PATCH.
    refused = await call(client, "PATCH", f"{DS}/clients/{user}", {"bogus": 1}, status=400)
    assert "_schema" in refused["info"]
    # Wrong types of known fields are still refused.
    refused = await call(
        client, "POST", f"{DS}/roles/{role}/acls", {**acl, "priority": "1"}, status=400
    )
    assert list(refused["info"]) == ["priority"]


def _without(d: dict[str, object], key: str) -> dict[str, object]:
    return {k: v for k, v in d.items() if k != key}


async def test_a_client_without_a_password_is_created(
    client: Client, broker: MosquittoBroker, uid: str
) -> None:
    # Certificate-authenticated clients have none; the plugin allows it.
    await connect(client, broker)
    user = f"cert-{uid}"
    made = await call(client, "POST", f"{DS}/clients", {"username": user}, status=201)
    assert made == client_entity(broker, username=user, roles=[], groups=[])
    assert await call(client, "GET", f"{DS}/clients/{user}") == made
    assert not await can_login(broker, user, "")
    await call(client, "PUT", f"{DS}/clients/{user}/password", {"password": "later"})
    assert await can_login(broker, user, "later")


async def test_acltype_in_any_case_is_sent_as_the_plugin_spells_it(
    client: Client, broker: MosquittoBroker, uid: str
) -> None:
    await connect(client, broker)
    role = f"r-{uid}"
    acl = {"acltype": "PUBLISHclientsend", "topic": f"{uid}/a", "allow": True}
    made = await call(client, "POST", f"{DS}/roles", {"rolename": role, "acls": [acl]}, status=201)
    assert [a["acltype"] for a in made["acls"]] == ["publishClientSend"]
    acl = {"acltype": "subscribepattern", "topic": f"{uid}/#", "allow": False}
    await call(client, "POST", f"{DS}/roles/{role}/acls", acl)
    got = await call(client, "GET", f"{DS}/roles/{role}")
    assert sorted(a["acltype"] for a in got["acls"]) == ["publishClientSend", "subscribePattern"]
    # Removing names the ACL in any case too.
    await call(client, "DELETE", f"{DS}/roles/{role}/acls?acltype=SUBSCRIBEPATTERN&topic={uid}/%23")
    got = await call(client, "GET", f"{DS}/roles/{role}")
    assert [a["acltype"] for a in got["acls"]] == ["publishClientSend"]
    refused = await call(
        client, "POST", f"{DS}/roles/{role}/acls", {**acl, "acltype": "sub"}, status=400
    )
    assert list(refused["info"]) == ["acltype"]


async def test_names_must_be_utf8(client: Client, broker: MosquittoBroker) -> None:
    await connect(client, broker)
    refused = await call(
        client, "POST", f"{DS}/clients", raw='{"username": "a\\ud800", "password": "p"}', status=400
    )
    assert refused["info"] == {"username": ["Not valid UTF-8."]}


async def test_plugin_errors_are_mapped(client: Client, broker: MosquittoBroker, uid: str) -> None:
    await connect(client, broker)
    assert await call(client, "GET", f"{DS}/roles/none-{uid}", status=404) == {
        "code": "NOT_FOUND",
        "message": "Role not found",
        "status": 404,
    }
    conflict = await call(
        client, "POST", f"{DS}/clients", {"username": "admin", "password": "p"}, status=409
    )
    assert conflict["message"] == "Client already exists"
    missing_role = await call(
        client,
        "POST",
        f"{DS}/clients",
        {"username": f"m-{uid}", "password": "p", "roles": [{"rolename": f"none-{uid}"}]},
        status=404,
    )
    assert missing_role["message"] == "Role not found"
    await call(client, "POST", f"{DS}/groups", {"groupname": f"g-{uid}"}, status=201)
    # Not the admin: changing the memberships of a client kicks it, mmc's link included.
    await call(
        client, "POST", f"{DS}/clients", {"username": f"m-{uid}", "password": "p"}, status=201
    )
    await call(client, "POST", f"{DS}/groups/g-{uid}/clients", {"username": f"m-{uid}"})
    again = await call(
        client, "POST", f"{DS}/groups/g-{uid}/clients", {"username": f"m-{uid}"}, status=409
    )
    assert again["message"] == "Client is already in this group"
    await call(client, "DELETE", f"{DS}/clients/m-{uid}", status=204)
    await call(client, "DELETE", f"{DS}/groups/g-{uid}", status=204)
    # An invalid command the schema cannot know about: the plugin's own message, 400.
    invalid = await call(
        client,
        "POST",
        "/api/dynamic-security/plain/command",
        {"command": "createClient"},
        status=400,
    )
    assert invalid == {"code": "INVALID", "message": "Invalid/missing username", "status": 400}


async def test_passthrough_single_command(client: Client, broker: MosquittoBroker) -> None:
    await connect(client, broker)
    answer = await call(
        client, "POST", "/api/dynamic-security/plain/command", {"command": "listClients"}
    )
    assert answer["command"] == "listClients"
    assert "admin" in answer["data"]["clients"]
    echoed = await call(
        client,
        "POST",
        "/api/dynamic-security/plain/command",
        {"command": "getDefaultACLAccess", "correlationData": "mine"},
    )
    assert echoed["correlationData"] == "mine"
    assert len(echoed["data"]["acls"]) == 4
    missing = await call(
        client,
        "POST",
        "/api/dynamic-security/plain/command",
        {"command": "getClient", "username": "nobody-at-all"},
        status=404,
    )
    assert missing["message"] == "Client not found"
    await call(client, "POST", "/api/dynamic-security/plain/command", {"username": "x"}, status=400)


async def test_passthrough_commands_run_in_order(
    client: Client, broker: MosquittoBroker, uid: str
) -> None:
    await connect(client, broker)
    role, group = f"pr-{uid}", f"pg-{uid}"
    answer = await call(
        client,
        "POST",
        "/api/projects/default/brokers/plain/dynamic-security",
        {
            "commands": [
                {"command": "createRole", "rolename": role},
                {"command": "createGroup", "groupname": group, "roles": [{"rolename": role}]},
                {"command": "getGroup", "groupname": group, "correlationData": "c3"},
                {"command": "getClient", "username": f"nobody-{uid}"},
                {"command": "deleteGroup", "groupname": group},
                {"command": "deleteRole", "rolename": role},
                {"command": "getRole", "rolename": role},
            ]
        },
    )
    assert answer == {
        "responses": [
            {"command": "createRole"},
            {"command": "createGroup"},
            {
                "command": "getGroup",
                "data": {
                    "group": {"groupname": group, "clients": [], "roles": [{"rolename": role}]}
                },
                "correlationData": "c3",
            },
            {"command": "getClient", "error": "Client not found"},
            {"command": "deleteGroup"},
            {"command": "deleteRole"},
            {"command": "getRole", "error": "Role not found"},
        ]
    }
    await call(
        client,
        "POST",
        "/api/projects/default/brokers/plain/dynamic-security",
        {"commands": []},
        status=400,
    )


async def test_broker_resolution(
    client: Client, broker: MosquittoBroker, own_broker: MosquittoBroker
) -> None:
    await connect(client, broker)
    await connect(client, own_broker, id="mine", name="Mine", projectId="p2")
    unknown = await call(client, "GET", f"{dynsec_path('ghost')}/clients", status=404)
    assert unknown["message"] == "Broker ghost not found in project default"
    await call(client, "GET", f"{dynsec_path('mine')}/clients", status=404)
    await call(client, "GET", f"{dynsec_path('plain', 'p2')}/clients", status=404)
    assert "admin" in (await call(client, "GET", f"{dynsec_path('mine', 'p2')}/clients"))["clients"]

    own_broker.kill()
    pool = client.app[connections_key].pool
    await wait_until(lambda: not pool.require("mine").connected)
    started = time.monotonic()
    down = await call(client, "GET", f"{dynsec_path('mine', 'p2')}/clients", status=503)
    assert down["code"] == "BROKER_UNAVAILABLE"
    assert time.monotonic() - started < 0.5


async def test_broker_without_the_plugin_answers_404_quickly(
    make_client: MakeClient, settings: Settings, tmp_path: Path
) -> None:
    client = await make_client(settings.replace(probe_timeout=1.0))
    with MosquittoBroker(tmp_path / "bare", dynsec=False) as bare:
        await connect(client, bare, credentials=None)
        bounds = (1.8, 0.2, 0.2)  # one short probe, then remembered; never the 2 s timeout
        for (method, path, body), bound in zip(
            (
                ("GET", f"{DS}/clients", None),
                ("POST", f"{DS}/roles", {"rolename": "r"}),
                ("POST", "/api/dynamic-security/plain/command", {"command": "listRoles"}),
            ),
            bounds,
            strict=True,
        ):
            started = time.monotonic()
            answer = await call(client, method, path, body, status=404)
            assert answer["message"] == "dynamic-security plugin not enabled on this broker"
            assert time.monotonic() - started < bound
