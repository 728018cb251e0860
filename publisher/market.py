"""A simulated PSX trading day: pure state and arithmetic, no clock or I/O of its own.

Stocks random-walk in whole ticks of Rs 0.01 inside the exchange's daily band; indices
are derived from their constituents, so the board stays self-consistent. Everything
random comes from the `random.Random` passed in, so a seed replays the same day.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quote_client.quote import Quote, now_ms

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
# Pull toward the previous close: at the edge of the band an up-move has probability
# 0.5 - REVERSION, so prices wander but do not pin to the band for the whole day.
REVERSION = 0.2


@dataclass(slots=True)
class _Stock:
    """Prices in whole ticks (paisa) so every price is an exact multiple of 0.01."""

    symbol: str
    prev: int
    price: int
    low: int
    high: int


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
        max_step_ticks: int = 3,
        index_every: int = 10,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        """`index_every`: indices are re-sent after this many stock updates, inside the
        same count, so `next_quotes(n)` always yields exactly n quotes."""
        if band_pct < 0 or band_min < 0:
            raise ValueError("band_pct and band_min must not be negative")
        if max_step_ticks < 1 or index_every < 1:
            raise ValueError("max_step_ticks and index_every must be at least 1")
        self._rng = rng
        self._clock = clock
        self._max_step = max_step_ticks
        self._index_every = index_every
        self._instruments = list(instruments)
        self._stocks: list[_Stock] = []
        self._by_symbol: dict[str, _Stock] = {}
        for ins in self._instruments:
            if ins.kind == "stock":
                low, high = band_ticks(ins.prev_close, band_pct, band_min)
                prev = round(ins.prev_close * TICKS_PER_RUPEE)
                stock = _Stock(ins.symbol, prev, prev, low, high)
                self._stocks.append(stock)
                self._by_symbol[ins.symbol] = stock
        self._indices: dict[str, tuple[float, list[_Stock]]] = {}
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
            self._indices[ins.symbol] = (ins.prev_close, members)
            for stock in members:
                self._indices_of[stock.symbol].append(ins.symbol)
        self._pending: deque[str] = deque()
        self._dirty: set[str] = set()
        self._since_index = 0

    @property
    def symbols(self) -> list[str]:
        return [ins.symbol for ins in self._instruments]

    def members(self, index: str) -> list[str]:
        return [s.symbol for s in self._indices[index][1]]

    def limits(self, symbol: str) -> tuple[float, float]:
        stock = self._by_symbol[symbol]
        return stock.low / TICKS_PER_RUPEE, stock.high / TICKS_PER_RUPEE

    def initial_quotes(self) -> list[Quote]:
        """Every instrument at its previous close, so a board is full before the first tick."""
        ts = self._clock()
        return [
            Quote.make(ins.symbol, ins.prev_close, ins.prev_close, kind=ins.kind, ts=ts)
            for ins in self._instruments
        ]

    def resume(self, quotes: Sequence[Quote]) -> int:
        """Continue from prices published earlier today (a restarted publisher), instead of
        jumping back to the previous close. Quotes of another day (other prev_close) or
        outside the band are ignored. Returns how many stocks resumed."""
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
        """Exactly n updates: random stocks each moved by 1..max_step ticks, with the
        indices their moves touched slotted in every `index_every` stock updates."""
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

    def _step(self, stock: _Stock) -> None:
        half_band = max(1, (stock.high - stock.low) // 2)
        p_up = 0.5 - REVERSION * (stock.price - stock.prev) / half_band
        size = self._rng.randint(1, self._max_step)
        moved = stock.price + size if self._rng.random() < p_up else stock.price - size
        stock.price = min(stock.high, max(stock.low, moved))

    def _stock_quote(self, stock: _Stock, ts: int) -> Quote:
        optional = {}
        if stock.price == stock.high:
            optional["state"] = "upper_lock"
        elif stock.price == stock.low:
            optional["state"] = "lower_lock"
        return Quote.make(
            stock.symbol,
            stock.price / TICKS_PER_RUPEE,
            stock.prev / TICKS_PER_RUPEE,
            ts=ts,
            **optional,
        )

    def _index_quote(self, symbol: str, ts: int) -> Quote:
        prev_close, members = self._indices[symbol]
        ratio = sum(s.price / s.prev for s in members) / len(members) if members else 1.0
        return Quote.make(symbol, prev_close * ratio, prev_close, kind="index", ts=ts)
