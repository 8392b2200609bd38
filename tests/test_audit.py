"""The audit trail: every change recorded with who, where, what, outcome; admins query it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mmc.appkeys import audit_key, db_key
from mmc.clock import now_ms
from mmc.config import Settings
from mmc.store import migrations, open_database
from mmc.store.audit import AuditEntry, AuditQuery, AuditRepository
from testbed.mosquitto import MosquittoBroker
from tests.conftest import ADMIN_PASSWORD, BACKENDS, Client, MakeClient, create_token, plain_body
from tests.dynsec_helpers import connect

pytestmark = pytest.mark.backends(*BACKENDS)


async def _entries(client: Client, **params: Any) -> list[dict[str, Any]]:
    resp = await client.get("/api/audit", params={k: str(v) for k, v in params.items()})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    entries: list[dict[str, Any]] = body["entries"]
    return entries


async def test_changes_are_recorded_with_who_where_what_and_outcome(
    client: Client, anon_client: Client, broker: MosquittoBroker
) -> None:
    password = "broker-secret-in-a-body-4711"
    body = plain_body(broker, credentials={"username": "u", "password": password})
    resp = await client.post("/api/connections", json=body, headers={"X-Request-ID": "req-1"})
    assert resp.status in (200, 202)
    created_status = resp.status
    assert (await client.delete("/api/connections/nope")).status == 404
    resp = await client.post("/api/tokens", json={"name": "bot", "role": "viewer"})
    token = (await resp.json())["token"]
    viewer = {"Authorization": f"Bearer {token}"}
    assert (await anon_client.delete("/api/connections/plain", headers=viewer)).status == 403
    bad = {"username": "admin", "password": "wrong-password-9"}
    assert (await anon_client.post("/auth", json=bad)).status == 401
    assert (await client.get("/api/connections")).status == 200  # reads are not audited
    assert (await client.post("/api/no-such-route", json={})).status == 404  # nor non-routes

    entries = await _entries(client)
    # Newest first; the fixture's own login and token creation come last.
    login_failed, denied, token_created, not_found, created = entries[:5]
    assert created["requestId"] == "req-1"
    assert created["method"] == "POST"
    assert created["route"] == "/api/connections"
    assert created["user"].startswith("token:")
    assert created["authMethod"] == "token"
    assert created["client"] == "127.0.0.1"
    assert created["outcome"] == "success"
    assert created["status"] == created_status
    assert isinstance(created["durationMs"], int)
    assert created["target"] == {}
    assert not_found["route"] == "/api/connections/{connectionId}"
    assert not_found["target"] == {"connectionId": "nope"}
    assert (not_found["status"], not_found["outcome"], not_found["errorCode"]) == (
        404,
        "failure",
        "NOT_FOUND",
    )
    assert token_created["status"] == 201
    assert (denied["user"], denied["status"], denied["outcome"], denied["errorCode"]) == (
        "token:bot",
        403,
        "denied",
        "NOT_ALLOWED",
    )
    assert (login_failed["route"], login_failed["user"], login_failed["authMethod"]) == (
        "/auth",
        "admin",
        "password",
    )
    assert login_failed["outcome"] == "denied"
    assert [e["route"] for e in entries[5:]] == ["/api/tokens", "/auth"]

    # No body, so no secret: neither in the answers nor in the database file.
    text = await (await client.get("/api/audit")).text()
    for secret in (password, token, "wrong-password-9", ADMIN_PASSWORD):
        assert secret not in text
    db = client.app[db_key]
    rows = await db.fetch_all("SELECT * FROM audit")
    dumped = repr([tuple(r) for r in rows])
    for secret in (password, token, "wrong-password-9", ADMIN_PASSWORD):
        assert secret not in dumped


async def test_filters_and_cursor_pagination(client: Client) -> None:
    for i in range(7):
        body = {"username": f"user{i}", "password": "password-123", "roles": ["viewer"]}
        assert (await client.post("/api/user-management/users", json=body)).status == 201
    assert (await client.delete("/api/user-management/users/user0")).status == 204
    assert (await client.delete("/api/user-management/users/user0")).status == 404

    route = "/api/user-management/users"
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"route": route, "limit": 3}
        if cursor:
            params["cursor"] = cursor
        resp = await client.get("/api/audit", params=params)
        page = await resp.json()
        pages += 1
        seen += [e["id"] for e in page["entries"]]
        assert all(e["route"] == route for e in page["entries"])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == 7
    assert seen == sorted(seen, reverse=True)

    [failed] = await _entries(client, outcome="failure")
    assert (failed["method"], failed["status"], failed["target"]) == (
        "DELETE",
        404,
        {"username": "user0"},
    )
    assert len(await _entries(client, method="DELETE")) == 2
    assert len(await _entries(client, status=204)) == 1
    assert len(await _entries(client, user="nobody")) == 0
    everything = await _entries(client)
    # The fixture's login and token creation were the session's (user admin); the rest, 9,
    # the token's.
    assert len(await _entries(client, user=everything[0]["user"])) == 9
    assert len(await _entries(client, user="admin")) == 2

    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    assert await _entries(client, since=future) == []
    assert len(await _entries(client, since=past, until=future)) == len(everything)
    assert await _entries(client, until=past) == []

    for bad in (
        {"cursor": "not-a-cursor"},
        {"limit": 0},
        {"limit": 1001},
        {"outcome": "maybe"},
        {"since": "yesterday"},
        {"since": "2024-01-01T00:00:00"},  # no time zone
        {"method": "GET"},
        {"page": 2},
    ):
        resp = await client.get("/api/audit", params=bad)
        assert resp.status == 400, bad
        assert (await resp.json())["code"] == "INVALID"


async def test_retention_caps_rows_and_age(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(settings.replace(audit_max_rows=5, audit_retention_days=30))
    repo = client.app[audit_key]
    old = AuditEntry("old", "x", "token", "127.0.0.1", "POST", "/api/tokens", {}, 201, None, 1)
    await repo.insert(old.__class__(**{**old.__dict__, "at": now_ms() - 31 * 86_400_000}))
    for i in range(8):
        await client.post("/api/tokens", json={"name": f"t{i}", "role": "viewer"})
    assert await repo.count() == 5
    entries = await _entries(client)
    assert "old" not in {e["requestId"] for e in entries}
    assert [e["status"] for e in entries] == [201] * 5


async def test_a_failed_audit_write_does_not_fail_the_change(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    # Fail-open (see mmc.web.audit): the change happened, so its answer stands; the entry
    # goes to the log at ERROR level and to a metric to alert on.
    db = client.app[db_key]
    async with db.transaction() as tx:
        await tx.execute("ALTER TABLE audit RENAME TO audit_away")
    caplog.set_level(logging.ERROR, logger="mmc.web.audit")
    resp = await client.post("/api/tokens", json={"name": "still-works", "role": "viewer"})
    assert resp.status == 201
    assert "still-works" in {t["name"] for t in await (await client.get("/api/tokens")).json()}
    assert "audit entry could not be stored" in caplog.text
    assert "POST /api/tokens" in caplog.text
    metrics = await (await client.get("/metrics")).text()
    assert "mmc_audit_write_failures_total 1.0" in metrics
    async with db.transaction() as tx:
        await tx.execute("ALTER TABLE audit_away RENAME TO audit")
    before = await client.app[audit_key].count()
    assert (
        await client.post("/api/tokens", json={"name": "audited", "role": "viewer"})
    ).status == 201
    assert await client.app[audit_key].count() == before + 1


async def test_only_admins_read_the_trail(client: Client) -> None:
    token = await create_token(client, "editor")
    resp = await client.get("/api/audit", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 403


async def test_strangers_cannot_flush_the_trail(
    make_client: MakeClient, settings: Settings
) -> None:
    """400 anonymous POST /api/projects with the cap at 200 evicted every admin entry:
    strangers' entries have a cap of their own and evict only each other."""
    capped = settings.replace(audit_max_rows=200, audit_max_refusals=20)
    client = await make_client(capped)
    anon = await make_client(capped, authenticated=False)
    for i in range(3):
        resp = await client.post("/api/projects", json={"id": f"p{i}", "name": f"P{i}"})
        assert resp.status == 201
    mine = [e for e in await _entries(client, limit=1000) if e["user"] is not None]
    assert len(mine) == 5  # the fixture's login and token, the three projects

    for i in range(400):
        resp = await anon.post("/api/projects", json={"id": f"x{i}", "name": "x"})
        assert resp.status == 401
    bad = {"username": "admin", "password": "wrong-password-9"}
    for _ in range(3):
        assert (await anon.post("/auth", json=bad)).status in (401, 429)
    # Logging out without a session is a stranger's request too.
    assert (await anon.post("/logout")).status == 200

    entries = await _entries(client, limit=1000)
    kept = [e for e in entries if e not in mine]
    # Every entry of a logged-in user is still there...
    assert [e for e in entries if e in mine] == mine
    # ...and the strangers' entries are the 20 newest of theirs.
    assert len(kept) == 20
    assert kept[0]["route"] == "/logout"
    assert [e["route"] for e in kept[1:4]] == ["/auth"] * 3
    assert all(e["route"] == "/api/projects" and e["status"] == 401 for e in kept[4:])
    assert await client.app[audit_key].count() == 25

    # The logged-in class keeps its own cap, counted apart from the strangers'.
    for i in range(3, 203):
        resp = await client.post("/api/projects", json={"id": f"p{i}", "name": f"P{i}"})
        assert resp.status == 201
    entries = await _entries(client, limit=1000)
    assert len(entries) == 200 + 20
    # The strangers' entries are untouched by the users' cap.
    assert [e for e in entries if e in kept] == kept


async def test_strangers_entries_are_not_kept_with_a_cap_of_zero(
    make_client: MakeClient, settings: Settings
) -> None:
    capped = settings.replace(audit_max_refusals=0)
    client = await make_client(capped)
    anon = await make_client(capped, authenticated=False)
    before = await client.app[audit_key].count()
    assert (await anon.post("/api/projects", json={"id": "x", "name": "x"})).status == 401
    assert (await client.post("/api/projects", json={"id": "y", "name": "y"})).status == 201
    assert await client.app[audit_key].count() == before + 1


async def test_group_commit_numbers_both_classes(
    make_client: MakeClient, settings: Settings
) -> None:
    # Entries arriving together are written in one transaction, each class numbered on.
    client = await make_client(settings.replace(audit_max_rows=10, audit_max_refusals=4))
    repo = client.app[audit_key]

    def entry(i: int, user: str | None) -> AuditEntry:
        return AuditEntry(
            f"r{i}",
            user,
            "token" if user else None,
            "127.0.0.1",
            "POST",
            "/x",
            {},
            401 if user is None else 201,
            None,
            1,
        )

    await asyncio.gather(*(repo.insert(entry(i, None if i % 2 else "u")) for i in range(30)))
    rows = await client.app[db_key].fetch_all(
        "SELECT unauthenticated, COUNT(*), MAX(seq) - MIN(seq) FROM audit "
        "GROUP BY unauthenticated ORDER BY unauthenticated"
    )
    assert [tuple(r) for r in rows] == [(0, 10, 9), (1, 4, 3)]
    kept = {e.request_id for e in await repo.query(AuditQuery(limit=100))}
    assert {"r29", "r27", "r25", "r23"} <= kept
    assert {"r28", "r26", "r10"} <= kept
    assert "r21" not in kept


async def test_entries_stored_before_the_split_are_classified(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written by an mmc without the strangers' cap: its rows are sorted into the
    two classes by the migration, numbered on, and capped from the next insert."""
    first_new = next(
        i for i, m in enumerate(migrations.MIGRATIONS) if "unauthenticated" in m.sqlite
    )
    columns = (
        "at, request_id, username, auth_method, client, method, route, target, status, "
        "outcome, error_code, duration_ms"
    )
    old_rows = [
        ("admin", "session", 201, "success"),
        (None, None, 401, "denied"),  # anonymous refusal
        ("admin", "password", 401, "denied"),  # failed login
        ("admin", "password", 200, "success"),  # login
        ("token:ci", "token", 403, "denied"),  # a logged-in user refused
    ]
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:first_new])
        async with open_database(settings) as db, db.transaction() as tx:
            for user, method, status, outcome in old_rows:
                await tx.execute(
                    f"INSERT INTO audit ({columns}) "  # noqa: S608
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        now_ms(),
                        "old",
                        user,
                        method,
                        "1.2.3.4",
                        "POST",
                        "/x",
                        "{}",
                        status,
                        outcome,
                        None,
                        1,
                    ),
                )
    async with open_database(settings) as db:
        rows = await db.fetch_all("SELECT unauthenticated, seq, id FROM audit ORDER BY id")
        assert [r[0] for r in rows] == [0, 1, 1, 0, 0]
        assert all(r[1] == r[2] for r in rows)
        repo = AuditRepository(db, max_rows=2, max_refusals=1)
        await repo.insert(
            AuditEntry("new", "admin", "session", "h", "POST", "/y", {}, 201, None, 1)
        )
        await repo.insert(AuditEntry("anon", None, None, "h", "POST", "/y", {}, 401, None, 1))
        kept = [(e.request_id, e.username, e.status) for e in await repo.query(AuditQuery())]
        assert kept == [("anon", None, 401), ("new", "admin", 201), ("old", "token:ci", 403)]


COMMAND = "/api/dynamic-security/plain/command"
ENVELOPE = "/api/projects/default/brokers/plain/dynamic-security"
READ_ONLY = {"commands": [{"command": "listClients"}, {"command": "getRole", "rolename": "r"}]}


@contextlib.asynccontextmanager
async def _audit_blocked(client: Client) -> AsyncIterator[None]:
    """Nothing can be added to the audit trail inside (a write transaction held open on
    SQLite; the table locked against inserts on PostgreSQL); reads of the store still go."""
    db = client.app[db_key]
    async with db.transaction() as tx:
        if db.backend == "postgresql":
            await tx.execute("LOCK TABLE audit IN EXCLUSIVE MODE")
        yield


async def test_passthrough_reads_are_not_recorded_and_do_not_wait_for_the_store(
    client: Client, broker: MosquittoBroker
) -> None:
    await connect(client, broker)
    repo = client.app[audit_key]
    before = await repo.count()
    # Classified by command, not by method: a POST of reads only is a read (any case, as
    # the plugin matches names).
    assert (await client.post(COMMAND, json={"command": "listClients"})).status == 200
    assert (
        await client.post(COMMAND, json={"command": "GETCLIENT", "username": "x"})
    ).status == 404
    assert (await client.post(ENVELOPE, json=READ_ONLY)).status == 200
    apply = {"commands": [{"command": "listRoles"}]}
    assert (await client.post("/api/projects/default/dynsec/apply", json=apply)).status == 207
    assert await repo.count() == before

    # With the trail blocked, a read still answers at once; a change waits for its row.
    async with _audit_blocked(client):
        resp = await asyncio.wait_for(client.post(ENVELOPE, json=READ_ONLY), 5)
        assert resp.status == 200
        assert [r["command"] for r in (await resp.json())["responses"]] == [
            "listClients",
            "getRole",
        ]
        mixed = {
            "commands": [
                {"command": "listClients"},
                {"command": "createRole", "rolename": "audited-role"},
            ]
        }
        write = asyncio.ensure_future(client.post(ENVELOPE, json=mixed))
        await asyncio.sleep(0.5)
        assert not write.done()  # answered only once its row is stored
    resp = await asyncio.wait_for(write, 10)
    assert resp.status == 200, await resp.text()
    assert await repo.count() == before + 1
    [entry] = await _entries(client, limit=1)
    assert (entry["method"], entry["route"], entry["status"]) == (
        "POST",
        "/api/projects/{projectId}/brokers/{brokerId}/dynamic-security",
        200,
    )
    # An unknown command might change something: recorded.
    assert (await client.post(COMMAND, json={"command": "noSuchCommand"})).status >= 400
    assert await repo.count() == before + 2
