"""What dynamic security does differently on mosquitto 2.0 and 2.1, over REST, on real brokers.

2.1 adds getDetails, a role's ``allowwildcardsubs``, the ``connections`` of a client, ``%c``
and ``%u`` in ACL topics, clamps priorities to ±100,000 and has new error strings; 2.0.15+
refuses to delete the anonymous group itself (2.0.11 crashes: mmc refuses first).
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from testbed.mosquitto import MOSQUITTO_20, MOSQUITTO_21, Mosquitto, MosquittoBroker
from tests.conftest import Client
from tests.dynsec_helpers import call, connect, dynsec_path

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

DS = dynsec_path()
COMMAND = "/api/dynamic-security/plain/command"
only_2_1 = pytest.mark.mosquitto_versions("2.1")
only_2_0 = pytest.mark.mosquitto_versions("2.0")


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:8]


def _mqtt(broker: MosquittoBroker, username: str, password: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=username,
        password=password,
        identifier=f"{username}-id",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=5,
    )


async def _may_subscribe(broker: MosquittoBroker, username: str, topic: str) -> bool:
    async with _mqtt(broker, username, "pw") as mqtt:
        [granted] = await mqtt.subscribe(topic, qos=0)
        return granted.value < 0x80  # type: ignore[union-attr]


async def _receives_own(broker: MosquittoBroker, username: str, topic: str) -> bool:
    """Whether ``username`` may publish to ``topic`` and be sent it back."""
    async with _mqtt(broker, username, "pw") as mqtt:
        await mqtt.subscribe(topic, qos=1)
        await mqtt.publish(topic, b"x", qos=1)
        try:
            async with asyncio.timeout(0.5):
                async for _ in mqtt.messages:
                    return True
        except TimeoutError:
            return False
    return False


# ------------------------------------------------------------------ getDetails


async def test_details(client: Client, broker: MosquittoBroker, uid: str) -> None:
    await connect(client, broker)
    if broker.mosquitto.version == "2.0":
        answer = await call(client, "GET", f"{DS}/details", status=404)
        assert answer["message"] == (
            "getDetails is not supported by this broker (mosquitto 2.1 or later)"
        )
        return
    before = await call(client, "GET", f"{DS}/details")
    counts = {
        f"{kind[:-1]}Count": (await call(client, "GET", f"{DS}/{kind}"))["totalCount"]
        for kind in ("clients", "groups", "roles")
    }
    assert {k: v for k, v in before.items() if k != "changeIndex"} == counts
    await call(client, "POST", f"{DS}/roles", {"rolename": f"r-{uid}"}, status=201)
    after = await call(client, "GET", f"{DS}/details")
    assert after["roleCount"] == before["roleCount"] + 1
    assert after["changeIndex"] > before["changeIndex"]


# ------------------------------------------------------------ allowwildcardsubs


@only_2_1
async def test_allowwildcardsubs_is_created_changed_read_and_enforced(
    client: Client, broker: MosquittoBroker, uid: str
) -> None:
    await connect(client, broker)
    role, user = f"narrow-{uid}", f"u-{uid}"
    acl = {"acltype": "subscribePattern", "topic": f"{uid}/#", "allow": True}
    made = await call(
        client,
        "POST",
        f"{DS}/roles",
        {"rolename": role, "acls": [acl], "allowwildcardsubs": False},
        status=201,
    )
    assert made["allowwildcardsubs"] is False
    body = {"username": user, "password": "pw", "roles": [{"rolename": role}]}
    await call(client, "POST", f"{DS}/clients", body, status=201)
    assert not await _may_subscribe(broker, user, f"{uid}/#")
    assert await _may_subscribe(broker, user, f"{uid}/a")

    changed = await call(client, "PATCH", f"{DS}/roles/{role}", {"allowwildcardsubs": True})
    assert changed["allowwildcardsubs"] is True
    assert (await call(client, "GET", f"{DS}/roles/{role}"))["allowwildcardsubs"] is True
    assert await _may_subscribe(broker, user, f"{uid}/#")
    # With other fields: one modifyRole, as the plugin takes it.
    changed = await call(
        client, "PATCH", f"{DS}/roles/{role}", {"allowwildcardsubs": False, "textname": "N"}
    )
    assert (changed["allowwildcardsubs"], changed["textname"]) == (False, "N")
    listed = await call(client, "GET", f"{DS}/roles?verbose=true&count=1000")
    assert {r["rolename"]: r["allowwildcardsubs"] for r in listed["roles"]}[role] is False
    refused = await call(
        client, "PATCH", f"{DS}/roles/{role}", {"allowwildcardsubs": "no"}, status=400
    )
    assert list(refused["info"]) == ["allowwildcardsubs"]


@only_2_0
async def test_allowwildcardsubs_false_is_refused_where_the_broker_would_ignore_it(
    client: Client, broker: MosquittoBroker, uid: str
) -> None:
    """2.0's plugin ignores the field and lets every role subscribe with wildcards: mmc
    refuses a false it would silently drop; true is what 2.0 does anyway."""
    await connect(client, broker)
    role = f"r-{uid}"
    body = {"rolename": role, "allowwildcardsubs": False}
    refused = await call(client, "POST", f"{DS}/roles", body, status=400)
    assert refused["message"].startswith("allowwildcardsubs false is not supported")
    await call(client, "GET", f"{DS}/roles/{role}", status=404)
    made = await call(
        client, "POST", f"{DS}/roles", {**body, "allowwildcardsubs": True}, status=201
    )
    assert made == {"rolename": role, "acls": []}
    refused = await call(
        client, "PATCH", f"{DS}/roles/{role}", {"allowwildcardsubs": False}, status=400
    )
    refused = await call(
        client,
        "POST",
        f"{DS}/import",
        {"roles": [{"rolename": role, "allowwildcardsubs": False}]},
        status=400,
    )
    assert refused["info"] == {f"roles.{role}": [refused["info"][f"roles.{role}"][0]]}, refused
    assert "allowwildcardsubs false is not supported" in refused["info"][f"roles.{role}"][0]


async def _pair(
    client: Client, tmp_path: Path, source: Mosquitto, target: Mosquitto
) -> tuple[MosquittoBroker, MosquittoBroker]:
    a = MosquittoBroker(tmp_path / "a", mosquitto=source)
    b = MosquittoBroker(tmp_path / "b", mosquitto=target)
    a.start()
    b.start()
    await connect(client, a, id="a", name="A")
    await connect(client, b, id="b", name="B")
    return a, b


@only_2_1
async def test_export_never_hides_allowwildcardsubs(
    client: Client, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Two brokers whose roles differ only in allowwildcardsubs export differently, and
    importing one's export into the other makes their clients' rights the same."""
    a, b = await _pair(client, tmp_path, mosquitto, mosquitto)
    try:
        acl = {"acltype": "subscribePattern", "topic": "data/#", "allow": True}
        for broker_id, wildcards in (("a", False), ("b", True)):
            role = {"rolename": "reader", "acls": [acl], "allowwildcardsubs": wildcards}
            await call(client, "POST", f"{dynsec_path(broker_id)}/roles", role, status=201)
            reader = {"username": "reader", "password": "pw", "roles": [{"rolename": "reader"}]}
            await call(client, "POST", f"{dynsec_path(broker_id)}/clients", reader, status=201)
        assert not await _may_subscribe(a, "reader", "data/#")
        assert await _may_subscribe(b, "reader", "data/#")

        exported_a = await call(client, "GET", f"{dynsec_path('a')}/export")
        exported_b = await call(client, "GET", f"{dynsec_path('b')}/export")
        assert exported_a != exported_b
        [role_a] = [r for r in exported_a["roles"] if r["rolename"] == "reader"]
        assert role_a["allowwildcardsubs"] is False

        report = await call(client, "POST", f"{dynsec_path('b')}/import", exported_a)
        assert report["errors"] == []
        assert {
            "command": "modifyRole",
            "rolename": "reader",
            "allowwildcardsubs": False,
        } in report["commands"]
        assert not await _may_subscribe(b, "reader", "data/#")
        assert await call(client, "GET", f"{dynsec_path('b')}/export") == exported_a
        again = await call(client, "POST", f"{dynsec_path('b')}/import", exported_a)
        assert again["changed"] is False
    finally:
        a.stop()
        b.stop()


# ------------------------------------------------------------------ connections


@only_2_1
async def test_import_ignores_the_connections_of_a_listing(
    client: Client, broker: MosquittoBroker, uid: str
) -> None:
    """2.1's verbose listClients has each client's live connections: fed back as an import
    document, they are ignored (state, not configuration)."""
    await connect(client, broker)
    listed = await call(client, "GET", f"{DS}/clients?verbose=true&count=1000")
    admin = next(c for c in listed["clients"] if c["username"] == "admin")
    assert admin["connections"], admin  # mmc's own login
    clients = copy.deepcopy(listed["clients"])
    report = await call(client, "POST", f"{DS}/import?dryRun=true", {"clients": clients})
    assert report["errors"] == []
    refused = await call(
        client,
        "POST",
        f"{DS}/import?dryRun=true",
        {"clients": [{**admin, "sessions": []}]},
        status=400,
    )
    assert "sessions" in json.dumps(refused["info"])


# -------------------------------------------------------------------- priorities


async def test_priorities_beyond_what_the_broker_keeps_are_refused(
    client: Client, own_broker: MosquittoBroker, uid: str
) -> None:
    """2.1 clamps priorities to ±100,000 (an import asking for more would never settle);
    2.0 keeps any int."""
    broker = own_broker
    await connect(client, broker)
    role, user = f"r-{uid}", f"u-{uid}"
    acl = {"acltype": "publishClientSend", "topic": f"{uid}/x", "allow": True}
    big = {**acl, "priority": 500_000}
    await call(client, "POST", f"{DS}/roles", {"rolename": role}, status=201)
    await call(client, "POST", f"{DS}/clients", {"username": user, "password": "pw"}, status=201)
    admin_role = {
        "rolename": "admin",
        "acls": (await call(client, "GET", f"{DS}/roles/admin"))["acls"],
    }
    document = {"roles": [admin_role, {"rolename": role, "acls": [big]}]}
    if broker.mosquitto.version == "2.0":
        made = await call(client, "POST", f"{DS}/roles/{role}/acls", big)
        assert made["acls"] == [big]
        report = await call(client, "POST", f"{DS}/import?dryRun=true", document)
        assert report["changed"] is False
        return
    for method, path, body in (
        ("POST", f"{DS}/roles/{role}/acls", big),
        ("PATCH", f"{DS}/roles/{role}", {"acls": [big]}),
        ("POST", f"{DS}/clients/{user}/roles", {"rolename": role, "priority": -100_001}),
        ("POST", f"{DS}/roles", {"rolename": f"other-{uid}", "acls": [big]}),
    ):
        refused = await call(client, method, path, body, status=400)
        assert refused["message"].startswith("priority must be between -100000 and 100000")
    assert (await call(client, "GET", f"{DS}/roles/{role}"))["acls"] == []
    await call(client, "GET", f"{DS}/roles/other-{uid}", status=404)
    refused = await call(client, "POST", f"{DS}/import", document, status=400)
    assert list(refused["info"]) == [f"roles.{role}"]
    # The limit itself is kept, and an import of it settles.
    document["roles"][1]["acls"] = [{**acl, "priority": 100_000}]
    assert (await call(client, "POST", f"{DS}/import", document))["changed"] is True
    assert (await call(client, "POST", f"{DS}/import", document))["changed"] is False


# ----------------------------------------------------------------- error strings


@only_2_1
@pytest.mark.parametrize(
    ("command", "status", "message"),
    [
        (
            {"command": "modifyGroup", "groupname": "G", "clients": [{"username": "nobody"}]},
            404,
            "'clients' contains an object with a 'username' that does not exist",
        ),
        (
            {"command": "modifyGroup", "groupname": "G", "clients": [{"username": 5}]},
            400,
            "'clients' contains an object with an invalid 'username'",
        ),
        (
            {"command": "modifyClient", "username": "U", "groups": [{"groupname": "nope"}]},
            404,
            "'groups' contains an object with a 'groupname' that does not exist",
        ),
        (
            {"command": "modifyClient", "username": "U", "groups": [{"groupname": 5}]},
            400,
            "'groups' contains an object with an invalid 'groupname'",
        ),
        ({"command": "createRole", "rolename": ""}, 400, "Empty rolename"),
        ({"command": "createGroup", "groupname": ""}, 400, "Empty groupname"),
        ({"command": "createClient", "username": "", "password": "p"}, 400, "Empty username"),
        (
            {"command": "createRole", "rolename": "R", "allowwildcardsubs": "yes"},
            400,
            "Invalid allowwildcardsubs",
        ),
    ],
)
async def test_2_1_error_strings_are_mapped(
    client: Client,
    broker: MosquittoBroker,
    uid: str,
    command: dict[str, Any],
    status: int,
    message: str,
) -> None:
    await connect(client, broker)
    names = {"G": f"g-{uid}", "U": f"u-{uid}", "R": f"r-{uid}"}
    await call(client, "POST", f"{DS}/groups", {"groupname": names["G"]}, status=201)
    await call(
        client, "POST", f"{DS}/clients", {"username": names["U"], "password": "p"}, status=201
    )
    sent = {k: names.get(v, v) if isinstance(v, str) else v for k, v in command.items()}
    answer = await call(client, "POST", COMMAND, sent, status=status)
    assert answer["message"] == message


# ------------------------------------------------------------ the anonymous group


@only_2_1
async def test_the_broker_itself_refuses_to_delete_the_anonymous_group(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """mmc refuses first (2.0.11 would crash); 2.1, like 2.0.15+, refuses by itself with
    the same message."""
    await connect(client, own_broker)
    await call(client, "POST", f"{DS}/groups", {"groupname": "guests"}, status=201)
    await call(client, "PUT", f"{DS}/anonymous-group", {"groupname": "guests"})
    refused = await call(client, "DELETE", f"{DS}/groups/guests", status=400)
    assert refused["message"] == "Deleting the anonymous group is forbidden"
    request = {"commands": [{"command": "deleteGroup", "groupname": "guests"}]}
    async with _mqtt(own_broker, "admin", own_broker.admin_password) as mqtt:
        await mqtt.subscribe("$CONTROL/dynamic-security/v1/response")
        await mqtt.publish("$CONTROL/dynamic-security/v1", json.dumps(request))
        async with asyncio.timeout(5):
            async for message in mqtt.messages:
                assert isinstance(message.payload, bytes)
                [answer] = json.loads(message.payload)["responses"]
                break
    assert answer == {
        "command": "deleteGroup",
        "error": "Deleting the anonymous group is forbidden",
    }
    assert own_broker.is_running
    assert await call(client, "GET", f"{DS}/anonymous-group") == {"groupname": "guests"}


# ---------------------------------------------------------------- %c and %u


@only_2_1
async def test_client_id_and_username_patterns_in_acls(
    client: Client, broker: MosquittoBroker, uid: str
) -> None:
    """2.1 substitutes %c and %u in pattern ACL topics: accepted, enforced, exported."""
    await connect(client, broker)
    role, user = f"own-{uid}", f"u-{uid}"
    acls = [
        {"acltype": "publishClientSend", "topic": "devices/%c/#", "allow": True, "priority": 0},
        {"acltype": "subscribePattern", "topic": "users/%u/#", "allow": True, "priority": 0},
        {"acltype": "publishClientSend", "topic": "users/%u/#", "allow": True, "priority": 0},
        {"acltype": "publishClientReceive", "topic": "#", "allow": True, "priority": 0},
        {"acltype": "subscribePattern", "topic": "devices/#", "allow": True, "priority": 0},
    ]
    await call(client, "POST", f"{DS}/roles", {"rolename": role, "acls": acls}, status=201)
    body = {"username": user, "password": "pw", "roles": [{"rolename": role}]}
    await call(client, "POST", f"{DS}/clients", body, status=201)
    assert await _receives_own(broker, user, f"devices/{user}-id/t")
    assert not await _receives_own(broker, user, "devices/someone-else/t")
    assert await _may_subscribe(broker, user, f"users/{user}/#")
    assert not await _may_subscribe(broker, user, "users/someone-else/#")
    exported = await call(client, "GET", f"{DS}/export")
    [mine] = [r for r in exported["roles"] if r["rolename"] == role]
    assert {a["topic"] for a in mine["acls"]} == {a["topic"] for a in acls}


# ----------------------------------------------------------- across versions


def _plugin_state(broker: MosquittoBroker) -> dict[str, Any]:
    """The plugin's saved configuration without what differs between any two brokers: its
    password hashes and change index."""
    state: dict[str, Any] = json.loads(broker.dynsec_path.read_text(encoding="utf-8"))
    state.pop("changeIndex", None)
    for entry in state.get("clients", []):
        for secret in ("password", "salt", "iterations", "encoded_password"):
            entry.pop(secret, None)
    return state


SETUP = [
    {
        "command": "createRole",
        "rolename": "sensors",
        "textname": "Sensors",
        "acls": [
            {"acltype": "subscribePattern", "topic": "sensors/#", "priority": 2, "allow": True},
            {"acltype": "publishClientSend", "topic": "sensors/%c/cmd", "allow": False},
        ],
    },
    {"command": "createRole", "rolename": "ops", "textdescription": "Operators"},
    {
        "command": "createGroup",
        "groupname": "field",
        "roles": [{"rolename": "sensors", "priority": 3}],
    },
    {"command": "createGroup", "groupname": "guests", "roles": [{"rolename": "ops"}]},
    {
        "command": "createClient",
        "username": "dev1",
        "password": "pw",
        "clientid": "dev1-id",
        "roles": [{"rolename": "ops", "priority": 5}],
        "groups": [{"groupname": "field", "priority": 1}],
    },
    {"command": "createClient", "username": "dev2", "password": "pw"},
    {"command": "disableClient", "username": "dev2"},
    {"command": "setAnonymousGroup", "groupname": "guests"},
    {"command": "setDefaultACLAccess", "acls": [{"acltype": "subscribe", "allow": True}]},
]


@pytest.mark.parametrize(
    ("source", "target"),
    [(MOSQUITTO_21, MOSQUITTO_21), (MOSQUITTO_20, MOSQUITTO_21)],
    ids=["2.1-to-2.1", "2.0-to-2.1"],
)
@only_2_1
async def test_a_configuration_moves_to_a_fresh_2_1_broker(
    client: Client, tmp_path: Path, mosquitto: Mosquitto, source: Mosquitto, target: Mosquitto
) -> None:
    """Export from a broker, import into a fresh 2.1 one: the plugins' saved files agree
    (hashes and change index aside); the same import again changes nothing."""
    a, b = await _pair(client, tmp_path, source, target)
    try:
        envelope = "/api/projects/default/brokers/a/dynamic-security"
        answer = await call(client, "POST", envelope, {"commands": SETUP})
        assert [r for r in answer["responses"] if "error" in r] == []
        if source.version == "2.1":
            await call(
                client, "PATCH", f"{dynsec_path('a')}/roles/ops", {"allowwildcardsubs": False}
            )
        document = await call(client, "GET", f"{dynsec_path('a')}/export")
        for entry in document["clients"]:
            if entry["username"] != "admin":
                entry["password"] = "pw"
        report = await call(client, "POST", f"{dynsec_path('b')}/import", document)
        assert report["errors"] == [], report
        again = await call(client, "POST", f"{dynsec_path('b')}/import", document)
        assert again["changed"] is False, again
        a.stop()
        b.stop()  # both save their configuration on every change; stopped, nothing moves
        saved_a, saved_b = _plugin_state(a), _plugin_state(b)
        if source.version == "2.0":
            # 2.0's file has no allowwildcardsubs; 2.1 writes its default, true.
            for role in saved_b["roles"]:
                assert role.pop("allowwildcardsubs") is True
        assert saved_b == saved_a
    finally:
        a.stop()
        b.stop()


# --------------------------------------------------- the deleteRole guard on 2.1


def _valgrind(log: Path) -> list[str]:
    return ["valgrind", "--error-exitcode=99", f"--log-file={log}"]


def _errors(log: Path) -> int:
    text = log.read_text(encoding="utf-8")
    [summary] = [line for line in text.splitlines() if "ERROR SUMMARY" in line]
    return int(summary.split("ERROR SUMMARY:")[1].split()[0])


async def _raw(broker: MosquittoBroker, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async with _mqtt(broker, "admin", broker.admin_password) as mqtt:
        await mqtt.subscribe("$CONTROL/dynamic-security/v1/response")
        await mqtt.publish("$CONTROL/dynamic-security/v1", json.dumps({"commands": commands}))
        async with asyncio.timeout(10):
            async for message in mqtt.messages:
                assert isinstance(message.payload, bytes)
                answer: list[dict[str, Any]] = json.loads(message.payload)["responses"]
                return answer
    raise AssertionError("no answer")


HELD_INLINE: list[dict[str, Any]] = [
    {"command": "createRole", "rolename": "held"},
    {"command": "createClient", "username": "u", "password": "p", "roles": [{"rolename": "held"}]},
    {"command": "createGroup", "groupname": "g", "roles": [{"rolename": "held"}]},
]


@only_2_1
async def test_the_delete_role_guard_is_still_needed_on_2_1(
    client: Client, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """2.1.2 does not link roles given inline in createClient/createGroup back to their
    holders: its own deleteRole then frees a role still held (valgrind sees reads of freed
    memory). mmc takes the role from its holders first: on the same state (made by another
    tool), deleting through mmc leaves valgrind nothing to report."""
    raw_log, mmc_log = tmp_path / "raw.vg", tmp_path / "mmc.vg"
    delete = {"command": "deleteRole", "rolename": "held"}
    reads = [{"command": "getClient", "username": "u"}, {"command": "getGroup", "groupname": "g"}]
    with MosquittoBroker(tmp_path / "raw", mosquitto=mosquitto, wrapper=_valgrind(raw_log)) as raw:
        answers = await _raw(raw, [*HELD_INLINE, delete])
        assert [a for a in answers if "error" in a] == []
        await _raw(raw, reads)
    assert _errors(raw_log) > 0

    with MosquittoBroker(tmp_path / "mmc", mosquitto=mosquitto, wrapper=_valgrind(mmc_log)) as own:
        assert [a for a in await _raw(own, HELD_INLINE) if "error" in a] == []
        await connect(client, own)
        await call(client, "DELETE", f"{DS}/roles/held", status=204)
        assert (await call(client, "GET", f"{DS}/clients/u"))["roles"] == []
        assert (await call(client, "GET", f"{DS}/groups/g"))["roles"] == []
        await _raw(own, reads)
    assert _errors(mmc_log) == 0


# ------------------------------------------------------------------- kicks


async def _kicked(broker: MosquittoBroker, user: str, change: Awaitable[Any]) -> bool:
    """Whether ``user``'s connection is closed by the broker after ``change`` (2.0 closes it
    at once, 2.1 on its next loop)."""
    try:
        async with _mqtt(broker, user, "pw") as mqtt:
            await change
            async with asyncio.timeout(1.0):
                async for _ in mqtt.messages:
                    pass
    except aiomqtt.MqttError:
        return True
    except TimeoutError:
        return False
    return True


async def test_role_changes_kick_the_roles_holders(
    client: Client, broker: MosquittoBroker, uid: str
) -> None:
    """Both versions disconnect a client whose role set or role ACLs change, and leave the
    others connected."""
    await connect(client, broker)
    role, other, user = f"r-{uid}", f"o-{uid}", f"u-{uid}"
    for name in (role, other):
        await call(client, "POST", f"{DS}/roles", {"rolename": name}, status=201)
    body = {"username": user, "password": "pw", "roles": [{"rolename": role}]}
    await call(client, "POST", f"{DS}/clients", body, status=201)
    acl = {"acltype": "subscribePattern", "topic": f"{uid}/#", "allow": True}
    assert await _kicked(broker, user, call(client, "POST", f"{DS}/roles/{role}/acls", acl))
    assert not await _kicked(broker, user, call(client, "POST", f"{DS}/roles/{other}/acls", acl))
    assert not await _kicked(
        broker, user, call(client, "PATCH", f"{DS}/roles/{role}", {"textname": "T"})
    )
    if broker.mosquitto.version != "2.0":
        change = call(client, "PATCH", f"{DS}/roles/{role}", {"allowwildcardsubs": False})
        assert await _kicked(broker, user, change)
    assert await _kicked(
        broker, user, call(client, "POST", f"{DS}/clients/{user}/roles", {"rolename": other})
    )
    assert await _kicked(
        broker, user, call(client, "DELETE", f"{DS}/clients/{user}/roles?rolename={other}")
    )
