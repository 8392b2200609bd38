"""`mmc import-mmc`: a Cedalo MMC's config.json and users file, migrated into the store by
the real command, on both backends; then mmc serves the migrated connections (real brokers,
TLS included) and users."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from mmc.auth.passwords import dummy_hash, hash_password, usable, verify_or_dummy
from mmc.config import Settings
from mmc.crypto import SecretBox, load_secret_keys
from mmc.store import open_database
from mmc.store.connections import ConnectionRepository
from mmc.store.users import UserRepository
from testbed.mosquitto import MosquittoBroker, TlsMaterial
from tests.conftest import (
    ADMIN_PASSWORD,
    SECRET_KEY,
    MakeClient,
    blob,
    login,
    wait_until,
)

pytestmark = [
    pytest.mark.backends("sqlite", "postgresql"),
    pytest.mark.mosquitto_versions("2.0", "2.1"),
]

ALICE_PASSWORD = "alice-password-1"
BOB_PASSWORD = "bob-password-123"
# What must never be printed: the brokers' passwords from the MMC's file.
URL_SECRET = "pw-in-the-url"


def _env(settings: Settings) -> dict[str, str]:
    env = {"MMC_LOG_LEVEL": "WARNING", "MMC_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env |= {"MMC_DATABASE_URL": settings.database_url, "MMC_SECRET_KEY": SECRET_KEY}
    return env


def _run(
    settings: Settings, *args: str, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmc", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **_env(settings), **env},
    )


async def mmc(settings: Settings, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_run, settings, *args, **kwargs)


def _write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document, indent=2))
    return path


def _mmc_config(broker: MosquittoBroker, tls: TlsMaterial) -> dict[str, Any]:
    """A config.json as the MMC writes it: its own fields beside each connection
    (status, noMetricsMode, derived URLs), TLS as the TLS plugin stores it, and entries
    the API would refuse."""
    status = {"connected": True, "timestamp": 1733140000000}
    creds = {"username": broker.admin_username, "password": broker.admin_password}
    return {
        "connections": [
            {
                "id": "plain",
                "name": "Plain broker",
                "url": f"mqtt://127.0.0.1:{broker.port}",
                "credentials": {**creds, "clientId": "mmc-migrated-plain"},
                "noMetricsMode": False,
                "status": status,
                "internalUrl": f"mqtt://127.0.0.1:{broker.port}",
            },
            {
                "id": "tls",
                "name": "TLS broker",
                "url": f"mqtts://localhost:{broker.tls_port}",
                "credentials": creds,
                "ca": blob(tls.ca_cert),
                "rejectUnauthorized": True,
                "status": {"connected": False, "timestamp": 1, "error": "x"},
            },
            {
                "id": "mtls",
                "name": "Mutual TLS broker",
                "url": f"mqtts://localhost:{broker.mtls_port}",
                "credentials": creds,
                "ca": blob(tls.ca_cert),
                "cert": blob(tls.client_cert),
                "key": blob(tls.client_key),
                "rejectUnauthorized": "true",
            },
            # Refused as POST /api/connections refuses them:
            {
                "id": "in-url",
                "name": "Credentials in the URL",
                "url": f"mqtt://admin:{URL_SECRET}@127.0.0.1:1883",
            },
            {"id": "http", "name": "Wrong scheme", "url": "http://127.0.0.1:1883"},
            {
                "id": "bad-ca",
                "name": "Not a certificate",
                "url": "mqtts://localhost:8883",
                "ca": {"data": "bm90IGEgY2VydGlmaWNhdGU=", "encoding": "base64"},
            },
            {
                "id": "ca-without-tls",
                "name": "CA on a plain URL",
                "url": "mqtt://localhost:1883",
                "ca": blob(tls.ca_cert),
            },
            {"id": "no-name", "url": "mqtt://localhost:1883"},
            {"id": "plain", "name": "Same id again", "url": "mqtt://localhost:1883"},
            "not an object",
        ],
        "tools": {"streamsheets": {"instances": []}},
        "plugins": [{"id": "tls"}],
        "loadMode": "all",
        "parameters": {},
    }


def _mmc_users() -> dict[str, Any]:
    return {
        "users": [
            # A hash of mmc's own format is verified as any of mmc's.
            {
                "username": "admin",
                "roles": ["admin"],
                "password": hash_password(ADMIN_PASSWORD, 10),
            },
            {
                "username": "alice",
                "roles": ["Editor", "viewer"],
                "password": hash_password(ALICE_PASSWORD, 10),
            },
            # A hash mmc cannot verify (bcrypt, as Node applications write), or none.
            {"username": "bob", "roles": ["connectionManager"], "password": "$2b$10$" + "x" * 53},
            {"username": "carol", "role": "monitoringViewer"},
            {"username": "dave", "roles": ["superuser"]},
            {"username": "not valid!", "roles": ["admin"]},
            "not an object",
        ]
    }


async def _store_state(settings: Settings) -> tuple[dict[str, str], list[str], list[Any]]:
    """The store's connections (id -> name), usernames and audit rows; all empty when
    there is no store."""
    if settings.database_url is None and not settings.db_path.exists():
        return {}, [], []
    async with open_database(settings) as db:
        # Only ids and names are read: any key does.
        names = await ConnectionRepository(db, SecretBox(Fernet.generate_key())).names()
        users = [u.username for u in await UserRepository(db).list()]
        audit = await db.fetch_all("SELECT route, target, status FROM audit ORDER BY id")
        return names, users, [(r[0], json.loads(r[1]), r[2]) for r in audit]


def _box(settings: Settings) -> SecretBox:
    return SecretBox(load_secret_keys(settings.secret_key, settings.data_dir))


def _report(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Label -> the report's (first) line for it, spaces collapsed."""
    lines: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if line.startswith("  "):
            words = line.split()
            label = words[3] if words[0] == "would" else words[1]
            lines.setdefault(label, " ".join(words))
    return lines


async def test_migrated_connections_and_users_work_in_mmc(
    tmp_path: Path,
    settings: Settings,
    broker: MosquittoBroker,
    tls_material: TlsMaterial,
    make_client: MakeClient,
) -> None:
    config = _write(tmp_path / "config.json", _mmc_config(broker, tls_material))
    users = _write(tmp_path / "users.json", _mmc_users())

    dry = await mmc(settings, "import-mmc", str(config), "--users", str(users), "--dry-run")
    assert dry.returncode == 1, dry.stderr  # some entries cannot be imported
    assert dry.stdout.startswith("dry run: nothing was changed")
    assert _report(dry)["plain"].startswith("would be created")
    assert await _store_state(settings) == ({}, [], [])

    result = await mmc(settings, "import-mmc", str(config), "--users", str(users))
    assert result.returncode == 1, result.stderr
    output = result.stdout + result.stderr
    for secret in (broker.admin_password, URL_SECRET, ALICE_PASSWORD, "$2b$10$"):
        assert secret not in output
    report = _report(result)
    for created in ("plain", "tls", "mtls"):
        assert report[created].startswith("created"), report[created]
    assert "Put credentials in 'credentials', not in the URL." in report["in-url"]
    assert "Unsupported scheme 'http'" in report["http"]
    assert "ca: is not a PEM or DER X.509 certificate" in report["bad-ca"]
    assert "only used with a TLS URL" in report["ca-without-tls"]
    assert "name: Missing data for required field." in report["no-name"]
    assert "not an object" in report["#10"]
    assert report["plain"].count("created") == 1  # the repeated id is reported apart
    assert "the id repeats entry #1 of the file" in result.stdout
    assert report["admin"].startswith("created")
    assert "DISABLED" not in report["admin"]
    assert report["alice"] == "created alice editor,viewer"
    assert "DISABLED: its password hash is of a format mmc cannot verify" in report["bob"]
    assert "mmc users passwd bob" in report["bob"]
    assert "DISABLED: no password in the file" in report["carol"]
    assert "no role mmc knows (given: superuser;" in report["dave"]
    assert report["#6"].startswith("invalid")
    assert "username:" in report["#6"]
    assert "connections: 3 created, 7 invalid" in result.stdout
    assert "users: 4 created, 3 invalid, 2 of them disabled" in result.stdout

    names, usernames, audit = await _store_state(settings)
    assert names == {"plain": "Plain broker", "tls": "TLS broker", "mtls": "Mutual TLS broker"}
    assert usernames == ["admin", "alice", "bob", "carol"]
    # One entry per connection and user created, and one for the run (207: not all of it).
    assert [a[1] for a in audit[:-1]] == [
        {"connectionId": "plain", "result": "created"},
        {"connectionId": "tls", "result": "created"},
        {"connectionId": "mtls", "result": "created"},
        {"username": "admin", "result": "created"},
        {"username": "alice", "result": "created"},
        {"username": "bob", "result": "created", "login": "disabled"},
        {"username": "carol", "result": "created", "login": "disabled"},
    ]
    assert {a[0] for a in audit} == {"mmc import-mmc"}
    assert audit[-1][1]["connections"] == "3 created, 7 invalid"
    assert audit[-1][2] == 207

    # Secrets are stored encrypted, as the API stores them.
    async with open_database(settings) as db:
        row = await db.fetch_one("SELECT password_enc, key_enc FROM connections WHERE id = 'mtls'")
        assert row is not None
        assert broker.admin_password not in row[0]
        record = await ConnectionRepository(db, _box(settings)).get("mtls")
        assert record is not None
        assert record.password == broker.admin_password
        assert record.key is not None
        assert record.cert is not None
        assert record.ca is not None
    if settings.database_url is None:
        assert broker.admin_password.encode() not in settings.db_path.read_bytes()

    # mmc serves them: each migrated connection logs in to the real broker.
    client = await make_client(settings)  # logs in as the imported admin

    async def connected() -> bool:
        listing = await (await client.get("/api/connections")).json()
        return {c["id"]: c["status"]["connected"] for c in listing} == {
            "plain": True,
            "tls": True,
            "mtls": True,
        }

    await wait_until(connected, timeout=15)
    resp = await client.get("/api/connections/plain")
    assert (await resp.json())["credentials"] == {
        "username": broker.admin_username,
        "clientId": "mmc-migrated-plain",
    }

    # Users with a verified hash log in; disabled ones not, until a password is set.
    client.session.headers.pop("Authorization")
    await login(client, "alice", ALICE_PASSWORD)
    profile = await (await client.get("/api/profile")).json()
    assert profile["roles"] == ["editor", "viewer"]
    resp = await client.post("/auth", json={"username": "bob", "password": "$2b$10$" + "x" * 53})
    assert resp.status == 401
    await login(client)
    users_api = await (await client.get("/api/user-management/users")).json()
    assert {u["username"]: u.get("disabled") for u in users_api} == {
        "admin": None,
        "alice": None,
        "bob": True,
        "carol": True,
    }
    listed = await mmc(settings, "users", "list")
    assert "bob\tconnectionManager\tdisabled" in listed.stdout
    assert "alice\teditor,viewer\n" in listed.stdout
    passwd = await mmc(
        settings, "users", "passwd", "bob", "--password-stdin", stdin=BOB_PASSWORD + "\n"
    )
    assert passwd.returncode == 0, passwd.stderr
    await login(client, "bob", BOB_PASSWORD)
    resp = await client.get("/api/user-management/users/bob")
    assert resp.status == 403  # bob is a connectionManager now able to log in
    await login(client)
    bob = await (await client.get("/api/user-management/users/bob")).json()
    assert bob == {"username": "bob", "roles": ["connectionManager"]}


async def test_clashes_replace_and_dry_run(tmp_path: Path, settings: Settings) -> None:
    first = _write(
        tmp_path / "first.json",
        {
            "connections": [
                {
                    "id": "a",
                    "name": "A",
                    "url": "mqtt://127.0.0.1:1",
                    "credentials": {"username": "u", "password": "old-pw"},
                },
                {"id": "b", "name": "B", "url": "mqtt://127.0.0.1:2"},
            ]
        },
    )
    result = await mmc(settings, "import-mmc", str(first))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "connections: 2 created" in result.stdout

    again = await mmc(settings, "import-mmc", str(first))
    assert again.returncode == 0  # everything is in mmc: a second run is harmless
    assert _report(again)["a"] == "skipped a exists already (--replace overwrites it)"

    second = _write(
        tmp_path / "second.json",
        {
            "connections": [
                # Same id, new settings.
                {
                    "id": "a",
                    "name": "A2",
                    "url": "mqtt://127.0.0.1:11",
                    "credentials": {"username": "u", "password": "new-pw"},
                },
                # A new id with the name of another connection.
                {"id": "c", "name": "B", "url": "mqtt://127.0.0.1:3"},
                # An existing id whose new name is another connection's.
                {"id": "b", "name": "A", "url": "mqtt://127.0.0.1:4"},
                {"id": "d", "name": "D", "url": "mqtt://127.0.0.1:5"},
            ]
        },
    )
    async with open_database(settings) as db:
        before = await ConnectionRepository(db, _box(settings)).get("a")
    assert before is not None

    dry = await mmc(settings, "import-mmc", str(second), "--replace", "--dry-run")
    assert dry.returncode == 1
    report = _report(dry)
    assert report["a"].startswith("would be replaced")
    assert report["c"] == "conflict c its name 'B' is connection b's"
    # b takes the name "A" only if a is renamed first: in file order, a is now "A2".
    assert report["b"].startswith("would be replaced")
    assert report["d"].startswith("would be created")
    async with open_database(settings) as db:
        unchanged = await ConnectionRepository(db, _box(settings)).get("a")
    assert unchanged == before

    # Limits apply: MMC_MAX_CONNECTIONS=2 leaves no room for d.
    result = await mmc(settings, "import-mmc", str(second), "--replace", MMC_MAX_CONNECTIONS="2")
    assert result.returncode == 1
    report = _report(result)
    assert report["a"].startswith("replaced")
    assert report["b"].startswith("replaced")
    assert report["d"].startswith("refused")
    assert "Maximum number of connections reached" in report["d"]
    async with open_database(settings) as db:
        repo = ConnectionRepository(db, _box(settings))
        after = await repo.get("a")
        assert after is not None
        assert (after.name, after.url, after.password) == ("A2", "mqtt://127.0.0.1:11", "new-pw")
        assert after.created_at == before.created_at
        assert await repo.names() == {"a": "A2", "b": "A"}

    _names, _, audit = await _store_state(settings)
    replaced = [a[1] for a in audit if a[1].get("result") == "replaced"]
    assert replaced == [
        {"connectionId": "a", "result": "replaced"},
        {"connectionId": "b", "result": "replaced"},
    ]


@pytest.mark.backends("sqlite")  # refused before the store is opened
async def test_files_that_are_not_the_mmcs_change_nothing(
    tmp_path: Path, settings: Settings
) -> None:
    cases = {
        "missing.json": None,
        "not-json.json": "{connections: [",
        "no-connections.json": json.dumps({"tools": {}}),
        "users-not-a-list.json": json.dumps({"connections": []}),
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
    (tmp_path / "users.json").write_text(json.dumps({"users": "alice"}))
    for name in ("missing.json", "not-json.json", "no-connections.json"):
        result = await mmc(settings, "import-mmc", str(tmp_path / name))
        assert result.returncode == 2, name
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
    result = await mmc(
        settings,
        "import-mmc",
        str(tmp_path / "users-not-a-list.json"),
        "--users",
        str(tmp_path / "users.json"),
    )
    assert result.returncode == 2
    assert "is not a users file" in result.stderr
    assert await _store_state(settings) == ({}, [], [])


def test_a_disabled_user_is_checked_against_the_dummy_hash() -> None:
    """No login for a user without a usable password, and a refusal that takes as long as
    any other (the dummy hash is checked, as for an unknown username)."""
    for stored in ("!imported from the Cedalo MMC", "$2b$10$" + "x" * 53, ""):
        before = dummy_hash.cache_info()
        assert verify_or_dummy(stored, stored, 4) is False
        after = dummy_hash.cache_info()
        assert after.hits + after.misses == before.hits + before.misses + 1
    assert not usable("!imported from the Cedalo MMC")
    assert usable(hash_password("a-password", 4))


@pytest.mark.backends("postgresql")
async def test_running_replicas_follow_the_import(
    tmp_path: Path,
    settings: Settings,
    broker: MosquittoBroker,
    tls_material: TlsMaterial,
    make_client: MakeClient,
) -> None:
    """On a shared store, a running mmc opens what the import stored (its change feed)."""
    client = await make_client(settings)
    assert await (await client.get("/api/connections")).json() == []
    config = {"connections": [_mmc_config(broker, tls_material)["connections"][0]]}
    result = await mmc(settings, "import-mmc", str(_write(tmp_path / "config.json", config)))
    assert result.returncode == 0, result.stdout + result.stderr

    async def connected() -> bool:
        listing = await (await client.get("/api/connections")).json()
        return [(c["id"], c["status"]["connected"]) for c in listing] == [("plain", True)]

    await wait_until(connected, timeout=15)
