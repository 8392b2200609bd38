"""Fleet operations: export, import (diff, dry run, idempotence) and project-wide apply."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest

from mmc.appkeys import connections_key
from mmc.brokers.dynsec import IMPORT_WINDOW, Dynsec
from mmc.brokers.dynsec_plan import CLIENTS
from testbed.mosquitto import Mosquitto, MosquittoBroker
from tests.conftest import Client, wait_until
from tests.dynsec_helpers import call, can_login, connect, dynsec_path

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

PROJECT = "fleet"
SRC = dynsec_path("src", PROJECT)
DST = dynsec_path("dst", PROJECT)


async def run(client: Client, broker_id: str, commands: list[dict[str, Any]]) -> None:
    answer = await call(
        client,
        "POST",
        f"/api/projects/{PROJECT}/brokers/{broker_id}/dynamic-security",
        {"commands": commands},
    )
    errors = [r for r in answer["responses"] if "error" in r]
    assert errors == [], errors


SOURCE_STATE: list[dict[str, Any]] = [
    {
        "command": "createRole",
        "rolename": "sensors",
        "textname": "Sensors",
        "acls": [
            {"acltype": "subscribePattern", "topic": "sensors/#", "priority": 2, "allow": True},
            {"acltype": "publishClientSend", "topic": "sensors/+/cmd", "allow": False},
        ],
    },
    {"command": "createRole", "rolename": "ops"},
    {
        "command": "createGroup",
        "groupname": "field",
        "roles": [{"rolename": "sensors", "priority": 3}],
    },
    {"command": "createGroup", "groupname": "guests", "roles": [{"rolename": "ops"}]},
    {
        "command": "createClient",
        "username": "dev1",
        "password": "source-pass",
        "clientid": "dev1-id",
        "textname": "Device 1",
        "roles": [{"rolename": "ops", "priority": 5}],
        "groups": [{"groupname": "field", "priority": 1}],
    },
    {"command": "createClient", "username": "dev2", "password": "source-pass"},
    {"command": "createClient", "username": "dev3", "password": "source-pass"},
    {"command": "disableClient", "username": "dev2"},
    {"command": "setAnonymousGroup", "groupname": "guests"},
    {"command": "setDefaultACLAccess", "acls": [{"acltype": "subscribe", "allow": True}]},
]

# What the target has that the source has not (to be deleted) or has differently.
TARGET_STATE: list[dict[str, Any]] = [
    {"command": "createRole", "rolename": "extra"},
    {
        "command": "createRole",
        "rolename": "ops",
        "acls": [{"acltype": "subscribeLiteral", "topic": "x"}],
    },
    {"command": "createGroup", "groupname": "extra-g", "roles": [{"rolename": "extra"}]},
    {
        "command": "createClient",
        "username": "extra-u",
        "password": "p",
        "roles": [{"rolename": "extra"}],
        "groups": [{"groupname": "extra-g"}],
    },
    {
        "command": "createClient",
        "username": "dev1",
        "password": "target-pass",
        "textname": "Old name",
        "roles": [{"rolename": "extra", "priority": 9}],
    },
    {"command": "setAnonymousGroup", "groupname": "extra-g"},
]


async def test_export_import_round_trip(
    client: Client, own_broker: MosquittoBroker, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with MosquittoBroker(tmp_path / "target", mosquitto=mosquitto) as target:
        await connect(client, own_broker, id="src", name="Source", projectId=PROJECT)
        await connect(client, target, id="dst", name="Target", projectId=PROJECT)
        await run(client, "src", SOURCE_STATE)
        await run(client, "dst", TARGET_STATE)

        document = await call(client, "GET", f"{SRC}/export")
        assert document["anonymousGroup"] == "guests"
        assert {"acltype": "subscribe", "allow": True} in document["defaultACLAccess"]
        dev1 = next(c for c in document["clients"] if c["username"] == "dev1")
        assert dev1 == {
            "username": "dev1",
            "clientid": "dev1-id",
            "textname": "Device 1",
            "roles": [{"rolename": "ops", "priority": 5}],
            "groups": [{"groupname": "field", "priority": 1}],
        }
        assert "password" not in str(document)

        # Passwords are never exported: the new clients would arrive without one, and the
        # report says which before anything is sent.
        target_before = await call(client, "GET", f"{DST}/export")
        bare = await call(client, "POST", f"{DST}/import?dryRun=true", document)
        assert bare["withoutPassword"] == ["dev2", "dev3"]
        assert await call(client, "GET", f"{DST}/export") == target_before

        with_passwords = copy.deepcopy(document)
        for entry in with_passwords["clients"]:
            if entry["username"] != "admin":
                entry["password"] = "imported-pass"

        dry = await call(client, "POST", f"{DST}/import?dryRun=true", with_passwords)
        assert dry["dryRun"] is True
        assert dry["changed"] is True
        planned = {
            (c["command"], c.get("username") or c.get("groupname") or c.get("rolename"))
            for c in dry["commands"]
        }
        assert {
            ("deleteRole", "extra"),
            ("deleteGroup", "extra-g"),
            ("deleteClient", "extra-u"),
        } <= planned
        assert ("createClient", "dev3") in planned
        assert "imported-pass" not in str(dry)
        assert await call(client, "GET", f"{DST}/export") == target_before

        applied = await call(client, "POST", f"{DST}/import", with_passwords)
        assert applied["errors"] == []
        assert applied["withoutPassword"] == []
        assert applied["skipped"] == []
        assert applied["changed"] is True
        assert applied["dryRun"] is False
        assert len(applied["commands"]) == len(dry["commands"])
        assert "imported-pass" not in str(applied)
        assert await call(client, "GET", f"{DST}/export") == document
        assert target.is_running

        again = await call(client, "POST", f"{DST}/import", with_passwords)
        assert again == {
            "changed": False,
            "dryRun": False,
            "commands": [],
            "errors": [],
            "skipped": [],
            "withoutPassword": [],
        }
        # A new client got the document's password; an existing one kept its own.
        assert await can_login(target, "dev3", "imported-pass")
        assert await can_login(target, "dev1", "target-pass", client_id="dev1-id")
        assert not await can_login(target, "dev1", "target-pass")  # the imported client id
        assert not await can_login(target, "dev2", "imported-pass")  # disabled, as in the source


async def test_import_never_touches_the_client_mmc_uses(
    client: Client, own_broker: MosquittoBroker
) -> None:
    await connect(client, own_broker, id="src", name="Source", projectId=PROJECT)
    await run(client, "src", [{"command": "createClient", "username": "other", "password": "p"}])
    report = await call(client, "POST", f"{SRC}/import", {"clients": [], "roles": []})
    assert report["commands"] == [{"command": "deleteClient", "username": "other"}]
    assert report["skipped"] == [
        {
            "rolename": "admin",
            "action": "delete",
            "reason": "the client mmc connects as depends on it; an import never changes it",
        },
        {
            "username": "admin",
            "action": "delete",
            "reason": "mmc connects to the broker as this client; an import never changes it",
        },
    ]
    assert (await call(client, "GET", f"{SRC}/clients"))["clients"] == ["admin"]
    assert (await call(client, "GET", f"{SRC}/roles"))["roles"] == ["admin"]


async def test_import_document_is_validated(client: Client, own_broker: MosquittoBroker) -> None:
    await connect(client, own_broker, id="src", name="Source", projectId=PROJECT)
    refused = await call(
        client,
        "POST",
        f"{SRC}/import",
        {"roles": [{"rolename": "r", "acls": [{"acltype": "nope", "topic": "t"}]}], "extra": 1},
        status=400,
    )
    assert set(refused["info"]) == {"roles", "extra"}
    await call(client, "POST", f"{SRC}/import?dryRun=maybe", {"roles": []}, status=400)


async def test_project_apply_is_multi_status(
    client: Client,
    own_broker: MosquittoBroker,
    broker: MosquittoBroker,
    tmp_path: Path,
    mosquitto: Mosquitto,
) -> None:
    with MosquittoBroker(tmp_path / "live", mosquitto=mosquitto) as live:
        await connect(client, live, id="live", name="Live", projectId=PROJECT)
        await connect(client, own_broker, id="down", name="Down", projectId=PROJECT)
        await connect(client, broker, id="elsewhere", name="Elsewhere", projectId="other")
        pool = client.app[connections_key].pool
        own_broker.kill()
        await wait_until(lambda: not pool.require("down").connected)

        answer = await call(
            client,
            "POST",
            f"/api/projects/{PROJECT}/dynsec/apply",
            {"commands": [{"command": "createRole", "rolename": "fleet-role"}]},
            status=207,
        )
        assert set(answer) == {"live", "down"}
        assert answer["live"] == {"status": 200, "responses": [{"command": "createRole"}]}
        assert answer["down"]["status"] == 503
        assert answer["down"]["code"] == "BROKER_UNAVAILABLE"

        document = await call(client, "GET", f"{dynsec_path('live', PROJECT)}/export")
        document["groups"].append(
            {"groupname": "fleet-group", "roles": [{"rolename": "fleet-role"}]}
        )
        dry = await call(
            client,
            "POST",
            f"/api/projects/{PROJECT}/dynsec/apply",
            {"import": document, "dryRun": True},
            status=207,
        )
        assert dry["live"]["commands"] == [
            {
                "command": "createGroup",
                "groupname": "fleet-group",
                "roles": [{"rolename": "fleet-role"}],
            }
        ]
        await call(client, "GET", f"{dynsec_path('live', PROJECT)}/groups/fleet-group", status=404)

        applied = await call(
            client,
            "POST",
            f"/api/projects/{PROJECT}/dynsec/apply",
            {"import": document},
            status=207,
        )
        assert applied["live"]["status"] == 200
        assert applied["live"]["changed"] is True
        assert applied["down"]["status"] == 503
        group = await call(client, "GET", f"{dynsec_path('live', PROJECT)}/groups/fleet-group")
        assert group["roles"] == [{"rolename": "fleet-role"}]
        again = await call(
            client,
            "POST",
            f"/api/projects/{PROJECT}/dynsec/apply",
            {"import": document},
            status=207,
        )
        assert again["live"]["changed"] is False

        # The other project's broker was never asked.
        roles = await call(client, "GET", f"{dynsec_path('elsewhere', 'other')}/roles")
        assert "fleet-role" not in roles["roles"]


async def test_project_apply_validation(client: Client, broker: MosquittoBroker) -> None:
    await connect(client, broker)
    both = {"commands": [{"command": "listRoles"}], "import": {}}
    await call(client, "POST", "/api/projects/default/dynsec/apply", both, status=400)
    await call(client, "POST", "/api/projects/default/dynsec/apply", {}, status=400)
    missing = await call(
        client,
        "POST",
        "/api/projects/nobody/dynsec/apply",
        {"commands": [{"command": "listRoles"}]},
        status=404,
    )
    assert missing["message"] == "Project nobody has no brokers"


def _listings(metrics: str, command: str = "listClients") -> float:
    """``command`` commands sent so far (mmc's own counter)."""
    prefix = (
        f'mmc_control_requests_total{{api="dynamic-security",command="{command}",outcome="ok"}}'
    )
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def _messages(metrics: str) -> float:
    """$CONTROL messages published on the dynamic-security API so far."""
    prefix = 'mmc_control_messages_total{api="dynamic-security"}'
    lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


async def _counts(client: Client) -> dict[str, float]:
    metrics = await (await client.get("/metrics")).text()
    counted = ("listClients", "listGroups", "listRoles", "getRole", "getGroup")
    return {"messages": _messages(metrics)} | {c: _listings(metrics, c) for c in counted}


async def test_a_deleterole_envelope_lists_the_holders_once(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """40 deleteRole in one envelope: their holders are found with one listing of clients
    and one of groups (not 40 of each), each role is taken from them and deleted, and
    every command has its own answer, in order."""
    await connect(client, own_broker, id="src", name="Source", projectId=PROJECT)
    roles = [f"r{i}" for i in range(40)]
    await run(client, "src", [{"command": "createRole", "rolename": r} for r in roles])
    await run(
        client,
        "src",
        [
            {"command": "createClient", "username": "holder", "password": "p"},
            {"command": "createGroup", "groupname": "g"},
            *(
                {"command": "addClientRole", "username": "holder", "rolename": r}
                for r in roles[:10]
            ),
            *({"command": "addGroupRole", "groupname": "g", "rolename": r} for r in roles[10:20]),
        ],
    )
    before = await _counts(client)
    deletes = [{"command": "deleteRole", "rolename": r} for r in [*roles, "missing"]]
    answer = await call(
        client,
        "POST",
        f"/api/projects/{PROJECT}/brokers/src/dynamic-security",
        {"commands": [{"command": "listRoles"}, *deletes, {"command": "listRoles"}]},
    )
    after = await _counts(client)
    responses = answer["responses"]
    assert [r["command"] for r in responses] == ["listRoles"] + ["deleteRole"] * 41 + ["listRoles"]
    assert [r for r in responses[1:-1] if "error" in r] == [
        {"command": "deleteRole", "error": "Role not found"}
    ]
    assert len(responses[0]["data"]["roles"]) == 41  # admin and the 40: read before
    assert responses[-1]["data"]["roles"] == ["admin"]  # and after
    assert after["listClients"] - before["listClients"] == 1
    assert after["listGroups"] - before["listGroups"] == 1
    assert (await call(client, "GET", f"{SRC}/clients/holder"))["roles"] == []
    assert (await call(client, "GET", f"{SRC}/groups/g"))["roles"] == []
    assert own_broker.is_running


async def test_an_import_checks_the_references_of_its_clients_once_per_phase(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """Creating 60 clients, each with roles and a group, reads which roles and groups
    exist once per phase (listRoles, listGroups), not with a getRole per role of each
    client and a getGroup per group; the commands share MQTT messages."""
    await connect(client, own_broker, id="src", name="Source", projectId=PROJECT)
    roles = [{"rolename": f"r{i}", "acls": []} for i in range(10)]
    groups = [{"groupname": f"g{i}", "roles": [{"rolename": f"r{i}"}]} for i in range(5)]
    clients = [
        {
            "username": f"c{i}",
            "password": "p",
            "roles": [{"rolename": f"r{i % 10}"}, {"rolename": f"r{(i + 1) % 10}"}],
            "groups": [{"groupname": f"g{i % 5}"}],
        }
        for i in range(60)
    ]
    before = await _counts(client)
    report = await call(
        client, "POST", f"{SRC}/import", {"roles": roles, "groups": groups, "clients": clients}
    )
    after = await _counts(client)
    assert report["errors"] == []
    assert after["getRole"] - before["getRole"] == 0
    assert after["getGroup"] - before["getGroup"] == 0
    # The export, then the groups' phase and the clients' phase.
    assert after["listRoles"] - before["listRoles"] == 3
    assert after["listGroups"] - before["listGroups"] == 3
    # 10 roles, 5 groups, 60 clients and their 180 references: a few messages, not 255.
    assert after["messages"] - before["messages"] <= 12
    c7 = await call(client, "GET", f"{SRC}/clients/c7")
    assert sorted(r["rolename"] for r in c7["roles"]) == ["r7", "r8"]
    assert [g["groupname"] for g in c7["groups"]] == ["g2"]


async def test_an_import_keeps_a_bounded_number_of_commands_in_flight(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """250 new clients with two roles and a group each (1,000 commands in their phase):
    at most IMPORT_WINDOW are waiting for the broker at any moment, so none waits behind
    the whole phase (mosquitto 2.0 runs a message's commands one by one, rewriting its
    file after each: at 1,000 clients the last of a phase sent at once was answered after
    the request timeout), and the phase still shares its messages."""
    await connect(client, own_broker, id="src", name="Source", projectId=PROJECT)
    link = client.app[connections_key].pool.require("src")
    roles = [{"rolename": f"r{i}", "acls": []} for i in range(10)]
    groups = [{"groupname": f"g{i}", "roles": []} for i in range(5)]
    clients = [
        {
            "username": f"c{i}",
            "roles": [{"rolename": f"r{i % 10}"}, {"rolename": f"r{(i + 1) % 10}"}],
            "groups": [{"groupname": f"g{i % 5}"}],
        }
        for i in range(250)
    ]
    most = 0
    done = False

    async def sample() -> None:
        nonlocal most
        while not done:
            most = max(most, len(link.control._pending))
            await asyncio.sleep(0)

    sampler = asyncio.get_running_loop().create_task(sample())
    before = await _counts(client)
    try:
        report = await call(
            client, "POST", f"{SRC}/import", {"roles": roles, "groups": groups, "clients": clients}
        )
    finally:
        done = True
        await sampler
    after = await _counts(client)
    assert report["errors"] == []
    assert len(report["commands"]) == 10 + 5 + 250
    assert 100 < most <= IMPORT_WINDOW
    # 1,015 commands and the listings: about one message per 100.
    assert after["messages"] - before["messages"] <= 30
    assert len((await call(client, "GET", f"{SRC}/clients"))["clients"]) == 251


async def test_an_import_whose_role_vanished_reports_the_client_it_could_not_create(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """The phase's listing stands in for a getRole per client: a role that is not there
    when the clients' phase begins fails their createClient before anything changes, as
    the plugin would, and the report says so."""
    await connect(client, own_broker, id="src", name="Source", projectId=PROJECT)
    await run(client, "src", [{"command": "createRole", "rolename": "present"}])
    ds = await Dynsec.of(client.app[connections_key].pool.require("src"))
    plan = await ds.plan(
        {"clients": [{"username": "c", "password": "p", "roles": [{"rolename": "present"}]}]},
        protected_client="admin",
    )
    await run(client, "src", [{"command": "deleteRole", "rolename": "present"}])
    existing = await ds._existing()
    [command] = plan.phases[CLIENTS]
    entry = await ds.send(command, existing=existing)
    assert entry == {"command": "createClient", "error": "Role not found"}
    missing = await client.get(f"{SRC}/clients/c")
    assert missing.status == 404


async def test_an_import_deleting_many_roles_lists_their_holders_once(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """Roles still held are taken from their holders before they are deleted (2.0.11 frees
    a held role); for 40 roles that is one listing, not one per role."""
    await connect(client, own_broker, id="src", name="Source", projectId=PROJECT)
    roles = [f"r{i}" for i in range(40)]
    await run(client, "src", [{"command": "createRole", "rolename": r} for r in roles])
    await run(
        client,
        "src",
        [
            {"command": "createClient", "username": "holder", "password": "p"},
            {"command": "createGroup", "groupname": "g"},
            *(
                {"command": "addClientRole", "username": "holder", "rolename": r}
                for r in roles[:10]
            ),
            *({"command": "addGroupRole", "groupname": "g", "rolename": r} for r in roles[10:20]),
        ],
    )
    before = _listings(await (await client.get("/metrics")).text())
    report = await call(client, "POST", f"{SRC}/import", {"roles": [], "groups": []})
    after = _listings(await (await client.get("/metrics")).text())
    assert report["errors"] == []
    deleted = {c["rolename"] for c in report["commands"] if c["command"] == "deleteRole"}
    assert deleted == set(roles)
    # One for the plan (the export), one to find the holders of all 40.
    assert after - before == 2
    assert (await call(client, "GET", f"{SRC}/roles"))["roles"] == ["admin"]
    assert (await call(client, "GET", f"{SRC}/clients/holder"))["roles"] == []
    assert own_broker.is_running


async def test_an_import_creates_clients_without_a_password_and_says_so(
    client: Client, own_broker: MosquittoBroker
) -> None:
    """As the plugin allows (certificate logins): created, listed in withoutPassword (an
    export's clients arrive so too), and no password logs them in until one is set."""
    await connect(client, own_broker, id="src", name="Source", projectId=PROJECT)
    document = {"clients": [{"username": "cert-only"}, {"username": "pw", "password": "pw-1"}]}
    dry = await call(client, "POST", f"{SRC}/import?dryRun=true", document)
    assert dry["withoutPassword"] == ["cert-only"]
    report = await call(client, "POST", f"{SRC}/import", document)
    assert report["errors"] == []
    assert report["withoutPassword"] == ["cert-only"]
    assert (await call(client, "GET", f"{SRC}/clients/cert-only"))["username"] == "cert-only"
    assert not await can_login(own_broker, "cert-only", "")
    assert not await can_login(own_broker, "cert-only", "anything")
    assert await can_login(own_broker, "pw", "pw-1")
    # Again: nothing to do, nobody created.
    again = await call(client, "POST", f"{SRC}/import", document)
    assert (again["changed"], again["withoutPassword"]) == (False, [])
