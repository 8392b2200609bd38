"""mmc does not cut off its own access to a broker: refusals (409) through every dynamic-security
route, ``?force=true``, and password changes of its own user kept in the store."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import asyncpg
import pytest

from mmc.appkeys import connections_key, db_key, secret_box_key
from mmc.brokers.link import BrokerLink
from mmc.brokers.own_access import NEEDED, State, subscription_covered, topic_matches
from mmc.clock import now_ms
from mmc.config import Settings
from mmc.store.connections import ConnectionRepository
from testbed.mosquitto import MosquittoBroker
from tests.conftest import BACKENDS, Client, wait_until
from tests.dynsec_helpers import call, can_login, connect, dynsec_path

pytestmark = pytest.mark.mosquitto_versions("2.0", "2.1")

DS = dynsec_path()
ENVELOPE = "/api/projects/default/brokers/plain/dynamic-security"
COMMAND = "/api/dynamic-security/plain/command"
APPLY = "/api/projects/default/dynsec/apply"
# What mmc needs on the dynamic-security API, as a role of its own.
CONTROL_ACLS = [
    {"acltype": "publishClientSend", "topic": "$CONTROL/dynamic-security/#", "allow": True},
    {"acltype": "publishClientReceive", "topic": "$CONTROL/dynamic-security/#", "allow": True},
    {"acltype": "subscribePattern", "topic": "$CONTROL/dynamic-security/#", "allow": True},
]


async def _state(client: Client) -> dict[str, Any]:
    state: dict[str, Any] = await call(client, "GET", f"{DS}/export")
    return state


async def _refused(client: Client, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """A 409 CONFLICT that leaves the broker as it was."""
    before = await _state(client)
    answer: dict[str, Any] = await call(client, method, path, body, status=409)
    assert answer["code"] == "CONFLICT"
    assert "?force=true" in answer["message"]
    assert await _state(client) == before
    return answer


async def _restart(broker: MosquittoBroker, link: BrokerLink) -> None:
    """Restart the broker; return once the link has logged in to the new process."""
    broker.restart()
    # The loop stood still during the restart: a newer "connected" is a new login.
    since = now_ms()
    await wait_until(lambda: link.connected and link.status.timestamp >= since)


async def _still_works(client: Client) -> None:
    assert "admin" in (await call(client, "GET", f"{DS}/clients"))["clients"]


async def test_own_user_cannot_be_deleted_disabled_or_given_another_client_id(
    client: Client, own_broker: MosquittoBroker
) -> None:
    await connect(client, own_broker)
    answer = await _refused(client, "DELETE", f"{DS}/clients/admin")
    assert "deletes 'admin', the user mmc logs in with" in answer["message"]
    assert answer["info"] == {"username": "admin", "connections": ["plain"]}
    answer = await _refused(client, "PUT", f"{DS}/clients/admin/disable")
    assert "disables 'admin'" in answer["message"]
    answer = await _refused(client, "PUT", f"{DS}/clients/admin/clientid", {"clientid": "x"})
    assert "client id" in answer["message"]
    await _refused(client, "PATCH", f"{DS}/clients/admin", {"clientid": "x"})
    await _refused(client, "POST", COMMAND, {"command": "deleteClient", "username": "admin"})
    await _refused(
        client, "POST", ENVELOPE, {"commands": [{"command": "disableClient", "username": "admin"}]}
    )
    # Odd types in passthrough commands reach the plugin, which refuses them (no 500).
    for odd in (
        {"command": "deleteClient", "username": ["admin"]},
        {"command": "removeGroupRole", "groupname": {"g": 1}, "rolename": 5},
        {"command": "addGroupRole", "groupname": ["g"], "rolename": None, "priority": "x"},
        {"command": "setClientPassword", "username": "admin", "password": 7},
    ):
        await call(client, "POST", COMMAND, odd, status=400)
    # The plugin reads names up to a NUL: "admin\0x" is admin (refused here with 409, or
    # with 400 by name validation; either way nothing is sent).
    for method, path, body in (
        ("DELETE", f"{DS}/clients/admin%00x", None),
        ("POST", COMMAND, {"command": "deleteClient", "username": "admin\u0000x"}),
        ("POST", COMMAND, {"command": "disableClient", "username": "admin\u0000"}),
    ):
        before = await _state(client)
        resp = await client.request(method, path, json=body)
        assert resp.status in (400, 409), await resp.text()
        assert await _state(client) == before
    # mosquitto 2.0 would change the password, then fail on the role and disconnect mmc.
    before = await _state(client)
    bad_role = {"command": "modifyClient", "username": "admin", "password": "zzz-zzz"}
    for roles in ([{"rolename": "no-such-role"}], "admin"):
        await call(client, "POST", COMMAND, {**bad_role, "roles": roles}, status=400)
    assert await _state(client) == before
    assert await can_login(own_broker, "admin", own_broker.admin_password)
    # Removing the client id is harmless; other users are not protected.
    await call(client, "PUT", f"{DS}/clients/admin/clientid", {"clientid": None})
    await call(client, "POST", f"{DS}/clients", {"username": "other", "password": "p"}, status=201)
    await call(client, "DELETE", f"{DS}/clients/other", status=204)
    await _still_works(client)


async def test_own_access_cannot_be_taken_away_through_roles_groups_or_acls(
    client: Client, own_broker: MosquittoBroker
) -> None:
    await connect(client, own_broker)
    # The admin role is the only one giving admin $CONTROL access.
    await _refused(client, "DELETE", f"{DS}/clients/admin/roles?rolename=admin")
    await _refused(client, "DELETE", f"{DS}/clients/admin/roles", {"rolename": "admin"})
    await _refused(client, "DELETE", f"{DS}/roles/admin")
    await _refused(client, "PATCH", f"{DS}/roles/admin", {"acls": []})
    await _refused(client, "PATCH", f"{DS}/clients/admin", {"roles": []})
    deny = {
        "acltype": "publishClientSend",
        "topic": "$CONTROL/dynamic-security/v1",
        "allow": False,
        "priority": 100,
    }
    answer = await _refused(client, "POST", f"{DS}/roles/admin/acls", deny)
    assert "would lose publishClientSend on $CONTROL/dynamic-security/v1" in answer["message"]
    # An ACL whose loss another one covers (the tests' admin role also allows $CONTROL/#).
    await call(
        client,
        "DELETE",
        f"{DS}/roles/admin/acls",
        {"acltype": "publishClientSend", "topic": "$CONTROL/dynamic-security/#"},
    )

    # Access through a group instead: then the client's own role may go, the group's may not.
    await call(client, "POST", f"{DS}/roles", {"rolename": "ctl", "acls": CONTROL_ACLS}, status=201)
    await call(
        client,
        "POST",
        f"{DS}/groups",
        {"groupname": "ops", "roles": [{"rolename": "ctl"}]},
        status=201,
    )
    await call(client, "POST", f"{DS}/clients/admin/groups", {"groupname": "ops"})
    await call(client, "DELETE", f"{DS}/clients/admin/roles?rolename=admin")
    await _refused(client, "DELETE", f"{DS}/groups/ops/roles?rolename=ctl")
    await _refused(client, "DELETE", f"{DS}/groups/ops")
    await _refused(client, "DELETE", f"{DS}/groups/ops/clients?username=admin")
    await _refused(client, "DELETE", f"{DS}/clients/admin/groups?groupname=ops")
    await _refused(client, "PATCH", f"{DS}/groups/ops", {"roles": []})
    await _refused(client, "DELETE", f"{DS}/roles/ctl")
    await _refused(
        client,
        "POST",
        COMMAND,
        {"command": "removeGroupRole", "groupname": "ops", "rolename": "ctl"},
    )
    # Taking away first, granting after, is refused: mosquitto disconnects mmc after the
    # first, and it could not send the second.
    reverse = {
        "commands": [
            {"command": "removeGroupClient", "groupname": "ops", "username": "admin"},
            {"command": "addClientRole", "username": "admin", "rolename": "admin"},
        ]
    }
    await _refused(client, "POST", ENVELOPE, reverse)
    # Deleting a role or group the own user has but does not need: mosquitto disconnects mmc
    # (for a role, already when mmc first takes it away from its holders); it is done.
    await call(client, "POST", f"{DS}/roles", {"rolename": "extra"}, status=201)
    await call(client, "POST", f"{DS}/groups", {"groupname": "spare"}, status=201)
    await call(client, "POST", f"{DS}/clients/admin/roles", {"rolename": "extra"})
    await call(client, "POST", f"{DS}/clients/admin/groups", {"groupname": "spare"})
    await call(client, "DELETE", f"{DS}/roles/extra", status=204)
    await call(client, "GET", f"{DS}/roles/extra", status=404)
    await call(client, "DELETE", f"{DS}/groups/spare", status=204)
    await call(client, "GET", f"{DS}/groups/spare", status=404)
    admin = await call(client, "GET", f"{DS}/clients/admin")
    assert admin["roles"] == []
    assert admin["groups"] == [{"groupname": "ops"}]
    # A batch that grants first and takes away after keeps access: allowed.
    swap = {
        "commands": [
            {"command": "addClientRole", "username": "admin", "rolename": "admin"},
            {"command": "removeGroupClient", "groupname": "ops", "username": "admin"},
        ]
    }
    assert await call(client, "POST", ENVELOPE, swap) == {
        "responses": [{"command": "addClientRole"}, {"command": "removeGroupClient"}]
    }
    await _still_works(client)


async def test_apply_refuses_per_broker_and_force_goes_through(
    client: Client, own_broker: MosquittoBroker
) -> None:
    await connect(client, own_broker)
    body = {"commands": [{"command": "removeClientRole", "username": "admin", "rolename": "admin"}]}
    before = await _state(client)
    answer = await call(client, "POST", APPLY, body, status=207)
    assert answer["plain"]["status"] == 409
    assert answer["plain"]["code"] == "CONFLICT"
    assert await _state(client) == before
    # Import never touches the own user (kept): reported as skipped, nothing sent.
    document = {"clients": [{"username": "admin", "roles": []}]}
    answer = await call(client, "POST", APPLY, {"import": document}, status=207)
    assert answer["plain"]["status"] == 200
    assert answer["plain"]["commands"] == []
    assert await _state(client) == before

    forced = await call(client, "POST", f"{APPLY}?force=true", body, status=207)
    assert forced["plain"]["status"] == 200
    assert forced["plain"]["responses"] == [{"command": "removeClientRole"}]


async def test_force_deletes_the_own_user(client: Client, own_broker: MosquittoBroker) -> None:
    await connect(client, own_broker)
    bad = await call(client, "DELETE", f"{DS}/clients/admin?force=maybe", status=400)
    assert bad["code"] == "INVALID"
    await call(client, "DELETE", f"{DS}/clients/admin?force=true", status=204)
    assert not await can_login(own_broker, "admin", own_broker.admin_password)


async def test_every_connection_to_the_broker_is_protected(
    client: Client, own_broker: MosquittoBroker
) -> None:
    await connect(client, own_broker)
    await call(client, "POST", f"{DS}/roles", {"rolename": "ctl", "acls": CONTROL_ACLS}, status=201)
    second = {"username": "watcher", "password": "watcher-pass", "roles": [{"rolename": "ctl"}]}
    await call(client, "POST", f"{DS}/clients", second, status=201)
    await connect(
        client,
        own_broker,
        id="second",
        name="Second",
        credentials={"username": "watcher", "password": "watcher-pass", "clientId": "watch-1"},
    )
    answer = await _refused(client, "DELETE", f"{DS}/clients/watcher")
    assert answer["info"] == {"username": "watcher", "connections": ["second"]}
    await _refused(client, "DELETE", f"{DS}/roles/ctl")
    # The client id that connection uses (fixed by the user) may be set; another may not.
    await _refused(client, "PUT", f"{DS}/clients/watcher/clientid", {"clientid": "watch-2"})
    await call(client, "PUT", f"{DS}/clients/watcher/clientid", {"clientid": "watch-1"})
    link = client.app[connections_key].pool.require("second")
    await wait_until(lambda: link.connected)
    assert "watcher" in (await call(client, "GET", f"{dynsec_path('second')}/clients"))["clients"]

    # Forced, in the query string beside the membership's key.
    await _refused(client, "DELETE", f"{DS}/clients/watcher/roles?rolename=ctl")
    answer = await call(client, "DELETE", f"{DS}/clients/watcher/roles?rolename=ctl&force=true")
    assert answer["roles"] == []
    await call(client, "POST", f"{DS}/clients/watcher/roles", {"rolename": "ctl"})
    await wait_until(lambda: link.connected)

    # An import through this connection leaves the other connection's user alone too.
    document = {"clients": [{"username": "admin", "roles": [{"rolename": "admin"}]}]}
    report = await call(client, "POST", f"{DS}/import", document)
    assert {"username": "watcher", "action": "delete"}.items() <= report["skipped"][0].items()
    assert report["commands"] == []
    await call(client, "GET", f"{DS}/clients/watcher")

    # The other connection's password, changed through this one, is stored for it.
    await call(client, "PUT", f"{DS}/clients/watcher/password", {"password": "watcher-new"})
    repo = ConnectionRepository(client.app[db_key], client.app[secret_box_key])
    record = await repo.get("second")
    assert record is not None
    assert record.password == "watcher-new"
    await _restart(own_broker, link)
    assert "watcher" in (await call(client, "GET", f"{dynsec_path('second')}/clients"))["clients"]


def test_access_is_decided_as_the_plugin_does() -> None:
    assert topic_matches("$CONTROL/dynamic-security/#", "$CONTROL/dynamic-security/v1")
    assert topic_matches("$CONTROL/#", "$CONTROL")
    assert not topic_matches("#", "$CONTROL/dynamic-security/v1")
    assert not topic_matches("+/dynamic-security/v1", "$CONTROL/dynamic-security/v1")
    assert subscription_covered("#", "$CONTROL/dynamic-security/v1/response")
    assert subscription_covered("$CONTROL/+/v1/#", "$CONTROL/dynamic-security/v1/response")
    assert not subscription_covered("$CONTROL/dynamic-security", "$CONTROL/dynamic-security/v1")

    def role(allow: bool, priority: int = 0) -> dict[str, Any]:
        return {
            "acls": [
                {"acltype": t.lower(), "topic": "$CONTROL/#", "priority": priority, "allow": allow}
                for t in ("publishClientSend", "publishClientReceive", "subscribePattern")
            ]
        }

    client = {"clientid": None, "disabled": False, "roles": {"a": 1}, "groups": {"g": 5}}
    state = State(
        clients={"u": client},
        groups={"g": {"roles": {"deny": 9}}},
        roles={"a": role(True), "deny": role(False)},
    )
    # The client's own roles come before any group's, whatever the priorities.
    assert state.grants("u") == frozenset(NEEDED)
    state.apply({"command": "removeClientRole", "username": "u", "rolename": "a"})
    assert state.grants("u") == frozenset()
    # Among a client's roles, the higher priority decides.
    state.apply({"command": "addClientRole", "username": "u", "rolename": "a", "priority": 1})
    state.apply({"command": "addClientRole", "username": "u", "rolename": "deny", "priority": 2})
    assert state.grants("u") == frozenset()
    # Equal priorities: by role name ("a" before "deny").
    state.apply({"command": "removeClientRole", "username": "u", "rolename": "deny"})
    state.apply({"command": "addClientRole", "username": "u", "rolename": "deny", "priority": 1})
    assert state.grants("u") == frozenset(NEEDED)
    # Inside a role, the ACL of higher priority decides; a literal subscription comes first.
    state.apply(
        {
            "command": "addRoleACL",
            "rolename": "a",
            "acltype": "publishClientSend",
            "topic": "$CONTROL/dynamic-security/v1",
            "allow": False,
            "priority": 5,
        }
    )
    assert ("publishClientSend", "$CONTROL/dynamic-security/v1") not in state.grants("u")
    state.apply(
        {
            "command": "addRoleACL",
            "rolename": "a",
            "acltype": "subscribeLiteral",
            "topic": "$CONTROL/dynamic-security/v1/response",
            "allow": False,
            "priority": -10,
        }
    )
    assert ("subscribe", "$CONTROL/dynamic-security/v1/response") not in state.grants("u")
    # Deleting a role takes it from every holder; a group's membership follows modifyGroup.
    state.apply({"command": "deleteRole", "rolename": "a"})
    assert state.clients["u"] is not None
    assert state.clients["u"]["roles"] == {"deny": 1}
    state.apply({"command": "modifyGroup", "groupname": "g", "clients": []})
    assert state.clients["u"]["groups"] == {}


@pytest.mark.backends(*BACKENDS)
async def test_own_password_change_is_stored_and_the_link_logs_back_in(
    client: Client, own_broker: MosquittoBroker
) -> None:
    await connect(client, own_broker)
    repo = ConnectionRepository(client.app[db_key], client.app[secret_box_key])
    link = client.app[connections_key].pool.require("plain")

    async def stored_password() -> str | None:
        record = await repo.get("plain")
        assert record is not None
        return record.password

    async def after_broker_restart() -> None:
        await _restart(own_broker, link)
        await _still_works(client)

    answer = await call(client, "PUT", f"{DS}/clients/admin/password", {"password": "second"})
    assert answer["username"] == "admin"
    assert await stored_password() == "second"
    assert await can_login(own_broker, "admin", "second")
    await after_broker_restart()

    # Through the plugin's own protocol too, in a batch.
    answer = await call(
        client,
        "POST",
        ENVELOPE,
        {
            "commands": [
                {"command": "getClient", "username": "admin"},
                {"command": "setClientPassword", "username": "admin", "password": "third"},
                {"command": "listRoles"},
            ]
        },
    )
    assert [r["command"] for r in answer["responses"]] == [
        "getClient",
        "setClientPassword",
        "listRoles",
    ]
    assert "error" not in answer["responses"][1]
    assert await stored_password() == "third"
    await after_broker_restart()

    # modifyClient may carry a password too.
    answer = await call(
        client, "PATCH", f"{DS}/clients/admin", {"password": "fourth", "textname": "mmc"}
    )
    assert answer["textname"] == "mmc"
    assert await stored_password() == "fourth"
    await after_broker_restart()

    # The broker refuses the change: nothing is stored, the link keeps the old password.
    refused = await call(
        client,
        "POST",
        COMMAND,
        {"command": "setClientPassword", "username": "admin", "password": ""},
        status=400,
    )
    assert refused["message"] == "Empty password is not allowed"
    assert await stored_password() == "fourth"
    assert link.record.password == "fourth"
    await after_broker_restart()

    # The plugin keeps a password up to a NUL, and so does mmc (unless validation refuses
    # the NUL outright: then nothing changes).
    nul = {"command": "setClientPassword", "username": "admin", "password": "fifth\u0000tail"}
    resp = await client.post(COMMAND, json=nul)
    assert resp.status in (200, 400), await resp.text()
    expected = "fifth" if resp.status == 200 else "fourth"
    assert await stored_password() == expected
    await after_broker_restart()


async def _refuse_connection_updates(settings: Settings, database_url: str | None) -> None:
    """Make the store refuse every change of a connection, as a broken store would."""
    if database_url is None:
        with contextlib.closing(sqlite3.connect(settings.data_dir / "mmc.sqlite3")) as db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE UPDATE ON connections "
                "BEGIN INSERT INTO no_such_table VALUES (1); END"
            )
            db.commit()
        return
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'read-only for the test' USING ERRCODE = 'read_only_sql_transaction';"
            " END $$ LANGUAGE plpgsql;"
            "CREATE TRIGGER refuse BEFORE UPDATE ON connections "
            "FOR EACH ROW EXECUTE FUNCTION refuse();"
        )
    finally:
        await conn.close()


@pytest.mark.backends(*BACKENDS)
async def test_a_password_the_store_cannot_keep_is_reported_and_used_until_restart(
    client: Client, own_broker: MosquittoBroker, settings: Settings, database_url: str | None
) -> None:
    await connect(client, own_broker)
    link = client.app[connections_key].pool.require("plain")
    await _refuse_connection_updates(settings, database_url)
    answer = await call(
        client, "PUT", f"{DS}/clients/admin/password", {"password": "unsaved"}, status=503
    )
    assert answer["code"] == "STORE_UNAVAILABLE"
    assert "The broker took the new password of 'admin'" in answer["message"]
    assert "This process keeps using it" in answer["message"]
    repo = ConnectionRepository(client.app[db_key], client.app[secret_box_key])
    record = await repo.get("plain")
    assert record is not None
    assert record.password == own_broker.admin_password
    assert link.record.password == "unsaved"
    await _restart(own_broker, link)
    await _still_works(client)
