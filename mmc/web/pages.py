"""Pages for people: mmc's login page, and telling a browser's navigation from an API call.

A browser that follows a link, submits a form or types an address asks for HTML
(``Accept: text/html,...``); the MMC UI's own calls send ``Accept: application/json``,
scripts ``*/*`` or nothing. Only the former are sent to pages (redirects, the login
form); everyone else keeps the JSON answers.
"""

from __future__ import annotations

import html
import secrets

from aiohttp import web

from mmc.appkeys import settings_key

# The ?error= values the MMC UI sends (session-expired) and the ones mmc's own login uses.
MESSAGES = {
    "session-expired": "Your session has expired or is no longer valid. Please log in again.",
    "authentication-failed": "Wrong username or password.",
    "too-many-attempts": "Too many login attempts. Please wait a while and try again.",
    "logged-out": "You have been logged out.",
}
# An unknown error value is shown as it came, escaped, up to this many characters.
MAX_SHOWN = 200


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def wants_html(request: web.Request) -> bool:
    """Whether the request is a browser's navigation: ``Accept`` names ``text/html``
    (quality above 0) no lower than ``application/json``."""
    html_q: float | None = None
    json_q: float | None = None
    for part in request.headers.get("Accept", "").split(","):
        media, *params = part.split(";")
        media = media.strip().lower()
        if media == "text/html":
            html_q = max(html_q or 0.0, _quality(params))
        elif media == "application/json":
            json_q = max(json_q or 0.0, _quality(params))
    return html_q is not None and html_q > 0 and (json_q is None or html_q >= json_q)


def login_url(request: web.Request, error: str | None = None) -> str:
    url = request.app[settings_key].base_path + "/login"
    return f"{url}?error={error}" if error else url


def home_url(request: web.Request) -> str:
    """Where a browser goes after logging in: the web UI, or the API browser without one."""
    settings = request.app[settings_key]
    return settings.base_path + ("/" if settings.ui_dir is not None else "/api/docs")


def redirect(location: str) -> web.Response:
    # 303: the browser follows with a GET, whatever the method of the request was.
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in - mmc</title>
<style nonce="{nonce}">
body {{ font-family: system-ui, sans-serif; background: #f4f5f7; margin: 0; }}
main {{ max-width: 22rem; margin: 12vh auto; background: #fff; padding: 2rem;
       border-radius: 8px; box-shadow: 0 1px 4px rgba(0, 0, 0, .15); }}
h1 {{ font-size: 1.3rem; margin: 0 0 1.2rem; }}
label {{ display: block; margin: .8rem 0 .3rem; font-size: .9rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .5rem; font-size: 1rem; }}
button {{ margin-top: 1.4rem; width: 100%; padding: .6rem; font-size: 1rem;
          background: #1f5fa8; color: #fff; border: 0; border-radius: 4px; cursor: pointer; }}
.error {{ background: #fdecea; color: #8a1c12; padding: .6rem; border-radius: 4px; }}
</style>
</head>
<body>
<main>
<h1>Mosquitto Management Center</h1>
{message}<form method="post" action="{action}">
<label for="username">Username</label>
<input id="username" name="username" autocomplete="username" required maxlength="128"
 autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password"
 required maxlength="1024">
<button type="submit">Log in</button>
</form>
</main>
</body>
</html>
"""


def message_for(error: str | None) -> str | None:
    """What the page says for an ``error`` value: ours or the UI's, else the value itself."""
    if not error:
        return None
    return MESSAGES.get(error, error[:MAX_SHOWN])


def login_page(
    request: web.Request, error: str | None = None, *, status: int = 200
) -> web.Response:
    """The login form posting to ``POST /auth``; ``error`` (an ``?error=`` value) shown
    above it, escaped."""
    text = message_for(error)
    message = f'<p class="error" role="alert">{html.escape(text)}</p>\n' if text else ""
    nonce = secrets.token_urlsafe(16)
    page = _PAGE.format(
        nonce=nonce,
        message=message,
        action=html.escape(request.app[settings_key].base_path + "/auth"),
    )
    response = web.Response(text=page, content_type="text/html", status=status)
    # No script at all; the one style block by its nonce; the form posts here only.
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    return response
