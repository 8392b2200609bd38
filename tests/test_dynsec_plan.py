"""The import algorithm as pure functions: export normalisation and the phased plan."""

from __future__ import annotations

from typing import Any

import pytest

from mmc.brokers.dynsec_plan import (
    CLIENTS,
    DELETE_GROUPS,
    DELETE_ROLES,
    GROUPS,
    REMOVE,
    ROLES,
    SETTINGS,
    PlanError,
    document_from,
    plan_import,
    summarize,
)

ADMIN_ACL = {"acltype": "publishClientSend", "topic": "$CONTROL/#", "priority": 0, "allow": True}


def base() -> dict[str, Any]:
    """A broker as ``mosquitto_ctrl dynsec init`` leaves it."""
    return {
        "defaultACLAccess": [
            {"acltype": "publishClientSend", "allow": False},
            {"acltype": "publishClientReceive", "allow": True},
            {"acltype": "subscribe", "allow": False},
            {"acltype": "unsubscribe", "allow": True},
        ],
        "anonymousGroup": None,
        "roles": [{"rolename": "admin", "acls": [ADMIN_ACL]}],
        "groups": [],
        "clients": [{"username": "admin", "roles": [{"rolename": "admin"}], "groups": []}],
    }


def phase_of(plan: Any, command: str, **match: Any) -> int:
    for i, phase in enumerate(plan.phases):
        for cmd in phase:
            if cmd["command"] == command and all(cmd.get(k) == v for k, v in match.items()):
                return i
    raise AssertionError(f"{command} {match} not planned: {plan.phases}")


def test_document_from_normalises_the_plugin_output() -> None:
    doc = document_from(
        clients=[
            {
                "username": "u",
                "textname": "",
                "clientid": "c",
                "roles": [{"rolename": "r", "priority": 3}],
                "groups": [{"groupname": "g"}],
                "connections": [{"address": "127.0.0.1"}],
            },
            {"username": "v", "disabled": True, "roles": [], "groups": []},
        ],
        groups=[{"groupname": "g", "clients": [{"username": "u"}], "roles": [{"rolename": "r"}]}],
        roles=[{"rolename": "r", "textname": "R", "acls": [ADMIN_ACL]}],
        default_acls=[{"acltype": "subscribe", "allow": True}],
        anonymous_group="",
    )
    assert doc == {
        "defaultACLAccess": [{"acltype": "subscribe", "allow": True}],
        "anonymousGroup": None,
        "roles": [{"rolename": "r", "textname": "R", "acls": [ADMIN_ACL]}],
        "groups": [{"groupname": "g", "roles": [{"rolename": "r"}]}],
        "clients": [
            {
                "username": "u",
                "clientid": "c",
                "roles": [{"rolename": "r", "priority": 3}],
                "groups": [{"groupname": "g"}],
            },
            {"username": "v", "disabled": True, "roles": [], "groups": []},
        ],
    }


def test_same_document_plans_nothing() -> None:
    plan = plan_import(base(), base(), protected_client="admin")
    assert plan.commands == []
    assert plan.skipped == []


def test_creates_roles_before_groups_before_clients() -> None:
    desired = base()
    desired["roles"].append({"rolename": "r", "acls": [ADMIN_ACL]})
    desired["groups"].append({"groupname": "g", "roles": [{"rolename": "r", "priority": 2}]})
    desired["clients"].append(
        {
            "username": "u",
            "password": "secret",
            "disabled": True,
            "roles": [{"rolename": "r"}],
            "groups": [{"groupname": "g"}],
        }
    )
    plan = plan_import(base(), desired, protected_client="admin")
    assert phase_of(plan, "createRole", rolename="r") == ROLES
    assert phase_of(plan, "createGroup", groupname="g") == GROUPS
    assert phase_of(plan, "createClient", username="u") == CLIENTS
    # disabling after the client exists
    assert phase_of(plan, "disableClient", username="u") == SETTINGS
    assert ROLES < GROUPS < CLIENTS < SETTINGS
    [create] = [c for c in plan.commands if c["command"] == "createClient"]
    assert create["password"] == "secret"
    assert "password" not in summarize(create)


def test_changed_acl_and_priority_are_removed_then_added() -> None:
    current = base()
    current["roles"].append(
        {"rolename": "r", "acls": [{**ADMIN_ACL, "topic": "a/#", "allow": False}]}
    )
    current["groups"].append({"groupname": "g", "roles": [{"rolename": "r", "priority": 1}]})
    desired = base()
    desired["roles"].append({"rolename": "r", "acls": [{**ADMIN_ACL, "topic": "a/#"}]})
    desired["groups"].append({"groupname": "g", "roles": [{"rolename": "r", "priority": 5}]})
    plan = plan_import(current, desired)
    assert phase_of(plan, "removeRoleACL", rolename="r", topic="a/#") == REMOVE
    assert phase_of(plan, "addRoleACL", rolename="r", topic="a/#", allow=True) == ROLES
    assert phase_of(plan, "removeGroupRole", groupname="g", rolename="r") == REMOVE
    assert phase_of(plan, "addGroupRole", groupname="g", rolename="r", priority=5) == GROUPS
    assert len(plan.commands) == 4


def test_empty_text_equals_absent_and_existing_password_is_ignored() -> None:
    current = base()
    current["clients"].append(
        {"username": "u", "textname": "", "clientid": "", "roles": [], "groups": []}
    )
    desired = base()
    desired["clients"].append({"username": "u", "password": "new", "roles": [], "groups": []})
    assert plan_import(current, desired).commands == []


def test_deleted_role_is_detached_from_unmanaged_clients_first() -> None:
    current = base()
    current["roles"].append({"rolename": "r", "acls": []})
    current["clients"].append({"username": "u", "roles": [{"rolename": "r"}], "groups": []})
    desired = {"roles": base()["roles"]}  # clients not managed by this document
    plan = plan_import(current, desired)
    assert phase_of(plan, "removeClientRole", username="u", rolename="r") == REMOVE
    assert phase_of(plan, "deleteRole", rolename="r") == DELETE_ROLES


def test_anonymous_group_moves_before_its_old_group_is_deleted() -> None:
    current = base()
    current["groups"] = [{"groupname": "old", "roles": []}]
    current["anonymousGroup"] = "old"
    desired = base()
    desired["groups"] = [{"groupname": "new", "roles": []}]
    desired["anonymousGroup"] = "new"
    plan = plan_import(current, desired)
    assert phase_of(plan, "setAnonymousGroup", groupname="new") == SETTINGS
    assert phase_of(plan, "deleteGroup", groupname="old") == DELETE_GROUPS
    assert SETTINGS < DELETE_GROUPS

    # Without a new anonymous group the old one cannot go.
    desired["anonymousGroup"] = None
    plan = plan_import(current, desired)
    assert all(c.get("groupname") != "old" for c in plan.commands)
    assert plan.skipped == [
        {
            "groupname": "old",
            "action": "delete",
            "reason": "it is the anonymous group, which cannot be deleted",
        }
    ]


def test_the_client_mmc_uses_and_what_it_depends_on_are_never_touched() -> None:
    desired = base()
    desired["clients"] = []
    desired["roles"] = [{"rolename": "admin", "acls": []}]
    plan = plan_import(base(), desired, protected_client="admin")
    assert plan.commands == []
    assert {(s.get("username") or s.get("rolename"), s["action"]) for s in plan.skipped} == {
        ("admin", "delete"),
        ("admin", "change"),
    }


def test_unusable_documents_are_refused_before_anything_is_planned() -> None:
    desired = base()
    desired["clients"].append(
        {"username": "nopass", "roles": [{"rolename": "ghost"}], "groups": []}
    )
    desired["anonymousGroup"] = "nowhere"
    with pytest.raises(PlanError) as caught:
        plan_import(base(), desired)
    problems = caught.value.problems
    assert set(problems) == {"clients.nopass", "anonymousGroup"}
    # The missing role, not the missing password: the plugin creates clients without one.
    assert problems["clients.nopass"] == [p for p in problems["clients.nopass"] if "'ghost'" in p]


def test_a_new_client_without_a_password_is_created_without_one() -> None:
    desired = base()
    desired["clients"].append({"username": "cert-only", "roles": [], "groups": []})
    plan = plan_import(base(), desired)
    assert plan.commands == [
        {"command": "createClient", "username": "cert-only", "roles": [], "groups": []}
    ]


def test_allowwildcardsubs_is_exported_as_reported_and_absent_means_true() -> None:
    roles: list[dict[str, Any]] = [
        {"rolename": "narrow", "allowwildcardsubs": False},
        {"rolename": "wide", "allowwildcardsubs": True},
        {"rolename": "v20"},
    ]
    doc = document_from(clients=[], groups=[], roles=roles, default_acls=[], anonymous_group=None)
    assert [r.get("allowwildcardsubs") for r in doc["roles"]] == [False, True, None]
    assert "allowwildcardsubs" not in doc["roles"][2]

    current = {**base(), "roles": [*base()["roles"], *doc["roles"]]}
    # A 2.0 document (field absent) on 2.1's roles: true, so only "narrow" changes.
    wanted = {**current, "roles": [{k: v for k, v in r.items() if k != "allowwildcardsubs"}
                                   for r in current["roles"]]}  # fmt: skip
    plan = plan_import(current, wanted)
    assert plan.commands == [
        {"command": "modifyRole", "rolename": "narrow", "allowwildcardsubs": True}
    ]
    assert phase_of(plan, "modifyRole") == ROLES
    assert plan_import(current, current).commands == []
    # Created false only when false: 2.0's plugin is never sent the field otherwise.
    created = plan_import(base(), {"roles": [*base()["roles"], *doc["roles"]]})
    assert {c["rolename"]: c.get("allowwildcardsubs") for c in created.commands} == {
        "narrow": False,
        "wide": None,
        "v20": None,
    }
