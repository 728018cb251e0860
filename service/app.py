"""The Starlette application: the websocket endpoint, the page, health, and the feed task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from quote_runtime.node import NODE_ID

from . import page, rest, security
from .assets import Assets
from .auth import Authenticator, Tier
from .connection import serve_websocket
from .delayed import DelayedFeed
from .feeds import Feed, make_feed
from .hub import Hub
from .metrics import CONTENT_TYPE, Metrics
from .registry import Registry
from .settings import Settings
from .sse import SSE_PATH, SseEndpoint
from .tape import Tape, make_tape
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


def default_hz(settings: Settings) -> float | None:
    """The rate of a client that asks for none: the fan-out's, or None (no cap) at 0 ms."""
    interval = settings.fanout_interval_ms
    return 1000 / interval if interval > 0 else None


class QuoteService:
    """What the routes share: the hubs, the registry of live clients, and the feed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Every quote of the day, shared by every process: recovery, gaps, /history.
        self.tape: Tape = make_tape(settings)
        self.hub = Hub(settings.max_symbols, default_hz=default_hz(settings), tape=self.tape,
                       max_recovery=settings.max_recovery,
                       every_queue_bytes=settings.every_queue_bytes)
        # The delayed tier (service/delayed.py): a hub of its own, fed from the tape.
        self.delayed_hub = Hub(settings.max_symbols, default_hz=default_hz(settings),
                               every_queue_bytes=settings.every_queue_bytes, delayed=True)
        self.delayed = DelayedFeed(settings, self.hub, self.delayed_hub, self.tape)
        self.hubs: dict[Tier, Hub] = {"realtime": self.hub, "delayed": self.delayed_hub}
        # Websockets and SSE streams (service/registry.py): admitted, swept and drained alike.
        self.registry = Registry(settings, self.hub.stats)
        # Tokens and entitlements (service/auth.py), shared by every route.
        self.auth = Authenticator(settings)
        self.feed: Feed = self._make_feed()
        self._feed_task: asyncio.Task[None] | None = None
        self._delayed_task: asyncio.Task[None] | None = None
        self.metrics = Metrics(self)
        # Origins and connections per address (service/security.py), websockets and SSE.
        self.gate = security.Gate(settings, self.hub.stats)
        # Set when the feed cannot go on: the process exits with it (see server.py), so a
        # supervisor restarts the worker (1) or gives up on a configuration error.
        self.exit_code: int | None = None
        self.on_fatal: Callable[[], None] | None = None

    def _make_feed(self) -> Feed:
        return make_feed(self.settings, self.hub)

    async def start(self) -> None:
        self._feed_task = asyncio.create_task(self._run_feed(), name="feed")
        self.registry.start(self.metrics.tick)
        self._delayed_task = asyncio.create_task(self.delayed.run(), name="delayed")

    async def _run_feed(self) -> None:
        from quote_runtime.exits import EXIT_CONFIG

        from .feeds.redis_edge import FeedMisconfigured

        try:
            await self.feed.run()
        except asyncio.CancelledError:
            raise
        except FeedMisconfigured as exc:
            log.error("cannot use REDIS_URL: %s; stopping", exc,
                      extra={"event": "fatal", "reason": str(exc)})
            self._fail(EXIT_CONFIG)
        except Exception:
            # Serving a feed that will never come back helps no one: end the process, so
            # the supervisor (or the orchestrator) starts a fresh one.
            log.exception("the feed task failed; stopping", extra={"event": "fatal"})
            self._fail(1)

    def _fail(self, exit_code: int) -> None:
        self.hub.set_feed("stale")
        self.exit_code = exit_code
        if self.on_fatal is not None:
            self.on_fatal()

    async def stop(self) -> None:
        await self.registry.stop()
        for task in (self._feed_task, self._delayed_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await self.hub.aclose()
        await self.delayed_hub.aclose()
        await self.feed.aclose()
        await self.tape.aclose()


class QuoteApp(Starlette):
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
            service: QuoteService = self.state.service
            # Origin (403) and the address's share (1008), before anything else.
            admitted, address = await service.gate.websocket(scope, receive, send)
            if not admitted:
                return
            try:
                await serve_websocket(WebSocket(scope, receive, send), service.registry,
                                      service.hubs, service.settings, service.auth)
            finally:
                service.gate.leave(address)
            return
        if scope["type"] == "http":  # sse.py aborts a stalled stream through it
            keep_server_send(scope, send)
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, web_dir: Path = WEB_DIR,
               js_dir: Path = JS_CLIENT_DIR) -> QuoteApp:
    settings = settings or Settings.from_env()
    service = QuoteService(settings)
    frame_ancestors = security.parse_frame_ancestors(settings.frame_ancestors)
    # /widget.js, /js/, /widget/, /static/, /examples/, and all of them under /v/<version>/.
    assets = Assets(web_dir, js_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    async def index(request: Request) -> Response:
        """The page with the board already in its tickers (service/page.py): prices without
        JavaScript, and a first paint the widget takes over without a flash."""
        news = page.load(web_dir / "index.html", web_dir / "widget" / "styles.js",
                         assets.prefix())
        # A reader's browser shows no token: the page holds what ANONYMOUS may see.
        anonymous = service.auth.anonymous
        board: dict[str, tuple[int, str]] = {}
        if anonymous is not None:
            if anonymous.tier == "delayed":
                await service.delayed.fresh()
            board = service.hubs[anonymous.tier].board
        html = news.render(board, request.query_params.get("symbols"))
        # Its one inline stylesheet, the widget's in each shadow root, allowed by its hash.
        csp = security.page_policy(news.css, frame_ancestors)
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": page.CACHE_CONTROL,
                                 "Content-Security-Policy": csp})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        """Ready only while the feed is heard: in Redis mode that needs a probe's round
        trip through pub/sub and a publisher that is not silent, not just a PING."""
        ready = service.hub.feed == "live" and not service.registry.draining
        return JSONResponse(
            {"node": NODE_ID, "feed": service.hub.feed, "draining": service.registry.draining,
             "symbols": len(service.hub.board),
             "connections": len(service.registry.sessions), **service.feed.report()},
            status_code=200 if ready else 503,
        )

    async def metrics(request: Request) -> Response:
        refusal = security.metrics_refusal(request.headers, settings.metrics_token)
        if refusal is not None:
            return refusal
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    async def ws_plain_get(request: Request) -> Response:
        return PlainTextResponse("this is a websocket endpoint: connect with ws://", 426,
                                 headers={"Upgrade": "websocket"})

    asyncapi_file = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
    asyncapi_yaml = asyncapi_file.read_text(encoding="utf-8") if asyncapi_file.is_file() else None

    async def asyncapi(request: Request) -> Response:
        """The protocol's AsyncAPI 3 document (docs/asyncapi.yaml), as YAML or as JSON;
        open to any origin so AsyncAPI tools can load it from here."""
        if asyncapi_yaml is None:
            return PlainTextResponse("the AsyncAPI document is not installed here", 404)
        if request.url.path.endswith(".yaml"):
            return Response(asyncapi_yaml, media_type="text/yaml; charset=utf-8",
                            headers=security.OPEN_TO_ALL)
        import yaml  # pyyaml: only this route needs it

        return JSONResponse(yaml.safe_load(asyncapi_yaml), headers=security.OPEN_TO_ALL)

    app = QuoteApp(
        routes=[
            Route("/", index),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            *rest.routes(service),  # GET /quotes and /history (service/rest.py)
            Route(WS_PATH, ws_plain_get),  # the websocket itself: QuoteApp
            Route(SSE_PATH, SseEndpoint(), methods=["GET", "OPTIONS"]),  # service/sse.py
            Route("/asyncapi.yaml", asyncapi),
            Route("/asyncapi.json", asyncapi),
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
    app.state.service = service
    return app
