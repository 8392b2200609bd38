"""Logins, sessions, tokens, users, throttling and cross-site protection."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import sys
import time
from types import FrameType
from typing import Any

import pytest

from mmc.appkeys import auth_key, db_key
from mmc.auth.passwords import dummy_hash, hash_cost, hash_password, verify_password
from mmc.config import Settings
from mmc.services.throttling import username_delay
from mmc.store import open_database
from tests.conftest import ADMIN_PASSWORD, BACKENDS, Client, MakeClient, create_token, login, origin

pytestmark = pytest.mark.backends(*BACKENDS)


def referer(client: Client) -> dict[str, str]:
    """What a browser sends following a link on one of our pages."""
    return {"Referer": f"http://{client.host}:{client.port}/ui/page"}


def _cookie_header(resp_headers: object) -> str:
    values = resp_headers.getall("Set-Cookie")  # type: ignore[attr-defined]
    [value] = [v for v in values if v.startswith("mmc_session=")]
    assert isinstance(value, str)
    return value


async def test_login_with_form_and_json(anon_client: Client) -> None:
    form = {"username": "admin", "password": ADMIN_PASSWORD}
    resp = await anon_client.post("/auth", data=form)
    assert resp.status == 200
    assert await resp.json() == {"code": "SUCCESS", "message": "Authorized"}
    cookie = _cookie_header(resp.headers)
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP, no trusted proxy
    assert (await anon_client.get("/api/connections")).status == 200
    assert await (await anon_client.get("/validate-session")).json() == {"valid": True}

    resp = await anon_client.post("/auth", json=form)
    assert resp.status == 200


async def test_wrong_credentials(anon_client: Client) -> None:
    for body in (
        {"username": "admin", "password": "wrong"},
        {"username": "nobody", "password": ADMIN_PASSWORD},
    ):
        resp = await anon_client.post("/auth", json=body)
        assert resp.status == 401
        assert await resp.json() == {
            "code": "UNAUTHORIZED",
            "message": "Unauthorized",
            "status": 401,
        }
        assert "mmc_session" not in resp.cookies
    resp = await anon_client.post("/auth", json={"username": "admin"})
    assert resp.status == 400
    assert await (await anon_client.get("/validate-session")).json() == {"valid": False}


async def test_secure_cookie_only_via_trusted_proxy(
    make_client: MakeClient, settings: Settings
) -> None:
    form = {"username": "admin", "password": ADMIN_PASSWORD}
    https = {"X-Forwarded-Proto": "https"}
    untrusted = await make_client(settings, authenticated=False)
    resp = await untrusted.post("/auth", data=form, headers=https)
    assert "Secure" not in _cookie_header(resp.headers)
    await untrusted.close()

    trusted = await make_client(
        settings.replace(trusted_proxies="127.0.0.1/32"), authenticated=False
    )
    resp = await trusted.post("/auth", data=form, headers=https)
    assert "Secure" in _cookie_header(resp.headers)


async def test_login_issues_a_new_session_id(anon_client: Client) -> None:
    await login(anon_client)
    first = anon_client.session.cookie_jar.filter_cookies(anon_client.make_url("/"))
    first_id = first["mmc_session"].value
    await login(anon_client)
    second_id = anon_client.session.cookie_jar.filter_cookies(anon_client.make_url("/"))[
        "mmc_session"
    ].value
    assert first_id != second_id
    # The id held before the new login is dead: fixation gains nothing.
    resp = await anon_client.get("/api/profile", cookies={"mmc_session": first_id})
    anon_client.session.cookie_jar.clear()
    resp = await anon_client.get("/api/profile", headers={"Cookie": f"mmc_session={first_id}"})
    assert resp.status == 401


async def test_logout_and_profile(anon_client: Client) -> None:
    await login(anon_client)
    profile = await (await anon_client.get("/api/profile")).json()
    assert profile == {"username": "admin", "roles": ["admin"], "authenticatedBy": "session"}
    # The MMC UI's logout link: a navigation from one of our pages (Referer).
    resp = await anon_client.get("/logout", headers=referer(anon_client))
    assert resp.status == 200
    assert (await anon_client.get("/api/profile")).status == 401
    assert await (await anon_client.get("/validate-session")).json() == {"valid": False}


async def test_session_expires_after_idle_time(make_client: MakeClient, settings: Settings) -> None:
    client = await make_client(settings.replace(session_idle_timeout=1.0), authenticated=False)
    await login(client)
    assert (await client.get("/api/profile")).status == 200
    await asyncio.sleep(1.3)
    assert (await client.get("/api/profile")).status == 401


async def test_users_and_sessions_survive_a_restart(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(settings, authenticated=False)
    await login(client)
    resp = await client.post(
        "/api/user-management/users",
        json={"username": "ed", "password": "ed-password-1", "roles": ["editor"]},
        headers=origin(client),
    )
    assert resp.status == 201
    session_id = client.session.cookie_jar.filter_cookies(client.make_url("/"))["mmc_session"].value
    await client.close()

    # A different MMC_ADMIN_PASSWORD on the next start changes nothing: users exist.
    again = await make_client(
        settings.replace(admin_password="another-password"), authenticated=False
    )
    resp = await again.get("/api/profile", headers={"Cookie": f"mmc_session={session_id}"})
    assert resp.status == 200
    assert (
        await again.post("/auth", json={"username": "ed", "password": "ed-password-1"})
    ).status == 200
    bad = {"username": "admin", "password": "another-password"}
    assert (await again.post("/auth", json=bad)).status == 401


async def test_bootstrap_generates_and_logs_a_password_once(
    make_client: MakeClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mmc")
    client = await make_client(settings.replace(admin_password=None), authenticated=False)
    match = re.search(r"generated password (\S+)", caplog.text)
    assert match is not None
    await login(client, "admin", match.group(1))
    await client.close()
    caplog.clear()
    await make_client(settings.replace(admin_password=None), authenticated=False)
    assert "generated password" not in caplog.text


async def test_tokens(client: Client, make_client: MakeClient, settings: Settings) -> None:
    resp = await client.post("/api/tokens", json={"name": "ci", "role": "viewer"})
    assert resp.status == 201
    created = await resp.json()
    token = created["token"]
    assert token.startswith("mmc_")
    assert created["role"] == "viewer"
    assert created["validUntil"] is None

    listing = await (await client.get("/api/tokens")).json()
    assert "ci" in [t["name"] for t in listing]
    assert token not in str(listing)
    assert all("token" not in t for t in listing)

    script = await make_client(settings, authenticated=False)
    bearer = {"Authorization": f"Bearer {token}"}
    profile = await (await script.get("/api/profile", headers=bearer)).json()
    assert profile["authenticatedBy"] == "token"
    assert profile["roles"] == ["viewer"]
    assert (await script.get("/api/connections", headers=bearer)).status == 200
    assert (await script.post("/api/connections", headers=bearer, json={})).status == 403

    # The process that revokes forgets the token at once, though it has just used it...
    assert (await client.get("/api/profile", headers=bearer)).status == 200
    assert (await client.delete(f"/api/tokens/{created['id']}")).status == 204
    assert (await client.get("/api/profile", headers=bearer)).status == 401
    # ...another one sharing the store (``script`` is a second app) within the token cache time.
    started = time.monotonic()
    while (await script.get("/api/connections", headers=bearer)).status != 401:
        assert time.monotonic() - started < settings.token_cache_seconds + 0.5
        await asyncio.sleep(0.05)
    assert (await client.delete(f"/api/tokens/{created['id']}")).status == 404

    for header in (f"Bearer {token}x", "Bearer ", "Basic YWRtaW46YWRtaW4=", "Bearer mmc_nope"):
        resp = await script.get("/api/connections", headers={"Authorization": header})
        assert resp.status == 401, header


async def test_without_token_cache_other_replicas_see_a_revocation_at_once(
    client: Client, make_client: MakeClient, settings: Settings
) -> None:
    created = await (await client.post("/api/tokens", json={"name": "ci", "role": "viewer"})).json()
    bearer = {"Authorization": f"Bearer {created['token']}"}
    replica = await make_client(settings.replace(token_cache_seconds=0), authenticated=False)
    assert (await replica.get("/api/connections", headers=bearer)).status == 200
    assert (await client.delete(f"/api/tokens/{created['id']}")).status == 204
    assert (await replica.get("/api/connections", headers=bearer)).status == 401


async def test_token_expiry(client: Client, anon_client: Client) -> None:
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)).isoformat()
    resp = await client.post(
        "/api/tokens", json={"name": "short", "role": "editor", "validUntil": until}
    )
    assert resp.status == 201
    bearer = {"Authorization": f"Bearer {(await resp.json())['token']}"}
    assert (await anon_client.get("/api/connections", headers=bearer)).status == 200
    await asyncio.sleep(1.8)
    assert (await anon_client.get("/api/connections", headers=bearer)).status == 401

    past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat()
    resp = await client.post(
        "/api/tokens", json={"name": "old", "role": "viewer", "validUntil": past}
    )
    assert resp.status == 400
    resp = await client.post("/api/tokens", json={"name": "x", "role": "superuser"})
    assert resp.status == 400


async def test_user_management(client: Client, anon_client: Client) -> None:
    users = "/api/user-management/users"
    assert await (await client.get("/api/user-management/roles")).json() == [
        "admin",
        "editor",
        "viewer",
        "connectionManager",
        "monitoringViewer",
    ]
    resp = await client.post(
        users, json={"username": "vic", "password": "vic-pass-1", "roles": ["viewer"]}
    )
    assert resp.status == 201
    assert await resp.json() == {"username": "vic", "roles": ["viewer"]}
    resp = await client.post(
        users, json={"username": "vic", "password": "vic-pass-2", "roles": ["viewer"]}
    )
    assert resp.status == 409
    for bad in (
        {"username": "x", "password": "short", "roles": ["viewer"]},
        {"username": "x", "password": "long-enough", "roles": ["god"]},
        {"username": "x", "password": "long-enough", "roles": []},
        {"username": "a/b", "password": "long-enough", "roles": ["viewer"]},
    ):
        assert (await client.post(users, json=bad)).status == 400, bad

    listing = await (await client.get(users)).json()
    assert {"username": "vic", "roles": ["viewer"]} in listing
    assert "password" not in str(listing)
    assert "scrypt" not in str(listing)

    await login(anon_client, "vic", "vic-pass-1")
    assert (await anon_client.get("/api/profile")).status == 200
    # The admin's changes through the app that serves the session (another one, a replica,
    # takes up to MMC_SESSION_CACHE_SECONDS: test_other_replicas_end_a_session_within_...).
    admin = {"Authorization": client.session.headers["Authorization"]}
    resp = await anon_client.put(
        f"{users}/vic", json={"password": "vic-new-pass", "roles": ["editor"]}, headers=admin
    )
    assert resp.status == 200
    assert await resp.json() == {"username": "vic", "roles": ["editor"]}
    # A new password ends the user's sessions.
    assert (await anon_client.get("/api/profile")).status == 401
    await login(anon_client, "vic", "vic-new-pass")
    assert (await anon_client.get("/api/profile")).status == 200

    assert (await anon_client.delete(f"{users}/vic", headers=admin)).status == 204
    assert (await anon_client.get("/api/profile")).status == 401
    assert (await client.get(f"{users}/vic")).status == 404


async def test_last_admin_cannot_be_deleted_or_demoted(client: Client) -> None:
    users = "/api/user-management/users"
    resp = await client.delete(f"{users}/admin")
    assert resp.status == 409
    assert "last admin" in (await resp.json())["message"]
    resp = await client.put(f"{users}/admin", json={"roles": ["viewer"]})
    assert resp.status == 409
    assert (await (await client.get(f"{users}/admin")).json())["roles"] == ["admin"]
    # With a second admin, the first may go.
    await client.post(
        users, json={"username": "root2", "password": "root2-pass", "roles": ["admin"]}
    )
    assert (await client.put(f"{users}/admin", json={"roles": ["viewer"]})).status == 200


async def test_lockout_after_failed_logins(
    make_client: MakeClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = await make_client(settings.replace(login_lockout=1.5), authenticated=False)
    wrong = {"username": "admin", "password": "wrong-guess-123"}
    for _ in range(5):
        assert (await client.post("/auth", json=wrong)).status == 401
    resp = await client.post("/auth", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 2
    assert (await resp.json())["code"] == "TOO_MANY_REQUESTS"
    # Only that username from this address is locked: another one is still evaluated.
    assert (await client.post("/auth", json={"username": "other", "password": "x"})).status == 401
    await asyncio.sleep(1.6)
    await login(client)
    assert "login failed for 'admin'" in caplog.text
    assert "wrong-guess-123" not in caplog.text
    assert ADMIN_PASSWORD not in caplog.text


def from_address(address: str) -> dict[str, str]:
    """A request relayed by the trusted proxy (127.0.0.1) for a client at ``address``."""
    return {"X-Forwarded-For": address}


async def test_guesses_sent_at_once_are_evaluated_at_most_up_to_the_limit(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(settings, authenticated=False)
    wrong = {"username": "admin", "password": "wrong-guess-123"}
    answers = await asyncio.gather(*(client.post("/auth", json=wrong) for _ in range(20)))
    statuses = sorted(resp.status for resp in answers)
    # 401: the password was checked; 429: refused before that.
    assert statuses.count(401) == settings.login_max_failures, statuses
    assert statuses.count(401) + statuses.count(429) == 20, statuses
    for resp in answers:
        if resp.status == 429:
            assert 1 <= int(resp.headers["Retry-After"]) <= settings.login_lockout
    # Locked: the right password from the same address is not even checked.
    right = {"username": "admin", "password": ADMIN_PASSWORD}
    resp = await client.post("/auth", json=right)
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1


async def test_an_attacker_cannot_lock_the_real_admin_out(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(
        settings.replace(trusted_proxies="127.0.0.1/32", login_username_delay=0.05),
        authenticated=False,
    )
    wrong = {"username": "admin", "password": "wrong-guess-123"}
    attacker = from_address("203.0.113.5")
    for _ in range(5):
        assert (await client.post("/auth", json=wrong, headers=attacker)).status == 401
    resp = await client.post("/auth", json=wrong, headers=attacker)
    assert resp.status == 429
    assert "Retry-After" in resp.headers
    # The real admin, elsewhere, still gets in.
    right = {"username": "admin", "password": ADMIN_PASSWORD}
    resp = await client.post("/auth", json=right, headers=from_address("198.51.100.7"))
    assert resp.status == 200
    # ...and the attacker's pair is still locked.
    assert (await client.post("/auth", json=right, headers=attacker)).status == 429


async def test_an_address_is_locked_across_usernames(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(
        settings.replace(trusted_proxies="127.0.0.1/32"), authenticated=False
    )
    spray = from_address("203.0.113.9")
    limit = settings.login_address_max_failures
    assert limit == 20
    for i in range(limit):
        body = {"username": f"user{i}", "password": "Winter2026!"}
        assert (await client.post("/auth", json=body, headers=spray)).status == 401, i
    right = {"username": "admin", "password": ADMIN_PASSWORD}
    resp = await client.post("/auth", json=right, headers=spray)
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= settings.login_lockout
    # Another address is not concerned.
    assert (
        await client.post("/auth", json=right, headers=from_address("198.51.100.7"))
    ).status == 200


async def test_a_successful_login_does_not_clear_an_address_lock(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(
        settings.replace(trusted_proxies="127.0.0.1/32", login_address_max_failures=3),
        authenticated=False,
    )
    shared = from_address("192.0.2.50")
    for name in ("ann", "bob"):
        body = {"username": name, "password": "wrong-guess-123"}
        assert (await client.post("/auth", json=body, headers=shared)).status == 401
    # The third attempt from the address is evaluated, succeeds, and the lock it reached
    # stays: a valid account of the attacker's must not reset their address.
    right = {"username": "admin", "password": ADMIN_PASSWORD}
    assert (await client.post("/auth", json=right, headers=shared)).status == 200
    resp = await client.post("/auth", json={"username": "cid", "password": "x"}, headers=shared)
    assert resp.status == 429
    assert "Retry-After" in resp.headers
    assert (await client.post("/auth", json=right, headers=shared)).status == 429


async def test_logins_that_succeed_behind_one_address_never_lock_it(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(
        settings.replace(trusted_proxies="127.0.0.1/32", login_address_max_failures=3),
        authenticated=False,
    )
    right = {"username": "admin", "password": ADMIN_PASSWORD}
    for _ in range(6):
        assert (
            await client.post("/auth", json=right, headers=from_address("192.0.2.60"))
        ).status == 200


async def test_guesses_on_one_username_from_many_addresses_slow_it_down(
    make_client: MakeClient, settings: Settings
) -> None:
    client = await make_client(
        settings.replace(
            trusted_proxies="127.0.0.1/32",
            login_max_failures=2,
            login_username_delay=0.3,
            login_username_max_delay=0.5,
        ),
        authenticated=False,
    )
    wrong = {"username": "admin", "password": "wrong-guess-123"}

    async def attempt(address: str, body: dict[str, str]) -> tuple[int, float]:
        started = time.monotonic()
        resp = await client.post("/auth", json=body, headers=from_address(address))
        return resp.status, time.monotonic() - started

    # Up to login_max_failures: no delay.
    for i in range(2):
        status, took = await attempt(f"203.0.113.{i}", wrong)
        assert (status, took < 0.25) == (401, True)
    # Then 0.3 s; the loop serves others meanwhile.
    delayed = asyncio.ensure_future(attempt("203.0.113.10", wrong))
    await asyncio.sleep(0.05)
    assert (await client.get("/healthz")).status == 200
    assert not delayed.done()
    status, took = await delayed
    assert (status, took >= 0.3) == (401, True)
    # Then 0.6 s, capped at 0.5 s.
    status, took = await attempt("203.0.113.11", wrong)
    assert (status, took >= 0.5) == (401, True)
    # No lock: the real admin gets in, only later.
    right = {"username": "admin", "password": ADMIN_PASSWORD}
    status, took = await attempt("198.51.100.7", right)
    assert (status, took >= 0.5) == (200, True)


async def test_cookie_writes_from_other_sites_are_refused(anon_client: Client) -> None:
    await login(anon_client)
    body = {"name": "t", "role": "viewer"}
    base = f"http://{anon_client.host}:{anon_client.port}"
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed frame, a page that sends no referrer
        {"Referer": "http://evil.example/page"},
        {"Origin": "http://evil.example", "Referer": f"{base}/ui"},  # Origin decides
        {"Sec-Fetch-Site": "cross-site"},
    ):
        resp = await anon_client.post("/api/tokens", json=body, headers=headers)
        assert resp.status == 403, headers
        assert "Cross-site" in (await resp.json())["message"]
    resp = await anon_client.post("/api/tokens", json=body, headers={"Referer": f"{base}/ui"})
    assert resp.status == 201
    resp = await anon_client.post("/api/tokens", json=body, headers=origin(anon_client))
    assert resp.status == 201
    # Reads need no Origin.
    assert (await anon_client.get("/api/tokens")).status == 200


async def test_cookie_writes_without_origin_or_referer_are_allowed(anon_client: Client) -> None:
    """The Cedalo docs' cookie-jar curl flow: no browser, so no Origin and no Referer."""
    await login(anon_client)
    resp = await anon_client.post("/api/tokens", json={"name": "jar", "role": "viewer"})
    sent = resp.request_info.headers
    assert "Origin" not in sent
    assert "Referer" not in sent
    assert "Cookie" in sent
    assert resp.status == 201, await resp.text()
    resp = await anon_client.delete(f"/api/tokens/{(await resp.json())['id']}")
    assert resp.status == 204


async def test_a_cross_site_form_cannot_log_the_browser_in(anon_client: Client) -> None:
    form = {"username": "admin", "password": ADMIN_PASSWORD}
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Referer": "http://evil.example/login"},
    ):
        resp = await anon_client.post("/auth", data=form, headers=headers)
        assert resp.status == 403, headers
        assert (await resp.json())["code"] == "NOT_ALLOWED"
        assert "mmc_session" not in resp.cookies
    # Refused for where it comes from, before its body is read: a malformed one too.
    resp = await anon_client.post(
        "/auth",
        data="{",
        headers={"Origin": "http://evil.example", "Content-Type": "application/json"},
    )
    assert resp.status == 403
    assert await (await anon_client.get("/validate-session")).json() == {"valid": False}
    # Our own login page, and scripts that send neither header, log in.
    resp = await anon_client.post("/auth", data=form, headers=origin(anon_client))
    assert resp.status == 200
    resp = await anon_client.post("/auth", json=form)
    assert "Origin" not in resp.request_info.headers
    assert resp.status == 200


async def test_other_sites_cannot_log_the_browser_out(anon_client: Client) -> None:
    await login(anon_client)
    for method, headers in (
        ("POST", {"Origin": "http://evil.example"}),
        ("POST", {"Origin": "null"}),
        # A cross-site link or redirect: the Lax cookie goes along with a GET navigation.
        ("GET", {"Referer": "http://evil.example/"}),
        ("GET", {"Sec-Fetch-Site": "cross-site"}),
        # Nothing shows it comes from this site (a page that sends no referrer).
        ("GET", {}),
    ):
        resp = await anon_client.request(method, "/logout", headers=headers)
        assert resp.status == 403, (method, headers)
        assert "Cross-site" in (await resp.json())["message"]
        assert (await anon_client.get("/api/profile")).status == 200, (method, headers)

    # From our own pages, typed into the address bar, or POSTed by a script: logged out.
    for method, headers in (
        ("GET", referer(anon_client)),
        ("GET", {"Sec-Fetch-Site": "same-origin"}),
        ("GET", {"Sec-Fetch-Site": "none"}),
        ("POST", origin(anon_client)),
        ("POST", {}),
    ):
        await login(anon_client)
        resp = await anon_client.request(method, "/logout", headers=headers)
        assert resp.status == 200, (method, headers)
        assert (await anon_client.get("/api/profile")).status == 401, (method, headers)

    # Without a session there is nothing to end: scripts without a cookie get 200.
    anon_client.session.cookie_jar.clear()
    assert (await anon_client.get("/logout")).status == 200
    assert (await anon_client.post("/logout")).status == 200


async def test_token_requests_need_no_origin(client: Client) -> None:
    token = await create_token(client, "admin")
    resp = await client.post(
        "/api/tokens",
        json={"name": "t2", "role": "viewer"},
        headers={"Authorization": f"Bearer {token}", "Origin": "http://evil.example"},
    )
    assert resp.status == 201


async def test_passwords_and_tokens_never_in_responses_or_logs(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts = []
    resp = await client.post(
        "/api/user-management/users",
        json={"username": "sam", "password": "sam-secret-pw", "roles": ["viewer"]},
    )
    texts.append(await resp.text())
    resp = await client.post("/api/tokens", json={"name": "n", "role": "viewer"})
    token = (await resp.json())["token"]
    for path in ("/api/user-management/users", "/api/user-management/users/sam", "/api/tokens"):
        texts.append(await (await client.get(path)).text())
    await client.get("/api/profile", headers={"Authorization": f"Bearer {token}"})
    for text in [*texts, caplog.text]:
        assert "sam-secret-pw" not in text
        assert token not in text
        assert ADMIN_PASSWORD not in text


async def stored_hash(settings: Settings, username: str) -> str:
    async with open_database(settings) as db:
        row = await db.fetch_one("SELECT password_hash FROM users WHERE username = ?", (username,))
    assert row is not None
    return str(row[0])


async def test_a_login_rehashes_when_the_cost_changed(
    make_client: MakeClient, settings: Settings
) -> None:
    await make_client(settings, authenticated=False)  # bootstraps admin at the tests' cost
    before = await stored_hash(settings, "admin")
    assert hash_cost(before) == settings.password_hash_cost == 10

    raised = await make_client(settings.replace(password_hash_cost=11), authenticated=False)
    # A failed login changes nothing.
    bad = {"username": "admin", "password": "wrong-guess-123"}
    assert (await raised.post("/auth", json=bad)).status == 401
    assert await stored_hash(settings, "admin") == before
    await login(raised)
    after = await stored_hash(settings, "admin")
    assert after.startswith("scrypt$11$8$1$")
    assert verify_password(ADMIN_PASSWORD, after)
    # At the current cost already: left as it is.
    await login(raised)
    assert await stored_hash(settings, "admin") == after
    # And the new hash logs in where the cost is lowered again (then rehashed back).
    lowered = await make_client(settings, authenticated=False)
    await login(lowered)
    assert hash_cost(await stored_hash(settings, "admin")) == 10


async def test_no_password_is_hashed_or_verified_on_the_event_loop(
    make_client: MakeClient, settings: Settings
) -> None:
    """A profiler on the loop's thread (sys.setprofile is per thread; the executor's
    threads are not watched) records every call of the hashing functions there."""
    client = await make_client(settings.replace(password_hash_cost=11), authenticated=False)
    dummy_hash.cache_clear()  # the unknown user's first failed login computes it
    watched = {hash_password.__code__, verify_password.__code__}
    on_loop: list[str] = []

    def profiler(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code in watched:
            on_loop.append(frame.f_code.co_name)

    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        hash_password("the detector works", 10)
        assert on_loop == ["hash_password"]
        on_loop.clear()
        statuses = [
            (await client.post("/auth", json=body)).status
            for body in (
                {"username": "nobody", "password": "guess-one-1"},
                {"username": "admin", "password": "guess-two-2"},
                {"username": "admin", "password": ADMIN_PASSWORD},
            )
        ]
    finally:
        sys.setprofile(previous)
    assert statuses == [401, 401, 200]
    assert on_loop == []


def test_the_username_delay_doubles_up_to_its_cap() -> None:
    settings = Settings()  # 5 attempts free, then 0.25 s doubling, at most 5 s
    delays = [username_delay(settings, n) for n in range(1, 13)]
    assert delays == [0, 0, 0, 0, 0, 0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert username_delay(settings, 10**6) == 5.0
    assert username_delay(settings.replace(login_username_delay=0), 50) == 0
    # With the pair limit off, the delay still starts after the default's 5 attempts.
    assert username_delay(settings.replace(login_max_failures=0), 5) == 0
    assert username_delay(settings.replace(login_max_failures=0), 6) == 0.25


async def _log_in(client: Client, username: str, password: str) -> dict[str, str]:
    """A session of ``username`` on ``client``'s app: the Cookie header that carries it."""
    await login(client, username, password)
    jar = client.session.cookie_jar.filter_cookies(client.make_url("/"))
    client.session.cookie_jar.clear()
    return {"Cookie": f"mmc_session={jar['mmc_session'].value}"}


async def _roles(client: Client, cookie: dict[str, str]) -> list[str] | int:
    """The session's roles, or the status that refused it."""
    resp = await client.get("/api/profile", headers=cookie)
    if resp.status != 200:
        return resp.status
    roles: list[str] = (await resp.json())["roles"]
    return roles


USERS = "/api/user-management/users"


async def _users(client: Client, *names: str) -> None:
    for name in names:
        body = {"username": name, "password": f"{name}-password-1", "roles": ["viewer"]}
        assert (await client.post(USERS, json=body)).status == 201


async def test_sessions_are_served_from_memory_and_ended_here_at_once(
    client: Client, make_client: MakeClient, settings: Settings
) -> None:
    await _users(client, "ann", "bob", "cid", "dan")
    # Believed for a minute: within the test, only what this process does ends a session.
    here = await make_client(settings.replace(session_cache_seconds=60), authenticated=False)
    admin = {"Authorization": f"Bearer {await create_token(client, 'admin')}"}
    ann, bob, cid, dan = [
        await _log_in(here, n, f"{n}-password-1") for n in ("ann", "bob", "cid", "dan")
    ]
    assert await _roles(here, ann) == ["viewer"]
    assert await _roles(here, dan) == ["viewer"]

    # Served from memory: with the row gone behind its back, the session still answers
    # (another replica's logout: see the next test for its window), and 200 requests read
    # no session from the store.
    db = here.app[db_key]
    async with db.transaction() as tx:
        await tx.execute("DELETE FROM sessions WHERE username = 'dan'")
    assert await _roles(here, dan) == ["viewer"]
    sessions = here.app[auth_key].sessions
    reads = 0
    real_get = sessions._sessions.get

    async def counted(id_hash: str) -> Any:
        nonlocal reads
        reads += 1
        return await real_get(id_hash)

    sessions._sessions.get = counted  # type: ignore[method-assign]
    for _ in range(200):
        assert await _roles(here, ann) == ["viewer"]
    assert reads == 0

    # What this process does takes effect at once: a new role, a logout, a new password,
    # the user's deletion.
    assert (await here.put(f"{USERS}/ann", json={"roles": ["editor"]}, headers=admin)).status == 200
    assert await _roles(here, ann) == ["editor"]
    assert (await here.post("/logout", headers={**bob, **origin(here)})).status in (200, 204)
    assert await _roles(here, bob) == 401
    body = {"password": "cid-password-2"}
    assert (await here.put(f"{USERS}/cid", json=body, headers=admin)).status == 200
    assert await _roles(here, cid) == 401
    assert (await here.delete(f"{USERS}/ann", headers=admin)).status == 204
    assert await _roles(here, ann) == 401


async def test_other_replicas_end_a_session_within_the_cache_time(
    client: Client, make_client: MakeClient, settings: Settings
) -> None:
    """Two apps on one store are two replicas: what one ends, the other refuses within
    session_cache_seconds (and serves from memory until then)."""
    await _users(client, "ann", "bob", "cid", "dan")
    window = 3.0
    a = await make_client(settings.replace(session_cache_seconds=window), authenticated=False)
    b = await make_client(settings, authenticated=False)
    admin = {"Authorization": f"Bearer {await create_token(client, 'admin')}"}
    ann, bob, cid, dan = [
        await _log_in(a, n, f"{n}-password-1") for n in ("ann", "bob", "cid", "dan")
    ]
    for cookie in (ann, bob, cid, dan):
        assert await _roles(a, cookie) == ["viewer"]  # A has them in memory

    ended = time.monotonic()
    assert (await b.post("/logout", headers={**ann, **origin(b)})).status in (200, 204)
    assert (
        await b.put(f"{USERS}/bob", json={"password": "bob-password-2"}, headers=admin)
    ).status == 200
    assert (await b.delete(f"{USERS}/cid", headers=admin)).status == 204
    assert (await b.put(f"{USERS}/dan", json={"roles": ["editor"]}, headers=admin)).status == 200
    assert await _roles(b, ann) == 401  # at once where it was done
    for cookie in (ann, bob, cid):
        assert await _roles(a, cookie) == ["viewer"]  # still believed: the window
    assert await _roles(a, dan) == ["viewer"]
    while [await _roles(a, cookie) for cookie in (ann, bob, cid)] != [401] * 3:
        assert time.monotonic() - ended < window + 0.5
        await asyncio.sleep(0.05)
    assert await _roles(a, dan) == ["editor"]


async def test_a_cached_session_still_expires(make_client: MakeClient, settings: Settings) -> None:
    cached = settings.replace(session_cache_seconds=60, session_idle_timeout=1.0)
    idle = await make_client(cached, authenticated=False)
    cookie = await _log_in(idle, "admin", ADMIN_PASSWORD)
    assert await _roles(idle, cookie) == ["admin"]
    await asyncio.sleep(1.3)
    assert await _roles(idle, cookie) == 401
    aged = await make_client(
        settings.replace(session_cache_seconds=60, session_max_age=1.0), authenticated=False
    )
    cookie = await _log_in(aged, "admin", ADMIN_PASSWORD)
    started = time.monotonic()
    while await _roles(aged, cookie) == ["admin"]:  # in use all along, yet too old
        assert time.monotonic() - started < 1.5
        await asyncio.sleep(0.1)
    assert await _roles(aged, cookie) == 401


async def test_session_activity_is_not_written_on_every_request(
    make_client: MakeClient, settings: Settings
) -> None:
    # Read from the store every time (no cache): the write is spared by the touch interval.
    client = await make_client(settings.replace(session_cache_seconds=0), authenticated=False)
    cookie = await _log_in(client, "admin", ADMIN_PASSWORD)
    db = client.app[db_key]

    async def last_seen() -> int:
        row = await db.fetch_one("SELECT last_seen FROM sessions")
        assert row is not None
        return int(row[0])

    first = await last_seen()
    for _ in range(20):
        assert await _roles(client, cookie) == ["admin"]
    assert await last_seen() == first
    async with db.transaction() as tx:
        await tx.execute("UPDATE sessions SET last_seen = last_seen - 120000")
    assert await _roles(client, cookie) == ["admin"]
    touched = await last_seen()
    assert touched > first - 120_000
    for _ in range(5):
        assert await _roles(client, cookie) == ["admin"]
    assert await last_seen() == touched
