"""The Starlette application: the composition root (create_app), and the websocket endpoint
served ahead of Starlette's layers (WebApp)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from . import rest, routes, security
from .assets import Assets
from .connection import serve_websocket
from .engine import Engine
from .settings import Settings
from .sse import SSE_PATH, SseEndpoint
from .uvicorn_private import keep_server_send

log = logging.getLogger("service.app")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# The JavaScript client (formatter and stream client), served to browsers under /js/: the
# widget imports it from there, and so can anyone's page.
JS_CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "js" / "src"

WS_PATH = "/ws"
# zlib's level 5, as /history's (rest.py): within a few per cent of 9's size at half the CPU.
GZIP_LEVEL = 5


class Compression(GZipMiddleware):
    """Starlette's gzip of HTTP answers, but not of the event stream, which it would only
    pass through (text/event-stream is excluded) while keeping a layer of its own alive for
    the hours a stream lasts."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == SSE_PATH:
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class WebApp(Starlette):
    """Starlette, with the websocket endpoint served ahead of its middleware and router.

    A websocket lives for hours, and every ASGI layer it passes keeps a coroutine frame
    alive all that time (error and exception middleware, router, route, session wrapper:
    about 4 KB a connection together), where HTTP requests pass in milliseconds. The
    server's own `send` is kept in the scope (uvicorn_private.py), before any middleware
    wraps it, for websockets and HTTP: connection.py writes through its transport, and
    connection.py and sse.py abort stalled peers through it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == WS_PATH:
            scope["app"] = self
            keep_server_send(scope, send)
            engine: Engine = self.state.engine
            # Origin (403) and the address's share (1008), before anything else.
            admitted, address = await engine.gate.websocket(scope, receive, send)
            if not admitted:
                return
            try:
                await serve_websocket(WebSocket(scope, receive, send), engine.registry,
                                      engine.tiers, engine.settings, engine.auth)
            finally:
                engine.gate.leave(address)
            return
        if scope["type"] == "http":  # sse.py aborts a stalled stream through it
            keep_server_send(scope, send)
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, web_dir: Path = WEB_DIR,
               js_dir: Path = JS_CLIENT_DIR) -> WebApp:
    """The composition root: the engine, the site's files, the routes and the middleware."""
    settings = settings or Settings.from_env()
    engine = Engine(settings)
    frame_ancestors = security.parse_frame_ancestors(settings.frame_ancestors)
    # /widget.js, /js/, /widget/, /static/, /examples/, and all of them under /v/<version>/.
    assets = Assets(web_dir, js_dir)
    asyncapi_file = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
    asyncapi_yaml = asyncapi_file.read_text(encoding="utf-8") if asyncapi_file.is_file() else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = WebApp(
        routes=[
            Route("/", routes.index),
            Route("/healthz", routes.healthz),
            Route("/readyz", routes.readyz),
            Route("/metrics", routes.metrics),
            Route("/quotes", rest.quotes),
            Route("/history", rest.history),
            Route(WS_PATH, routes.ws_plain_get),  # the websocket itself: WebApp
            Route(SSE_PATH, SseEndpoint(), methods=["GET", "OPTIONS"]),  # service/sse.py
            Route("/asyncapi.yaml", routes.asyncapi),
            Route("/asyncapi.json", routes.asyncapi),
            *assets.routes,  # service/assets.py
        ],
        lifespan=lifespan,
        middleware=[
            # Outermost: it compresses what the headers below were added to.
            Middleware(Compression, compresslevel=GZIP_LEVEL),
            # nosniff, Referrer-Policy and a CSP on every HTTP response (service/security.py).
            Middleware(security.SecurityHeaders, frame_ancestors=frame_ancestors),
        ],
    )
    app.state.engine = engine
    app.state.site = routes.Site(web_dir, assets, frame_ancestors, asyncapi_yaml)
    return app
