"""The wire protocol, sans I/O: client commands in, server frames out (PROTOCOL.md).

Nothing here touches a socket, so every rule is tested with plain function calls, and the
connection handler stays a thin loop around it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

# The vocabulary both ends share (version, error and close codes, modes, feed states,
# "*") is quote_core's; re-exported here for the server's modules.
from quote_core.protocol import (
    ALL as ALL,
    BAD_JSON as BAD_JSON,
    BAD_REQUEST as BAD_REQUEST,
    CLOSE_GOING_AWAY as CLOSE_GOING_AWAY,
    CLOSE_INTERNAL as CLOSE_INTERNAL,
    CLOSE_NORMAL as CLOSE_NORMAL,
    CLOSE_POLICY as CLOSE_POLICY,
    CLOSE_RATE_LIMITED as CLOSE_RATE_LIMITED,
    CLOSE_SLOW_CONSUMER as CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_LARGE as CLOSE_TOO_LARGE,
    CLOSE_TRY_AGAIN as CLOSE_TRY_AGAIN,
    ENCODINGS as ENCODINGS,
    FORBIDDEN as FORBIDDEN,
    FRAME_TOO_LARGE as FRAME_TOO_LARGE,
    INTERNAL as INTERNAL,
    MAX_HZ as MAX_HZ,
    MIN_HZ as MIN_HZ,
    MODES as MODES,
    PROTOCOL_VERSION as PROTOCOL_VERSION,
    RATE_LIMITED as RATE_LIMITED,
    TOKEN_EXPIRED as TOKEN_EXPIRED,
    TOO_MANY_SYMBOLS as TOO_MANY_SYMBOLS,
    UNKNOWN_OP as UNKNOWN_OP,
    Encoding as Encoding,
    FeedState as FeedState,
    Mode as Mode,
    Symbols as Symbols,
    split_query_symbols,
)
from quote_core.quote import QuoteError, normalize_symbol

MAX_ID_LENGTH = 64

Id = int | str | None


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: Id
    symbols: Symbols
    # The most `quotes` frames a second the client wants; None: leave the rate as it is.
    max_hz: float | None = None
    mode: Mode = "conflated"
    # Every mode: symbol -> the last seq the client holds; it gets every quote after it.
    since: Mapping[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: Id
    symbols: Symbols


@dataclass(frozen=True, slots=True)
class Ping:
    id: Id


# The longest token taken: a JWT with a few hundred symbols fits well under it.
MAX_TOKEN_LENGTH = 16384


@dataclass(frozen=True, slots=True)
class Auth:
    """A token, as the first message (instead of the URL) or to refresh one expiring."""

    id: Id
    token: str


Command = Subscribe | Unsubscribe | Ping | Auth


class ProtocolError(Exception):
    """A client message the server answers with an `error` frame; the connection survives."""

    def __init__(self, code: str, message: str, id: Id = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id

    def frame(self) -> str:
        return error(self.code, self.message, self.id)


def parse_symbols(value: object, max_symbols: int, id: Id = None) -> Symbols:
    """`"*"` or a list of symbols, upper-cased and de-duplicated; shared by the query string."""
    if value == ALL:
        return ALL
    if not isinstance(value, list):
        raise ProtocolError(BAD_REQUEST, 'symbols must be a list or "*"', id)
    if len(value) > max_symbols:
        raise ProtocolError(
            TOO_MANY_SYMBOLS, f"at most {max_symbols} symbols per connection, got {len(value)}", id
        )
    try:
        return frozenset(normalize_symbol(s) for s in value)
    except QuoteError as exc:
        raise ProtocolError(BAD_REQUEST, str(exc), id) from None


def parse_query_symbols(raw: str, max_symbols: int) -> Symbols | None:
    """The `?symbols=OGDC,PPL` (or `*`) of the websocket URL."""
    parts = split_query_symbols(raw)
    return None if parts is None else parse_symbols(parts, max_symbols)


def parse_max_hz(value: object, id: Id = None) -> float:
    """A `max_hz` (subscribe's field or the URL's `?max_hz=`): a number from MIN_HZ to MAX_HZ."""
    if isinstance(value, str):  # the URL's form; JSON must send a number
        try:
            number = float(value.strip())
        except ValueError:
            raise ProtocolError(BAD_REQUEST, f"max_hz must be a number, got {value[:32]!r}",
                                id) from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ProtocolError(BAD_REQUEST, f"max_hz must be a number, got {type(value).__name__}", id)
    if not (math.isfinite(number) and MIN_HZ <= number <= MAX_HZ):
        raise ProtocolError(BAD_REQUEST, f"max_hz must be from {MIN_HZ:g} to {MAX_HZ:g}, "
                            f"got {number:g}", id)
    return number


def parse_query_max_hz(raw: str) -> float | None:
    """The `?max_hz=4` of the websocket URL; None when it is empty."""
    return None if not raw.strip() else parse_max_hz(raw)


def parse_mode(value: object, id: Id = None) -> Mode:
    """`"conflated"` (the default) or `"every"`; shared by the SSE query string."""
    for mode in MODES:
        if value == mode:
            return mode
    shown = value if isinstance(value, str) and len(value) <= 32 else type(value).__name__
    raise ProtocolError(BAD_REQUEST, f'mode must be "conflated" or "every", got {shown!r}', id)


def parse_query_encoding(raw: str) -> Encoding:
    """The `?encoding=` of the websocket or stream URL (empty: protocol 1's "json")."""
    value = raw.strip() or "json"
    for encoding in ENCODINGS:
        if value == encoding:
            return encoding
    shown = value if len(value) <= 32 else value[:32] + "…"
    raise ProtocolError(BAD_REQUEST, f"unknown encoding {shown!r}: use json or compact; "
                        "this connection goes on in json")


def parse_since(value: object, symbols: Symbols, max_symbols: int, id: Id = None
                ) -> dict[str, int]:
    """`{"OGDC": 5812, ...}`: symbols of the request (any, with "*"), each with a seq."""
    if not isinstance(value, dict):
        raise ProtocolError(BAD_REQUEST, "since must be an object of symbol: seq", id)
    if len(value) > max_symbols:
        raise ProtocolError(TOO_MANY_SYMBOLS, f"at most {max_symbols} symbols in since", id)
    since: dict[str, int] = {}
    for raw, seq in value.items():
        try:
            symbol = normalize_symbol(raw)
        except QuoteError as exc:
            raise ProtocolError(BAD_REQUEST, f"since: {exc}", id) from None
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**53:
            raise ProtocolError(BAD_REQUEST, f"since: the seq of {symbol} must be an integer "
                                "from 0", id)
        if symbols != ALL and symbol not in symbols:
            raise ProtocolError(BAD_REQUEST, f"since names {symbol}, which the request does "
                                "not subscribe", id)
        since[symbol] = seq
    return since


def _parse_id(message: dict[str, Any]) -> Id:
    id = message.get("id")
    if id is None:
        return None
    if isinstance(id, bool) or not isinstance(id, (int, str)):
        raise ProtocolError(BAD_REQUEST, "id must be an integer or a string")
    if isinstance(id, str) and len(id) > MAX_ID_LENGTH:
        raise ProtocolError(BAD_REQUEST, f"id must be at most {MAX_ID_LENGTH} characters")
    if isinstance(id, int) and not -(2**53) < id < 2**53:
        raise ProtocolError(BAD_REQUEST, "id must fit in a JSON-safe integer")
    return id


def _refuse_constants(text: str | bytes) -> None:
    """JSON has no NaN or Infinity, yet some encoders write them (Python's json does): such a
    frame is well formed but its value is not a number, so it is a bad request (bad_request
    with its id), not unreadable JSON. Only on the error path."""
    def constant(name: str) -> object:
        raise ValueError(name)

    try:
        message = json.loads(text, parse_constant=constant)
    except ValueError as exc:
        if exc.args and exc.args[0] in ("NaN", "Infinity", "-Infinity"):
            try:
                message = json.loads(text)
            except ValueError:
                return
            id = _parse_id(message) if isinstance(message, dict) else None
            raise ProtocolError(BAD_REQUEST, f"{exc.args[0]} is not a JSON number", id) from None
        return


def parse_command(text: str | bytes, *, max_symbols: int) -> Command:
    """Decode one client frame into a command, or raise ProtocolError saying what is wrong."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        _refuse_constants(text)
        raise ProtocolError(BAD_JSON, "frame is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError(BAD_REQUEST, "a message must be a JSON object")
    id = _parse_id(message)
    op = message.get("op")
    if op is None:
        raise ProtocolError(BAD_REQUEST, 'missing "op"', id)
    if op == "ping":
        return Ping(id)
    if op == "auth":
        token = message.get("token")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise ProtocolError(BAD_REQUEST, f"token must be a string of 1 to "
                                f"{MAX_TOKEN_LENGTH} characters", id)
        return Auth(id, token)
    if op in ("subscribe", "unsubscribe"):
        if "symbols" not in message:
            raise ProtocolError(BAD_REQUEST, 'missing "symbols"', id)
        symbols = parse_symbols(message["symbols"], max_symbols, id)
        if op == "unsubscribe":
            return Unsubscribe(id, symbols)
        mode = parse_mode(message.get("mode", "conflated"), id)
        raw_since = message.get("since")
        since = None if raw_since is None else parse_since(raw_since, symbols, max_symbols, id)
        if since is not None and mode != "every":
            raise ProtocolError(BAD_REQUEST, 'since needs "mode": "every"', id)
        raw_hz = message.get("max_hz")
        if raw_hz is None:
            return Subscribe(id, symbols, None, mode, since)
        if mode == "every":
            raise ProtocolError(BAD_REQUEST, "max_hz does not apply to mode every: every quote "
                                "is sent", id)
        if isinstance(raw_hz, str):
            raise ProtocolError(BAD_REQUEST, "max_hz must be a number, got str", id)
        return Subscribe(id, symbols, parse_max_hz(raw_hz, id))
    shown = op if isinstance(op, str) and len(op) <= 32 else type(op).__name__
    raise ProtocolError(UNKNOWN_OP, f"unknown op {shown!r}; use subscribe, unsubscribe, ping "
                        "or auth", id)


# Server frames. Built as text once; quotes arrive already serialised (see Hub).


def _dumps(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def welcome(*, node: str, heartbeat_s: float, max_symbols: int, max_client_msgs_per_s: int,
            max_frame_bytes: int, every_queue_bytes: int, max_recovery: int,
            delay_s: float | None = None, encoding: Encoding | None = None) -> str:
    """`node` is the worker process's opaque id (quote_runtime/node.py). `delay_s`: the
    connection is in the delayed tier, that many seconds behind. `encoding`: the one in
    force, said only to a client that asked (`?encoding=`), so that protocol 1's welcome
    stays as it was."""
    frame: dict[str, Any] = {
        "type": "welcome",
        "protocol": PROTOCOL_VERSION,
        "node": node,
        "heartbeat_s": int(heartbeat_s) if float(heartbeat_s).is_integer() else heartbeat_s,
        "limits": {
            "max_symbols": max_symbols,
            "max_client_msgs_per_s": max_client_msgs_per_s,
            "max_frame_bytes": max_frame_bytes,
            "every_queue_bytes": every_queue_bytes,
            "max_recovery": max_recovery,
        },
    }
    if delay_s is not None:
        frame["tier"] = "delayed"
        frame["delay_s"] = _number(delay_s)
    if encoding is not None:
        frame["encoding"] = encoding
    return _dumps(frame)


def ack(id: Id, op: str, symbols: Iterable[str], unknown: Iterable[str], *, all: bool,
        max_hz: float | None = None, mode: Mode = "conflated",
        unrecovered: Iterable[str] | None = None) -> str:
    """`symbols` is the whole set after the operation. With a `*` subscription it lists every
    symbol the feed has now, and `all: true` says that later ones will come too. `max_hz`
    is the rate in force: the most `quotes` frames a second (left out when there is no cap,
    FANOUT_INTERVAL_MS=0 and no max_hz asked)."""
    frame: dict[str, Any] = {"type": "ack", "id": id, "op": op, "symbols": sorted(symbols),
                             "unknown": sorted(unknown)}
    if all:
        frame["all"] = True
    if max_hz is not None:
        frame["max_hz"] = _number(max_hz)
    if mode == "every":
        frame["mode"] = "every"
    if unrecovered is not None:  # a subscribe with `since`: did the tape cover the gap?
        missed = sorted(unrecovered)
        frame["recovered"] = not missed
        if missed:
            frame["unrecovered"] = missed
    return _dumps(frame)


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def quotes_frame(kind: Literal["snapshot", "quotes"], quote_jsons: Iterable[str]) -> str:
    """Splice pre-serialised quotes into a frame without decoding them again."""
    return '{"type":"' + kind + '","quotes":[' + ",".join(quote_jsons) + "]}"


def auth_ack(id: Id, symbols: Iterable[str], *, all: bool, tier: str, entitled: Symbols,
             expires: int | None, sub: str | None, delay_s: float | None = None) -> str:
    """The answer to `auth`: the token's entitlements (`entitled`: its symbols, or "*"),
    its tier and expiry (ms), and the subscription set as it stands."""
    frame: dict[str, Any] = {"type": "ack", "id": id, "op": "auth", "symbols": sorted(symbols),
                             "unknown": [], "tier": tier,
                             "entitled": entitled if entitled == ALL else sorted(entitled)}
    if all:
        frame["all"] = True
    if expires is not None:
        frame["expires"] = expires
    if sub is not None:
        frame["sub"] = sub
    if delay_s is not None:
        frame["delay_s"] = _number(delay_s)
    return _dumps(frame)


def pong(id: Id, ts: int) -> str:
    return _dumps({"type": "pong", "id": id, "ts": ts})


def status(feed: FeedState, ts: int) -> str:
    return _dumps({"type": "status", "feed": feed, "ts": ts})


def heartbeat(ts: int) -> str:
    return _dumps({"type": "heartbeat", "ts": ts})


def error(code: str, message: str, id: Id = None) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if id is not None:
        frame["id"] = id
    return _dumps(frame)
