"""The seed's text form of a quote ("How the ticker reads" in PROTOCOL.md).

Formatting feeds terminal output and tests; parsing lets the publisher replay the seed's
lines. Both live here so that the two directions cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .quote import Quote, QuoteError, normalize_symbol, round2

UP, DOWN = "▲", "▼"
INCREASED, DECREASED, NO_CHANGE = "Increased By", "Decreased By", "No Change"


def _trim(text: str) -> str:
    """Drop trailing zeros and a bare point: 4.90 -> 4.9, 0.00 -> 0."""
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def words_for(change: float) -> str:
    return INCREASED if change > 0 else DECREASED if change < 0 else NO_CHANGE


def format_line(quote: Quote) -> str:
    """`AIRLINK 72.59 Increased By ▲ 3.39 (4.9%)`; indices `KSE100 71,902 Increased By 1235.2 (1.75%)`."""
    pct = _trim(f"{quote.change_pct:.2f}")
    if quote.kind == "index":
        # The words follow the change as shown: +0.04 reads "0", so "No Change".
        change = _trim(f"{quote.change:.1f}")
        return f"{quote.symbol} {quote.price:,.0f} {words_for(float(change))} {change} ({pct}%)"
    words = words_for(quote.change)
    arrow = UP if quote.change > 0 else DOWN
    change = f"{quote.change:.2f}"
    if change == "-0.00":
        change = "0.00"
    return f"{quote.symbol} {quote.price:.2f} {words} {arrow} {change} ({pct}%)"


_LINE = re.compile(
    r"(?P<symbol>\S+) (?P<price>[0-9][0-9,]*(?:\.[0-9]+)?) "
    r"(?P<words>Increased By|Decreased By|No Change) "
    r"(?:(?P<arrow>[▲▼]) )?(?P<change>-?[0-9]+(?:\.[0-9]+)?) \((?P<pct>-?[0-9]+(?:\.[0-9]+)?)%\)"
)


@dataclass(frozen=True, slots=True)
class TickerLine:
    symbol: str
    kind: str
    price: float
    change: float
    change_pct: float

    @property
    def prev_close(self) -> float:
        return round2(self.price - self.change)


def looks_like_ticker_line(text: str) -> bool:
    return _LINE.fullmatch(text.strip()) is not None


def parse_line(text: str) -> TickerLine:
    """Read a seed line back into numbers. Indices are the lines without an arrow
    (the seed draws none for them). Raises QuoteError with the reason."""
    m = _LINE.fullmatch(text.strip())
    if m is None:
        raise QuoteError("not a ticker line (expected e.g. 'OGDC 137.75 Increased By ▲ 4.88 (3.67%)')")
    symbol = normalize_symbol(m["symbol"])
    kind = "stock" if m["arrow"] else "index"
    if kind == "stock" and "," in m["price"]:
        raise QuoteError("a stock price has no thousands separators")
    price = float(m["price"].replace(",", ""))
    change = float(m["change"])
    pct = float(m["pct"])
    if m["words"] != words_for(change):
        raise QuoteError(f"{m['words']!r} contradicts the change {m['change']}")
    if m["arrow"] == UP and change <= 0:
        raise QuoteError(f"▲ contradicts the change {m['change']}")
    if m["arrow"] == DOWN and change > 0:
        raise QuoteError(f"▼ contradicts the change {m['change']}")
    prev_close = price - change
    if price <= 0 or prev_close <= 0:
        raise QuoteError("price and previous close must be positive")
    # The shown numbers are rounded (indices to whole units and tenths), so the percent
    # may differ from the one they imply by that much, and no more.
    half_units = 0.55 if kind == "index" else 0.01
    implied = 100 * change / prev_close
    if abs(implied - pct) > 0.006 + 100 * half_units / prev_close:
        raise QuoteError(f"({m['pct']}%) contradicts the change {m['change']} "
                         f"(implies {implied:.2f}%)")
    return TickerLine(symbol, kind, price, change, pct)
