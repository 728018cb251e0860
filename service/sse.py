"""`GET /sse`: the websocket's frames as Server-Sent Events, for clients without a websocket.

One stream is one subscription, made from the URL (`?symbols=`, `?mode=`, `?max_hz=`,
`?since=`): the client cannot send commands, so nothing else changes it. Each frame the
websocket would send becomes an event named after the frame's type, its JSON as the data;
the events that carry quotes (`snapshot`, `quotes`) also carry an `id:`, the stream's
resume position: the last seq delivered of each symbol, `SYM:seq,SYM:seq` sorted by
symbol. A browser's EventSource sends it back as `Last-Event-ID` when it reconnects; in
every mode that is a subscribe with `since` (the tape fills the gap), in conflated mode
the stream just starts with a fresh snapshot.

An `EventStream` is a hub `Subscriber` with an `Outbox`, as a websocket `Connection` is,
and the service counts, sweeps (heartbeats, stuck sends) and drains it with them. Its
writes go through ASGI: an SSE client is a rarity next to the websocket viewers, so it
takes none of the websocket's direct-write shortcuts. The pure parts (the position, the
event text, the query) are functions below, tested without sockets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import Headers, QueryParams
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from quote_core.quote import QuoteError, normalize_symbol, now_ms

from . import protocol, security, uvicorn_private
from .auth import INVALID_TOKEN_CHALLENGE, UNAUTHORIZED, AuthError, Grant, token_of
from .connection import welcome
from .hub import Hub
from .outbox import Outbox
from .protocol import ALL, BAD_REQUEST, Mode, ProtocolError, Symbols
from .security import OPEN_TO_ALL
from .settings import Settings
from .wire import Prepared

if TYPE_CHECKING:
    from .app import QuoteService

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
_QUOTE_EVENTS = ("snapshot", "quotes")


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


def advance(position: dict[str, int], frame: str) -> bool:
    """Move `position` past the quotes of a `snapshot` or `quotes` frame; whether the
    frame is one (and so its event carries an id)."""
    if frame_type(frame) not in _QUOTE_EVENTS:
        return False
    for quote in orjson.loads(frame)["quotes"]:
        symbol, seq = quote["symbol"], quote.get("seq")
        if isinstance(seq, int) and seq > position.get(symbol, -1):
            position[symbol] = seq
    return True


# Events


def frame_type(frame: str) -> str:
    """A server frame's `type`, read off its start (every frame is built `{"type":"...`,
    see protocol.py); parsed only when it is not."""
    if frame.startswith(_TYPE_PREFIX):
        end = frame.find('"', len(_TYPE_PREFIX))
        if end > 0:
            return frame[len(_TYPE_PREFIX):end]
    kind = orjson.loads(frame).get("type")
    return kind if isinstance(kind, str) else "message"


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
    return StreamRequest(symbols, mode, max_hz, since)


def error_response(exc: ProtocolError, status: int = 400) -> Response:
    return JSONResponse({"error": exc.code, "message": exc.message}, status_code=status,
                        headers=OPEN_TO_ALL)


# The stream


class EventStream:
    """One SSE client: a hub Subscriber whose outbox a writer task turns into events."""

    __slots__ = ("_recovery", "_server_send", "_waiter", "_writer", "closing", "expired_at",
                 "grant", "hub", "last_sent", "outbox", "peer", "position", "request",
                 "sending_since", "settings")

    def __init__(self, hub: Hub, settings: Settings, request: StreamRequest,
                 peer: str = "?", grant: Grant | None = None) -> None:
        self.hub = hub
        # What its token allows (service/auth.py); it cannot send a fresh one, so when it
        # expires the stream ends after TOKEN_GRACE_S and the client comes back with one.
        self.grant = grant or Grant()
        self.expired_at: float | None = None
        self.settings = settings
        self.request = request
        self.peer = peer
        self.outbox = Outbox()
        self.closing: tuple[int, str] | None = None
        # symbol -> the last seq written on this stream: each quote event's id. A resumed
        # stream starts where the client was, so a symbol quiet since then keeps its place.
        self.position: dict[str, int] = dict(request.since or {})
        self.sending_since: float | None = None
        self.last_sent = asyncio.get_running_loop().time()
        self._waiter: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        # The server's own send (uvicorn_private.py), for the abort of a stalled peer.
        self._server_send: Any = None
        self._recovery: asyncio.Task[None] | None = None

    # Subscriber

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def overflow(self, reason: str) -> None:
        if self.closing is None:  # counted by the hub, as a websocket's is
            log.warning("closing the event stream of %s as a slow consumer: %s", self.peer,
                        reason, extra={"event": "client_closed",
                                       "code": protocol.CLOSE_SLOW_CONSUMER})
        self.close(protocol.CLOSE_SLOW_CONSUMER, "slow consumer")

    # What the service does with every client (sweeper, draining)

    def close(self, code: int, reason: str) -> None:
        """End the stream after what is already due, with a `close` event; the first
        reason wins."""
        if self.closing is None:
            self.closing = (code, reason)
            self.wake()

    def check(self, now: float) -> None:
        """Called about every second by the service's sweeper: a heartbeat after
        `heartbeat_s` of silence; a write stuck past `send_timeout_s` ends the stream
        (the peer stopped reading: its buffers must not grow, nor its task live on)."""
        settings = self.settings
        exp = self.grant.exp
        if exp is not None and self.closing is None and time.time() >= exp:
            if self.expired_at is None:
                self.expired_at = now
                self.outbox.put_control(protocol.error(
                    protocol.TOKEN_EXPIRED, f"token expired: reconnect with a fresh one within "
                    f"{settings.token_grace_s:g}s"))
                self.wake()
            elif now - self.expired_at >= settings.token_grace_s:
                self.close(protocol.CLOSE_POLICY, "token expired")
        since = self.sending_since
        if since is not None:
            if now - since > settings.send_timeout_s:
                self._stalled()
        elif (self.closing is None and not self.outbox
              and now - self.last_sent >= settings.heartbeat_s):
            self.outbox.put_control(protocol.heartbeat(now_ms()))
            self.last_sent = now
            self.wake()

    def _stalled(self) -> None:
        writer = self._writer
        if writer is None or writer.done():
            return
        self.hub.stats["slow_consumer_closed"] += 1
        log.warning("ending the event stream of %s: a write took over %ss", self.peer,
                    self.settings.send_timeout_s,
                    extra={"event": "client_closed", "code": protocol.CLOSE_SLOW_CONSUMER})
        self.closing = self.closing or (protocol.CLOSE_SLOW_CONSUMER, "slow consumer")
        self.sending_since = None
        # Drop the connection rather than leave its buffers to a peer that never reads
        # (ASGI has no abort: uvicorn's transport, behind the server's own send).
        uvicorn_private.abort(self._server_send)
        writer.cancel()

    # Lifetime

    def open(self) -> None:
        """Join the hub and queue what the stream starts with: welcome, the feed's state
        if stale, then the subscription's ack and snapshot (or, with `since`, its
        recovery, which the hub queues once the tape is read). Raises ProtocolError
        (nothing subscribed, the stream not joined) when the hub refuses it."""
        settings = self.settings
        request = self.request
        hub = self.hub
        hub.add(self)
        try:
            self.outbox.put_control(welcome(settings, hub.delayed))
            hub.greet(self)
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
            writer = self._writer = loop.create_task(self._write(send))
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
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
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
                self.sending_since = None
                self.last_sent = loop.time()
            if last:
                return

    def events(self, frames: Iterable[str | Prepared]) -> str:
        """The events of these frames, the quote events with the position after each."""
        out = []
        position = self.position
        for frame in frames:
            text = frame.text if isinstance(frame, Prepared) else frame
            kind = frame_type(text)
            if kind in _QUOTE_EVENTS:
                advance(position, text)
                out.append(format_event(kind, text, encode_position(position)))
            else:
                out.append(format_event(kind, text))
        return "".join(out)


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


class SseEndpoint:
    """The ASGI app of `GET /sse` (a Route in app.py)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service: QuoteService = scope["app"].state.service
        method = scope.get("method", "GET")
        if not service.gate.origin_allowed(scope):  # ALLOWED_ORIGINS (service/security.py)
            await security.forbidden_origin_response()(scope, receive, send)
            return
        if method == "OPTIONS":
            await Response(status_code=204, headers=PREFLIGHT_HEADERS)(scope, receive, send)
            return
        settings = service.settings
        try:
            grant = service.auth.grant_for(token_of(HTTPConnection(scope)))
        except AuthError as exc:
            service.hub.stats["auth_refused"] += 1
            await JSONResponse({"error": UNAUTHORIZED, "message": str(exc)}, status_code=401,
                               headers={**OPEN_TO_ALL, **INVALID_TOKEN_CHALLENGE}
                               )(scope, receive, send)
            return
        try:
            request = parse_request(QueryParams(scope.get("query_string", b"")),
                                    Headers(scope=scope), settings.max_symbols)
        except ProtocolError as exc:
            service.hub.stats[f"error_{exc.code}"] += 1
            await error_response(exc)(scope, receive, send)
            return
        if method == "HEAD":
            await Response(headers=dict(
                (k.decode(), v.decode()) for k, v in STREAM_HEADERS))(scope, receive, send)
            return
        # The address's connect rate, and its share (MAX_CONNECTIONS_PER_IP), held while
        # the stream is served.
        address = security.client_address(scope)
        refusal = service.gate.enter(address)
        if refusal is not None:
            await security.refusal_response(refusal)(scope, receive, send)
            return
        try:
            await self._serve(service, request, grant, scope, receive, send)
        finally:
            service.gate.leave(address)

    async def _serve(self, service: QuoteService, request: StreamRequest, grant: Grant,
                     scope: Scope, receive: Receive, send: Send) -> None:
        """Admission (MAX_CONNECTIONS, MAX_CONNECTS_PER_S, draining), then the stream."""
        settings = service.settings
        refusal = "the server is shutting down" if service.draining else service.admit()
        if refusal is not None:
            if not service.draining:
                service.hub.stats["connections_refused"] += 1
            await JSONResponse({"error": "try_again_later", "message": refusal},
                               status_code=503,
                               headers={**OPEN_TO_ALL, "Retry-After": str(RETRY_AFTER_S)}
                               )(scope, receive, send)
            return
        client = scope.get("client")
        stream = EventStream(service.hubs[grant.tier], settings, request,
                             f"{client[0]}:{client[1]}" if client else "?", grant)
        try:
            stream.open()
        except ProtocolError as exc:
            service.hub.stats[f"error_{exc.code}"] += 1
            await error_response(exc)(scope, receive, send)
            return
        service.add_stream(stream)
        try:
            await stream.run(receive, send, uvicorn_private.server_send(scope))
        finally:
            service.remove_stream(stream)

