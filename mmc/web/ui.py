"""The MMC web UI's files (``ui_dir``, MMC_UI_DIR) at ``base_path``.

A root build of the open-source MMC frontend is a single-page application: its files
(``index.html``, ``static/js/main.<hash>.js``, images) are served as they are, and every
other path under the base path is one of its client routes (``/security/clients``),
answered with ``index.html`` so that a reload or a bookmark works. Never under ``/api``:
an unknown API path stays a 404 in the JSON error shape, or the UI would parse HTML.
A path another route serves (``GET /auth``) keeps that route's answer (405).

- Paths are checked segment by segment (no ``..``, ``.``, empty, hidden or backslashed
  segments) and the file found must lie inside the folder once symlinks are resolved.
- ``index.html`` is ``no-cache`` (a new build is picked up at once); the build's hashed
  assets (``static/**/name.<hash>.ext``) are cached for a year, immutable; other files
  are revalidated (``no-cache``, with ETag and Last-Modified).
- A missing file under one of the build's folders (``static/js/gone.js``), or a missing
  file at the top with a known file type (``/favicon.ico``), is a 404, not ``index.html``:
  a script or an icon must not receive a page.
- Logged in only, like the API (``STATIC_PERMISSION``): a browser that is not logged in
  is sent to the login page (mmc.web.auth), anything else gets 401.
- The UI opens its WebSocket on its root (``ws://host<base_path>?authToken=...``, the same
  path as ``index.html``): an upgrade there goes to the handler given to ``add_ui``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import _InfoDict
from yarl import URL

from mmc.errors import NotFound
from mmc.web.routing import FileResource

WebSocketHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

INDEX = "index.html"
METHODS = frozenset({"GET", "HEAD"})
NO_CACHE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
# create-react-app names every file under static/ name.<content hash>.ext (chunks too:
# 123.<hash>.chunk.js): a new build means new names.
_HASHED = re.compile(r"\.[0-9a-f]{6,}\.")
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".eot": "application/vnd.ms-fontobject",
}


def is_websocket_upgrade(request: web.Request) -> bool:
    connection = {t.strip().lower() for t in request.headers.get(hdrs.CONNECTION, "").split(",")}
    return "upgrade" in connection and request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def _segments(path: str) -> list[str] | None:
    """The path's segments if each is a plain file or folder name; None otherwise."""
    parts = path.split("/")
    if parts and parts[-1] == "":
        parts.pop()  # "static/" names the folder
    for part in parts:
        if (
            not part
            or part.startswith(".")
            or "\\" in part
            or "\x00" in part
            or ":" in part  # drive letters, alternate streams: never a build file's name
        ):
            return None
    return parts


class UiFiles(FileResource):
    """GET/HEAD ``<base_path>``, ``<base_path>/`` and ``<base_path>/<anything but api>``."""

    def __init__(self, prefix: str, folder: Path, websocket: WebSocketHandler | None) -> None:
        super().__init__()
        self._prefix = prefix  # "" or "/mmc" (mmc.config normalises base_path)
        self._prefix2 = prefix + "/"
        self._folder = folder
        self._root: Path | None = None  # resolved by check(), at start-up
        self._websocket = websocket
        self._claimed: frozenset[str] = frozenset()
        self._routes = {
            method: web.ResourceRoute(method, self._handle, self) for method in sorted(METHODS)
        }

    # -- aiohttp's resource interface ---------------------------------------------------

    @property
    def canonical(self) -> str:
        # The route template of metrics and logs (one label for every file).
        return self._prefix + "/{path}"

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the UI is not served by a sub-application")

    def raw_match(self, path: str) -> bool:
        return False

    def url_for(self, **kwargs: str) -> URL:
        return URL.build(path=self._prefix + "/" + kwargs.get("path", ""))

    def get_info(self) -> _InfoDict:
        return {"directory": self._folder, "prefix": self._prefix}

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._routes.values())

    async def resolve(
        self, request: web.Request
    ) -> tuple[web.UrlMappingMatchInfo | None, set[str]]:
        path = request.rel_url.path
        if path != self._prefix and not path.startswith(self._prefix2):
            return None, set()
        rest = path[len(self._prefix2) :]
        if rest == "api" or rest.startswith("api/") or path in self._claimed:
            return None, set()
        if request.method not in METHODS:
            return None, set(METHODS)
        match = web.UrlMappingMatchInfo({"path": rest}, self._routes[request.method])
        return match, set(METHODS)

    # -- start-up -----------------------------------------------------------------------

    async def check(self, app: web.Application) -> None:
        """At start-up: the folder must hold a build; paths other routes serve are theirs."""
        loop = asyncio.get_running_loop()
        self._root = await loop.run_in_executor(None, self._check_folder)
        self._claimed = frozenset(
            r.canonical for r in app.router.resources() if isinstance(r, web.PlainResource)
        )

    def _check_folder(self) -> Path:
        root = self._folder.expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"MMC_UI_DIR {self._folder} is not a folder")
        if not (root / INDEX).is_file():
            raise FileNotFoundError(
                f"MMC_UI_DIR {self._folder} holds no {INDEX}: point it at the build folder "
                "of the MMC frontend (README, 'The MMC web UI')"
            )
        return root

    # -- serving ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rest = request.match_info["path"]
        if is_websocket_upgrade(request):
            if rest == "" and self._websocket is not None:
                return await self._websocket(request)
            # Until the UI's WebSocket handler is given to add_ui (mmc.app), and on any
            # other path: nothing to upgrade to.
            raise NotFound("No WebSocket endpoint here")
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(None, self._locate, rest)
        if found is None:
            raise NotFound(f"File {rest} not found")
        file, cache = found
        response = web.FileResponse(file)
        response.headers[hdrs.CACHE_CONTROL] = cache
        content_type = _CONTENT_TYPES.get(file.suffix.lower())
        if content_type is not None:
            response.headers[hdrs.CONTENT_TYPE] = content_type
        if file.name == INDEX:
            response.headers["X-Frame-Options"] = "DENY"
        return response

    def _locate(self, rest: str) -> tuple[Path, str] | None:
        """The file to answer ``rest`` with and its Cache-Control; None for a 404."""
        root = self._root
        assert root is not None, "UiFiles.check() runs at start-up"
        index = root / INDEX
        parts = _segments(rest)
        if parts is None:
            return None
        if not parts:
            return index, NO_CACHE
        candidate = root.joinpath(*parts)
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            return None
        if not resolved.is_relative_to(root):
            return None  # a symlink out of the folder
        if resolved.is_file():
            hashed = parts[0] == "static" and _HASHED.search(parts[-1]) is not None
            return resolved, IMMUTABLE if hashed else NO_CACHE
        if resolved.is_dir() or (root / parts[0]).is_dir():
            # A folder of the build, or a file missing from one: not a client route.
            return None
        if len(parts) == 1 and Path(parts[0]).suffix.lower() in _CONTENT_TYPES:
            # /favicon.ico, /robots.txt: what browsers and crawlers ask of any site.
            return None
        return index, NO_CACHE


def add_ui(
    app: web.Application, prefix: str, folder: Path, websocket: WebSocketHandler | None
) -> None:
    """Serve the UI build in ``folder`` at ``prefix`` (the base path), after every other
    route; ``websocket`` answers the UI's upgrade on its root."""
    files = UiFiles(prefix, folder, websocket)
    app.router.register_resource(files)

    async def checked(app: web.Application) -> AsyncIterator[None]:
        await files.check(app)
        yield

    app.cleanup_ctx.append(checked)
