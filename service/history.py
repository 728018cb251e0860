"""The day's path of a symbol, sans I/O: its tape's (ts, price) points kept compactly, and
reduced to a few hundred points without losing the day's high and low (/history).

The reduction keeps the first and the last point, splits the rest into (n - 2) // 2
buckets of consecutive points, and keeps each bucket's lowest and highest point (the
earliest of equal ones) in time order. The day's high and low are in some bucket, so they
are always kept, and the result never has more than n points.

`Series` holds one symbol's tape as parallel arrays (about 30 bytes a point) with the
lowest and highest point of every BLOCK consecutive points beside them. When a bucket
spans several blocks its boundaries are rounded to whole blocks, so reducing a day of
100,000 points reads a few thousand block summaries rather than every point. `reduce`
is the same reduction over a plain list, written for clarity: the tests hold the two
against each other.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import pairwise

# `points`: at least the first, last, lowest and highest; at most MAX_POINTS.
MIN_POINTS = 4
DEFAULT_POINTS = 300
MAX_POINTS = 2000
BLOCK = 32

Point = tuple[int, float]
# A tape entry id "MS-N" as numbers: (ms, n), ordered as Redis orders stream ids.
Key = tuple[int, int]


def parse_id(id: str) -> Key:
    ms, _, n = id.partition("-")
    return int(ms), int(n) if n else 0


def bucket_edges(first: int, stop: int, buckets: int, block: int = 1) -> list[int]:
    """Edges first = e0 < e1 < ... < ek = stop of up to `buckets` near-equal runs of
    [first, stop). When every run spans at least two blocks, the inner edges are rounded
    to a multiple of `block` (indices are absolute, so blocks are too)."""
    k = min(buckets, stop - first)
    if k <= 0:
        return [first, stop] if stop > first else [first]
    edges = [first + i * (stop - first) // k for i in range(k + 1)]
    if block > 1 and stop - first >= 2 * block * k:
        edges[1:-1] = [(e + block // 2) // block * block for e in edges[1:-1]]
    return edges


def _extremes(prices: Sequence[float], lo: int, hi: int) -> tuple[int, int]:
    """The indices of the first lowest and the first highest of prices[lo:hi]."""
    chunk = prices[lo:hi]
    return lo + chunk.index(min(chunk)), lo + chunk.index(max(chunk))


def _pick(out: list[int], low: int, high: int) -> None:
    if low == high:
        out.append(low)
    else:
        out += (low, high) if low < high else (high, low)


def reduce(points: Sequence[Point], n: int) -> list[Point]:
    """At most `n` (>= MIN_POINTS) of `points`, in order: the first, the last, and the
    lowest and highest of each bucket between them."""
    if n < MIN_POINTS:
        raise ValueError(f"n must be at least {MIN_POINTS}, got {n}")
    if len(points) <= n:
        return list(points)
    prices = [p for _, p in points]
    picked = [0]
    edges = bucket_edges(1, len(points) - 1, (n - 2) // 2)
    for lo, hi in pairwise(edges):
        _pick(picked, *_extremes(prices, lo, hi))
    picked.append(len(points) - 1)
    return [points[i] for i in picked]


class Series:
    """One symbol's tape, oldest first: entry keys, quote ts and price, and the extremes
    of every block of BLOCK points (numbered from the first point ever appended, so
    dropping the oldest points does not move them)."""

    def __init__(self, block: int = BLOCK) -> None:
        self.block = block
        self.clear()

    def clear(self) -> None:
        self.ms = array("q")
        self.n = array("q")
        self.ts = array("q")
        self.price = array("d")
        # Points dropped from the front since the start: absolute index = base + i.
        self.base = 0
        # Block b (absolute points [b * block, (b + 1) * block)) is at b - first_block.
        self.first_block = 0
        self.block_low = array("d")
        self.block_high = array("d")
        self.block_low_at = array("q")  # absolute indices
        self.block_high_at = array("q")
        # The id of the newest entry read (None when empty), and whether ts never went
        # down (then `since` is a binary search).
        self.last_id: str | None = None
        self.ts_sorted = True

    def __len__(self) -> int:
        return len(self.price)

    def first_key(self) -> Key | None:
        return (self.ms[0], self.n[0]) if self.price else None

    def last_key(self) -> Key | None:
        return (self.ms[-1], self.n[-1]) if self.price else None

    def append(self, id: str, ts: int, price: float) -> None:
        ms, n = parse_id(id)
        if self.ts and ts < self.ts[-1]:
            self.ts_sorted = False
        at = self.base + len(self.price)
        self.ms.append(ms)
        self.n.append(n)
        self.ts.append(ts)
        self.price.append(price)
        self.last_id = id
        b = at // self.block - self.first_block
        if b == len(self.block_low):
            self.block_low.append(price)
            self.block_high.append(price)
            self.block_low_at.append(at)
            self.block_high_at.append(at)
        else:
            if price < self.block_low[b]:
                self.block_low[b] = price
                self.block_low_at[b] = at
            if price > self.block_high[b]:
                self.block_high[b] = price
                self.block_high_at[b] = at

    def drop_first(self, count: int) -> None:
        """Forget the oldest `count` points (trimmed from the tape, or over a bound)."""
        count = min(count, len(self.price))
        if count <= 0:
            return
        if count == len(self.price):
            last_id, ts_sorted = self.last_id, self.ts_sorted
            base = self.base + count
            self.clear()
            self.base, self.first_block = base, base // self.block
            self.last_id, self.ts_sorted = last_id, ts_sorted  # reading goes on after it
            return
        for column in (self.ms, self.n, self.ts, self.price):
            del column[:count]
        self.base += count
        gone = self.base // self.block - self.first_block
        for column in (self.block_low, self.block_high, self.block_low_at, self.block_high_at):
            del column[:gone]
        self.first_block += gone
        if self.base % self.block:  # the first block lost some of its points
            end = min((self.first_block + 1) * self.block, self.base + len(self.price))
            low, high = _extremes(self.price, 0, end - self.base)
            self.block_low[0], self.block_low_at[0] = self.price[low], self.base + low
            self.block_high[0], self.block_high_at[0] = self.price[high], self.base + high

    def drop_before(self, key: Key) -> None:
        """Forget every point whose entry id is below `key` (the tape's first now)."""
        i = bisect_left(self.ms, key[0])
        while i < len(self.ms) and self.ms[i] == key[0] and self.n[i] < key[1]:
            i += 1
        self.drop_first(i)

    def points(self, since: int | None = None, until: int | None = None) -> list[Point]:
        """Every point (with since <= ts <= until), in order."""
        return [p for p in zip(self.ts, self.price, strict=True)
                if (since is None or p[0] >= since) and (until is None or p[0] <= until)]

    def reduced(self, n: int, since: int | None = None, until: int | None = None
                ) -> list[Point]:
        """`reduce(self.points(since, until), n)`, with buckets rounded to whole blocks
        where they span several: the same guarantees, at the cost of the block summaries.
        `until` is the delayed tier's: nothing newer than now - DELAY_S."""
        if n < MIN_POINTS:
            raise ValueError(f"n must be at least {MIN_POINTS}, got {n}")
        if (since is not None or until is not None) and not self.ts_sorted:
            return reduce(self.points(since, until), n)
        start = 0 if since is None else bisect_left(self.ts, since)
        size = len(self.price) if until is None else bisect_right(self.ts, until)
        if size <= start:
            return []
        if size - start <= n:
            return list(zip(self.ts[start:size], self.price[start:size], strict=True))
        base = self.base
        picked = [start]
        edges = bucket_edges(base + start + 1, base + size - 1, (n - 2) // 2, self.block)
        for lo, hi in pairwise(edges):
            _pick(picked, *(at - base for at in self._extremes(lo, hi)))
        picked.append(size - 1)
        ts, price = self.ts, self.price
        return [(ts[i], price[i]) for i in picked]

    def _extremes(self, lo: int, hi: int) -> tuple[int, int]:
        """The absolute indices of the first lowest and first highest point of the
        absolute range [lo, hi): the points of its partial blocks, the summaries of the
        whole ones."""
        block, base = self.block, self.base
        first_whole = -(-lo // block)  # the first block that starts at or after lo
        end_whole = hi // block
        if end_whole - first_whole < 2:
            low, high = _extremes(self.price, lo - base, hi - base)
            return low + base, high + base
        # Candidates in index order; a later one wins only when strictly better.
        candidates: list[tuple[int, int]] = []
        if lo < first_whole * block:
            low, high = _extremes(self.price, lo - base, first_whole * block - base)
            candidates.append((low + base, high + base))
        b0, b1 = first_whole - self.first_block, end_whole - self.first_block
        lows, highs = self.block_low[b0:b1], self.block_high[b0:b1]
        candidates.append((self.block_low_at[b0 + lows.index(min(lows))],
                           self.block_high_at[b0 + highs.index(max(highs))]))
        if end_whole * block < hi:
            low, high = _extremes(self.price, end_whole * block - base, hi - base)
            candidates.append((low + base, high + base))
        price = self.price
        low, high = candidates[0]
        for cand_low, cand_high in candidates[1:]:
            if price[cand_low - base] < price[low - base]:
                low = cand_low
            if price[cand_high - base] > price[high - base]:
                high = cand_high
        return low, high
