"""The protocol's vocabulary that both ends speak (PROTOCOL.md): its version, the error and
close codes, the subscription modes, the feed states, the `"*"` subscription and the
`?symbols=` form of the URL, and the reconnect policy the clients follow.

The service's own half of the protocol (parsing commands, building frames) is in the
server package and the clients' halves in theirs; all take these names from here, so the
ends cannot drift apart. The JavaScript client declares the same figures by hand, and
tests/test_core_vocabulary.py holds them equal to these.
"""

from __future__ import annotations

import enum
from typing import Final, Literal

PROTOCOL_VERSION: Final = 1


class ErrorCode(enum.StrEnum):
    """The `code` of an `error` frame. A StrEnum: on the wire (orjson, f-strings, `==`)
    each member is its plain string."""

    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    TOO_MANY_SYMBOLS = "too_many_symbols"
    RATE_LIMITED = "rate_limited"
    FRAME_TOO_LARGE = "frame_too_large"
    INTERNAL = "internal"
    # Entitlements (signed tokens): symbols the token does not cover, and a token that
    # expired while connected (a fresh one must come within the grace the message names).
    FORBIDDEN = "forbidden"
    TOKEN_EXPIRED = "token_expired"


class CloseCode(enum.IntEnum):
    """The websocket close codes the service sends. An IntEnum: each member is its number
    wherever a number is written."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    TOO_LARGE = 1009
    INTERNAL = 1011
    TRY_AGAIN = 1013
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4029


# The module-level names the code has always used.
BAD_JSON: Final = ErrorCode.BAD_JSON
BAD_REQUEST: Final = ErrorCode.BAD_REQUEST
UNKNOWN_OP: Final = ErrorCode.UNKNOWN_OP
TOO_MANY_SYMBOLS: Final = ErrorCode.TOO_MANY_SYMBOLS
RATE_LIMITED: Final = ErrorCode.RATE_LIMITED
FRAME_TOO_LARGE: Final = ErrorCode.FRAME_TOO_LARGE
INTERNAL: Final = ErrorCode.INTERNAL
FORBIDDEN: Final = ErrorCode.FORBIDDEN
TOKEN_EXPIRED: Final = ErrorCode.TOKEN_EXPIRED

CLOSE_NORMAL: Final = CloseCode.NORMAL
CLOSE_GOING_AWAY: Final = CloseCode.GOING_AWAY
CLOSE_POLICY: Final = CloseCode.POLICY
CLOSE_TOO_LARGE: Final = CloseCode.TOO_LARGE
CLOSE_INTERNAL: Final = CloseCode.INTERNAL
CLOSE_TRY_AGAIN: Final = CloseCode.TRY_AGAIN
CLOSE_SLOW_CONSUMER: Final = CloseCode.SLOW_CONSUMER
CLOSE_RATE_LIMITED: Final = CloseCode.RATE_LIMITED

# The reconnect policy, as data. Closes that mean "you, slow down" (policy or a connection
# cap, a flood, "try again later" from the connection cap or the per-address connect
# rate): retrying at once would only be refused again, so a client's back-off starts
# further up after them. Every other close is an ordinary drop.
SLOW_DOWN_CODES: Final[frozenset[CloseCode]] = frozenset(
    {CloseCode.POLICY, CloseCode.RATE_LIMITED, CloseCode.TRY_AGAIN})
# The longest wait between two reconnect attempts after an ordinary drop, in seconds.
RECONNECT_CAP_S: Final = 15.0
# The close that refuses a client's token (or its lack of one), when its reason speaks of
# a token or starts with "authentication": a fresh token is needed, not a quick retry.
AUTH_REFUSAL_CODE: Final = CloseCode.POLICY


def auth_refusal(code: int | None, reason: str) -> bool:
    """A close that refuses the client's token, or its lack of one: 1008 with a reason
    about a token ("token expired", "no token came", "a token may not change the tier
    ...") or "authentication required". Other 1008s (too many connections from this
    address) are only a reason to slow down."""
    text = reason.strip().lower()
    return code == AUTH_REFUSAL_CODE and ("token" in text or text.startswith("authentication"))


# Subscription modes (PROTOCOL.md, "Every update, recovery and the tape"): `conflated`, the
# latest per symbol (a ticker), or `every`, every quote in seq order (a recorder).
Mode = Literal["conflated", "every"]
MODE_CONFLATED: Final[Literal["conflated"]] = "conflated"
MODE_EVERY: Final[Literal["every"]] = "every"
MODES: Final[tuple[Mode, ...]] = (MODE_CONFLATED, MODE_EVERY)

# How quotes frames are written (PROTOCOL.md, "Compact encoding"), as a client asks with
# `?encoding=`: protocol 1's JSON, or the compact encoding (deltas against the quotes the
# client holds). A client that does not ask gets protocol 1, byte for byte.
Encoding = Literal["json", "compact"]
ENCODING_JSON: Final[Literal["json"]] = "json"
ENCODING_COMPACT: Final[Literal["compact"]] = "compact"
ENCODINGS: Final[tuple[Encoding, ...]] = (ENCODING_JSON, ENCODING_COMPACT)

# The feed's state as a `status` frame reports it: quotes flowing, or the source silent.
FeedState = Literal["live", "stale"]

ALL: Final[Literal["*"]] = "*"

# The range of `max_hz`, the most `quotes` frames a second a client asks for.
MIN_HZ: Final = 0.5
MAX_HZ: Final = 50.0

# A subscription: every symbol, or these.
Symbols = frozenset[str] | Literal["*"]


def split_query_symbols(raw: str) -> list[str] | Literal["*"] | None:
    """The `?symbols=OGDC,PPL` (or `*`) of the websocket URL, split at its commas; None
    when it names nothing. The symbols are not checked yet: each end checks them as it
    checks any other (normalize_symbol)."""
    raw = raw.strip()
    if not raw:
        return None
    if raw == ALL:
        return ALL
    return [s.strip() for s in raw.split(",") if s.strip()]
