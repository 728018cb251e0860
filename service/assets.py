"""The static files, at their own URLs and under a content-versioned one.

The tree: `/widget.js` (web/widget.js), `/widget/*.js` (web/widget/), `/js/*.js` (the JS
client, clients/js/src), `/static/*` (web/: style.css, page.js), `/examples/*`
(web/examples/). Other sites embed `/widget.js` by that URL, so those URLs stay, and
revalidate after SHORT_CACHE (ETag, Last-Modified).

The same tree is served under `/v/<version>/` too (`/v/<version>/widget.js`,
`/v/<version>/js/stream.js`, ...), its layout kept so the modules' relative imports stay
inside it. `<version>` is a hash of every file's content; a changed file gives new URLs, so
the current version is cached for a year (IMMUTABLE). The page (GET /) links only there.
Another version is served too, with the files this process has, but never kept (STALE):
behind a proxy during a rolling deploy, a page from one instance fetching from another
neither gets a 404 nor leaves a cache holding one version's bytes under another's URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .security import OPEN_TO_ALL

JS_TYPE = "text/javascript; charset=utf-8"

PREFIX = "/v"
# Hex digits of the version; web/widget/quote-ticker.js recognises /v/<12 hex>/ by this.
VERSION_LENGTH = 12
IMMUTABLE = "public, max-age=31536000, immutable"
STALE = "no-cache"
# Five minutes: an embedding page picks up a new widget soon, and revalidates cheaply.
SHORT_CACHE = "public, max-age=300"


class ModuleFiles(StaticFiles):
    """The ES modules of a folder, served as /widget.js is: `text/javascript`, open to any
    origin (a page on another site fetches /widget.js, and so every module it imports, with
    CORS), ETag and Last-Modified. Only `*.js`: nothing else in the folder is published."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if not path.endswith(".js"):
            raise HTTPException(status_code=404)
        return await super().get_response(path, scope)

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result,
                      scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(OPEN_TO_ALL)
        if response.status_code == 200:
            response.headers["content-type"] = JS_TYPE
        return response


class OneFile:
    """One file of a StaticFiles folder at a path of its own (/widget.js): the folder's
    headers, conditional requests and 404s."""

    def __init__(self, files: StaticFiles, name: str) -> None:
        self.files = files
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.files.get_response(self.name, scope)
        await response(scope, receive, send)


class Cached:
    """A Cache-Control on an app's 200 and 304 answers (not on its errors), chosen per
    request."""

    def __init__(self, app: ASGIApp, policy: Callable[[Scope], str]) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy = self.policy(scope)

        async def send_cached(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (200, 304):
                headers = MutableHeaders(raw=list(message.get("headers", ())))
                headers["cache-control"] = policy
                message = {**message, "headers": headers.raw}
            await send(message)

        await self.app(scope, receive, send_cached)


def _files(folder: Path, under: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Each file under `folder`, by its path relative to it, in a fixed order."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir():
            yield from _files(Path(entry.path), f"{under}{entry.name}/")
        elif entry.is_file():
            yield under + entry.name, entry.stat()


class Version:
    """A hash of the content of every file under some folders, hashed again when one is
    changed (its mtime or size), added or removed; the stat walk is a few dozen files."""

    def __init__(self, *folders: Path) -> None:
        self.folders = folders
        self._stamp: tuple[tuple[int, str, int, int], ...] | None = None
        self._version = ""

    def __call__(self) -> str:
        found = [(i, name, st) for i, folder in enumerate(self.folders)
                 for name, st in _files(folder)]
        stamp = tuple((i, name, st.st_mtime_ns, st.st_size) for i, name, st in found)
        if stamp != self._stamp:
            # Names relative to their folder: the same files hash alike wherever installed.
            digest = hashlib.sha256()
            for i, name, _ in found:
                digest.update(f"{i}/{name}\0".encode())
                # Removed since the walk: the next call's walk sees it.
                with contextlib.suppress(FileNotFoundError):
                    digest.update((self.folders[i] / name).read_bytes())
            self._version = digest.hexdigest()[:VERSION_LENGTH]
            self._stamp = stamp
        return self._version


class Assets:
    """The static tree of web/ and the JS client, and its routes (both kinds of URL)."""

    def __init__(self, web_dir: Path, js_dir: Path) -> None:
        self.version = Version(web_dir, js_dir)
        tree: list[tuple[str, ASGIApp]] = [
            ("/widget.js", OneFile(ModuleFiles(directory=web_dir, check_dir=False), "widget.js")),
            # /widget.js imports ./js/*.js and ./widget/*.js, relative to itself.
            ("/js", ModuleFiles(directory=js_dir, check_dir=False)),
            ("/widget", ModuleFiles(directory=web_dir / "widget", check_dir=False)),
            ("/examples", StaticFiles(directory=web_dir / "examples", check_dir=False)),
            ("/static", StaticFiles(directory=web_dir, check_dir=False)),
        ]

        def route(path: str, app: ASGIApp) -> BaseRoute:
            return Route(path, app) if path.endswith(".js") else Mount(path, app)

        def short(scope: Scope) -> str:
            return SHORT_CACHE

        def by_version(scope: Scope) -> str:
            return IMMUTABLE if scope["path_params"].get("version") == self.version() else STALE

        versioned = Router([route(path, app) for path, app in tree])
        self.routes: list[BaseRoute] = [
            *(route(path, Cached(app, short)) for path, app in tree),
            Mount(PREFIX + "/{version}", Cached(versioned, by_version)),
        ]

    def prefix(self) -> str:
        """Where the current version's tree is: `/v/<version>`."""
        return f"{PREFIX}/{self.version()}"
