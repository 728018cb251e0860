"""The tape: every quote published, kept for the day, one stream per symbol.

The publisher's script appends each quote to its symbol's tape in the same call that
stores and publishes it (publisher/redis_sink.py), so the tape and the live feed never
disagree. A symbol's seq rises by one per update, so the quotes after seq S are the
symbol's last (latest - S) entries: a position is asked for by seq, without a scan.
Every-update clients recover from it (`since`), the feed fills its own gaps from it after
an outage, and the day's path (/history) is drawn from it. One module per store behind
`Tape`: redis.py (what the publisher writes), memory.py (the embedded demo's own).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import orjson

from quote_core.quote import Quote

from ..settings import Settings


@dataclass(frozen=True, slots=True)
class Entry:
    """A quote and its place on the tape: "MS-N", MS being the store's clock at append."""

    id: str
    quote: Quote

    @property
    def ms(self) -> int:
        return int(self.id.partition("-")[0])


# What /history reads of an entry: its id, the quote's ts and price.
Priced = tuple[str, int, float]


class Tape(Protocol):
    async def back(self, symbol: str, end: str, count: int) -> list[Entry]:
        """Up to `count` entries at or before `end` ("+", an id, or "(ID" to exclude it),
        newest first."""

    async def range(self, symbol: str, start: str = "-", count: int | None = None
                    ) -> list[Entry]:
        """Entries from `start` on ("-", an id, "MS" alone, or "(ID" to exclude it),
        oldest first, at most `count`."""

    async def prices(self, symbol: str, at: str, count: int, *, back: bool = False
                     ) -> list[Priced]:
        """(id, ts, price) of the entries range() (or, `back`, back()) would give: all
        the day's path needs, read without validating whole quotes, which costs ten times
        more and would make a process's first /history of a full day take seconds."""

    async def window(self, starts: Mapping[str, str], end: str, count: int
                     ) -> dict[str, list[Entry]]:
        """For each symbol, up to `count` entries after its start ("(ID", or "-") up to
        `end` (an id or "MS"), oldest first: the delayed tier's tick, in one round trip."""

    async def release_idle(self) -> None:
        """The server was lost: close the idle connections it left behind (their sockets
        would be held until each is used again, topology.drop_idle)."""

    async def aclose(self) -> None: ...


def priced(id: str, payload: bytes | str) -> Priced | None:
    """An entry's id, ts and price, or None when they are not a quote's (junk is skipped,
    as a full read skips it)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    ts, price = data.get("ts"), data.get("price")
    if (isinstance(ts, int) and not isinstance(ts, bool) and ts > 0
            and isinstance(price, (int, float)) and not isinstance(price, bool)
            and math.isfinite(price) and price > 0):
        return id, ts, float(price)
    return None


# Entries read per round trip beyond the ones asked for: quotes published while we read.
SLACK = 64


async def read_after(tape: Tape, symbol: str, seq: int, upto: int) -> list[Quote] | None:
    """Every quote of `symbol` with seq in (seq, upto], in order; None when the tape does
    not hold all of them (trimmed, or lost by Redis), so recovering from it would leave
    a hole. Read back from the newest, which holds them unless more were published
    meanwhile; then further back, page by page."""
    if upto <= seq:
        return []
    found: list[Quote] = []
    end, want = "+", upto - seq + SLACK
    for _ in range(8):
        page = await tape.back(symbol, end, want)
        for entry in page:
            s = entry.quote.seq or 0
            if s <= seq:
                return _whole(found, seq, upto)
            if s <= upto:
                found.append(entry.quote)
        if len(page) < want:
            break  # the start of the tape
        end, want = "(" + page[-1].id, max(upto - seq - len(found), 0) + SLACK
    return _whole(found, seq, upto)


def _whole(newest_first: list[Quote], seq: int, upto: int) -> list[Quote] | None:
    quotes = newest_first[::-1]
    if len(quotes) != upto - seq or any(q.seq != seq + 1 + i for i, q in enumerate(quotes)):
        return None
    return quotes


def make_tape(settings: Settings) -> Tape:
    if not settings.redis_url:
        from .memory import MemoryTape

        return MemoryTape(settings.tape_max_len, settings.tape_retention_s)
    from .redis import RedisTape

    return RedisTape(settings)
