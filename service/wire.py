"""What a frame that carries quotes is, and its websocket wire bytes (RFC 6455 §5.2).

A `snapshot` or `quotes` frame is built from the board's entries (symbol -> (seq, quote
JSON)) and keeps them beside its text: an SSE stream's event ids (the last seq of each
symbol, sse.py) are read off them instead of parsing the text back. Every other frame
(welcome, ack, error, heartbeat...) is a plain string built by protocol.py.

A server's frames are not masked, so the bytes on the wire are the same for every client:
a frame shared by a group is encoded once and written to each member's socket as is,
instead of being encoded and framed again per client (see connection.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from operator import itemgetter
from typing import Literal

from .protocol import quotes_frame

_FIN_TEXT = 0x81

QuoteKind = Literal["snapshot", "quotes"]
# The quotes of a frame: symbol -> (seq, JSON), latest per symbol (the conflated path), or
# (symbol, seq, JSON) in order, several of a symbol at a time (every mode).
Quoted = dict[str, tuple[int, str]] | list[tuple[str, int, str]]

_second = itemgetter(1)
_third = itemgetter(2)


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = bytes((_FIN_TEXT, n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, n)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, n)
    return header + payload


class Frame:
    """A frame of quotes: its type, its text, and the quotes it was built from."""

    __slots__ = ("kind", "quotes", "text")

    def __init__(self, kind: QuoteKind, quotes: Quoted) -> None:
        self.kind = kind
        self.quotes = quotes
        self.text = quotes_frame(kind, map(_second, quotes.values()) if isinstance(quotes, dict)
                                 else map(_third, quotes))

    def seqs(self) -> Iterator[tuple[str, int]]:
        """(symbol, seq) of each quote, in the frame's order."""
        quotes = self.quotes
        if isinstance(quotes, dict):
            return ((symbol, entry[0]) for symbol, entry in quotes.items())
        return ((symbol, seq) for symbol, seq, _ in quotes)


class Prepared(Frame):
    """A frame of quotes with its wire bytes, made once and shared by a group's members."""

    __slots__ = ("wire",)

    def __init__(self, kind: QuoteKind, quotes: Quoted) -> None:
        super().__init__(kind, quotes)
        self.wire = text_frame(self.text.encode())


def text_of(frame: str | Frame) -> str:
    return frame if isinstance(frame, str) else frame.text


def wire_of(frame: str | Frame) -> bytes:
    """A frame's wire bytes: a shared frame's own, any other's framed now."""
    return frame.wire if isinstance(frame, Prepared) else text_frame(text_of(frame).encode())
