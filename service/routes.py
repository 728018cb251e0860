"""The HTTP routes besides /quotes and /history (rest.py), /sse (sse.py) and the static files
(assets.py): the page, health, readiness, metrics and the AsyncAPI document.

Each is a module-level function of a request: the engine and the site's files come from
the application (`engine_of`, `site_of`), so a test can call a route with a request of its
own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from quote_runtime.node import NODE_ID

from . import page, security
from .assets import Assets
from .compact import Entry
from .engine import engine_of
from .metrics import CONTENT_TYPE


@dataclass(frozen=True, slots=True)
class Site:
    """What the page and the documents are made from, fixed when the app is built."""

    web_dir: Path
    assets: Assets
    # Who may frame the page (FRAME_ANCESTORS, parsed once).
    frame_ancestors: str
    # docs/asyncapi.yaml as installed; None where it is not.
    asyncapi_yaml: str | None


def site_of(request: HTTPConnection) -> Site:
    site: Site = request.app.state.site
    return site


async def index(request: Request) -> Response:
    """The page with the board already in its tickers (service/page.py): prices without
    JavaScript, and a first paint the widget takes over without a flash."""
    engine, site = engine_of(request), site_of(request)
    news = page.load(site.web_dir / "index.html", site.web_dir / "widget" / "styles.js",
                     site.assets.prefix())
    # A reader's browser shows no token: the page holds what ANONYMOUS may see.
    anonymous = engine.auth.anonymous
    board: dict[str, Entry] = {}
    if anonymous is not None:
        board = (await engine.tiers[anonymous.tier].fresh()).board
    html = news.render(board, request.query_params.get("symbols"))
    # Its one inline stylesheet, the widget's in each shadow root, allowed by its hash.
    csp = security.page_policy(news.css, site.frame_ancestors)
    return Response(html, media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": page.CACHE_CONTROL, "Content-Security-Policy": csp})


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    """Ready only while the feed is heard: in Redis mode that needs a probe's round trip
    through pub/sub and a publisher that is not silent, not just a PING."""
    engine = engine_of(request)
    hub, registry = engine.hub, engine.registry
    ready = hub.feed == "live" and not registry.draining
    return JSONResponse(
        {"node": NODE_ID, "feed": hub.feed, "draining": registry.draining,
         "symbols": len(hub.board), "connections": len(registry.sessions),
         **engine.feed.report()},
        status_code=200 if ready else 503,
    )


async def metrics(request: Request) -> Response:
    engine = engine_of(request)
    refusal = security.metrics_refusal(request.headers, engine.settings.metrics_token)
    if refusal is not None:
        return refusal
    return Response(engine.metrics.render(), media_type=CONTENT_TYPE)


async def ws_plain_get(request: Request) -> Response:
    """/ws asked for without an upgrade: say what it is."""
    return PlainTextResponse("this is a websocket endpoint: connect with ws://", 426,
                             headers={"Upgrade": "websocket"})


async def asyncapi(request: Request) -> Response:
    """The protocol's AsyncAPI 3 document (docs/asyncapi.yaml), as YAML or as JSON; open to
    any origin so AsyncAPI tools can load it from here."""
    document = site_of(request).asyncapi_yaml
    if document is None:
        return PlainTextResponse("the AsyncAPI document is not installed here", 404)
    if request.url.path.endswith(".yaml"):
        return Response(document, media_type="text/yaml; charset=utf-8",
                        headers=security.OPEN_TO_ALL)
    import yaml  # pyyaml: only this route needs it

    return JSONResponse(yaml.safe_load(document), headers=security.OPEN_TO_ALL)
