"""`GET /sse`: the websocket's frames as Server-Sent Events, for clients without a websocket.

One stream is one subscription, made from the URL (`?symbols=`, `?mode=`, `?max_hz=`,
`?since=`): the client cannot send commands, so nothing else changes it. Each frame the
websocket would send becomes an event named after the frame's type, its JSON as the data;
the events that carry quotes (`snapshot`, `quotes`) also carry an `id:`, the stream's
resume position: the last seq delivered of each symbol, `SYM:seq,SYM:seq` sorted by
symbol. A browser's EventSource sends it back as `Last-Event-ID` when it reconnects; in
every mode that is a subscribe with `since` (the tape fills the gap), in conflated mode
the stream just starts with a fresh snapshot.

An `EventStream` is a `Session` (session.py), as a websocket `Connection` is: the same
token expiry, heartbeats, send timeout and close, and the registry counts, sweeps and
drains it with them. Its writes go through ASGI: an SSE client is a rarity next to the
websocket viewers, so it takes none of the websocket's direct-write shortcuts. The pure
parts (the position, the event text, the query) are functions below, tested without
sockets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.datastructures import Headers, QueryParams
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from quote_core.quote import QuoteError, normalize_symbol

from . import protocol, security, uvicorn_private
from .auth import INVALID_TOKEN_CHALLENGE, UNAUTHORIZED, AuthError, Grant, token_of
from .engine import Engine, engine_of
from .protocol import ALL, BAD_REQUEST, Mode, ProtocolError, Symbols
from .security import OPEN_TO_ALL
from .session import Session
from .settings import Settings
from .tiers import Tier
from .wire import Frame

log = logging.getLogger("service.sse")

SSE_PATH = "/sse"
# How long a browser's EventSource waits before it reconnects (the stream's `retry:`).
RETRY_MS = 2000
# Retry-After of a refused stream (admission, draining), in seconds.
RETRY_AFTER_S = 2
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
    (b"access-control-allow-origin", b"*"),
]
# EventSource polyfills send these with fetch, which makes a cross-origin preflight.
PREFLIGHT_HEADERS = {
    **OPEN_TO_ALL,
    "Access-Control-Allow-Methods": "GET",
    "Access-Control-Allow-Headers": "Last-Event-ID, Cache-Control, Accept",
    "Access-Control-Max-Age": "86400",
}

_TYPE_PREFIX = '{"type":"'


# The resume position


def encode_position(position: Mapping[str, int]) -> str:
    """`SYM:seq,SYM:seq`, sorted by symbol (symbols are A-Z 0-9 . -, so `:` and `,` are
    free); "" for none."""
    return ",".join(f"{symbol}:{seq}" for symbol, seq in sorted(position.items()))


def decode_position(raw: str, what: str = "since") -> dict[str, int]:
    """The symbols and seqs of an encoded position (`?since=` or `Last-Event-ID`); raises
    ProtocolError (bad_request) naming `what` when it is not one."""
    position: dict[str, int] = {}
    raw = raw.strip()
    if not raw:
        return position
    for part in raw.split(","):
        name, colon, seq = part.strip().partition(":")
        if not colon or not seq.isascii() or not seq.isdigit() or len(seq) > 16:
            raise ProtocolError(BAD_REQUEST, f"{what}: {part[:40]!r} is not SYMBOL:seq")
        try:
            symbol = normalize_symbol(name)
        except QuoteError as exc:
            raise ProtocolError(BAD_REQUEST, f"{what}: {exc}") from None
        if symbol in position:
            raise ProtocolError(BAD_REQUEST, f"{what} names {symbol} twice")
        position[symbol] = int(seq)
    return position


def advance(position: dict[str, int], frame: Frame) -> None:
    """Move `position` past the quotes of a `snapshot` or `quotes` frame, whose seqs the
    frame carries (wire.py): never back (a snapshot may be older than a recovery)."""
    for symbol, seq in frame.seqs():
        if seq > position.get(symbol, -1):
            position[symbol] = seq


# Events


def frame_type(frame: str) -> str:
    """The `type` of a frame without quotes, read off its start: protocol.py builds every
    frame `{"type":"...` ("message", the SSE default, for anything else)."""
    if frame.startswith(_TYPE_PREFIX):
        end = frame.find('"', len(_TYPE_PREFIX))
        if end > 0:
            return frame[len(_TYPE_PREFIX):end]
    return "message"


def format_event(kind: str, data: str, id: str | None = None) -> str:
    """One event: `event:`, `id:` (when given), `data:`, then the blank line that ends it.
    JSON frames are one line; anything with line breaks becomes several `data:` lines,
    which the client joins with `\\n` again."""
    lines = [f"event: {kind}\n"]
    if id is not None:
        lines.append(f"id: {id}\n")
    if "\n" in data or "\r" in data:
        lines.extend(f"data: {line}\n" for line in data.replace("\r\n", "\n")
                     .replace("\r", "\n").split("\n"))
    else:
        lines.append(f"data: {data}\n")
    lines.append("\n")
    return "".join(lines)


def close_event(code: int, reason: str) -> str:
    """The stream's last event when the server ends it (4008 slow consumer, 1001 going
    away, 1011 internal), in the websocket's close codes."""
    data = orjson.dumps({"type": "close", "code": code, "reason": reason}).decode()
    return format_event("close", data)


def retry_line(ms: int = RETRY_MS) -> str:
    return f"retry: {ms}\n\n"


# The request


@dataclass(frozen=True, slots=True)
class StreamRequest:
    symbols: Symbols
    mode: Mode = "conflated"
    max_hz: float | None = None
    # Every mode: symbol -> the last seq the client holds (`?since=` or Last-Event-ID).
    since: dict[str, int] | None = None
    # `?encoding=` as given (None: not asked); Session reads it.
    encoding: str | None = None


def parse_request(params: QueryParams | Mapping[str, str], headers: Mapping[str, str],
                  max_symbols: int) -> StreamRequest:
    """The subscription a stream asks for; ProtocolError (answered with 400) when any of
    it is wrong, as a websocket's query would get an error frame.

    `Last-Event-ID` (a reconnecting EventSource's) wins over `?since=` (the URL it
    reconnects to is the first one); it is ignored in conflated mode, which resumes with
    a fresh snapshot, and so are its symbols that the URL does not subscribe."""
    raw_symbols = params.get("symbols")
    symbols = None if raw_symbols is None else protocol.parse_query_symbols(
        raw_symbols, max_symbols)
    if symbols is None:
        raise ProtocolError(BAD_REQUEST, 'a stream needs ?symbols= (a comma-separated list '
                            'or "*")')
    mode = protocol.parse_mode(params.get("mode", "conflated").strip() or "conflated")
    raw_hz = params.get("max_hz")
    max_hz = None if raw_hz is None else protocol.parse_query_max_hz(raw_hz)
    if max_hz is not None and mode == "every":
        raise ProtocolError(BAD_REQUEST, "max_hz does not apply to mode every: every quote "
                            "is sent")
    raw_since = params.get("since")
    if raw_since is not None and mode != "every":
        raise ProtocolError(BAD_REQUEST, "since needs mode=every")
    last_id = headers.get("last-event-id")
    since: dict[str, int] | None = None
    if mode == "every" and last_id is not None and last_id.strip():
        resumed = decode_position(last_id, "Last-Event-ID")
        if symbols != ALL:
            resumed = {s: seq for s, seq in resumed.items() if s in symbols}
        since = protocol.parse_since(resumed, symbols, max_symbols)
    elif raw_since is not None and raw_since.strip():
        since = protocol.parse_since(decode_position(raw_since), symbols, max_symbols)
    return StreamRequest(symbols, mode, max_hz, since, params.get("encoding"))


def error_response(exc: ProtocolError, status: int = 400) -> Response:
    return JSONResponse({"error": exc.code, "message": exc.message}, status_code=status,
                        headers=OPEN_TO_ALL)


# The stream


class EventStream(Session):
    """One SSE client: a Session whose outbox a writer task turns into events."""

    __slots__ = ("_peer", "_recovery", "_server_send", "position", "request")

    def __init__(self, tier: Tier, settings: Settings, request: StreamRequest,
                 peer: str = "?", grant: Grant | None = None) -> None:
        # What its token allows (service/auth.py); it cannot send a fresh one, so when it
        # expires the stream ends after TOKEN_GRACE_S and the client comes back with one.
        super().__init__(tier, settings, grant or Grant(), encoding=request.encoding)
        self.request = request
        self._peer = peer
        # symbol -> the last seq written on this stream: each quote event's id. A resumed
        # stream starts where the client was, so a symbol quiet since then keeps its place.
        self.position: dict[str, int] = dict(request.since or {})
        # The server's own send (uvicorn_private.py), for the abort of a stalled peer.
        self._server_send: Any = None
        self._recovery: asyncio.Task[None] | None = None

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def who(self) -> str:
        return f"the event stream of {self._peer}"

    # Session

    def wake(self) -> None:
        self._resume()

    def _abandon(self, sender: asyncio.Task[None]) -> None:
        """Drop the connection rather than leave its buffers to a peer that never reads
        (ASGI has no abort: uvicorn's transport, behind the server's own send)."""
        uvicorn_private.abort(self._server_send)
        sender.cancel()

    # Lifetime

    def open(self) -> None:
        """Join the hub and queue what the stream starts with: welcome, the feed's state
        if stale, then the subscription's ack and snapshot (or, with `since`, its
        recovery, which the hub queues once the tape is read). Raises ProtocolError
        (nothing subscribed, the stream not joined) when the hub refuses it."""
        request = self.request
        hub = self.hub
        assert self.grant is not None
        try:
            self.join()
            self._recovery = hub.subscribe(self, None, request.symbols, request.max_hz,
                                           mode=request.mode, since=request.since,
                                           entitled=self.grant.symbols)
        except BaseException:
            hub.remove(self)
            raise
        if self._recovery is not None:
            self._recovery.add_done_callback(self._recovered)

    def _recovered(self, task: asyncio.Task[None]) -> None:
        self._recovery = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("recovering the event stream of %s failed", self.peer, exc_info=exc)
            self.close(protocol.CLOSE_INTERNAL, "internal error")

    async def run(self, receive: Receive, send: Send, server_send: Any = None) -> None:
        """Answer with the stream until the client leaves or the stream is closed; leaves
        the hub at the end, however it ends. `open` first. `server_send`: the server's own
        send, through which a stalled peer is aborted (None: it is not)."""
        self._server_send = server_send
        loop = asyncio.get_running_loop()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
            writer = self._sender = loop.create_task(self._write(send))
            listener = loop.create_task(_until_disconnect(receive))
            try:
                await asyncio.wait((writer, listener), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (writer, listener):
                    task.cancel()
                for result in await asyncio.gather(writer, listener, return_exceptions=True):
                    if isinstance(result, Exception):
                        log.error("the event stream of %s failed", self.peer, exc_info=result)
        finally:
            self.hub.remove(self)
            self._server_send = None

    async def _write(self, send: Send) -> None:
        """Write whatever is due as one chunk of events; at a close, the `close` event and
        the end of the response."""
        loop = asyncio.get_running_loop()
        outbox = self.outbox
        start = retry_line()
        while True:
            if not outbox and self.closing is None:
                await self._due()
                continue
            chunk = start + self.events(outbox.take())
            start = ""
            last = self.closing is not None and not outbox
            if last:
                assert self.closing is not None
                chunk += close_event(*self.closing)
            if chunk:
                self.sending_since = loop.time()
                await send({"type": "http.response.body", "body": chunk.encode(),
                            "more_body": not last})
                self._sent(loop.time())
            if last:
                return

    def events(self, frames: Iterable[str | Frame]) -> str:
        """The events of these frames, the quote events with the position after each."""
        out = []
        position = self.position
        for frame in frames:
            if isinstance(frame, str):
                out.append(format_event(frame_type(frame), frame))
            else:
                advance(position, frame)
                out.append(format_event(frame.kind, frame.text, encode_position(position)))
        return "".join(out)


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


class SseEndpoint:
    """The ASGI app of `GET /sse` (a Route in app.py)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        engine = engine_of(HTTPConnection(scope))
        method = scope.get("method", "GET")
        if not engine.gate.origin_allowed(scope):  # ALLOWED_ORIGINS (service/security.py)
            await security.forbidden_origin_response()(scope, receive, send)
            return
        if method == "OPTIONS":
            await Response(status_code=204, headers=PREFLIGHT_HEADERS)(scope, receive, send)
            return
        settings = engine.settings
        try:
            grant = engine.auth.grant_for(token_of(HTTPConnection(scope)))
        except AuthError as exc:
            engine.hub.stats["auth_refused"] += 1
            await JSONResponse({"error": UNAUTHORIZED, "message": str(exc)}, status_code=401,
                               headers={**OPEN_TO_ALL, **INVALID_TOKEN_CHALLENGE}
                               )(scope, receive, send)
            return
        try:
            request = parse_request(QueryParams(scope.get("query_string", b"")),
                                    Headers(scope=scope), settings.max_symbols)
        except ProtocolError as exc:
            engine.hub.stats[f"error_{exc.code}"] += 1
            await error_response(exc)(scope, receive, send)
            return
        if method == "HEAD":
            await Response(headers=dict(
                (k.decode(), v.decode()) for k, v in STREAM_HEADERS))(scope, receive, send)
            return
        # The address's connect rate, and its share (MAX_CONNECTIONS_PER_IP), held while
        # the stream is served.
        address = security.client_address(scope)
        refusal = engine.gate.enter(address)
        if refusal is not None:
            await security.refusal_response(refusal)(scope, receive, send)
            return
        try:
            await self._serve(engine, request, grant, scope, receive, send)
        finally:
            engine.gate.leave(address)

    async def _serve(self, engine: Engine, request: StreamRequest, grant: Grant,
                     scope: Scope, receive: Receive, send: Send) -> None:
        """Admission (MAX_CONNECTIONS, MAX_CONNECTS_PER_S, draining), then the stream."""
        settings = engine.settings
        registry = engine.registry
        client = scope.get("client")
        refusal = registry.admit(client[0] if client else "?")
        if refusal is not None:
            await JSONResponse({"error": "try_again_later", "message": refusal},
                               status_code=503,
                               headers={**OPEN_TO_ALL, "Retry-After": str(RETRY_AFTER_S)}
                               )(scope, receive, send)
            return
        stream = EventStream(engine.tiers[grant.tier], settings, request,
                             f"{client[0]}:{client[1]}" if client else "?", grant)
        try:
            stream.open()
        except ProtocolError as exc:
            engine.hub.stats[f"error_{exc.code}"] += 1
            await error_response(exc)(scope, receive, send)
            return
        registry.add(stream)
        try:
            await stream.run(receive, send, uvicorn_private.server_send(scope))
        finally:
            registry.remove(stream)

