"""The embedded demo's tape, in this process (no Redis): the same contract, lost with it.

The embedded broker appends to it as the publisher's script does to Redis, so every-update
subscriptions, recovery and /history behave in the demo as in production."""

from __future__ import annotations

import bisect
import time
from collections import deque

from quote_client.quote import Quote

from . import Entry


def _key(id: str) -> tuple[int, int]:
    ms, _, n = id.partition("-")
    return int(ms), int(n) if n else 0


class MemoryTape:
    def __init__(self, max_len: int, retention_s: float) -> None:
        self.max_len = max_len
        self.retention_ms = int(retention_s * 1000)
        self.tapes: dict[str, deque[Entry]] = {}
        self._last = (0, 0)

    def append(self, quote: Quote) -> None:
        ms = int(time.time() * 1000)
        last_ms, n = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, n + 1)
        tape = self.tapes.setdefault(quote.symbol, deque(maxlen=self.max_len))
        tape.append(Entry(f"{self._last[0]}-{self._last[1]}", quote))
        cutoff = ms - self.retention_ms
        while tape and tape[0].ms < cutoff:
            tape.popleft()

    async def back(self, symbol: str, end: str, count: int) -> list[Entry]:
        tape = list(self.tapes.get(symbol, ()))
        stop = len(tape)
        if end != "+":
            exclusive = end.startswith("(")
            key = _key(end.lstrip("("))
            keys = [_key(e.id) for e in tape]
            stop = bisect.bisect_left(keys, key) if exclusive else bisect.bisect_right(keys, key)
        return tape[max(0, stop - count):stop][::-1]

    async def range(self, symbol: str, start: str = "-", count: int | None = None
                    ) -> list[Entry]:
        tape = list(self.tapes.get(symbol, ()))
        first = 0
        if start != "-":
            exclusive = start.startswith("(")
            key = _key(start.lstrip("("))
            keys = [_key(e.id) for e in tape]
            first = bisect.bisect_right(keys, key) if exclusive else bisect.bisect_left(keys, key)
        picked = tape[first:]
        return picked if count is None else picked[:count]

    async def aclose(self) -> None:
        return None
