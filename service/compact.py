"""The compact encoding of quotes frames (PROTOCOL.md, "Compact encoding"), sans I/O.

Protocol 1 sends every quote as the symbol's full state, about 130 bytes, where between two
frames of a subscription usually only price, seq and ts moved: kind and prev_close do not
move within a day, change and change_pct follow from price and prev_close. A compact
client asks for it (`?encoding=compact`) and gets, for a quote of a symbol it holds, only
`[index, price, seq increase, ts increase]` and any other field that changed; it rebuilds
the full quote exactly (quote_core/compact.py is the client's side of it).

A group's frame is encoded once for all its members, so a delta must be against what
every member holds. `Reference` keeps, per group, the last quote of each symbol the group
sealed; a member that joins (or gets a snapshot) between two seals holds the board's newer
state for the symbols then pending, so those go out in full at the next seal. Anything a
member gets alone (snapshots, catching up after falling behind, every mode) is in full:
protocol 1's shape with each quote's index added.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from quote_core.quote import Quote

# A board entry: (seq, the quote's JSON as the hub sends it, the quote).
Entry = tuple[int, str, Quote]

# Fields a delta carries only when they changed (kind and prev_close changing, or seq
# missing, make the entry a full one instead).
_OPTIONAL = ("open", "high", "low", "volume", "bid", "ask", "state")


class SymbolIndex:
    """Each symbol's small integer, fixed for the life of the process: every group and tier
    names a symbol by the same one, so a connection never sees two meanings of an index."""

    __slots__ = ("_of",)

    def __init__(self) -> None:
        self._of: dict[str, int] = {}

    def __call__(self, symbol: str) -> int:
        index = self._of.get(symbol)
        if index is None:
            index = self._of[symbol] = len(self._of)
        return index


# The process's index. It grows with the symbols the board ever held, which the market
# bounds (the board holds them all anyway).
INDEX = SymbolIndex()


def indexed(symbol: str, text: str) -> str:
    """A quote's protocol-1 JSON with its symbol's index: a compact client's full entry."""
    return f'{text[:-1]},"i":{INDEX(symbol)}}}'


def full_quotes(entries: Iterable[tuple[str, str]]) -> Iterable[str]:
    """(symbol, JSON) pairs as full entries."""
    return (indexed(symbol, text) for symbol, text in entries)


def _changes(before: Quote, after: Quote) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    for name in _OPTIONAL:
        value = getattr(after, name)
        if value != getattr(before, name):
            changed[name] = value  # None: no longer set
    return changed


class Reference:
    """What every member of one group holds, and the encoder of that group's frames."""

    __slots__ = ("fresh", "held")

    def __init__(self) -> None:
        # symbol -> the last quote of it this group sealed.
        self.held: dict[str, Quote] = {}
        # Symbols some member holds newer than `held` (it joined, or got a snapshot,
        # while they were pending): in full at the next seal.
        self.fresh: set[str] = set()

    def joined(self, pending: Iterable[str]) -> None:
        self.fresh.update(pending)

    def forget(self) -> None:
        """The board was replaced under the groups (the feed reloaded it): every symbol's
        next quote goes out in full."""
        self.held.clear()

    def encode(self, entries: Mapping[str, Entry]) -> str:
        """The compact frame of a seal: `[TS0, entry, ...]`, in the entries' order."""
        held = self.held
        fresh = self.fresh
        parts: list[str] = []
        start: int | None = None
        t = 0
        for symbol, (_, text, quote) in entries.items():
            ts = quote.ts
            if start is None:
                start = t = ts
            before = held.get(symbol)
            held[symbol] = quote
            if (before is None or symbol in fresh or before.seq is None or quote.seq is None
                    or before.kind != quote.kind or before.prev_close != quote.prev_close):
                parts.append(indexed(symbol, text))
            else:
                delta: list[Any] = [INDEX(symbol), quote.price, quote.seq - before.seq, ts - t]
                changed = _changes(before, quote)
                if changed:
                    delta.append(changed)
                parts.append(orjson.dumps(delta).decode())
            t = ts
        fresh.clear()
        return f"[{start},{','.join(parts)}]"
