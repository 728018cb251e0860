"""The client's side of the compact encoding (PROTOCOL.md, "Compact encoding"), sans I/O.

A compact `quotes` frame is a JSON array `[TS0, entry, ...]`; an entry is a full quote (an
object with its symbol's index `i`) or a delta `[i, price, dseq, dts, changes?]` against the
quote of that symbol the client holds. `Decoder` holds those quotes and the index, and
turns every frame that carries quotes back into protocol 1's full quote objects, field for
field what a protocol-1 client is sent (change and change_pct are derived exactly as the
service derives them: quote.derived_change).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .quote import derived_change


class CompactError(ValueError):
    """A frame the decoder cannot apply (a delta for a symbol it does not hold): the
    connection is out of step and must start again."""


class Decoder:
    """One connection's decoding state: make a new one for every connection."""

    __slots__ = ("held", "symbols")

    def __init__(self) -> None:
        # index -> symbol, as full quotes taught it.
        self.symbols: dict[int, str] = {}
        # symbol -> the last full quote (protocol 1's object) of it.
        self.held: dict[str, dict[str, Any]] = {}

    def quotes(self, frame: Any) -> list[dict[str, Any]]:
        """The quotes of a `snapshot` or `quotes` frame (decoded JSON: an object in
        protocol 1's form, or a compact array), as protocol 1's objects, in order."""
        if isinstance(frame, list):
            return self._compact(frame)
        raw = frame.get("quotes") if isinstance(frame, Mapping) else None
        if not isinstance(raw, list):
            return []
        return [self._full(item) for item in raw if isinstance(item, Mapping)]

    def _full(self, item: Mapping[str, Any]) -> dict[str, Any]:
        quote = dict(item)
        index = quote.pop("i", None)
        symbol = quote.get("symbol")
        if isinstance(symbol, str):
            if isinstance(index, int):
                self.symbols[index] = symbol
            self.held[symbol] = quote
        return quote

    def _compact(self, frame: list[Any]) -> list[dict[str, Any]]:
        if not frame or not isinstance(frame[0], int):
            raise CompactError("a compact frame starts with its time")
        t = frame[0]
        out = []
        for entry in frame[1:]:
            if isinstance(entry, Mapping):
                quote = self._full(entry)
                if isinstance(quote.get("ts"), int):
                    t = quote["ts"]
            elif isinstance(entry, list) and len(entry) in (4, 5):
                quote = self._delta(entry, t)
                t = quote["ts"]
            else:
                raise CompactError(f"not an entry of a compact frame: {str(entry)[:80]}")
            out.append(quote)
        return out

    def _delta(self, entry: list[Any], t: int) -> dict[str, Any]:
        index, price, dseq, dts = entry[:4]
        symbol = self.symbols.get(index)
        held = self.held.get(symbol) if symbol is not None else None
        if held is None or symbol is None:
            raise CompactError(f"a delta for index {index!r}, which no full quote taught")
        if not (isinstance(price, (int, float)) and isinstance(dseq, int)
                and isinstance(dts, int) and isinstance(held.get("seq"), int)):
            raise CompactError(f"a malformed delta: {str(entry)[:80]}")
        quote = dict(held)
        quote["price"] = price
        quote["change"], quote["change_pct"] = derived_change(price, held["prev_close"])
        quote["seq"] = held["seq"] + dseq
        quote["ts"] = t + dts
        if len(entry) == 5:
            changes = entry[4]
            if not isinstance(changes, Mapping):
                raise CompactError(f"a delta's changes must be an object: {str(entry)[:80]}")
            for name, value in changes.items():
                if value is None:
                    quote.pop(name, None)
                else:
                    quote[name] = value
        self.held[symbol] = quote
        return quote
