"""/history's cache of the tape: each symbol's points kept in this process and extended
from the last entry read, since the tape only grows at its end (and is trimmed at its
start, which the cache follows). Nothing is kept only here: a cache is rebuilt from the
tape whenever it is lost or found out of step.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .history import Series, parse_id
from .tape import Priced, Tape

log = logging.getLogger("service.rest")

# The cache. Points held over all symbols (about 33 bytes each): past it, the symbols
# used least recently are dropped (and read again from the tape when next asked for).
MAX_CACHED_POINTS = 2_000_000
# A symbol's cache is brought up to date at most this often: a burst of page loads costs
# one tape read per symbol.
REFRESH_S = 0.25
# How often the cache checks the tape's first entry, to forget what the tape trimmed.
FRONT_CHECK_S = 5.0
# Entries read per XRANGE (the cold read of a day), and read back from the newest when
# bringing a cache up to date (most refreshes find the last entry read among them).
PAGE = 2000
TAIL = 256
# Tape reads in flight at once for one process, and the longest one may take.
CONCURRENT_READS = 8
READ_TIMEOUT_S = 5.0

class TapeUnavailable(Exception):
    """The tape could not be read, and nothing read before can stand in for it."""



@dataclass
class _Cached:
    series: Series = field(default_factory=Series)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    refreshed: float = -math.inf
    front_checked: float = -math.inf
    # Brought up to date at least once: while the tape cannot be read, it stands in.
    synced: bool = False


class HistoryCache:
    """Each symbol's tape as a `Series`, in this process, kept up to date on demand."""

    def __init__(self, tape: Tape, *, max_len: int, max_points: int = MAX_CACHED_POINTS,
                 refresh_s: float = REFRESH_S, front_check_s: float = FRONT_CHECK_S,
                 page: int = PAGE, tail: int = TAIL, read_timeout_s: float = READ_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tape = tape
        # The tape keeps about TAPE_MAX_LEN entries per symbol; a cache never holds more.
        self.max_len = max_len
        self.max_points = max_points
        self.refresh_s = refresh_s
        self.front_check_s = front_check_s
        self.page = page
        self.tail = tail
        self.read_timeout_s = read_timeout_s
        self.clock = clock
        self.cached: OrderedDict[str, _Cached] = OrderedDict()
        self.reads = asyncio.Semaphore(CONCURRENT_READS)
        self.stats = {"cold_reads": 0, "entries_read": 0, "rebuilds": 0, "failures": 0}
        self._logged_at = -math.inf

    async def series(self, symbols: Sequence[str]) -> dict[str, Series]:
        """Each symbol's series, up to date (within REFRESH_S). Raises TapeUnavailable when
        a symbol's tape cannot be read and was never read before."""
        got = await asyncio.gather(*(self._get(s) for s in symbols))
        return dict(zip(symbols, got, strict=True))

    def points_held(self) -> int:
        return sum(len(c.series) for c in self.cached.values())

    def evict(self) -> None:
        """Drop the least recently used symbols until the cache is within its bound."""
        total = self.points_held()
        for symbol in list(self.cached):
            if total <= self.max_points:
                break
            cached = self.cached[symbol]
            if cached.lock.locked():
                continue
            total -= len(cached.series)
            del self.cached[symbol]

    async def _get(self, symbol: str) -> Series:
        cached = self.cached.get(symbol)
        if cached is None:
            cached = self.cached[symbol] = _Cached()
        self.cached.move_to_end(symbol)
        async with cached.lock:
            now = self.clock()
            if now - cached.refreshed >= self.refresh_s:
                try:
                    await self._refresh(symbol, cached, now)
                except Exception as exc:
                    self.stats["failures"] += 1
                    self._log_failure(symbol, exc)
                    if not cached.synced:
                        raise TapeUnavailable(f"the tape of {symbol} cannot be read now") from exc
                else:
                    cached.refreshed = now
                    cached.synced = True
        return cached.series

    def _log_failure(self, symbol: str, exc: Exception) -> None:
        now = self.clock()
        if now - self._logged_at >= 10:
            self._logged_at = now
            log.warning("cannot read the tape of %s for /history: %s", symbol,
                        str(exc) or type(exc).__name__, extra={"event": "tape_unreadable"})

    async def _read(self, symbol: str, back: bool, at: str, count: int) -> list[Priced]:
        async with self.reads, asyncio.timeout(self.read_timeout_s):
            points = await self.tape.prices(symbol, at, count, back=back)
        self.stats["entries_read"] += len(points)
        return points

    async def _refresh(self, symbol: str, cached: _Cached, now: float) -> None:
        series = cached.series
        if series.last_id is None:
            await self._rebuild(symbol, series, cold=True)
            cached.front_checked = now
            return
        if now - cached.front_checked >= self.front_check_s:
            # The tape is trimmed at its start (by age and length): forget what it dropped.
            first = await self._read(symbol, False, "-", 1)
            cached.front_checked = now
            held = series.first_key()
            if first and held is not None:
                key = parse_id(first[0][0])
                if key < held:  # the tape holds older entries than ours: not our tape
                    await self._rebuild(symbol, series)
                    return
                series.drop_before(key)
        newest = await self._read(symbol, True, "+", self.tail)
        last = series.last_id
        for i, (id, _, _) in enumerate(newest):
            if id == last:
                for fresh in reversed(newest[:i]):
                    series.append(*fresh)
                break
        else:
            if not newest:  # the tape is empty (Redis lost it): so is the day
                series.clear()
            elif parse_id(newest[0][0]) < parse_id(last):  # it went back: read it again
                await self._rebuild(symbol, series)
                return
            else:  # more new entries than the tail holds, or ours are gone: read on
                await self._forward(symbol, series, "(" + last)
        self._bound(series)

    async def _rebuild(self, symbol: str, series: Series, cold: bool = False) -> None:
        self.stats["cold_reads" if cold else "rebuilds"] += 1
        series.clear()
        await self._forward(symbol, series, "-")

    async def _forward(self, symbol: str, series: Series, start: str) -> None:
        """Read from `start` to the end of the tape, a page at a time. A page may come
        back short because the tape skipped an entry it could not decode, so the end is
        where the newest entry is one already read."""
        for _ in range(self.max_len // self.page + 100):
            entries = await self._read(symbol, False, start, self.page)
            for entry in entries:
                series.append(*entry)
            self._bound(series)
            if series.last_id is None:
                return
            start = "(" + series.last_id
            if len(entries) < self.page:
                newest = await self._read(symbol, True, "+", 1)
                if not newest or parse_id(newest[0][0]) <= parse_id(series.last_id):
                    return

    def _bound(self, series: Series) -> None:
        if len(series) > self.max_len:
            series.drop_first(len(series) - self.max_len)
