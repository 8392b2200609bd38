"""A command whose answer is lost is answered with what happened on the broker.

A real mosquitto behind tests.mqtt_proxy, which loses chosen ``$CONTROL`` answers: the
connection drops instead of delivering one (the command was applied, or refused, and the
link goes down), or one is swallowed (late forever, the link stays up). mmc waits for its
link, reads the state back, and answers as the broker would have; 502 OUTCOME_UNKNOWN only
when that cannot be told. And mosquitto's own kick of mmc after a change of its own user's
roles or password (issue 15's cases) is answered as applied.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mmc.appkeys import connections_key
from mmc.broker_strings import ascii_lower
from mmc.brokers.link import BrokerLink
from mmc.brokers.outcome import CHECKS, check_for
from mmc.config import Settings
from testbed.mosquitto import MosquittoBroker
from tests.conftest import Client, MakeClient, wait_until
from tests.dynsec_helpers import call, can_login, connect, dynsec_path
from tests.mqtt_proxy import MqttProxy

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

DS = dynsec_path()


def answer_of(command: str) -> Any:
    needle = f'"command":"{command}"'.encode()
    return lambda payload: needle in payload


@pytest.fixture
async def proxy(own_broker: MosquittoBroker) -> AsyncIterator[MqttProxy]:
    async with MqttProxy.running(own_broker.host, own_broker.port) as running:
        yield running


@pytest.fixture
async def linked(client: Client, own_broker: MosquittoBroker, proxy: MqttProxy) -> BrokerLink:
    """mmc connected to the broker through the proxy, with a role ``r1`` and a client ``c1``."""
    await connect(client, own_broker, url=f"mqtt://127.0.0.1:{proxy.port}")
    await call(client, "POST", f"{DS}/roles", {"rolename": "r1"}, status=201)
    await call(client, "POST", f"{DS}/clients", {"username": "c1", "password": "pw1"}, status=201)
    return client.app[connections_key].pool.require("plain")


async def test_an_applied_change_whose_answer_is_cut_is_answered_as_applied(
    client: Client, linked: BrokerLink, proxy: MqttProxy
) -> None:
    drops = linked.reconnects
    proxy.cut_answer(answer_of("addClientRole"))
    await call(client, "POST", f"{DS}/clients/c1/roles", {"rolename": "r1", "priority": 3})
    assert proxy.cut_count == 1
    assert linked.reconnects > drops  # the link did go down in between
    client_c1 = await call(client, "GET", f"{DS}/clients/c1")
    assert client_c1["roles"] == [{"rolename": "r1", "priority": 3}]
    assert linked.connected


async def test_a_refused_change_whose_answer_is_cut_gets_the_brokers_answer(
    client: Client, linked: BrokerLink, proxy: MqttProxy
) -> None:
    proxy.cut_answer(answer_of("addClientRole"))
    answer = await call(client, "POST", f"{DS}/clients/c1/roles", {"rolename": "ghost"}, status=404)
    assert answer["code"] == "NOT_FOUND"
    assert "Role not found" in answer["message"]
    assert proxy.cut_count == 1
    assert (await call(client, "GET", f"{DS}/clients/c1"))["roles"] == []


async def test_an_answer_that_never_comes_is_resolved_on_the_same_connection(
    client: Client, linked: BrokerLink, proxy: MqttProxy
) -> None:
    drops = linked.reconnects
    proxy.drop_answer(answer_of("addRoleACL"))
    acl = {"acltype": "subscribePattern", "topic": "a/#", "allow": True, "priority": 5}
    await call(client, "POST", f"{DS}/roles/r1/acls", acl)
    assert proxy.dropped_count == 1
    assert linked.reconnects == drops
    role = await call(client, "GET", f"{DS}/roles/r1")
    assert role["acls"] == [{**acl, "acltype": "subscribePattern"}]


async def test_passthrough_commands_are_resolved_one_by_one(
    client: Client, linked: BrokerLink, proxy: MqttProxy
) -> None:
    proxy.cut_answer(answer_of("createGroup"))
    body = {
        "commands": [
            {"command": "createGroup", "groupname": "g1", "correlationData": "mine"},
            {"command": "addClientRole", "username": "c1", "rolename": "ghost"},
        ]
    }
    answer = await call(
        client, "POST", "/api/projects/default/brokers/plain/dynamic-security", body
    )
    assert proxy.cut_count == 1
    [created, refused] = answer["responses"]
    assert created == {"command": "createGroup", "correlationData": "mine"}
    # Sent in the same message, its answer was lost with the connection: not applied,
    # sent once more, and the broker's own error comes back.
    assert refused == {"command": "addClientRole", "error": "Role not found"}
    await call(client, "GET", f"{DS}/groups/g1")


def commands_of(payload: bytes) -> list[str]:
    """The commands a ``$CONTROL`` answer message answers (its MQTT v5 properties skipped)."""
    body = json.loads(payload[payload.index(b'{"responses"') :])
    return [str(r.get("command")) for r in body["responses"]]


async def test_a_change_and_its_read_back_travel_in_one_message(
    client: Client, linked: BrokerLink, proxy: MqttProxy
) -> None:
    """PATCH and the other changes of one resource answer it as it is afterwards: the
    change and the read travel together, the plugin runs them in order."""
    await call(client, "POST", f"{DS}/groups", {"groupname": "g1"}, status=201)
    for method, path, body, change, read in (
        ("PATCH", "clients/c1", {"textname": "Cee"}, "modifyClient", "getClient"),
        ("PATCH", "roles/r1", {"textdescription": "one"}, "modifyRole", "getRole"),
        ("PATCH", "groups/g1", {"textname": "Gee"}, "modifyGroup", "getGroup"),
        ("POST", "groups/g1/clients", {"username": "c1"}, "addGroupClient", "getGroup"),
        ("PUT", "clients/c1/disable", None, "disableClient", "getClient"),
    ):
        before = len(proxy.answers)
        answer = await call(client, method, f"{DS}/{path}", body)
        messages = [commands_of(p) for p in proxy.answers[before:]]
        # Reads before it check that mmc keeps its own access (a role or group change
        # may concern it); the change itself comes last, its read-back with it.
        assert messages[-1] == [change, read], (path, messages)
        assert all(m[0].startswith(("get", "list")) for m in messages[:-1]), messages
        if path.startswith("clients"):  # nothing to check about mmc's own access
            assert len(messages) == 1, messages
        if body:
            assert {k: answer.get(k) for k in body if k != "username"} == {
                k: v for k, v in body.items() if k != "username"
            }
    assert (await call(client, "GET", f"{DS}/clients/c1"))["disabled"] is True


async def test_a_change_whose_shared_message_is_cut_is_read_again_once_resolved(
    client: Client, linked: BrokerLink, proxy: MqttProxy
) -> None:
    # Applied: the change's answer resolved by reading the state back; the read sent with
    # it was lost too, and is sent again after that (never trusted from before).
    drops = linked.reconnects
    proxy.cut_answer(answer_of("modifyClient"))
    changed = await call(client, "PATCH", f"{DS}/clients/c1", {"textname": "After"})
    assert proxy.cut_count == 1
    assert linked.reconnects > drops
    assert changed["textname"] == "After"
    # Refused (no such client): the broker's own answer, sent once more.
    proxy.cut_answer(answer_of("modifyClient"))
    refused = await call(client, "PATCH", f"{DS}/clients/ghost", {"textname": "x"}, status=404)
    assert proxy.cut_count == 2
    assert "Client not found" in refused["message"]
    # Swallowed, the link up: resolved on the same connection, then read again.
    drops = linked.reconnects
    proxy.drop_answer(answer_of("modifyRole"))
    role = await call(client, "PATCH", f"{DS}/roles/r1", {"textname": "Arr"})
    assert proxy.dropped_count == 1
    assert linked.reconnects == drops
    assert role["textname"] == "Arr"


async def test_a_read_whose_answer_is_cut_is_asked_again(
    client: Client, linked: BrokerLink, proxy: MqttProxy
) -> None:
    proxy.cut_answer(answer_of("listClients"))
    clients = await call(client, "GET", f"{DS}/clients")
    assert proxy.cut_count == 1
    assert "c1" in clients["clients"]


async def test_a_new_password_cannot_be_read_back_so_its_outcome_is_unknown(
    client: Client, linked: BrokerLink, proxy: MqttProxy, own_broker: MosquittoBroker
) -> None:
    proxy.cut_answer(answer_of("setClientPassword"))
    resp = await client.put(f"{DS}/clients/c1/password", json={"password": "s3cret-new"})
    text = await resp.text()
    assert resp.status == 502, text
    assert "s3cret-new" not in text
    answer = json.loads(text)
    assert answer["code"] == "OUTCOME_UNKNOWN"
    assert "may have been applied" in answer["message"]
    assert answer["info"]["command"] == {
        "command": "setClientPassword",
        "username": "c1",
        "password": "***",
    }
    # The answer is honest: it was applied.
    assert await can_login(own_broker, "c1", "s3cret-new")
    assert linked.connected


async def test_a_broker_not_back_in_time_leaves_a_change_unknown_and_a_read_unavailable(
    client: Client, linked: BrokerLink, proxy: MqttProxy
) -> None:
    proxy.refuse = True
    proxy.cut_answer(answer_of("createRole"))
    answer = await call(client, "POST", f"{DS}/roles", {"rolename": "r2"}, status=502)
    assert answer["code"] == "OUTCOME_UNKNOWN"
    assert "not back within" in answer["message"]
    assert answer["info"] == {
        "api": "dynamic-security",
        "command": {"command": "createRole", "rolename": "r2"},
    }
    proxy.refuse = False
    await wait_until(lambda: linked.connected)

    proxy.refuse = True
    proxy.cut_answer(answer_of("listRoles"))
    answer = await call(client, "GET", f"{DS}/roles", status=503)
    assert answer["code"] == "BROKER_UNAVAILABLE"
    proxy.refuse = False
    await wait_until(lambda: linked.connected)
    # The create had been applied: the 502 said it may have been.
    await call(client, "GET", f"{DS}/roles/r2")


# ---------------------------------------------------------- mosquitto kicks mmc itself


async def _kicked_and_back(link: BrokerLink, drops: int) -> None:
    assert link.reconnects > drops, "mosquitto did not disconnect mmc: the test proves nothing"
    assert link.connected


async def test_changes_of_mmcs_own_user_that_mosquitto_answers_by_kicking_it(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """Issue 15's cases: mosquitto disconnects mmc (whose user holds role ``admin``) before
    the answer; each change is applied and answered as such."""
    await connect(client, own_broker)
    link = client.app[connections_key].pool.require("plain")
    acl = {"acltype": "publishClientSend", "topic": "x/#", "allow": True}

    drops = link.reconnects
    await call(client, "POST", f"{DS}/roles/admin/acls", acl)
    await _kicked_and_back(link, drops)
    role = await call(client, "GET", f"{DS}/roles/admin")
    assert {**acl, "priority": 0} in role["acls"]

    await call(client, "POST", f"{DS}/roles", {"rolename": "extra"}, status=201)
    drops = link.reconnects
    await call(client, "POST", f"{DS}/clients/admin/roles", {"rolename": "extra"})
    await _kicked_and_back(link, drops)
    admin = await call(client, "GET", f"{DS}/clients/admin")
    assert {"rolename": "extra"} in admin["roles"]

    drops = link.reconnects
    await call(
        client,
        "POST",
        "/api/dynamic-security/plain/command",
        {
            "command": "addRoleACL",
            "rolename": "admin",
            "acltype": "subscribeLiteral",
            "topic": "y",
            "allow": True,
        },
    )
    await _kicked_and_back(link, drops)
    role = await call(client, "GET", f"{DS}/roles/admin")
    assert any(a["topic"] == "y" for a in role["acls"])

    drops = link.reconnects
    await call(client, "PUT", f"{DS}/clients/admin/password", {"password": "next-admin-pw"})
    await _kicked_and_back(link, drops)
    assert await can_login(own_broker, own_broker.admin_username, "next-admin-pw")


# ------------------------------------------------- every read-back agrees with the broker

# In order, on a fresh broker: (command, what its check says before it is sent).
SCRIPT: list[tuple[dict[str, Any], bool]] = [
    ({"command": "createRole", "rolename": "r", "textname": "T"}, False),
    (
        {
            "command": "modifyRole",
            "rolename": "r",
            "textname": "T2",
            "acls": [{"acltype": "subscribePattern", "topic": "s/#", "allow": True}],
        },
        False,
    ),
    (
        {
            "command": "addRoleACL",
            "rolename": "r",
            "acltype": "PUBLISHCLIENTSEND",
            "topic": "a/b",
            "allow": False,
            "priority": 2,
        },
        False,
    ),
    (
        {
            "command": "removeRoleACL",
            "rolename": "r",
            "acltype": "publishClientSend",
            "topic": "a/b",
        },
        False,
    ),
    ({"command": "createGroup", "groupname": "g", "textdescription": "D"}, False),
    ({"command": "modifyGroup", "groupname": "g", "textname": "G"}, False),
    ({"command": "addGroupRole", "groupname": "g", "rolename": "r", "priority": 4}, False),
    ({"command": "removeGroupRole", "groupname": "g", "rolename": "r"}, False),
    ({"command": "createClient", "username": "u", "password": "p", "textname": "U"}, False),
    (
        {
            "command": "modifyClient",
            "username": "u",
            "textdescription": "UD",
            "roles": [{"rolename": "r", "priority": 1}],
        },
        False,
    ),
    ({"command": "removeClientRole", "username": "u", "rolename": "r"}, False),
    ({"command": "addClientRole", "username": "u", "rolename": "r"}, False),
    ({"command": "setClientId", "username": "u", "clientid": "cid"}, False),
    ({"command": "disableClient", "username": "u"}, False),
    ({"command": "enableClient", "username": "u"}, False),
    ({"command": "addGroupClient", "groupname": "g", "username": "u", "priority": 2}, False),
    ({"command": "removeGroupClient", "groupname": "g", "username": "u"}, False),
    ({"command": "setAnonymousGroup", "groupname": "g"}, False),
    (
        {
            "command": "setDefaultACLAccess",
            "acls": [{"acltype": "publishClientSend", "allow": True}],
        },
        False,
    ),
    ({"command": "setAnonymousGroup", "groupname": "anon"}, False),
    ({"command": "deleteClient", "username": "u"}, False),
    ({"command": "deleteGroup", "groupname": "g"}, False),
    ({"command": "deleteRole", "rolename": "r"}, False),
]


async def test_every_read_back_agrees_with_the_broker(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """Each check reads "not applied" before its command and "applied" after, on the real
    plugin's answers (field names, defaults, case): a check that misread them would answer
    a lost command wrongly."""
    await connect(client, own_broker)
    await call(client, "POST", f"{DS}/groups", {"groupname": "anon"}, status=201)
    link = client.app[connections_key].pool.require("plain")
    channel = link.control

    async def read(query: dict[str, Any]) -> dict[str, Any]:
        return await channel.send("dynamic-security", query)

    for command, before in SCRIPT:
        check = check_for("dynamic-security", command)
        assert check is not None, command
        assert await check(read, command) is before, command
        entry = await channel.send("dynamic-security", command)
        assert "error" not in entry, (command, entry)
        assert await check(read, command) is True, command
    covered = {ascii_lower(c["command"]) for c, _ in SCRIPT} | {"setclientpassword"}
    assert covered == set(CHECKS)
    assert await CHECKS["setclientpassword"](read, {"command": "setClientPassword"}) is None


async def test_many_changes_in_flight_when_the_link_drops_each_answer_what_happened(
    client: Client, linked: BrokerLink, proxy: MqttProxy
) -> None:
    """Concurrent requests travel in shared MQTT messages, so one drop loses many answers:
    each is resolved on its own, the applied ones 2xx, the refused ones with the broker's
    error, and the state agrees with every answer."""
    proxy.cut_answer(answer_of("createRole"))

    async def create(name: str) -> int:
        resp = await client.post(f"{DS}/roles", json={"rolename": name, "textname": name})
        return resp.status

    async def grant(role: str) -> int:
        resp = await client.post(f"{DS}/clients/c1/roles", json={"rolename": role})
        return resp.status

    names = [f"many{i}" for i in range(20)]
    statuses = await asyncio.gather(
        *(create(n) for n in names), *(grant(f"ghost{i}") for i in range(5))
    )
    assert proxy.cut_count == 1
    assert statuses == [201] * 20 + [404] * 5
    roles = (await call(client, "GET", f"{DS}/roles"))["roles"]
    assert set(names) <= set(roles)
    assert (await call(client, "GET", f"{DS}/clients/c1"))["roles"] == []


# 2.0: 2.1 names its plugins in listPlugins, so silence there hides nothing.
@pytest.mark.mosquitto_versions("2.0")
@pytest.mark.parametrize(("recheck", "status"), [(0.0, 200), (3600.0, 404)])
async def test_a_probe_that_met_silence_is_asked_again_after_the_recheck_interval(
    make_client: MakeClient,
    settings: Settings,
    own_broker: MosquittoBroker,
    proxy: MqttProxy,
    recheck: float,
    status: int,
) -> None:
    """A broker too busy to answer a capability probe in time looks like one without the
    plugin; past MMC_CAPABILITY_RECHECK_INTERVAL a request that needs it asks again."""
    client = await make_client(settings.replace(capability_recheck_interval=recheck))
    proxy.drop_answer(answer_of("getDefaultACLAccess"))  # the dynamic-security probe
    await connect(client, own_broker, url=f"mqtt://127.0.0.1:{proxy.port}")
    link = client.app[connections_key].pool.require("plain")
    await wait_until(lambda: link.capabilities is not None)
    assert proxy.dropped_count == 1
    assert "dynamicSecurity" not in (link.features or ())
    answer = await call(client, "GET", f"{DS}/clients", status=status)
    if status == 404:
        assert answer["message"] == "dynamic-security plugin not enabled on this broker"
    else:
        assert "dynamicSecurity" in (link.features or ())
