"""Browser login compatible with the MMC: GET /login, POST /auth, GET /logout,
GET /validate-session, and the caller's own profile.

People and programs get different answers from the same routes (mmc.web.pages): a
browser's navigation (``Accept`` preferring ``text/html``) that posts the login form
(a form body) is redirected to the web UI once logged in, and shown the form again with
the reason (401, 429) when not; ``GET /logout`` redirects it to the login page. JSON
bodies, and clients that do not ask for HTML (the UI's own calls, curl), keep the JSON
answers.

Login and logout change what a browser is, so they follow the cross-site rule of cookie
writes (``mmc.web.auth``) though they need no login: a cross-site form must neither log
the browser in (into an account of the attacker's) nor out. ``GET /logout`` (the MMC
UI's link) ends a session only when the request shows it comes from this site.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mmc.appkeys import (
    audit_user_key,
    auth_key,
    error_code_key,
    identity_key,
    settings_key,
    ui_selections_key,
)
from mmc.auth.permissions import Permission
from mmc.errors import NotAllowed, TooManyRequests, Unauthorized
from mmc.schemas.responses import ProfileSchema, SuccessSchema, ValidSessionSchema
from mmc.schemas.users import login_schema
from mmc.web.auth import CROSS_SITE_MESSAGE, SESSION_COOKIE, cross_site, identify, same_origin
from mmc.web.body import FORM_TYPES
from mmc.web.middlewares import status_of
from mmc.web.pages import home_url, login_page, login_url, redirect, wants_html
from mmc.web.proxy import client_address, is_https
from mmc.web.routing import FORM, Routes

routes = Routes()


def cookie_path(request: web.Request) -> str:
    return request.app[settings_key].base_path or "/"


def _set_cookie(request: web.Request, response: web.Response, value: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        value,
        path=cookie_path(request),
        httponly=True,
        samesite="Lax",
        secure=is_https(request, request.app[settings_key].trusted_networks),
    )


def _same_site(request: web.Request) -> None:
    """Refuses a cross-site login before its body is read: whatever it holds, it is not
    ours to evaluate."""
    if cross_site(request):
        raise NotAllowed(CROSS_SITE_MESSAGE)


@routes.get(
    "/login",
    Permission.PUBLIC,
    "The login page: a form posting to POST /auth",
    description="?error= (the web UI sends session-expired) is shown above the form.",
    responses={200: ("text/html", "An HTML page")},
)
async def login_form(request: web.Request) -> web.Response:
    return login_page(request, request.query.get("error"))


def _from_login_form(request: web.Request) -> bool:
    """A person submitting the login page, not a program: a form body, asked for as HTML."""
    return request.content_type in FORM_TYPES and wants_html(request)


@routes.post(
    "/auth",
    Permission.PUBLIC,
    "Log in: sets the session cookie",
    description=(
        "A form post asking for HTML (the login page's) is answered 303 to the web UI "
        "(to /api/docs without one) once logged in, and with the login page and its "
        "message when refused (401, 429); every other client gets JSON."
    ),
    body=login_schema,
    body_content_types=("application/json", FORM),
    responses={200: SuccessSchema(), 303: None},
    errors=(401, 403, 429),
    before={"same_site": _same_site},
)
async def login(request: web.Request, body: dict[str, Any], same_site: None) -> web.Response:
    request[audit_user_key] = body["username"]
    address = client_address(request, request.app[settings_key].trusted_networks)
    try:
        session_id = await request.app[auth_key].login(body["username"], body["password"], address)
    except (Unauthorized, TooManyRequests) as exc:
        if not _from_login_form(request):
            raise
        # The page again, with the refusal's status: the audit trail and the metrics
        # see a refused login, not a redirect.
        request[error_code_key] = exc.code
        # (Other errors, a store that is down, keep their JSON answer.)
        locked = isinstance(exc, TooManyRequests)
        reason = "too-many-attempts" if locked else "authentication-failed"
        page = login_page(request, reason, status=status_of(exc))
        if isinstance(exc, TooManyRequests):  # for mypy; same as locked
            page.headers["Retry-After"] = str(exc.retry_after)
        return page
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        # Never keep a session id chosen before login (session fixation).
        await request.app[auth_key].logout(old)
        request.app[ui_selections_key].forget(old)
    if _from_login_form(request):
        response = redirect(home_url(request))
    else:
        response = web.json_response({"code": "SUCCESS", "message": "Authorized"})
    _set_cookie(request, response, session_id)
    return response


async def _logout(request: web.Request) -> web.Response:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        # A GET is a navigation the Lax cookie follows from any site: it needs proof of
        # coming from ours. A POST from another site always says so (Origin).
        refused = not same_origin(request) if request.method == "GET" else cross_site(request)
        if refused:
            raise NotAllowed(
                CROSS_SITE_MESSAGE
                if request.method != "GET"
                else "Cross-site request refused: log out with POST /logout, "
                "or from a page of this site"
            )
        identity = await identify(request)
        if identity is not None:
            request[identity_key] = identity  # for the audit trail
        await request.app[auth_key].logout(session_id)
        request.app[ui_selections_key].forget(session_id)
    if request.method == "GET" and wants_html(request):
        response = redirect(login_url(request))  # the web UI's logout link
    else:
        response = web.json_response({"code": "SUCCESS", "message": "Logged out"})
    response.del_cookie(SESSION_COOKIE, path=cookie_path(request))
    return response


for _method in ("GET", "POST"):
    routes.route(
        _method,
        "/logout",
        Permission.PUBLIC,
        "Log out: ends the session (GET: only from a page of this site; scripts use POST)",
        description=(
            "A GET asking for HTML (a browser following the web UI's logout link) is "
            "answered 303 to the login page; everything else gets JSON."
        )
        if _method == "GET"
        else None,
        responses={200: SuccessSchema(), 303: None} if _method == "GET" else {200: SuccessSchema()},
        errors=(403,),
    )(_logout)


@routes.get(
    "/validate-session",
    Permission.PUBLIC,
    "Whether the caller is logged in",
    responses={200: ValidSessionSchema()},
)
async def validate_session(request: web.Request) -> web.Response:
    return web.json_response({"valid": await identify(request) is not None})


@routes.get(
    "/api/profile", Permission.SELF, "The caller's own user", responses={200: ProfileSchema()}
)
async def profile(request: web.Request) -> web.Response:
    identity = request[identity_key]
    out: dict[str, object] = {
        "username": identity.username,
        "roles": list(identity.roles),
        "authenticatedBy": identity.method,
    }
    if identity.token_id is not None:
        out["token"] = {"id": identity.token_id, "name": identity.token_name}
    return web.json_response(out)
