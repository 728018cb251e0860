"""A Python client for the quote stream: connect, subscribe, iterate quotes.

    async with QuoteClient("ws://127.0.0.1:8000/ws", symbols=["OGDC", "PPL"]) as client:
        async for quote in client.quotes():
            print(quote.symbol, quote.price, quote.seq)

The client owns its connection the way the widget does (PROTOCOL.md, "Close codes"): when
the connection drops it reconnects by itself with the project's jittered back-off,
resubscribes to its current set, and takes the new snapshot. It keeps the board by `seq`,
so an iterator never sees an older quote after a newer one on the same connection.

Every update (`mode="every"`, PROTOCOL.md "Every update, recovery and the tape"): for a
consumer that must see each quote, not only the latest state (a recorder, a trade log).

    async with QuoteClient(url, symbols="*", mode="every", since=saved) as client:
        async for quote in client.quotes():
            record(quote)                      # each quote once, in seq order per symbol
            saved[quote.symbol] = quote.seq    # persist this to resume after a restart

Every subscribe asks for `"mode": "every"`; the client remembers each symbol's last
accepted seq (`positions`, seeded by `since`) and after any reconnect resubscribes with
`since` = those seqs, so the service sends what was missed from its tape before the live
quotes. `quotes()` then yields every quote once, in order: a quote whose seq is not above
the last one accepted for its symbol is dropped as a duplicate, nothing is conflated. Its
queue is bounded by `every_queue` quotes: while it is full the client stops reading the
socket (nothing is dropped; a consumer that stays behind is closed by the service as a
slow consumer, 4008, and the client reconnects and recovers from `positions`).

When the tape cannot cover a gap (older than the tape, or more than the service's
`max_recovery`), the ack says `recovered: false`: the client logs a warning, counts it in
`recovery_failures`, keeps the ack in `last_recovery` (`Ack.recovered`, `Ack.unrecovered`)
and calls `on_recovery(ack)`; the unrecovered symbols continue from a snapshot, so their
seq jumps there. `on_recovery` is called for every ack that answered a `since`.

Tokens (PROTOCOL.md, "Tokens and entitlements"): `token=` a signed JWT as a string, or a
callable (sync or async) that returns one, for a service that wants tokens (`ANONYMOUS=deny`)
or grants more with one.

    async def fresh_token() -> str:
        return await my_identity_service.token_for("quotes")   # called on every connection

    async with QuoteClient(url, symbols=["OGDC"], token=fresh_token) as client:
        print(client.tier, client.entitled, client.delay_s)     # from the service's auth ack

The token goes as the first message on every (re)connection, `{"op": "auth", "token": ...}`,
before any subscribe, never in the URL (URLs end up in logs). When the service says
`token_expired` the client calls the callable again and sends `auth` with the fresh token
within the service's grace; a plain string cannot be refreshed (a warning is logged; call
`authenticate(fresh)` to supply one). A token the service refuses (close 1008, reason
"token expired", "token signature invalid", "authentication required: ...") is fatal for
`start()`: it raises AuthenticationError naming the reason. Refused later, on a
reconnection, the client waits `auth_backoff_s` (60 s, jittered) before it tries again
(calling the callable again), rather than hammering the service. A subscribe cut to the
token's symbols returns its ack (`Ack.forbidden` names the refused symbols, also kept in
`client.forbidden`); the `forbidden` error that follows it is logged, never raised.

`client.tier` is "realtime" or "delayed" (then every quote is `delay_s` seconds old), from
the welcome (without a token) or the auth ack (with one); `client.entitled` the token's
symbols ("*" or a frozenset; None without a token); `client.auth` the whole ack (AuthInfo).

`python -m quote_client tail ...` (or `quote-tail`) runs the terminal ticker (tail.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType, TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from quote_core.backoff import backoff
from quote_core.compact import CompactError, Decoder
from quote_core.protocol import (
    ALL,
    CLOSE_POLICY,
    ENCODING_COMPACT,
    ENCODINGS,
    FORBIDDEN,
    MAX_HZ,
    MIN_HZ,
    MODE_CONFLATED,
    MODE_EVERY,
    RECONNECT_CAP_S,
    SLOW_DOWN_CODES,
    TOKEN_EXPIRED,
    Encoding,
    FeedState,
    Mode,
    Symbols,
    auth_refusal,
    split_query_symbols,
)
from quote_core.quote import Quote, QuoteError, normalize_symbol

__all__ = ["DEFAULT_URL", "Ack", "AuthInfo", "AuthenticationError", "Feed", "Mode", "QuoteClient",
           "ServerError", "TokenSource", "TokenUnavailable", "Welcome", "auth_refusal", "retry_delay"]

log = logging.getLogger("quote_client")

# What `feed` says: the service's own feed state while connected and in sync, or where
# the client's connection stands before that.
Feed = FeedState | Literal["connecting", "reconnecting"]

DEFAULT_URL = "ws://127.0.0.1:8000/ws"
# After a close in SLOW_DOWN_CODES (quote_core.protocol) the back-off starts this many
# steps up: retrying at once would only be refused again.
SLOW_DOWN_ATTEMPT = 5
# Every mode: quotes queued for the consumer before the client stops reading the socket.
# Above the service's default max_recovery (10,000), so one recovery burst fits.
DEFAULT_EVERY_QUEUE = 100_000
# The service's max_frame_bytes when no welcome said otherwise.
DEFAULT_MAX_FRAME_BYTES = 4096
# A token refused on a reconnection (close 1008, a token's reason): wait about this long
# (jittered between half and all of it) before trying again; another token may come from
# the callable by then, an expired string never will.
DEFAULT_AUTH_BACKOFF_S = 60.0

# A signed token (a JWT), or a callable returning one, sync or async, called on every
# (re)connection and when the service says the token expired.
TokenSource = str | Callable[[], str | Awaitable[str]]


class ServerError(Exception):
    """An `error` frame the service sent in reply to one of this client's requests."""

    def __init__(self, code: str, message: str, id: int | str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.id = id


class AuthenticationError(ConnectionError):
    """The service refused this client's token (or its lack of one): it closed the
    connection with 1008 and `reason` ("token expired", "token signature invalid",
    "authentication required: ...")."""

    def __init__(self, reason: str, code: int = CLOSE_POLICY) -> None:
        super().__init__(f"the service refused the token: {reason or '(no reason given)'} "
                         f"(close {code})")
        self.reason = reason
        self.code = code


class _Lost(Exception):
    """The connection went away before the reply came; the request is sent again."""


class TokenUnavailable(Exception):
    """The token callable failed or returned no token: that connection attempt fails (the
    next one calls it again), or authenticate() raises this."""


@dataclass(frozen=True, slots=True)
class Welcome:
    """The service's published limits, so a client need not discover them by failing."""

    protocol: int
    heartbeat_s: float
    limits: Mapping[str, int]
    # The worker process this connection landed on (opaque; None from older services).
    node: str | None = None
    # The tier the connection starts in ("delayed": every quote `delay_s` seconds old);
    # None when the service does not say (real time). With a token, its auth ack decides.
    tier: str | None = None
    delay_s: float | None = None
    # How quotes frames come: "compact" when the service took the client's `?encoding=`,
    # "json" (protocol 1) otherwise, from an older service too, which does not say.
    encoding: Encoding = "json"

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> Welcome:
        node = frame.get("node")
        tier = frame.get("tier")
        encoding = frame.get("encoding")
        return cls(int(frame.get("protocol", 1)), float(frame.get("heartbeat_s", 15)),
                   MappingProxyType(dict(frame.get("limits") or {})),
                   node if isinstance(node, str) else None,
                   tier if isinstance(tier, str) else None, _seconds(frame.get("delay_s")),
                   "compact" if encoding == ENCODING_COMPACT else "json")


def _seconds(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


@dataclass(frozen=True, slots=True)
class AuthInfo:
    """The service's answer to a token (the ack of `auth`): what it grants, until when."""

    # "realtime" or "delayed" (every quote `delay_s` seconds old).
    tier: str
    # The symbols the token covers: "*" or a frozenset.
    entitled: Symbols
    # When the token expires, milliseconds since the epoch (None: the service did not say).
    expires: int | None = None
    # The token's subject (None without a `sub` claim).
    sub: str | None = None
    # The delay of the delayed tier, in seconds (None: real time, or not said).
    delay_s: float | None = None

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> AuthInfo:
        tier = frame.get("tier")
        raw = frame.get("entitled", ALL)
        entitled: Symbols = ALL if raw == ALL or not isinstance(raw, list) else frozenset(
            s for s in raw if isinstance(s, str))
        expires = frame.get("expires")
        sub = frame.get("sub")
        return cls(tier if isinstance(tier, str) else "realtime", entitled,
                   expires if isinstance(expires, int) and not isinstance(expires, bool) else None,
                   sub if isinstance(sub, str) else None, _seconds(frame.get("delay_s")))


@dataclass(frozen=True, slots=True)
class Ack:
    """The subscription set after an operation, as the service holds it."""

    symbols: tuple[str, ...]
    unknown: tuple[str, ...]
    all: bool
    # The rate in force: at most this many `quotes` frames a second (None: no cap, or an
    # older service that does not say).
    max_hz: float | None = None
    # "every" when the service serves every update on this connection (None: conflated,
    # or an older service).
    mode: str | None = None
    # The answer to a `since`: True when the tape covered every gap, False when it did not
    # (then `unrecovered` names the symbols that continue from a snapshot instead); None
    # when the request carried no `since`.
    recovered: bool | None = None
    unrecovered: tuple[str, ...] = ()
    # Symbols of the request that the client's token does not cover: the service left
    # them out (and said so in a `forbidden` error after this ack, which is only logged).
    forbidden: tuple[str, ...] = ()

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> Ack:
        max_hz = frame.get("max_hz")
        mode = frame.get("mode")
        recovered = frame.get("recovered")
        return cls(tuple(frame.get("symbols") or ()), tuple(frame.get("unknown") or ()),
                   bool(frame.get("all", False)),
                   float(max_hz) if isinstance(max_hz, (int, float))
                   and not isinstance(max_hz, bool) else None,
                   mode if isinstance(mode, str) else None,
                   recovered if isinstance(recovered, bool) else None,
                   tuple(frame.get("unrecovered") or ()))

    @property
    def subscribed(self) -> Symbols:
        return ALL if self.all else frozenset(self.symbols)


def retry_delay(attempt: int, close_code: int | None, cap: float) -> float:
    """The project's one back-off, started further up after a close that asks us to
    slow down, so a refused client does not come straight back to be refused again."""
    if close_code in SLOW_DOWN_CODES:
        attempt = max(attempt, SLOW_DOWN_ATTEMPT)
    return backoff(attempt, cap)


def _fatal(exc: BaseException) -> bool:
    """Errors that another attempt cannot fix: a malformed URL, or an HTTP refusal of the
    upgrade such as 403 or 404 (a wrong path). 408, 429 and 5xx are worth retrying."""
    if isinstance(exc, InvalidURI):
        return True
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return 400 <= status < 500 and status not in (408, 429)
    return False


def _check_max_hz(max_hz: float | None) -> float | None:
    if max_hz is None:
        return None
    if (isinstance(max_hz, bool) or not isinstance(max_hz, (int, float))
            or not MIN_HZ <= max_hz <= MAX_HZ):  # also refuses NaN
        raise ValueError(f"max_hz must be a number from {MIN_HZ:g} to {MAX_HZ:g}, got {max_hz!r}")
    return float(max_hz)


def _check_mode(mode: str) -> Mode:
    if mode == MODE_CONFLATED:
        return MODE_CONFLATED
    if mode == MODE_EVERY:
        return MODE_EVERY
    raise ValueError(f"mode must be {MODE_CONFLATED!r} or {MODE_EVERY!r}, got {mode!r}")


def _check_since(since: Mapping[str, int]) -> dict[str, int]:
    """A resume position: symbol -> the last seq already processed (an integer >= 0), as a
    previous run persisted it; checked here rather than refused by the service later."""
    out: dict[str, int] = {}
    for symbol, seq in since.items():
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"since[{symbol!r}] must be an integer >= 0, got {seq!r}")
        out[normalize_symbol(symbol)] = seq
    return out


def _merge_acks(acks: list[Ack]) -> Ack:
    """One subscription sent in several parts (to fit max_frame_bytes) answered as one: the
    last ack's set, recovered only if every part that carried a `since` was."""
    last = acks[-1]
    forbidden = tuple(sorted({s for a in acks for s in a.forbidden}))
    if forbidden:
        last = replace(last, forbidden=forbidden)
    answers = [a.recovered for a in acks if a.recovered is not None]
    if not answers:
        return last
    unrecovered = sorted({s for a in acks for s in a.unrecovered})
    return replace(last, recovered=all(answers), unrecovered=tuple(unrecovered))


def _forbidden(message: Mapping[str, Any], ack: Ack) -> Ack:
    """The ack of a subscribe with the asked symbols it left out: with tokens those are
    the ones not covered (unknown symbols stay subscribed and are listed in `unknown`)."""
    asked = message.get("symbols")
    if message.get("op") != "subscribe" or ack.all or not isinstance(asked, list):
        return ack
    left_out = tuple(sorted(set(asked) - set(ack.symbols)))
    return replace(ack, forbidden=left_out) if left_out else ack


def _union(a: Symbols, b: Symbols) -> Symbols:
    if isinstance(a, frozenset) and isinstance(b, frozenset):
        return a | b
    return ALL


def _symbols_arg(symbols: Iterable[str] | str) -> Symbols:
    """`"*"`, one symbol, or several; each checked and upper-cased as the service would."""
    if isinstance(symbols, str):
        return ALL if symbols == ALL else frozenset({normalize_symbol(symbols)})
    return frozenset(normalize_symbol(s) for s in symbols)


class _Waiting:
    """What the two queues below share: an end (with the error that caused it, if any),
    and a wait for the next item that honours it."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.ended = False
        self.error: BaseException | None = None

    def end(self, error: BaseException | None = None) -> None:
        self.ended = True
        self.error = error
        self.wake.set()

    async def ready(self) -> bool:
        """True once an item is waiting; False when the client closed (and none is)."""
        while not self._has():
            if self.error is not None:
                raise self.error
            if self.ended:
                return False
            self.wake.clear()
            await self.wake.wait()
        return True

    def _has(self) -> bool:
        raise NotImplementedError


class _Stream(_Waiting):
    """One consumer's pending quotes, conflated per symbol as the service's outbox is:
    a slow consumer costs one entry per symbol and gets the latest of each."""

    def __init__(self, only: frozenset[str] | None) -> None:
        super().__init__()
        self.only = only
        self.pending: dict[str, Quote] = {}

    def put(self, quote: Quote) -> None:
        if self.only is not None and quote.symbol not in self.only:
            return
        self.pending.pop(quote.symbol, None)
        self.pending[quote.symbol] = quote
        self.wake.set()

    def _has(self) -> bool:
        return bool(self.pending)

    async def get(self) -> Quote | None:
        """The next quote, or None when the client closed."""
        if not await self.ready():
            return None
        symbol = next(iter(self.pending))
        return self.pending.pop(symbol)


class _Backlog(_Waiting):
    """Every mode: each accepted quote, in order, until the consumer takes it. Nothing is
    conflated or dropped here; when it holds `limit` quotes the connection stops reading
    (`room`), so memory stays bounded and the service's own limit judges a slow consumer."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.items: deque[Quote] = deque()
        self.limit = limit
        self.room = asyncio.Event()
        self.room.set()
        self.reading = False

    def put(self, quote: Quote) -> None:
        self.items.append(quote)
        self.wake.set()
        if len(self.items) >= self.limit:
            self.room.clear()

    def end(self, error: BaseException | None = None) -> None:
        super().end(error)
        self.room.set()

    def _has(self) -> bool:
        return bool(self.items)

    async def get(self) -> Quote | None:
        """The next quote, or None when the client closed and everything was taken."""
        if not await self.ready():
            return None
        quote = self.items.popleft()
        if len(self.items) < self.limit:
            self.room.set()
        return quote


class QuoteClient:
    """An async context manager around a self-healing connection to the quote service.

    On entry it connects, subscribes to `symbols` and waits for the snapshot, so `board`
    is full when the block starts; it raises ConnectionError if that takes longer than
    `open_timeout` (None: wait for ever, retrying). Later losses are repaired silently:
    `feed` says what is going on, `on_status` and `statuses()` report each change.

    A `?symbols=` in the URL is taken as the initial subscription and removed from the
    URL, so that every (re)connection subscribes the same way, with a request we can
    match to its ack.

    `max_hz` (0.5 to 50) asks for at most that many `quotes` frames a second: quotes stay
    conflated, so the board is never more than 1/max_hz behind, and a person reading it
    needs no more than a few (None: the service's default, 50 as shipped). It holds on
    every reconnection; `set_max_hz` changes it, and `rate` is what the service granted.

    `mode="every"` asks for every update instead (see the module doc): `since` (symbol ->
    last seq processed, from a previous run) is where it resumes, `every_queue` bounds the
    quotes waiting for `quotes()`, and `on_recovery(ack)` hears each answer to a `since`.
    It cannot be combined with `max_hz` (the service refuses it: a rate means conflation).

    `token` (a string, or a callable returning one, sync or async) is sent as the first
    message of every connection; see the module doc for its refresh on `token_expired`, for
    `auth_backoff_s` after a refusal, and for `tier`, `entitled`, `delay_s` and `auth`.

    Also readable: `welcome` (the service's limits and node, from the latest connection),
    `reconnects` (how many times the connection was lost and brought back in sync),
    `last_close_code` (the close code that ended the latest connection, 1006 if none
    came) and `last_error` (why the latest attempt failed or ended); in every mode also
    `positions`, `last_recovery` and `recovery_failures`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        symbols: Iterable[str] | str | None = None,
        max_backoff_s: float = RECONNECT_CAP_S,
        open_timeout: float | None = 10.0,
        on_status: Callable[[Feed], object] | None = None,
        max_hz: float | None = None,
        mode: Mode = MODE_CONFLATED,
        since: Mapping[str, int] | None = None,
        every_queue: int = DEFAULT_EVERY_QUEUE,
        on_recovery: Callable[[Ack], object] | None = None,
        token: TokenSource | None = None,
        auth_backoff_s: float = DEFAULT_AUTH_BACKOFF_S,
        encoding: Encoding = ENCODING_COMPACT,
        compression: bool = True,
    ) -> None:
        if token is not None and not callable(token) and (not isinstance(token, str) or not token):
            raise TypeError("token must be a non-empty string or a callable returning one")
        self._token: TokenSource | None = token
        self.auth_backoff_s = auth_backoff_s
        # The latest auth ack (None: no token, or none answered yet), and the tier and delay
        # the service says this connection is in (None before it said anything).
        self.auth: AuthInfo | None = None
        self._tier: str | None = None
        self._delay_s: float | None = None
        # Symbols the service refused as not covered by the token (from subscribe acks).
        self._forbidden: set[str] = set()
        # The id of the `auth` that opened the current connection; the refresh under way.
        self._opening_auth_id: int | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        # The latest connection ended by refusing the token (close 1008, a token's reason).
        self._refused: AuthenticationError | None = None
        self.auth_refusals = 0
        self.last_close_reason = ""
        self.mode: Mode = _check_mode(mode)
        self.max_hz = _check_max_hz(max_hz)
        if self.mode == MODE_EVERY and self.max_hz is not None:
            raise ValueError("max_hz cannot be combined with mode='every' (a rate conflates)")
        if since is not None and self.mode != MODE_EVERY:
            raise ValueError("since needs mode='every'")
        if every_queue < 1:
            raise ValueError(f"every_queue must be at least 1, got {every_queue!r}")
        # Every mode: symbol -> the last seq accepted (what `since` says after a reconnect).
        self._positions: dict[str, int] = _check_since(since or {})
        self._backlog = _Backlog(every_queue) if self.mode == MODE_EVERY else None
        # Symbols whose next snapshot quote is taken whatever its seq: the service could
        # not recover them, and its snapshot is its record (seq may even have restarted).
        self._reset: set[str] = set()
        # The subscribes of the connection's opening (several when split), by id.
        self._opening_sent: dict[int, dict[str, Any]] = {}
        self._opening_parts: list[dict[str, Any]] = []
        self._opening_acks: list[Ack] = []
        # The subscribe/unsubscribe messages waiting for their ack, by id.
        self._sent: dict[int, dict[str, Any]] = {}
        self.on_recovery = on_recovery
        self.last_recovery: Ack | None = None
        self.recovery_failures = 0
        self.rate: float | None = None
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
        # The compact encoding (fewer bytes; the same quotes come out) unless the URL or
        # `encoding` says otherwise; permessage-deflate offered unless `compression=False`.
        self.compression = compression
        self.encoding: Encoding = encoding
        self.url, from_query = self._split_query(url)
        self._decoder = Decoder()
        wanted: Symbols = frozenset() if symbols is None else _symbols_arg(symbols)
        if from_query is not None:
            wanted = _union(wanted, from_query)
        self._wanted: Symbols = wanted
        self.max_backoff_s = max_backoff_s
        self.open_timeout = open_timeout
        self.on_status = on_status
        self.welcome: Welcome | None = None
        self.last_error: BaseException | None = None
        self.reconnects = 0
        self.last_close_code: int | None = None
        self._board: dict[str, Quote] = {}
        self._feed: Feed = "connecting"
        self._streams: set[_Stream] = set()
        self._status_queues: set[asyncio.Queue[Feed]] = set()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ops = asyncio.Lock()
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._synced = asyncio.Event()
        self._opening_id: int | None = None
        self._expect_snapshot = False
        self._server_feed: FeedState = "live"
        self._synced_here = False
        self._stopped = asyncio.Event()
        self._first_error: ServerError | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @staticmethod
    def _split_query(url: str) -> tuple[str, Symbols | None]:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        raw = [value for key, value in query if key == "symbols"]
        if not raw:
            return url, None
        named = split_query_symbols(",".join(raw))
        try:
            symbols = None if named is None else _symbols_arg(named)
        except QuoteError as exc:  # say so here, not after connecting
            raise QuoteError(f"bad ?symbols= in {url!r}: {exc}") from None
        rest = urlencode([(k, v) for k, v in query if k != "symbols"])
        return urlunsplit(parts._replace(query=rest)), symbols

    def _connect_url(self) -> str:
        """The URL a connection opens: `url` with `?encoding=` added (one the URL names
        itself wins)."""
        parts = urlsplit(self.url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(key == "encoding" for key, _ in query):
            return self.url
        query.append(("encoding", self.encoding))
        return urlunsplit(parts._replace(query=urlencode(query)))

    # Public state

    @property
    def board(self) -> Mapping[str, Quote]:
        """The latest quote per subscribed symbol (read-only: only the client writes it)."""
        return MappingProxyType(self._board)

    @property
    def feed(self) -> Feed:
        """`connecting` before the first snapshot, `live` or `stale` as the service reports
        its feed, `reconnecting` while the connection is being repaired."""
        return self._feed

    @property
    def subscriptions(self) -> Symbols:
        """The set the service acknowledged last: `"*"` or a frozenset of symbols."""
        return self._wanted

    @property
    def tier(self) -> str | None:
        """"realtime" or "delayed" (every quote `delay_s` seconds old), as the service said
        in its welcome or, with a token, its auth ack; None before it said anything."""
        return self._tier

    @property
    def delay_s(self) -> float | None:
        """How many seconds behind real time the quotes are: 0 in real time, the service's
        `delay_s` in the delayed tier; None before the service said anything."""
        return self._delay_s

    @property
    def entitled(self) -> Symbols | None:
        """The symbols the token covers ("*" or a frozenset), from the latest auth ack;
        None without a token (or before its ack)."""
        return None if self.auth is None else self.auth.entitled

    @property
    def forbidden(self) -> frozenset[str]:
        """The symbols asked for that the service left out as not covered by the token."""
        return frozenset(self._forbidden)

    @property
    def positions(self) -> Mapping[str, int]:
        """Every mode: each symbol's last seq the client accepted (read-only), the `since`
        of the next resubscription. It may be ahead of what `quotes()` has yielded yet;
        to resume in another run, persist the seqs your consumer processed."""
        return MappingProxyType(self._positions)

    # Lifetime

    async def __aenter__(self) -> QuoteClient:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect and wait until the first snapshot is in `board` (see the class doc)."""
        if self._task is not None:
            raise RuntimeError("this QuoteClient was already started")
        self._task = asyncio.create_task(self._run(), name=f"QuoteClient {self.url}")
        synced = asyncio.ensure_future(self._synced.wait())
        try:
            done, _ = await asyncio.wait({synced, self._task}, timeout=self.open_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The caller gave up (its own timeout): leave nothing running behind it.
            self._closed = True
            self._stopped.set()
            self._task.cancel()
            raise
        finally:
            synced.cancel()
        error: BaseException | None = None
        if self._first_error is not None:
            error = self._first_error
        elif self._task in done:
            error = self._task.exception() or ConnectionError("the client stopped")
        elif not done:
            error = ConnectionError(f"could not connect to {self.url} within {self.open_timeout}s"
                                    + (f": {self.last_error}" if self.last_error else ""))
        if error is not None:
            await self.aclose()
            raise error

    async def aclose(self) -> None:
        """Close the connection (1000) and end every iterator."""
        if self._closed:
            return
        self._closed = True
        self._stopped.set()
        for task in (self._refresh_task, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._end_streams(None)

    def _end_streams(self, error: BaseException | None) -> None:
        for stream in self._streams:
            stream.end(error)
        if self._backlog is not None:
            self._backlog.end(error)
        for queue in self._status_queues:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(self._feed)

    # Consuming

    async def quotes(self, symbols: Iterable[str] | str | None = None) -> AsyncGenerator[Quote, None]:
        """Every quote newer than the board, starting with the board itself.

        With `symbols`, subscribe to them first and yield only them; without, yield all
        the client is subscribed to. A symbol's `seq` rises from one quote to the next,
        except when a snapshot after a reconnect or a feed recovery replaces the board:
        that snapshot is authoritative, because a service restarted together with an
        emptied Redis counts `seq` from 1 again, and dropping its quotes as old would
        freeze the board. (The embedded broker starts `seq` from the clock, so it never
        goes backwards; Redis without persistence can.) The iterator ends when the client
        is closed.

        In every mode it yields each quote the client accepted, once, in order: from the
        first snapshot (or the first quote after `since`) on, continuing where an earlier
        iterator stopped. One iterator at a time (two would split the quotes between
        them); with `symbols`, quotes of other symbols it meets are skipped for good.
        """
        only: frozenset[str] | None = None
        if symbols is not None:
            wanted = _symbols_arg(symbols)
            await self._change("subscribe", wanted, 10.0)
            only = wanted if isinstance(wanted, frozenset) else None
        backlog = self._backlog
        if backlog is not None:
            if backlog.reading:
                raise RuntimeError("in mode='every' only one quotes() iterator may run at a time")
            backlog.reading = True
            try:
                while (quote := await backlog.get()) is not None:
                    if only is None or quote.symbol in only:
                        yield quote
            finally:
                backlog.reading = False
            return
        stream = _Stream(only)
        for held in self._board.values():
            stream.put(held)
        if self._closed:
            stream.end()
        self._streams.add(stream)
        try:
            while (quote := await stream.get()) is not None:
                yield quote
        finally:
            self._streams.discard(stream)

    async def statuses(self) -> AsyncGenerator[Feed, None]:
        """The current feed state, then each change, until the client is closed."""
        queue: asyncio.Queue[Feed] = asyncio.Queue(maxsize=64)
        queue.put_nowait(self._feed)
        self._status_queues.add(queue)
        try:
            while True:
                feed = await queue.get()
                yield feed
                if self._closed and queue.empty():
                    return
        finally:
            self._status_queues.discard(queue)

    # Requests

    async def subscribe(self, symbols: Iterable[str] | str, *, timeout: float | None = 10.0) -> Ack:
        """Add symbols (or `"*"`); returns the service's ack.

        Symbols are checked here first (QuoteError); a refusal by the service, such as
        `too_many_symbols`, raises ServerError and leaves the subscription as it was.
        If the connection drops meanwhile, the request is sent again once it is back."""
        return await self._change("subscribe", _symbols_arg(symbols), timeout)

    async def unsubscribe(self, symbols: Iterable[str] | str, *, timeout: float | None = 10.0) -> Ack:
        """Remove symbols (or `"*"` for all); their entries leave `board`."""
        return await self._change("unsubscribe", _symbols_arg(symbols), timeout)

    async def set_max_hz(self, max_hz: float, *, timeout: float | None = 10.0) -> Ack:
        """Ask for at most `max_hz` quotes frames a second from now on (and after every
        reconnection); returns the ack, whose `max_hz` is the rate in force."""
        if self.mode == MODE_EVERY:
            raise ValueError("max_hz cannot be combined with mode='every' (a rate conflates)")
        self.max_hz = _check_max_hz(max_hz)
        async with self._ops:
            frame = await self._request({"op": "subscribe", "symbols": [], "max_hz": max_hz},
                                        timeout)
        return Ack.from_frame(frame)

    async def ping(self, *, timeout: float | None = 10.0) -> float:
        """Round trip to the service and back, in seconds."""
        started = time.perf_counter()
        await self._request({"op": "ping"}, timeout)
        return time.perf_counter() - started

    async def authenticate(self, token: str | None = None, *, timeout: float | None = 10.0) -> AuthInfo:
        """Send `auth` now: with `token` (which from then on replaces a string token, or
        is used once before a callable's next one), or with a fresh one from the callable;
        returns the service's answer. A token the service refuses closes the connection
        (AuthenticationError here); it comes back after `auth_backoff_s`."""
        if token is not None:
            if not isinstance(token, str) or not token:
                raise TypeError("token must be a non-empty string")
            if not callable(self._token):
                self._token = token
        elif self._token is None:
            raise ValueError("no token to send: pass one, or QuoteClient(token=...)")
        fresh = token if token is not None else await self._fresh_token()
        frame = await self._request({"op": "auth", "token": fresh}, timeout)
        return AuthInfo.from_frame(frame)

    async def _fresh_token(self) -> str:
        """The token to send: the string, or the callable's answer (awaited if async)."""
        source = self._token
        try:
            value: object = source() if callable(source) else source
            if inspect.isawaitable(value):
                value = await value
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise TokenUnavailable(f"the token callable failed: {exc!r}") from exc
        if not isinstance(value, str) or not value:
            raise TokenUnavailable(f"the token callable returned {type(value).__name__}, not a token")
        return value

    def _token_expired(self, error: ServerError) -> None:
        """The service says the token expired (it closes after its grace unless a fresh
        one comes): ask the callable for one; a string has nothing to give."""
        if not callable(self._token):
            log.warning("the token expired (%s); a string token cannot be refreshed: pass "
                        "token= a callable, or call authenticate(fresh_token)", error.message)
            return
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.create_task(self._refresh(), name="QuoteClient token refresh")

    async def _refresh(self) -> None:
        try:
            info = await self.authenticate(timeout=self.open_timeout or 10)
        except Exception as exc:
            log.warning("could not refresh the expired token: %s", exc)
            return
        log.info("token refreshed (expires %s)", info.expires)

    async def _change(self, op: str, symbols: Symbols, timeout: float | None) -> Ack:
        wire: list[str] | str = ALL if symbols == ALL else sorted(symbols)
        # One change at a time, so acks are adopted in the order they were asked for.
        async with self._ops:
            if self.mode == MODE_EVERY and op == "subscribe":
                parts = self._every_subscribes(symbols)
                acks = []
                async with asyncio.timeout(timeout):
                    for message in parts:
                        acks.append(self._note_forbidden(
                            message, Ack.from_frame(await self._request(message, None))))
                ack = _merge_acks(acks)
                if any("since" in m for m in parts):
                    self._recovery(ack)
                return ack
            message = {"op": op, "symbols": wire}
            frame = await self._request(message, timeout)
        return self._note_forbidden(message, Ack.from_frame(frame))

    def _note_forbidden(self, message: Mapping[str, Any], ack: Ack) -> Ack:
        ack = _forbidden(message, ack)
        self._forbidden -= set(ack.symbols)
        self._forbidden |= set(ack.forbidden)
        return ack

    def _every_subscribes(self, symbols: Symbols) -> list[dict[str, Any]]:
        """Every mode: the subscribe messages for `symbols`, with `since` from the positions
        held, split so that none exceeds the service's max_frame_bytes (a `"*"` with a
        position for each of 500 symbols would). A `"*"` goes last: the symbols named in
        the parts before it are held, and recovered, before it adds the rest."""
        if symbols == ALL:
            since = dict(self._positions)
            named = sorted(since)
        else:
            named = sorted(symbols)
            since = {s: self._positions[s] for s in named if s in self._positions}
        limit = DEFAULT_MAX_FRAME_BYTES
        if self.welcome is not None:
            limit = int(self.welcome.limits.get("max_frame_bytes", limit))
        budget = max(limit - 96, 64)  # op, id, mode and the punctuation around them
        parts: list[dict[str, Any]] = []
        chunk: list[str] = []
        size = 0
        for symbol in named:
            cost = len(symbol) + 3 + (len(symbol) + 4 + len(str(since[symbol])) if symbol in since else 0)
            if chunk and size + cost > budget:
                parts.append(self._every_message(chunk, since))
                chunk, size = [], 0
            chunk.append(symbol)
            size += cost
        if symbols == ALL:
            last = self._every_message(chunk, since)
            last["symbols"] = ALL
            parts.append(last)
        elif chunk or not parts:
            parts.append(self._every_message(chunk, since))
        return parts

    @staticmethod
    def _every_message(chunk: list[str], since: Mapping[str, int]) -> dict[str, Any]:
        message: dict[str, Any] = {"op": "subscribe", "symbols": chunk, "mode": MODE_EVERY}
        part = {s: since[s] for s in chunk if s in since}
        if part:
            message["since"] = part
        return message

    def _recovery(self, ack: Ack) -> None:
        """An answer to a `since` (merged over its parts): note it, and say so loudly when
        the tape could not cover a gap, since the consumer then misses quotes."""
        self.last_recovery = ack
        if ack.recovered is False:
            self.recovery_failures += 1
            log.warning("the service could not recover every missed quote of %s from its "
                        "tape: they continue from a snapshot", ", ".join(ack.unrecovered) or "?")
        if self.on_recovery is not None:
            try:
                self.on_recovery(ack)
            except Exception:
                log.exception("on_recovery callback failed")

    async def _request(self, message: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        if self._task is None or self._closed:
            raise RuntimeError("the client is not open: use `async with QuoteClient(...)`")
        async with asyncio.timeout(timeout):
            while True:
                ws = await self._connection()
                id = next(self._ids)
                future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                self._waiting[id] = future
                self._sent[id] = message
                try:
                    await ws.send(orjson.dumps({**message, "id": id}).decode())
                    return await future
                except (_Lost, ConnectionClosed):
                    continue
                finally:
                    self._waiting.pop(id, None)
                    self._sent.pop(id, None)

    async def _connection(self) -> ClientConnection:
        """The open connection, once there is one; ConnectionError if the client stops."""
        while True:
            if self._stopped.is_set():
                raise ConnectionError("the client is closed") from self.last_error
            if self._ws is not None and self._connected.is_set():
                return self._ws
            waiters = [asyncio.ensure_future(e.wait()) for e in (self._connected, self._stopped)]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    # The connection loop

    async def _run(self) -> None:
        attempt = 0
        while True:
            self._set_feed("reconnecting" if self._synced.is_set() else "connecting")
            code: int | None = None
            synced = False
            self.last_error = None
            self.last_close_reason = ""
            self._refused = None
            try:
                # The token first (the callable may take a while), so that it goes as the
                # connection's first message at once.
                token = None if self._token is None else await self._fresh_token()
                # The service compresses a shared frame once for all its clients
                # (service/deflate.py); the library inflates it. A "*" snapshot grows with
                # the symbol count, hence the larger max_size.
                async with connect(self._connect_url(),
                                   compression="deflate" if self.compression else None,
                                   close_timeout=2,
                                   open_timeout=self.open_timeout or 10, max_size=2**24) as ws:
                    try:
                        code = self.last_close_code = await self._session(ws, token)
                        if auth_refusal(code, self.last_close_reason):
                            self._refused = AuthenticationError(self.last_close_reason, code)
                    finally:
                        synced = self._synced_here
                        self._disconnected()
            except asyncio.CancelledError:
                raise
            except TokenUnavailable as exc:
                log.warning("no token for %s: %s", self.url, exc)
                self.last_error = exc
            except Exception as exc:
                if _fatal(exc):
                    log.error("cannot connect to %s: %s", self.url, exc)
                    self.last_error = exc
                    self._stopped.set()
                    self._end_streams(exc)
                    raise
                if not isinstance(exc, (OSError, TimeoutError, InvalidHandshake, ConnectionClosed)):
                    log.exception("unexpected error in the connection to %s", self.url)
                self.last_error = exc
            refused = self._refused
            if refused is not None:
                self.auth_refusals += 1
                self.last_error = refused
                if not self._synced.is_set():
                    # At start: another attempt with the same token would be refused again.
                    log.error("%s: %s", self.url, refused)
                    self._stopped.set()
                    self._end_streams(refused)
                    raise refused
            if synced:
                attempt = 0
            if refused is not None:
                delay = self.auth_backoff_s * random.uniform(0.5, 1.0)
                log.error("%s: %s; trying again in %.0fs", self.url, refused, delay)
            else:
                delay = retry_delay(attempt, code, self.max_backoff_s)
                log.info("connection to %s lost (close %s, %s); reconnecting in %.2fs",
                         self.url, code, self.last_error, delay)
            attempt += 1
            self._set_feed("reconnecting" if self._synced.is_set() else "connecting")
            await asyncio.sleep(delay)

    async def _session(self, ws: ClientConnection, token: str | None = None) -> int:
        """Greet, authenticate, (re)subscribe, then read frames until the connection ends;
        returns the close code (1006 when it ended without one)."""
        try:
            async with asyncio.timeout(self.open_timeout or 10):
                first = orjson.loads(await ws.recv())
            if not isinstance(first, dict) or first.get("type") != "welcome":
                raise ConnectionError(f"expected a welcome frame, got {str(first)[:80]}")
            self.welcome = Welcome.from_frame(first)
            self._decoder = Decoder()  # indexes are the connection's
            if token is None:
                # Without a token the welcome says the tier; with one, its auth ack does.
                self._tier = self.welcome.tier or "realtime"
                self._delay_s = self.welcome.delay_s if self._tier == "delayed" else 0.0
            self._server_feed = "live"
            self._ws = ws
            if token is not None:
                # The first message, before any subscribe: under ANONYMOUS=deny nothing
                # else is taken before it. Never in the URL, which ends up in logs.
                self._opening_auth_id = next(self._ids)
                await ws.send(orjson.dumps({"op": "auth", "id": self._opening_auth_id,
                                            "token": token}).decode())
            await self._open(ws)
            self._connected.set()
            # The service sends something at least every heartbeat_s; twice that in
            # silence means the connection is dead even if TCP has not noticed.
            silence = 2 * self.welcome.heartbeat_s + 2
            backlog = self._backlog
            while True:
                if backlog is not None and not backlog.room.is_set() and self._synced.is_set():
                    # Every mode, the consumer behind: read nothing until it catches up
                    # (not before the first sync, so that start() cannot wait on itself).
                    await backlog.room.wait()
                async with asyncio.timeout(silence):
                    message = await ws.recv()
                self._dispatch(message)
        except ConnectionClosed as exc:
            self.last_error = exc
            self.last_close_reason = exc.rcvd.reason if exc.rcvd is not None else ""
            return exc.rcvd.code if exc.rcvd is not None else 1006
        except TimeoutError:
            self.last_error = TimeoutError("the service went silent")
            raise

    async def _open(self, ws: ClientConnection) -> None:
        """The first request on a connection: subscribe to the current set, or a ping when
        there is none, so its reply marks the moment the board is in sync."""
        if self.mode == MODE_EVERY and (self._wanted == ALL or self._wanted):
            # Every mode: with `since` = the positions held, so that the service sends
            # what this client missed, from its tape, before the live quotes.
            self._reset.clear()
            self._opening_acks = []
            parts = self._opening_parts = self._every_subscribes(self._wanted)
            for part in parts:
                id = next(self._ids)
                self._opening_sent[id] = part
                self._opening_id = id
                await ws.send(orjson.dumps({**part, "id": id}).decode())
            return
        id = next(self._ids)
        self._opening_id = id
        if self._wanted == ALL or self._wanted or self.max_hz is not None:
            wire = ALL if self._wanted == ALL else sorted(self._wanted)
            message: dict[str, Any] = {"op": "subscribe", "id": id, "symbols": wire}
            if self.max_hz is not None:
                message["max_hz"] = self.max_hz
            self._opening_sent[id] = message
            await ws.send(orjson.dumps(message).decode())
        else:
            await ws.send(orjson.dumps({"op": "ping", "id": id}).decode())

    def _disconnected(self) -> None:
        self._ws = None
        self._connected.clear()
        self._synced_here = False
        self._opening_id = None
        self._opening_auth_id = None
        self._opening_sent.clear()
        self._opening_parts = []
        self._opening_acks = []
        self._expect_snapshot = False
        for id, future in self._waiting.items():
            if not future.done():
                # An `auth` answered by a refusal fails; anything else is sent again.
                refused = self._refused if self._sent.get(id, {}).get("op") == "auth" else None
                future.set_exception(refused or _Lost())

    # Frames

    def _dispatch(self, message: str | bytes) -> None:
        try:
            frame = orjson.loads(message)
        except orjson.JSONDecodeError:
            log.warning("ignoring a frame that is not JSON: %.80r", message)
            return
        if isinstance(frame, list):  # a compact quotes frame
            try:
                quotes = self._decoder.quotes(frame)
            except CompactError as exc:  # out of step with the service: start again
                raise ConnectionError(f"cannot decode a compact frame: {exc}") from None
            self._take_quotes(quotes, authoritative=False)
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        if kind == "quotes":
            self._take_quotes(self._decoder.quotes(frame), authoritative=False)
        elif kind == "snapshot":
            self._take_quotes(self._decoder.quotes(frame), authoritative=True)
            if self._expect_snapshot:
                self._expect_snapshot = False
                self._in_sync()
        elif kind == "ack":
            if frame.get("op") == "auth":
                self._take_auth(frame)
            else:
                self._take_ack(frame)
        elif kind == "pong":
            if frame.get("id") == self._opening_id:
                self._in_sync()
            self._reply(frame)
        elif kind == "status":
            feed = frame.get("feed")
            if feed in ("live", "stale"):
                self._server_feed = feed
                if self._synced_here:
                    self._set_feed(feed)
        elif kind == "error":
            self._take_error(frame)
        # heartbeat, welcome again, and types we do not know: nothing to do (PROTOCOL.md).

    def _reply(self, frame: dict[str, Any]) -> None:
        future = self._waiting.get(frame.get("id"))  # type: ignore[arg-type]
        if future is not None and not future.done():
            future.set_result(frame)

    def _take_auth(self, frame: dict[str, Any]) -> None:
        """The answer to a token: what it grants. A fresh token may cover fewer symbols;
        the service then unsubscribed the others, and its set (the ack's) is ours."""
        info = self.auth = AuthInfo.from_frame(frame)
        self._tier = info.tier
        self._delay_s = info.delay_s if info.delay_s is not None else (
            0.0 if info.tier != "delayed" else self._delay_s)
        if frame.get("id") != self._opening_auth_id and self._synced_here:
            ack = Ack.from_frame(frame)
            if not ack.all and ack.subscribed != self._wanted:
                self._wanted = ack.subscribed
                for symbol in self._board.keys() - set(ack.symbols):
                    del self._board[symbol]
        self._reply(frame)

    def _take_ack(self, frame: dict[str, Any]) -> None:
        ack = Ack.from_frame(frame)
        opening = self._opening_sent.get(frame.get("id"))  # type: ignore[arg-type]
        if opening is not None:
            self._note_forbidden(opening, ack)
        self._wanted = ack.subscribed
        self.rate = ack.max_hz
        if self.mode == MODE_EVERY and self._take_every_ack(frame, ack):
            return
        if frame.get("id") == self._opening_id:
            # A fresh connection: the service's record replaces ours. Symbols it has no
            # quote for leave the board, or their old seq would shadow the new ones.
            known = set(ack.symbols) - set(ack.unknown)
            for symbol in self._board.keys() - known:
                del self._board[symbol]
            if known:
                self._expect_snapshot = True
            else:
                self._in_sync()
        elif not ack.all:
            for symbol in self._board.keys() - set(ack.symbols):
                del self._board[symbol]
        self._reply(frame)

    def _take_every_ack(self, frame: dict[str, Any], ack: Ack) -> bool:
        """Every mode: note what an ack says of recovery and positions. True when it was
        (a part of) the connection's opening, which this handles whole."""
        id = frame.get("id")
        opening = self._opening_sent.pop(id, None) if isinstance(id, int) else None
        message = opening if opening is not None else self._sent.get(id)  # type: ignore[arg-type]
        if message is None:
            return False
        if message.get("op") == "unsubscribe":
            # Forgotten with the board: subscribing again later starts from a snapshot.
            dropped = set(self._positions) if message.get("symbols") == ALL else set(message["symbols"])
            for symbol in dropped:
                self._positions.pop(symbol, None)
                self._reset.discard(symbol)
            return False
        if ack.mode != MODE_EVERY:
            error = ServerError("bad_request", "the service did not grant mode 'every' "
                                "(an older service?): quotes would be conflated", id)
            log.error("%s", error)
            if opening is not None and self.welcome is not None and not self._synced.is_set():
                self._first_error = error
        since: Mapping[str, int] = message.get("since") or {}
        if since:
            # Not recovered (or no answer, an older service): its snapshot is the truth.
            lost = set(ack.unrecovered) if ack.recovered is False else set() if ack.recovered else set(since)
            self._reset |= lost & since.keys()
        if opening is None:
            return False
        self._opening_acks.append(ack)
        if id != self._opening_id:
            return True  # an earlier part: the last one's ack completes the opening
        merged = _merge_acks(self._opening_acks)
        if any("since" in m for m in self._opening_parts):
            self._recovery(merged)
        known = set(ack.symbols) - set(ack.unknown)
        for symbol in self._board.keys() - known:
            del self._board[symbol]
        # A snapshot follows the last part for its symbols that had no position, or whose
        # gap the tape could not cover; the others go on from the tape, with no snapshot.
        if message.get("symbols") == ALL:
            asked = known - {s for m in self._opening_parts if m["symbols"] != ALL for s in m["symbols"]}
        else:
            asked = known & set(message["symbols"])
        recovered = set(since) - self._reset
        if asked - recovered:
            self._expect_snapshot = True
        else:
            self._in_sync()
        self._reply(frame)
        return True

    def _take_error(self, frame: dict[str, Any]) -> None:
        error = ServerError(str(frame.get("code")), str(frame.get("message")), frame.get("id"))
        if error.code == TOKEN_EXPIRED:
            self._token_expired(error)
            return
        if error.code == FORBIDDEN:
            # It follows the ack of its subscribe (which went through for the covered
            # symbols, and returned with them in Ack.forbidden): a note, not a failure.
            log.warning("the service left out symbols of a subscribe: %s", error.message)
            return
        if error.id is not None and error.id == self._opening_id:
            if self.welcome is not None and not self._synced.is_set():
                self._first_error = error
            log.warning("the service refused the resubscription: %s", error)
            self._in_sync()
            return
        future = self._waiting.get(error.id) if error.id is not None else None  # type: ignore[arg-type]
        if future is not None and not future.done():
            future.set_exception(error)
        else:
            log.warning("error from the service: %s", error)

    def _take_quotes(self, raw: object, *, authoritative: bool) -> None:
        if not isinstance(raw, list):
            return
        if self._backlog is not None:
            self._take_every(raw, self._backlog, authoritative=authoritative)
            return
        board = self._board
        for item in raw:
            try:
                quote = Quote.from_dict(item, require_seq=True)
            except QuoteError as exc:
                log.warning("dropping an invalid quote from the service: %s", exc)
                continue
            held = board.get(quote.symbol)
            if held is not None and (
                held == quote if authoritative else quote.seq <= held.seq  # type: ignore[operator]
            ):
                continue
            board[quote.symbol] = quote
            for stream in self._streams:
                stream.put(quote)

    def _take_every(self, raw: list[Any], backlog: _Backlog, *, authoritative: bool) -> None:
        """Every mode: each quote above the symbol's position, in the order sent (several
        per symbol per frame), into the consumer's queue; anything else is a duplicate.
        Only a snapshot of a symbol the service could not recover may set a position
        back: its record is the truth (a Redis that lost its memory counts seq afresh)."""
        positions = self._positions
        for item in raw:
            try:
                quote = Quote.from_dict(item, require_seq=True)
            except QuoteError as exc:
                log.warning("dropping an invalid quote from the service: %s", exc)
                continue
            symbol, seq = quote.symbol, quote.seq
            assert seq is not None  # require_seq
            held = positions.get(symbol)
            if authoritative and symbol in self._reset:
                self._reset.discard(symbol)
                if held is not None and seq < held:
                    log.warning("%s: the service's seq went back from %d to %d (its record "
                                "was lost); following it", symbol, held, seq)
                    held = None
            if held is not None and seq <= held:
                continue
            positions[symbol] = seq
            self._board[symbol] = quote
            backlog.put(quote)

    def _in_sync(self) -> None:
        if self._synced.is_set() and not self._synced_here:
            self.reconnects += 1
        self._synced_here = True
        self._set_feed(self._server_feed)
        self._synced.set()

    def _set_feed(self, feed: Feed) -> None:
        if feed == self._feed:
            return
        self._feed = feed
        for queue in self._status_queues:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(feed)
        if self.on_status is not None:
            try:
                self.on_status(feed)
            except Exception:
                log.exception("on_status callback failed")

