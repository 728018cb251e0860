"""The quote: the one model the publisher writes, the service fans out and clients read.

Validation lives here, once, so that nothing invalid reaches Redis from our publisher,
nothing invalid found on the channel reaches a client, and a client checks what it is
sent by the same rules (PROTOCOL.md, "Quote").
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import orjson

SYMBOL_PATTERN = re.compile(r"[A-Z0-9.\-]{1,16}")
# Checked before upper-casing: str.upper() maps some non-ASCII letters to ASCII ones
# ("ﬀ" -> "FF"), which must not turn into someone else's symbol.
_SYMBOL_ANY_CASE = re.compile(r"[A-Za-z0-9.\-]{1,16}")
# Integers must survive a JavaScript client's doubles.
MAX_SAFE_INTEGER = 2**53 - 1
KINDS = frozenset({"stock", "index"})
STATES = frozenset({"trading", "halted", "closed", "upper_lock", "lower_lock"})
_OPTIONAL_PRICES = ("open", "high", "low", "bid", "ask")


class QuoteError(ValueError):
    """A quote or symbol that must not be published; the message says why."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def normalize_symbol(value: object) -> str:
    """Upper-case and check a symbol; the protocol lets clients send lower case."""
    if not isinstance(value, str):
        raise QuoteError(f"symbol must be a string, not {type(value).__name__}")
    if not _SYMBOL_ANY_CASE.fullmatch(value):
        shown = value if len(value) <= 20 else value[:20] + "…"
        raise QuoteError(f"invalid symbol {shown!r}: 1 to 16 characters of A-Z 0-9 . -")
    return value.upper()


def round2(value: float) -> float:
    return round(value, 2)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(name: str, value: object) -> float:
    if not _is_number(value):
        raise QuoteError(f"{name} must be a finite number, not {value!r}")
    if value <= 0:  # type: ignore[operator]
        raise QuoteError(f"{name} must be positive, not {value!r}")
    return float(value)  # type: ignore[arg-type]


def _finite(name: str, value: object) -> float:
    if not _is_number(value):
        raise QuoteError(f"{name} must be a finite number, not {value!r}")
    return float(value)  # type: ignore[arg-type]


def _whole(name: str, value: object, minimum: int) -> int:
    if (isinstance(value, bool) or not isinstance(value, int)
            or not minimum <= value <= MAX_SAFE_INTEGER):
        raise QuoteError(f"{name} must be an integer from {minimum} to 2**53-1, not {value!r}")
    return value


def derived_change(price: float, prev_close: float) -> tuple[float, float]:
    """change and change_pct as the protocol defines them."""
    return round2(price - prev_close), round2(100 * (price - prev_close) / prev_close)


def _agrees(name: str, given: object, derived: float, tolerance: float) -> None:
    """A publisher may send its own change/change_pct, but not one that contradicts
    price and prev_close beyond rounding."""
    if given is None:
        return
    value = _finite(name, given)
    if abs(value - derived) > tolerance:
        raise QuoteError(f"{name} {value} contradicts price and prev_close (expected {derived})")


@dataclass(frozen=True, slots=True)
class Quote:
    """A symbol's full latest state. `seq` is None until Redis (or the embedded broker)
    assigns it at publish time."""

    symbol: str
    kind: str
    price: float
    prev_close: float
    change: float
    change_pct: float
    ts: int
    seq: int | None = None
    open: float | None = None
    high: float | None = None
    low: float | None = None
    volume: int | None = None
    bid: float | None = None
    ask: float | None = None
    state: str | None = None

    @classmethod
    def make(
        cls,
        symbol: str,
        price: float,
        prev_close: float,
        *,
        kind: str = "stock",
        ts: int | None = None,
        **optional: Any,
    ) -> Quote:
        """Build a validated quote, deriving change and change_pct as the protocol defines."""
        return cls.from_dict(
            {"symbol": symbol, "kind": kind, "price": price, "prev_close": prev_close,
             "ts": now_ms() if ts is None else ts, **optional}
        )

    @classmethod
    def from_dict(cls, data: object, *, require_seq: bool = False) -> Quote:
        """Validate a decoded JSON object. change and change_pct are always derived from
        price and prev_close; given ones must agree with that up to rounding."""
        if not isinstance(data, Mapping):
            raise QuoteError(f"a quote must be a JSON object, not {type(data).__name__}")
        for name in ("symbol", "price", "prev_close", "ts"):
            if name not in data:
                raise QuoteError(f"missing field {name!r}")
        symbol = normalize_symbol(data["symbol"])
        kind = data.get("kind", "stock")
        if kind not in KINDS:
            raise QuoteError(f"kind must be 'stock' or 'index', not {kind!r}")
        price = round2(_positive("price", data["price"]))
        prev_close = round2(_positive("prev_close", data["prev_close"]))
        if price <= 0 or prev_close <= 0:
            raise QuoteError("price and prev_close must be at least 0.01")
        change, pct = derived_change(price, prev_close)
        if not math.isfinite(pct) or abs(pct) > 1e9:
            raise QuoteError(f"price {price} is out of all proportion to prev_close {prev_close}")
        _agrees("change", data.get("change"), change, 0.011)
        _agrees("change_pct", data.get("change_pct"), pct, 0.011 + 1 / prev_close)
        ts = _whole("ts", data["ts"], 1)
        seq = data.get("seq")
        if seq is not None or require_seq:
            seq = _whole("seq", seq, 1)
        optional: dict[str, Any] = {}
        for name in _OPTIONAL_PRICES:
            if data.get(name) is not None:
                optional[name] = round2(_positive(name, data[name]))
        if data.get("volume") is not None:
            optional["volume"] = _whole("volume", data["volume"], 0)
        state = data.get("state")
        if state is not None:
            if state not in STATES:
                raise QuoteError(f"state must be one of {sorted(STATES)}, not {state!r}")
            optional["state"] = state
        return cls(symbol, kind, price, prev_close, change, pct, ts, seq, **optional)

    def with_seq(self, seq: int) -> Quote:
        return replace(self, seq=seq)

    def to_dict(self) -> dict[str, Any]:
        """The wire form: optional fields that are unset are left out."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

