"""The quotes over plain HTTP, for services that poll and for the page's first paint.

    GET /quotes[?symbols=A,B]                      the board: {"quotes": [...], "feed": "live",
                                                   "unknown": [...]}
    GET /history[?symbols=A,B][&since=MS][&points=N]
                                                   each symbol's day from its tape, reduced:
                                                   {"history": {"A": [[ts, price], ...]}, "points": N}

`symbols` is read as the websocket's `?symbols=` is (absent, empty or `*`: every symbol on
the board). A bad query is a 400 with {"error": code, "message": ...}, the protocol's
codes. Both answers are public market data: open to any origin, cacheable for a second.

/history reads the tape through the engine's cache (service/history_cache.py).

The routes are module-level functions of a request: the engine is the application's
(`engine_of`), so a test can call each with a request of its own.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Mapping

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .auth import INVALID_TOKEN_CHALLENGE, UNAUTHORIZED, AuthError, Grant, token_of
from .compact import Entry
from .engine import Engine, engine_of
from .history import DEFAULT_POINTS, MAX_POINTS, MIN_POINTS
from .history_cache import TapeUnavailable
from .hub import unknown
from .protocol import ALL, BAD_REQUEST, FORBIDDEN, ProtocolError, Symbols, parse_query_symbols
from .security import OPEN_TO_ALL

log = logging.getLogger("service.rest")

# A second: a poller or a CDN gets the board at most a second old, and a burst of page
# loads costs the service one answer a second per URL.
CACHE_CONTROL = "public, max-age=1"
HEADERS = {"Cache-Control": CACHE_CONTROL, **OPEN_TO_ALL}
UNAVAILABLE = "unavailable"
# Bodies above this are gzipped for a client that accepts it (34 symbols at 300 points is
# some 250 KB of JSON; its digits compress several times over).
GZIP_ABOVE = 1400

_DIGITS = re.compile(r"[0-9]{1,16}")


class BadQuery(Exception):
    def __init__(self, code: str, message: str, status: int = 400,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.headers = headers


def error(code: str, message: str, status: int = 400, headers: Mapping[str, str] | None = None
          ) -> Response:
    return JSONResponse({"error": code, "message": message}, status,
                        headers={"Cache-Control": "no-store", **OPEN_TO_ALL, **(headers or {})})


def query_symbols(request: Request, max_symbols: int) -> Symbols:
    """`?symbols=` as the websocket reads it; absent or empty: every symbol."""
    raw = request.query_params.get("symbols", "")
    try:
        symbols = parse_query_symbols(raw, max_symbols)
    except ProtocolError as exc:
        raise BadQuery(exc.code, exc.message) from None
    return ALL if symbols is None else symbols


def query_int(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = int(raw) if _DIGITS.fullmatch(raw) else None
    if value is None or not lo <= value <= hi:
        shown = raw if len(raw) <= 20 else raw[:20] + "…"
        raise BadQuery(BAD_REQUEST, f"{name} must be an integer from {lo} to {hi}, got {shown!r}")
    return value


def on_board(board: Mapping[str, object], symbols: Symbols) -> list[str]:
    """The requested symbols the board holds, sorted."""
    return sorted(board) if symbols == ALL else sorted(s for s in symbols if s in board)


def board_json(board: Mapping[str, Entry], symbols: Symbols, feed: str) -> bytes:
    """{"quotes": [...], "feed": ..., "unknown": [...]}: the board's own JSON of each quote
    (the websocket's quote schema, seq included), by symbol; `unknown` the requested symbols
    without a quote, sorted, as the websocket's ack names them (none for "*")."""
    quotes = ",".join(board[s][1] for s in on_board(board, symbols))
    return (b'{"quotes":[' + quotes.encode() + b'],"feed":' + orjson.dumps(feed)
            + b',"unknown":' + orjson.dumps(unknown(board, symbols)) + b"}")


def maybe_gzip(request: Request, body: bytes, headers: dict[str, str]) -> bytes:
    headers["Vary"] = "Accept-Encoding"
    if len(body) > GZIP_ABOVE and "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return gzip.compress(body, compresslevel=5)
    return body


def entitled(engine: Engine, request: Request, symbols: Symbols) -> tuple[Grant, Symbols]:
    """The symbols asked for, as the request's token (or ANONYMOUS) allows: 401 for a token
    that does not pass, 403 naming the symbols it does not cover; "*" is every entitled
    symbol."""
    try:
        grant = engine.auth.grant_for(token_of(request))
    except AuthError as exc:
        raise BadQuery(UNAUTHORIZED, str(exc), 401, INVALID_TOKEN_CHALLENGE) from None
    if grant.symbols == ALL:
        return grant, symbols
    if symbols == ALL:
        return grant, grant.symbols
    _, refused = grant.split(symbols)
    if refused:
        raise BadQuery(FORBIDDEN, "not covered by your token: " + ", ".join(refused[:20]), 403)
    return grant, symbols


async def quotes(request: Request) -> Response:
    """GET /quotes: the board of the request's tier."""
    engine = engine_of(request)
    try:
        grant, symbols = entitled(engine, request,
                                  query_symbols(request, engine.settings.max_symbols))
    except BadQuery as exc:
        return error(exc.code, exc.message, exc.status, exc.headers)
    hub = await engine.tiers[grant.tier].fresh()
    return Response(board_json(hub.board, symbols, hub.feed), media_type="application/json",
                    headers=HEADERS)


async def history(request: Request) -> Response:
    """GET /history: each symbol's day from the tape, reduced, up to the tier's reach."""
    engine = engine_of(request)
    try:
        grant, symbols = entitled(engine, request,
                                  query_symbols(request, engine.settings.max_symbols))
        since = query_int(request, "since", None, 0, 2**53)
        points = query_int(request, "points", DEFAULT_POINTS, MIN_POINTS, MAX_POINTS)
    except BadQuery as exc:
        return error(exc.code, exc.message, exc.status, exc.headers)
    assert points is not None
    tier = engine.tiers[grant.tier]
    board = (await tier.fresh()).board
    until = tier.until_ms()
    known = on_board(board, symbols)
    cache = engine.history
    try:
        cached = await cache.series(known)
    except TapeUnavailable as exc:
        return error(UNAVAILABLE, f"{exc}; try again", 503, {"Retry-After": "1"})
    wanted = known if symbols == ALL else sorted(symbols)
    out = {s: cached[s].reduced(points, since, until) if s in cached else [] for s in wanted}
    cache.evict()
    headers = dict(HEADERS)
    body = maybe_gzip(request, orjson.dumps({"history": out, "points": points}), headers)
    return Response(body, media_type="application/json", headers=headers)
