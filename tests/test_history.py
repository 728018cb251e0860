"""The day's path, sans I/O (service/history.py), and the per-process cache of the tape
behind /history (service/rest.py HistoryCache) against the in-process tape."""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import given, settings, strategies as st

from quote_core.quote import Quote
from service.history import MIN_POINTS, Point, Series, bucket_edges, parse_id, reduce
from service.history_cache import HistoryCache, TapeUnavailable
from service.tape import Entry
from service.tape.memory import MemoryTape

TS = 1_719_216_000_000


# --- the reduction ------------------------------------------------------------------------

def check_reduced(points: Sequence[Point], n: int, got: Sequence[Point]) -> None:
    """What /history promises: at most n points, in order, from `points`, with the first,
    the last, the lowest and the highest."""
    if len(points) <= n:
        assert list(got) == list(points)
        return
    assert len(got) <= n
    it = iter(points)
    assert all(p in it for p in got), "not a subsequence"
    assert got[0] == points[0] and got[-1] == points[-1]
    prices = [p for _, p in got]
    assert min(prices) == min(p for _, p in points)
    assert max(prices) == max(p for _, p in points)


prices_st = st.lists(st.floats(min_value=0.01, max_value=1e6, allow_nan=False), max_size=400)


@settings(max_examples=300, deadline=None)
@given(prices=prices_st, n=st.integers(MIN_POINTS, 60))
def test_reduce_keeps_first_last_high_and_low(prices: list[float], n: int) -> None:
    points = [(TS + i, p) for i, p in enumerate(prices)]
    check_reduced(points, n, reduce(points, n))


def test_reduce_examples() -> None:
    points = [(1, 5.0), (2, 9.0), (3, 1.0), (4, 4.0), (5, 4.0), (6, 8.0), (7, 2.0), (8, 3.0)]
    assert reduce(points, 8) == points
    # Buckets of the middle six: [2, 3, 4] and [5, 6, 7]; each keeps its low and high in
    # time order.
    assert reduce(points, 6) == [(1, 5.0), (2, 9.0), (3, 1.0), (6, 8.0), (7, 2.0), (8, 3.0)]
    assert reduce(points, 4) == [(1, 5.0), (2, 9.0), (3, 1.0), (8, 3.0)]
    flat = [(i, 7.0) for i in range(100)]
    # A flat day: four buckets of the middle 98, one point each (the first of equal ones).
    assert reduce(flat, 10) == [(0, 7.0), (1, 7.0), (25, 7.0), (50, 7.0), (74, 7.0), (99, 7.0)]
    with pytest.raises(ValueError):
        reduce(points, 3)


@given(first=st.integers(0, 10_000), size=st.integers(0, 20_000), buckets=st.integers(1, 200),
       block=st.sampled_from([1, 2, 32]))
def test_bucket_edges_are_increasing_and_cover_the_range(first: int, size: int, buckets: int,
                                                         block: int) -> None:
    edges = bucket_edges(first, first + size, buckets, block)
    assert edges[0] == first and edges[-1] == first + size
    assert all(a < b for a, b in pairwise(edges)) or size == 0
    assert len(edges) - 1 <= buckets
    if block > 1 and size >= 2 * block * buckets:
        assert all(e % block == 0 for e in edges[1:-1])


def brute(series: Series, n: int, since: int | None) -> list[Point]:
    """Series.reduced, point by point: the same buckets, every point of each read."""
    ts, price, base = list(series.ts), list(series.price), series.base
    start = 0 if since is None else next((i for i, t in enumerate(ts) if t >= since), len(ts))
    if len(ts) - start <= n:
        return list(zip(ts[start:], price[start:], strict=True))
    picked = [start]
    for lo, hi in pairwise(bucket_edges(base + start + 1, base + len(ts) - 1, (n - 2) // 2,
                                        series.block)):
        span = range(lo - base, hi - base)
        low = min(span, key=lambda i: (price[i], i))
        high = min(span, key=lambda i: (-price[i], i))
        picked += sorted({low, high})
    picked.append(len(ts) - 1)
    return [(ts[i], price[i]) for i in picked]


@settings(max_examples=200, deadline=None)
@given(prices=st.lists(st.integers(1, 30), min_size=0, max_size=2500),
       drops=st.lists(st.integers(0, 300), max_size=3), n=st.integers(MIN_POINTS, 80),
       since=st.none() | st.integers(0, 2600), block=st.sampled_from([2, 4, 32]))
def test_series_reduced_equals_the_point_by_point_reduction(
        prices: list[int], drops: list[int], n: int, since: int | None, block: int) -> None:
    # Few distinct prices: ties everywhere, so the first of equal extremes matters.
    series = Series(block)
    for i, p in enumerate(prices):
        series.append(f"{TS + i}-0", i, p / 4)
    for d in drops:
        series.drop_first(d)
    got = series.reduced(n, None if since is None else since)
    assert got == brute(series, n, since)
    check_reduced(series.points(since), n, got)


def test_series_since_with_ts_out_of_order_reads_every_point() -> None:
    series = Series(4)
    for i, ts in enumerate([10, 20, 15, 30, 5, 40] * 30):
        series.append(f"{i + 1}-0", ts, float(i % 7 + 1))
    assert not series.ts_sorted
    points = series.points(16)
    assert all(t >= 16 for t, _ in points)
    assert series.reduced(10, 16) == reduce(points, 10)


def test_series_drop_before_an_entry_id() -> None:
    series = Series(4)
    for id in ["5-0", "5-1", "5-2", "7-0", "9-3"]:
        series.append(id, TS, 1.0)
    series.drop_before(parse_id("5-2"))
    assert len(series) == 3 and series.first_key() == (5, 2)
    series.drop_before((8, 0))
    assert series.first_key() == (9, 3)
    series.drop_before((10, 0))
    assert len(series) == 0 and series.last_id == "9-3"  # reading goes on after it


def test_a_full_day_reduces_from_block_summaries() -> None:
    """100,000 points (a symbol's whole tape at TAPE_MAX_LEN): the result is the
    point-by-point one, from reading a few thousand summaries."""
    rng = random.Random(7)
    series = Series()
    price = 100.0
    for i in range(100_000):
        price = max(0.01, round(price + rng.choice((-0.05, 0, 0.05)), 2))
        series.append(f"{TS + i}-0", TS + i, price)
    series.drop_first(1234)
    assert series.reduced(300) == brute(series, 300, None)
    assert series.reduced(300, TS + 50_000) == brute(series, 300, TS + 50_000)


# --- the cache of the tape ----------------------------------------------------------------

def quote(symbol: str, price: float, ts: int = TS) -> Quote:
    return Quote.make(symbol, price, 100.0, ts=ts).with_seq(1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 10.0) -> None:
        self.now += seconds


class CountingTape:
    """A MemoryTape that counts its calls (and can fail, or skip entries as RedisTape
    skips one it cannot decode)."""

    def __init__(self, max_len: int = 100_000) -> None:
        self.inner = MemoryTape(max_len, 86400)
        self.calls: list[tuple[str, str, int | None]] = []
        self.fail = False
        self.skip: set[str] = set()

    def append(self, symbol: str, price: float, ts: int = TS) -> None:
        self.inner.append(quote(symbol, price, ts))

    async def back(self, symbol: str, end: str, count: int) -> list[Entry]:
        self.calls.append(("back", end, count))
        if self.fail:
            raise ConnectionError("Redis is down")
        return [e for e in await self.inner.back(symbol, end, count) if e.id not in self.skip]

    async def range(self, symbol: str, start: str = "-", count: int | None = None) -> list[Entry]:
        self.calls.append(("range", start, count))
        if self.fail:
            raise ConnectionError("Redis is down")
        return [e for e in await self.inner.range(symbol, start, count) if e.id not in self.skip]

    async def prices(self, symbol: str, at: str, count: int, *, back: bool = False
                     ) -> list[tuple[str, int, float]]:
        entries = await (self.back(symbol, at, count) if back else self.range(symbol, at, count))
        return [(e.id, e.quote.ts, e.quote.price) for e in entries]

    async def aclose(self) -> None:
        return None

    def points(self, symbol: str) -> list[Point]:
        return [(e.quote.ts, e.quote.price) for e in self.inner.entries(symbol)]


def cache_of(tape: CountingTape, clock: Clock, **options: int) -> HistoryCache:
    return HistoryCache(tape, max_len=options.pop("max_len", 100_000), clock=clock,
                        page=options.pop("page", 7), tail=options.pop("tail", 8), **options)


async def test_cache_reads_the_tape_once_then_only_what_is_new() -> None:
    tape, clock = CountingTape(), Clock()
    for i in range(40):
        tape.append("OGDC", 100 + i % 5, TS + i)
    cache = cache_of(tape, clock)
    got = await cache.series(["OGDC"])
    assert got["OGDC"].points() == tape.points("OGDC")
    assert cache.stats["cold_reads"] == 1 and cache.stats["entries_read"] >= 40
    # Within REFRESH_S: the tape is not read again.
    tape.calls.clear()
    await cache.series(["OGDC"])
    assert tape.calls == []
    # A few new entries: one read back from the newest finds the last one read.
    for i in range(3):
        tape.append("OGDC", 120 + i, TS + 100 + i)
    clock.tick(1)
    tape.calls.clear()
    assert (await cache.series(["OGDC"]))["OGDC"].points() == tape.points("OGDC")
    assert tape.calls == [("back", "+", 8)]
    # More than the tail holds: read on from the last id, a page at a time.
    for i in range(30):
        tape.append("OGDC", 90 + i % 3, TS + 200 + i)
    clock.tick(1)
    tape.calls.clear()
    assert (await cache.series(["OGDC"]))["OGDC"].points() == tape.points("OGDC")
    before = last_id_before(tape, 30)
    assert tape.calls[0] == ("back", "+", 8) and tape.calls[1][0:2] == ("range", "(" + before)


def last_id_before(tape: CountingTape, new: int) -> str:
    return tape.inner.entries("OGDC")[-new - 1].id


async def test_cache_follows_the_tape_trimmed_at_its_start() -> None:
    tape, clock = CountingTape(max_len=20), Clock()
    for i in range(20):
        tape.append("PPL", 50 + i, TS + i)
    cache = cache_of(tape, clock, max_len=20)
    await cache.series(["PPL"])
    for i in range(15):
        tape.append("PPL", 80 + i, TS + 100 + i)
    clock.tick(10)  # past FRONT_CHECK_S
    series = (await cache.series(["PPL"]))["PPL"]
    assert series.points() == tape.points("PPL") and len(series) == 20


async def test_cache_never_holds_more_than_the_tape_length() -> None:
    tape, clock = CountingTape(), Clock()
    for i in range(50):
        tape.append("PPL", 50 + i % 9, TS + i)
    cache = cache_of(tape, clock, max_len=30)
    series = (await cache.series(["PPL"]))["PPL"]
    assert series.points() == tape.points("PPL")[-30:]


async def test_cache_after_redis_lost_the_tape() -> None:
    tape, clock = CountingTape(), Clock()
    for i in range(12):
        tape.append("HBL", 110 + i, TS + i)
    cache = cache_of(tape, clock)
    await cache.series(["HBL"])
    # Redis restarted empty: the tape is gone, and so is the day.
    tape.inner.replace("HBL", [])
    clock.tick(1)
    assert (await cache.series(["HBL"]))["HBL"].points() == []
    # New quotes after it: the day starts again from them.
    tape.append("HBL", 99, TS + 500)
    clock.tick(1)
    assert (await cache.series(["HBL"]))["HBL"].points() == [(TS + 500, 99.0)]


async def test_cache_after_the_tape_was_replaced_with_other_entries() -> None:
    tape, clock = CountingTape(), Clock()
    for i in range(12):
        tape.append("HBL", 110 + i, TS + i)
    cache = cache_of(tape, clock)
    await cache.series(["HBL"])
    # Every entry gone, then newer ones (ids later than ours): read on after ours, and
    # the front check forgets ours.
    tape.inner.replace("HBL", [])
    for i in range(20):
        tape.append("HBL", 60 + i, TS + 1000 + i)
    clock.tick(10)
    assert (await cache.series(["HBL"]))["HBL"].points() == tape.points("HBL")
    # A tape whose ids are all before ours (another Redis, its clock behind): read again.
    tape.inner.replace("HBL", (Entry(f"{5 + i}-0", quote("HBL", 70 + i, TS + i)) for i in range(9)))
    clock.tick(1)
    assert (await cache.series(["HBL"]))["HBL"].points() == tape.points("HBL")
    assert cache.stats["rebuilds"] == 1


async def test_cache_reads_past_entries_the_tape_skips() -> None:
    tape, clock = CountingTape(), Clock()
    for i in range(30):
        tape.append("KEL", 4 + i / 100, TS + i)
    tape.skip = {tape.inner.entries("KEL")[3].id, tape.inner.entries("KEL")[10].id}
    cache = cache_of(tape, clock)
    series = (await cache.series(["KEL"]))["KEL"]
    skipped = [p for i, p in enumerate(tape.points("KEL")) if i not in (3, 10)]
    assert series.points() == skipped


async def test_cache_stands_in_while_the_tape_cannot_be_read() -> None:
    tape, clock = CountingTape(), Clock()
    tape.append("TRG", 60.6)
    cache = cache_of(tape, clock)
    tape.fail = True
    with pytest.raises(TapeUnavailable):
        await cache.series(["TRG"])
    tape.fail = False
    clock.tick(1)
    assert len((await cache.series(["TRG"]))["TRG"]) == 1
    tape.fail = True
    clock.tick(1)
    assert len((await cache.series(["TRG"]))["TRG"]) == 1  # what was read stands in
    assert cache.stats["failures"] == 2


async def test_cache_drops_the_least_recently_used_symbols_past_its_bound() -> None:
    tape, clock = CountingTape(), Clock()
    for symbol in ("A", "B", "C"):
        for i in range(10):
            tape.append(symbol, 10 + i, TS + i)
    cache = cache_of(tape, clock, max_points=25)
    for symbol in ("A", "B", "C"):
        await cache.series([symbol])
        cache.evict()
    assert list(cache.cached) == ["B", "C"] and cache.points_held() == 20
    await cache.series(["B"])
    await cache.series(["A"])
    cache.evict()
    assert list(cache.cached) == ["B", "A"]


def test_until_cuts_the_day_at_the_delayed_tiers_mark() -> None:
    series = Series()
    for i in range(1000):
        series.append(f"{i + 1}-0", TS + i * 10, 100 + (i % 37) / 10)
    mark = TS + 5000
    for n in (4, 50, 2000):
        got = series.reduced(n, until=mark)
        assert got and all(ts <= mark for ts, _ in got) and got[-1][0] == mark
        check_reduced(series.points(until=mark), n, got)
    assert series.reduced(10, since=TS + 9000, until=TS + 100) == []
