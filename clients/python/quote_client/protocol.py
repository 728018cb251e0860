"""The protocol's vocabulary that both ends speak (PROTOCOL.md): its version, the error and
close codes, the `"*"` subscription and the `?symbols=` form of the URL.

The service's own half of the protocol (parsing commands, building frames) is in the
server package and takes these names from here, so the two ends cannot drift apart.
"""

from __future__ import annotations

from typing import Literal

PROTOCOL_VERSION = 1

# Error codes (the `code` of an `error` frame).
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
UNKNOWN_OP = "unknown_op"
TOO_MANY_SYMBOLS = "too_many_symbols"
RATE_LIMITED = "rate_limited"
FRAME_TOO_LARGE = "frame_too_large"
INTERNAL = "internal"
# Entitlements (signed tokens): symbols the token does not cover, and a token that expired
# while connected (a fresh one must come within the grace the message names).
FORBIDDEN = "forbidden"
TOKEN_EXPIRED = "token_expired"

# Close codes.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_LARGE = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_SLOW_CONSUMER = 4008
CLOSE_RATE_LIMITED = 4029

ALL: Literal["*"] = "*"

# The range of `max_hz`, the most `quotes` frames a second a client asks for.
MIN_HZ = 0.5
MAX_HZ = 50.0

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
