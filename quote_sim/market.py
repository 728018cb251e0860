"""A simulated PSX trading day: pure state and arithmetic, no clock or I/O of its own.

The session opens at the seed's board (each price as shown, each previous close its price
minus its change). Stocks then random-walk in whole ticks of Rs 0.01, in small steps,
pulled back toward their open so that a day that opened up stays up, inside the
exchange's daily band around the previous close; indices move with their constituents
relative to the open, so the board stays self-consistent. Everything random comes from
the `random.Random` passed in, so a seed replays the same day.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quote_core.quote import Quote, now_ms

from .seed import Instrument

# The 30-share indices follow a fixed basket of 15 of the 30 seed stocks (the seed has no
# real index weights; equal weighting keeps the arithmetic obvious). Broad indices and any
# index not named here follow every stock.
KSE30_MEMBERS: tuple[str, ...] = (
    "OGDC", "PPL", "HUBC", "HBL", "SNGP", "TRG", "DGKC", "MLCF",
    "FCCL", "SEARL", "PRL", "AIRLINK", "FFBL", "PAEL", "SSGC",
)
BR30_MEMBERS: tuple[str, ...] = (
    "OGDC", "PPL", "HUBC", "HBL", "SNGP", "TRG", "FFL", "KEL",
    "CNERGY", "PIBTL", "TPLP", "UNITY", "TELE", "HUMNL", "PTC",
)
INDEX_MEMBERS: dict[str, tuple[str, ...] | None] = {
    "KSE100": None,
    "BR100": None,
    "KSE30": KSE30_MEMBERS,
    "BR30": BR30_MEMBERS,
}

TICKS_PER_RUPEE = 100  # dividing whole ticks by this gives the nearest double exactly


@dataclass(slots=True)
class _Stock:
    """Prices in whole ticks (paisa) so every price is an exact multiple of 0.01."""

    symbol: str
    prev: int
    open: int
    price: int
    low: int
    high: int
    pull: float  # per tick away from the open: how much less likely a step away is


def band_ticks(prev_close: float, band_pct: float, band_min: float) -> tuple[int, int]:
    """The day's limits in ticks: ±band_pct% of the previous close, at least band_min
    rupees, never below one tick."""
    prev = round(prev_close * TICKS_PER_RUPEE)
    width = int(max(prev_close * band_pct / 100, band_min) * TICKS_PER_RUPEE + 1e-9)
    return max(1, prev - width), prev + width


class Market:
    def __init__(
        self,
        instruments: Sequence[Instrument],
        rng: random.Random,
        *,
        band_pct: float = 10.0,
        band_min: float = 1.0,
        step_pct: float = 0.05,
        spread_pct: float = 0.3,
        index_every: int = 10,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        """`step_pct`: a step is at most this share of the price (at least one tick), so
        a Rs 1.28 stock moves by a paisa and a Rs 137 one by up to 6.
        `spread_pct`: how far from its open a stock typically wanders (one standard
        deviation, in percent of the open), whatever its step size; where a tick is
        wider than that (WTL at Rs 1.28), a tick or two either side.
        `index_every`: indices are re-sent after this many stock updates, inside the
        same count, so `next_quotes(n)` always yields exactly n quotes.
        An open outside the band (a band narrower than the seed's change) opens at the
        band's edge."""
        if band_pct < 0 or band_min < 0:
            raise ValueError("band_pct and band_min must not be negative")
        if step_pct < 0 or spread_pct <= 0:
            raise ValueError("step_pct must not be negative and spread_pct must be positive")
        if index_every < 1:
            raise ValueError("index_every must be at least 1")
        self._rng = rng
        self._clock = clock
        self._step_pct = step_pct
        self._index_every = index_every
        self._instruments = list(instruments)
        self._stocks: list[_Stock] = []
        self._by_symbol: dict[str, _Stock] = {}
        for ins in self._instruments:
            if ins.kind == "stock":
                low, high = band_ticks(ins.prev_close, band_pct, band_min)
                prev = round(ins.prev_close * TICKS_PER_RUPEE)
                opening = min(high, max(low, round(ins.open * TICKS_PER_RUPEE)))
                # For steps uniform in 1..m ticks, a pull of (2m+1)/(12 W²) per tick keeps
                # the spread around the open near W ticks (a discrete Ornstein-Uhlenbeck
                # walk: variance = E[s²] / (4 E[s] pull)); m is taken at the open.
                spread = opening * spread_pct / 100
                pull = (2 * self._most(opening) + 1) / (12 * spread * spread)
                stock = _Stock(ins.symbol, prev, opening, opening, low, high, pull)
                self._stocks.append(stock)
                self._by_symbol[ins.symbol] = stock
        # symbol -> (previous close, value at the open, constituents)
        self._indices: dict[str, tuple[float, float, list[_Stock]]] = {}
        self._indices_of: dict[str, list[str]] = {s.symbol: [] for s in self._stocks}
        for ins in self._instruments:
            if ins.kind != "index":
                continue
            names = INDEX_MEMBERS.get(ins.symbol)
            members = (
                list(self._stocks)
                if names is None
                else [self._by_symbol[n] for n in names if n in self._by_symbol]
            )
            self._indices[ins.symbol] = (ins.prev_close, ins.open, members)
            for stock in members:
                self._indices_of[stock.symbol].append(ins.symbol)
        self._pending: deque[str] = deque()
        self._dirty: set[str] = set()
        self._since_index = 0

    @property
    def symbols(self) -> list[str]:
        return [ins.symbol for ins in self._instruments]

    def members(self, index: str) -> list[str]:
        return [s.symbol for s in self._indices[index][2]]

    def limits(self, symbol: str) -> tuple[float, float]:
        stock = self._by_symbol[symbol]
        return stock.low / TICKS_PER_RUPEE, stock.high / TICKS_PER_RUPEE

    def initial_quotes(self) -> list[Quote]:
        """Every instrument at its open (the seed's board), so a board is full before the
        first tick."""
        ts = self._clock()
        out: list[Quote] = []
        for ins in self._instruments:
            if ins.kind == "stock":
                stock = self._by_symbol[ins.symbol]
                out.append(self._stock_quote(stock, ts, stock.open))
            else:
                prev_close, opening, _ = self._indices[ins.symbol]
                out.append(Quote.make(ins.symbol, opening, prev_close, kind="index", ts=ts))
        return out

    def resume(self, quotes: Sequence[Quote]) -> int:
        """Continue from prices published earlier today (a restarted publisher), instead of
        jumping back to the open. Quotes of another day (other prev_close) or outside the
        band are ignored. Returns how many stocks resumed."""
        resumed = 0
        for quote in quotes:
            stock = self._by_symbol.get(quote.symbol)
            if stock is None or round(quote.prev_close * TICKS_PER_RUPEE) != stock.prev:
                continue
            ticks = round(quote.price * TICKS_PER_RUPEE)
            if stock.low <= ticks <= stock.high:
                stock.price = ticks
                resumed += 1
        return resumed

    def board_quotes(self) -> list[Quote]:
        """Every instrument at its current value: for refilling a broker that lost its state."""
        ts = self._clock()
        out: list[Quote] = []
        for ins in self._instruments:
            if ins.kind == "stock":
                out.append(self._stock_quote(self._by_symbol[ins.symbol], ts))
            else:
                out.append(self._index_quote(ins.symbol, ts))
        return out

    def next_quotes(self, n: int) -> list[Quote]:
        """Exactly n updates: random stocks each moved by a step, with the indices their
        moves touched slotted in every `index_every` stock updates."""
        if not self._stocks:
            return []
        ts = self._clock()
        out: list[Quote] = []
        while len(out) < n:
            if self._pending:
                out.append(self._index_quote(self._pending.popleft(), ts))
                continue
            stock = self._rng.choice(self._stocks)
            self._step(stock)
            out.append(self._stock_quote(stock, ts))
            self._dirty.update(self._indices_of[stock.symbol])
            self._since_index += 1
            if self._since_index >= self._index_every and self._dirty:
                self._pending.extend(s for s in self._indices if s in self._dirty)
                self._dirty.clear()
                self._since_index = 0
        return out

    def _most(self, ticks: int) -> int:
        """The largest step at this price: step_pct of it in whole ticks, at least one."""
        return max(1, int(ticks * self._step_pct / 100 + 1e-9))

    def _step(self, stock: _Stock) -> None:
        # Mean reversion toward the open, not the previous close: no drift turns an up
        # day red; the band still caps the day.
        p_up = min(1.0, max(0.0, 0.5 - stock.pull * (stock.price - stock.open)))
        size = self._rng.randint(1, self._most(stock.price))
        moved = stock.price + size if self._rng.random() < p_up else stock.price - size
        stock.price = min(stock.high, max(stock.low, moved))

    def _stock_quote(self, stock: _Stock, ts: int, ticks: int | None = None) -> Quote:
        price = stock.price if ticks is None else ticks
        optional = {}
        if price == stock.high:
            optional["state"] = "upper_lock"
        elif price == stock.low:
            optional["state"] = "lower_lock"
        return Quote.make(
            stock.symbol,
            price / TICKS_PER_RUPEE,
            stock.prev / TICKS_PER_RUPEE,
            ts=ts,
            **optional,
        )

    def _index_quote(self, symbol: str, ts: int) -> Quote:
        """The value at the open times the constituents' mean move since the open: exactly
        the seed's value until one of them moves."""
        prev_close, opening, members = self._indices[symbol]
        ratio = sum(s.price / s.open for s in members) / len(members) if members else 1.0
        return Quote.make(symbol, opening * ratio, prev_close, kind="index", ts=ts)
