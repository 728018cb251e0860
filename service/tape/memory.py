"""The embedded demo's tape, in this process (no Redis): the same contract, lost with it.

The embedded broker appends to it as the publisher's script does to Redis, so every-update
subscriptions, recovery and /history behave in the demo as in production. Each symbol's
entries are a list with their ids' keys beside it: a position is found by bisection and a
read costs what it returns, not the tape's length; trimming drops a slice at a time."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Mapping

from quote_core.quote import Quote

from . import Entry, Priced

Key = tuple[int, int]


def _key(id: str) -> Key:
    ms, _, n = id.partition("-")
    return int(ms), int(n) if n else 0


class _Symbol:
    __slots__ = ("entries", "keys")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.keys: list[Key] = []

    def drop(self, n: int) -> None:
        del self.entries[:n], self.keys[:n]


class MemoryTape:
    def __init__(self, max_len: int, retention_s: float) -> None:
        self.max_len = max_len
        self.retention_ms = int(retention_s * 1000)
        self.tapes: dict[str, _Symbol] = {}
        self._last: Key = (0, 0)

    def append(self, quote: Quote) -> None:
        ms = int(time.time() * 1000)
        last_ms, n = self._last
        key = self._last = (ms, 0) if ms > last_ms else (last_ms, n + 1)
        tape = self.tapes.get(quote.symbol)
        if tape is None:
            tape = self.tapes[quote.symbol] = _Symbol()
        tape.entries.append(Entry(f"{key[0]}-{key[1]}", quote))
        tape.keys.append(key)
        # Like XADD's `~`: trimmed a slice at a time, never below the cap.
        over = len(tape.keys) - self.max_len
        if over > max(self.max_len // 10, 1):
            tape.drop(over)
        old = bisect.bisect_left(tape.keys, (ms - self.retention_ms, 0))
        if old > 64 or (old and old == len(tape.keys)):
            tape.drop(old)

    def entries(self, symbol: str) -> list[Entry]:
        """Every entry held for `symbol`, oldest first (what XRANGE - + would give)."""
        tape = self.tapes.get(symbol)
        return [] if tape is None else list(tape.entries)

    def replace(self, symbol: str, entries: Iterable[Entry]) -> None:
        """Hold these entries for `symbol` instead: as a Redis that lost the stream, or
        had it rewritten, would (ids must rise)."""
        tape = self.tapes[symbol] = _Symbol()
        for entry in entries:
            tape.entries.append(entry)
            tape.keys.append(_key(entry.id))

    async def back(self, symbol: str, end: str, count: int) -> list[Entry]:
        tape = self.tapes.get(symbol)
        if tape is None:
            return []
        stop = len(tape.keys)
        if end != "+":
            key = _key(end.lstrip("("))
            stop = (bisect.bisect_left if end.startswith("(") else bisect.bisect_right)(
                tape.keys, key)
        return tape.entries[max(0, stop - count):stop][::-1]

    async def range(self, symbol: str, start: str = "-", count: int | None = None
                    ) -> list[Entry]:
        tape = self.tapes.get(symbol)
        if tape is None:
            return []
        first = 0
        if start != "-":
            key = _key(start.lstrip("("))
            first = (bisect.bisect_right if start.startswith("(")
                     else bisect.bisect_left)(tape.keys, key)
        stop = len(tape.keys) if count is None else first + count
        return tape.entries[first:stop]

    async def window(self, starts: Mapping[str, str], end: str, count: int
                     ) -> dict[str, list[Entry]]:
        out: dict[str, list[Entry]] = {}
        last = _key(end) if "-" in end else (int(end), 2**63)  # "MS": all of that ms
        for symbol, start in starts.items():
            entries = await self.range(symbol, start, count)
            out[symbol] = [e for e in entries if _key(e.id) <= last]
        return out

    async def prices(self, symbol: str, at: str, count: int, *, back: bool = False
                     ) -> list[Priced]:
        entries = await (self.back(symbol, at, count) if back else self.range(symbol, at, count))
        return [(e.id, e.quote.ts, e.quote.price) for e in entries]

    async def release_idle(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
