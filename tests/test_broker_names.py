"""Names the broker would read differently than mmc, and command forms that crash 2.0.x
brokers, replayed through every route against real mosquitto 2.0.11 and 2.1.2 brokers.

Each attack must answer 400 INVALID naming the field before anything reaches the broker:
the broker process lives and its state (what mmc exports and the dynamic-security file
the broker saves) is unchanged.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiomqtt
import pytest
from marshmallow import ValidationError

from mmc.broker_strings import MAX_NEW_NAME_BYTES, check_name
from testbed.mosquitto import MosquittoBroker
from tests.conftest import Client
from tests.dynsec_helpers import call, connect, dynsec_path

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

DS = dynsec_path()
ENVELOPE = "/api/projects/default/brokers/plain/dynamic-security"
COMMAND = "/api/dynamic-security/plain/command"
APPLY = "/api/projects/default/dynsec/apply"
NUL = "\x00"


async def _state(client: Client, broker: MosquittoBroker) -> tuple[Any, Any]:
    """What mmc exports and what the broker saved; asserts the broker process lives."""
    assert broker.is_running, broker.log_text()
    exported = await call(client, "GET", f"{DS}/export")
    return exported, json.loads(broker.dynsec_path.read_text(encoding="utf-8"))


def _field_problem(info: Any, path: list[str]) -> None:
    """``info`` has messages at ``path`` (the field named, however deep)."""
    node = info
    for key in path:
        assert isinstance(node, dict), (path, info)
        assert key in node, (path, info)
        node = node[key]
    assert node, (path, info)


async def _refused(client: Client, method: str, path: str, body: Any, field: list[str]) -> None:
    answer = await call(client, method, path, body, status=400)
    assert answer["code"] == "INVALID", answer
    _field_problem(answer.get("info"), field)


# (what, the command as the plugin would take it, the field the answer must name, and the
# REST request that carries the same name with the field its answer must name)
ATTACKS: list[tuple[str, dict[str, Any], list[str], tuple[str, str, Any, list[str]] | None]] = [
    (
        "anonymous group behind a NUL",
        {"command": "deleteGroup", "groupname": f"anon{NUL}x"},
        ["groupname"],
        ("DELETE", f"{DS}/groups/anon%00x", None, ["groupname"]),
    ),
    (
        "held role behind a NUL",
        {"command": "deleteRole", "rolename": f"r{NUL}x"},
        ["rolename"],
        ("DELETE", f"{DS}/roles/r%00x", None, ["rolename"]),
    ),
    (
        "admin behind a NUL",
        {"command": "getClient", "username": f"admin{NUL}junk"},
        ["username"],
        ("GET", f"{DS}/clients/admin%00junk", None, ["username"]),
    ),
    (
        "own user behind a NUL",
        {"command": "deleteClient", "username": f"admin{NUL}x"},
        ["username"],
        ("DELETE", f"{DS}/clients/admin%00x", None, ["username"]),
    ),
    (
        "control character in a new name",
        {"command": "createClient", "username": "a\x01b", "password": "p"},
        ["username"],
        ("POST", f"{DS}/clients", {"username": "a\x01b", "password": "p"}, ["username"]),
    ),
    (
        "C1 control character in a role reference",
        {"command": "addGroupRole", "groupname": "g", "rolename": "r\x85"},
        ["rolename"],
        ("POST", f"{DS}/groups/g/roles", {"rolename": "r\x85"}, ["rolename"]),
    ),
    (
        "NUL in an ACL topic",
        {
            "command": "addRoleACL",
            "rolename": "r",
            "acltype": "subscribePattern",
            "topic": f"a{NUL}/#/b",
            "allow": True,
        },
        ["topic"],
        (
            "POST",
            f"{DS}/roles/r/acls",
            {"acltype": "subscribePattern", "topic": f"a{NUL}/#/b", "allow": True},
            ["topic"],
        ),
    ),
    (
        "NUL in a password",
        {"command": "setClientPassword", "username": "u", "password": f"secret{NUL}"},
        ["password"],
        ("PUT", f"{DS}/clients/u/password", {"password": f"secret{NUL}"}, ["password"]),
    ),
    (
        "lone surrogate in a text field",
        {"command": "modifyClient", "username": "u", "textname": "\ud800"},
        ["textname"],
        ("PATCH", f"{DS}/clients/u", {"textname": "\ud800"}, ["textname"]),
    ),
    (
        "new name too long to address by URL",
        {"command": "createRole", "rolename": "x" * (MAX_NEW_NAME_BYTES + 1)},
        ["rolename"],
        ("POST", f"{DS}/roles", {"rolename": "x" * (MAX_NEW_NAME_BYTES + 1)}, ["rolename"]),
    ),
    (
        "key spelled in another case (the broker ignores case)",
        {"command": "deleteGroup", "GroupName": "anon"},
        ["GroupName"],
        None,
    ),
    (
        "NUL in the command name",
        {"command": f"deleteGroup{NUL}x", "groupname": "anon"},
        ["command"],
        None,
    ),
    (
        "NUL deep in a roles list",
        {"command": "modifyGroup", "groupname": "g", "roles": [{"rolename": f"r{NUL}x"}]},
        ["roles", "0", "rolename"],
        ("PATCH", f"{DS}/groups/g", {"roles": [{"rolename": f"r{NUL}x"}]}, ["roles"]),
    ),
]


async def test_the_name_rule_is_the_brokers(own_broker: MosquittoBroker) -> None:
    """check_name refuses exactly what the plugin itself refuses (straight over MQTT, no
    mmc in between), for characters at the edges of every refused range. (NUL is not
    asked: the broker would read the name up to it.)"""
    samples = [
        *"\x01\x1f\x20\x7e\x7f\x80\x9f\xa0",
        *"\ufdcf\ufdd0\ufdef\ufdf0\ufffd\ufffe\uffff",
        *"\U00010000\U0001fffe\U0001ffff\U0010fffd\U0010ffff\u00e9\U0001f600",
    ]
    commands = [{"command": "createRole", "rolename": f"x{c}y"} for c in samples]
    async with aiomqtt.Client(
        own_broker.host,
        own_broker.port,
        username=own_broker.admin_username,
        password=own_broker.admin_password,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=5,
    ) as mqtt:
        await mqtt.subscribe("$CONTROL/dynamic-security/v1/response")
        await mqtt.publish("$CONTROL/dynamic-security/v1", json.dumps({"commands": commands}))
        async for message in mqtt.messages:
            assert isinstance(message.payload, bytes)
            responses = json.loads(message.payload)["responses"]
            break
    for sample, response in zip(samples, responses, strict=True):
        try:
            check_name(f"x{sample}y")
            ours = True
        except ValidationError:
            ours = False
        assert ours == ("error" not in response), (hex(ord(sample)), response)
    assert own_broker.is_running


async def _setup(client: Client, broker: MosquittoBroker) -> None:
    """The issue's scene: anonymous group ``anon``; role ``r`` held by client ``u`` and
    group ``g``."""
    await connect(client, broker)
    await call(client, "POST", f"{DS}/groups", {"groupname": "anon"}, status=201)
    await call(client, "PUT", f"{DS}/anonymous-group", {"groupname": "anon"})
    await call(client, "POST", f"{DS}/roles", {"rolename": "r"}, status=201)
    await call(client, "POST", f"{DS}/groups", {"groupname": "g"}, status=201)
    await call(client, "POST", f"{DS}/groups/g/roles", {"rolename": "r"})
    await call(client, "POST", f"{DS}/clients", {"username": "u", "password": "p"}, status=201)
    await call(client, "POST", f"{DS}/clients/u/roles", {"rolename": "r"})


async def test_every_attack_through_every_route_is_refused_before_the_broker(
    client: Client, own_broker: MosquittoBroker
) -> None:
    await _setup(client, own_broker)
    before = await _state(client, own_broker)
    for label, command, field, rest in ATTACKS:
        await _refused(client, "POST", COMMAND, command, field)
        await _refused(client, "POST", ENVELOPE, {"commands": [command]}, ["commands", "0", *field])
        await _refused(client, "POST", APPLY, {"commands": [command]}, ["commands", "0", *field])
        if rest is not None:
            method, path, body, rest_field = rest
            await _refused(client, method, path, body, rest_field)
        assert await _state(client, own_broker) == before, label
    # The names the attacks aimed at are intact.
    assert (await call(client, "GET", f"{DS}/anonymous-group"))["groupname"] == "anon"
    assert (await call(client, "GET", f"{DS}/clients/u"))["roles"] == [{"rolename": "r"}]
    assert (await call(client, "GET", f"{DS}/groups/g"))["roles"] == [{"rolename": "r"}]


async def test_documents_with_names_the_broker_reads_differently_are_refused(
    client: Client, own_broker: MosquittoBroker
) -> None:
    await _setup(client, own_broker)
    before = await _state(client, own_broker)
    documents: list[tuple[dict[str, Any], list[str]]] = [
        ({"groups": [{"groupname": f"anon{NUL}x"}]}, ["groups", "0", "groupname"]),
        ({"roles": [{"rolename": f"r{NUL}x"}]}, ["roles", "0", "rolename"]),
        ({"anonymousGroup": f"anon{NUL}x"}, ["anonymousGroup"]),
        (
            {"clients": [{"username": "v", "password": "p", "roles": [{"rolename": "r\x7f"}]}]},
            ["clients", "0", "roles", "0", "rolename"],
        ),
        (
            {"clients": [{"username": "\ufdd0", "password": "p"}]},
            ["clients", "0", "username"],
        ),
        (
            {
                "roles": [
                    {"rolename": "q", "acls": [{"acltype": "subscribeLiteral", "topic": "/" * 201}]}
                ]
            },
            ["roles", "0", "acls", "0", "topic"],
        ),
    ]
    for document, field in documents:
        await _refused(client, "POST", f"{DS}/import", document, field)
        await _refused(client, "POST", APPLY, {"import": document}, ["import", *field])
        assert await _state(client, own_broker) == before, document


async def test_client_control_names_follow_the_same_rule(
    client: Client, own_broker: MosquittoBroker
) -> None:
    await connect(client, own_broker)
    base = "/api/projects/default/brokers/plain/client-control"
    for method, path, body, field in (
        ("PUT", f"{base}/disconnect", {"clientid": f"dev{NUL}x"}, "clientid"),
        ("PUT", f"{base}/disconnect", {"clientid": "dev\x9f"}, "clientid"),
        ("PUT", f"{base}/subscribe", {"clientid": "d", "topic": f"a{NUL}", "qos": 0}, "topic"),
        ("PUT", f"{base}/unsubscribe", {"clientid": "d", "topic": "a\ud800"}, "topic"),
    ):
        await _refused(client, method, path, body, [field])
    assert own_broker.is_running


async def test_the_longest_new_name_can_be_read_and_deleted_by_url(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """MAX_NEW_NAME_BYTES of 3-byte characters: the longest percent-encoded form (9 characters
    per character) still fits aiohttp's request line, on the longest path mmc serves."""
    await connect(client, own_broker)
    name = "\u20ac" * (MAX_NEW_NAME_BYTES // 3)
    assert len(name.encode()) == MAX_NEW_NAME_BYTES
    await call(client, "POST", f"{DS}/clients", {"username": name, "password": "p"}, status=201)
    path = f"{DS}/clients/{quote(name, safe='')}"
    assert (await call(client, "GET", path))["username"] == name
    await call(client, "PUT", f"{path}/password", {"password": "q"})
    await call(client, "DELETE", path, status=204)
    await call(client, "GET", path, status=404)
    # One byte more is refused at creation (it might not be addressable any more).
    await _refused(
        client, "POST", f"{DS}/clients", {"username": name + "x", "password": "p"}, ["username"]
    )


# ----------------------------------------------------------------- the 2.0.x crash

SIX_CALLS: list[dict[str, Any]] = [
    {"command": "createGroup", "groupname": "g0"},
    {"command": "createRole", "rolename": "r0"},
    {"command": "addGroupRole", "groupname": "g0", "rolename": "r0"},
    {"command": "modifyGroup", "groupname": "g0", "roles": []},
    {"command": "deleteGroup", "groupname": "g0"},
    {"command": "deleteRole", "rolename": "r0"},
]


async def _six_calls(client: Client, route: str) -> None:
    if route == "resource":
        await call(client, "POST", f"{DS}/groups", {"groupname": "g0"}, status=201)
        await call(client, "POST", f"{DS}/roles", {"rolename": "r0"}, status=201)
        await call(client, "POST", f"{DS}/groups/g0/roles", {"rolename": "r0"})
        patched = await call(client, "PATCH", f"{DS}/groups/g0", {"roles": []})
        assert patched["roles"] == []
        await call(client, "DELETE", f"{DS}/groups/g0", status=204)
        await call(client, "DELETE", f"{DS}/roles/r0", status=204)
    elif route == "command":
        for command in SIX_CALLS:
            await call(client, "POST", COMMAND, command)
    elif route == "envelope":
        answer = await call(client, "POST", ENVELOPE, {"commands": SIX_CALLS})
        assert answer == {"responses": [{"command": c["command"]} for c in SIX_CALLS]}
    elif route == "apply":
        answer = await call(client, "POST", APPLY, {"commands": SIX_CALLS}, status=207)
        assert answer["plain"]["responses"] == [{"command": c["command"]} for c in SIX_CALLS]
    else:  # import, directly or through apply: create g0 with r0, drop r0 from g0, drop both
        start = await call(client, "GET", f"{DS}/export")
        with_r0 = {"rolename": "r0", "acls": []}
        steps = [
            {
                **start,
                "roles": [*start["roles"], with_r0],
                "groups": [*start["groups"], {"groupname": "g0", "roles": [{"rolename": "r0"}]}],
            },
            {
                **start,
                "roles": [*start["roles"], with_r0],
                "groups": [*start["groups"], {"groupname": "g0", "roles": []}],
            },
            start,
        ]
        for document in steps:
            if route == "import":
                report = await call(client, "POST", f"{DS}/import", document)
            else:
                report = (await call(client, "POST", APPLY, {"import": document}, status=207))[
                    "plain"
                ]
            assert report["errors"] == [], report


@pytest.mark.parametrize(
    "route", ["resource", "command", "envelope", "apply", "import", "apply-import"]
)
async def test_the_six_call_crash_sequence_leaves_the_broker_alive(
    client: Client, own_broker: MosquittoBroker, route: str
) -> None:
    await connect(client, own_broker)
    before = await _state(client, own_broker)
    await _six_calls(client, route)
    assert own_broker.is_running, own_broker.log_text()
    await call(client, "GET", f"{DS}/groups/g0", status=404)
    await call(client, "GET", f"{DS}/roles/r0", status=404)
    after = await _state(client, own_broker)
    assert after[0] == before[0]


async def test_role_lists_are_applied_one_role_at_a_time(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """The other forms of the same upstream bug (a role list set without the roles' own
    lists of owners): createGroup/createClient with roles and modifyGroup adding roles,
    then the role deleted first. On 2.0.11 as sent, the group then lists freed memory as a
    role name (or the broker dies)."""
    await connect(client, own_broker)
    before = await _state(client, own_broker)
    await call(client, "POST", f"{DS}/roles", {"rolename": "r1"}, status=201)
    await call(client, "POST", f"{DS}/roles", {"rolename": "r2"}, status=201)
    made = await call(
        client,
        "POST",
        f"{DS}/groups",
        {"groupname": "g1", "roles": [{"rolename": "r1", "priority": 5}]},
        status=201,
    )
    assert made["roles"] == [{"rolename": "r1", "priority": 5}]
    await call(
        client,
        "POST",
        f"{DS}/clients",
        {"username": "c1", "password": "p", "roles": [{"rolename": "r1"}]},
        status=201,
    )
    patched = await call(
        client,
        "PATCH",
        f"{DS}/groups/g1",
        {"textname": "G", "roles": [{"rolename": "r2"}, {"rolename": "r1", "priority": 1}]},
    )
    assert patched["textname"] == "G"
    assert sorted(patched["roles"], key=lambda r: r["rolename"]) == [
        {"rolename": "r1", "priority": 1},
        {"rolename": "r2"},
    ]
    # A missing role fails the whole change, as the plugin does.
    missing = await call(
        client, "PATCH", f"{DS}/groups/g1", {"roles": [{"rolename": "nope"}]}, status=404
    )
    assert missing["message"] == "Role not found"
    assert len((await call(client, "GET", f"{DS}/groups/g1"))["roles"]) == 2
    # Through the plugin's own envelope, then the roles deleted before their owners.
    answer = await call(
        client,
        "POST",
        ENVELOPE,
        {
            "commands": [
                {"command": "createGroup", "groupname": "g2", "roles": [{"rolename": "r2"}]},
                {"command": "deleteRole", "rolename": "r2"},
                {"command": "deleteRole", "rolename": "r1"},
                {"command": "getGroup", "groupname": "g1"},
                {"command": "getGroup", "groupname": "g2"},
                {"command": "getClient", "username": "c1"},
            ]
        },
    )
    responses = answer["responses"]
    assert [r.get("error") for r in responses] == [None] * 6, responses
    assert responses[3]["data"]["group"]["roles"] == []
    assert responses[4]["data"]["group"]["roles"] == []
    assert responses[5]["data"]["client"]["roles"] == []
    for path in ("groups/g1", "groups/g2", "clients/c1"):
        await call(client, "DELETE", f"{DS}/{path}", status=204)
    assert own_broker.is_running, own_broker.log_text()
    assert (await _state(client, own_broker))[0] == before[0]


async def test_a_refused_change_changes_nothing_and_a_refused_client_is_not_left_behind(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """Found by the state-machine fuzz (test_dynsec_fuzz): the plugin sets the text fields
    before it finds a missing role (404, yet changed), and a createClient whose groups
    name a missing group after an existing one frees the client while that group still
    lists it (2.0.11 then crashes listing the group)."""
    await connect(client, own_broker)
    await call(client, "POST", f"{DS}/groups", {"groupname": "g3"}, status=201)
    await call(client, "POST", f"{DS}/clients", {"username": "c3", "password": "p"}, status=201)
    before = await _state(client, own_broker)
    for path in ("clients/c3", "groups/g3"):
        missing = await call(
            client,
            "PATCH",
            f"{DS}/{path}",
            {"textname": "changed", "roles": [{"rolename": "nope"}]},
            status=404,
        )
        assert missing["message"] == "Role not found"
    assert await _state(client, own_broker) == before
    body = {
        "username": "c4",
        "password": "p",
        "groups": [{"groupname": "g3"}, {"groupname": "nope"}],
    }
    for route in ("resource", "envelope"):
        if route == "resource":
            answer = await call(client, "POST", f"{DS}/clients", body, status=404)
            assert answer["message"] == "Group not found"
        else:
            answer = await call(
                client, "POST", ENVELOPE, {"commands": [{"command": "createClient", **body}]}
            )
            assert answer["responses"] == [{"command": "createClient", "error": "Group not found"}]
        assert (await call(client, "GET", f"{DS}/groups/g3"))["clients"] == []
        assert await _state(client, own_broker) == before


async def test_the_client_variant_is_sent_as_is_and_the_broker_lives(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """modifyClient with roles/groups updates both sides in 2.0.11 (client__remove_all_roles,
    dynsec_groups__add_client): the same six calls for a client, and its groups replaced,
    leave the broker alive and the state right."""
    await connect(client, own_broker)
    before = await _state(client, own_broker)
    await call(client, "POST", f"{DS}/clients", {"username": "c0", "password": "p"}, status=201)
    await call(client, "POST", f"{DS}/roles", {"rolename": "r0"}, status=201)
    await call(client, "POST", f"{DS}/groups", {"groupname": "g0"}, status=201)
    await call(client, "POST", f"{DS}/clients/c0/roles", {"rolename": "r0"})
    changed = await call(
        client, "PATCH", f"{DS}/clients/c0", {"roles": [], "groups": [{"groupname": "g0"}]}
    )
    assert (changed["roles"], changed["groups"]) == ([], [{"groupname": "g0"}])
    changed = await call(client, "PATCH", f"{DS}/clients/c0", {"groups": []})
    assert changed["groups"] == []
    await call(client, "DELETE", f"{DS}/clients/c0", status=204)
    await call(client, "DELETE", f"{DS}/groups/g0", status=204)
    await call(client, "DELETE", f"{DS}/roles/r0", status=204)
    assert own_broker.is_running, own_broker.log_text()
    assert (await _state(client, own_broker))[0] == before[0]


async def test_deeply_nested_commands_are_400_not_500(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """The check walks commands recursively: nesting is bounded (a RecursionError was a
    500 before the bound)."""
    await connect(client, own_broker)
    deep = '{"commands":[{"command":"listClients","x":' + "[" * 900 + "]" * 900 + "}]}"
    for path in (ENVELOPE, APPLY):
        answer = await call(client, "POST", path, raw=deep, status=400)
        assert answer["code"] == "INVALID"
        assert len(json.dumps(answer)) < 10_000
    assert own_broker.is_running
