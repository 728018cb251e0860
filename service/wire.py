"""What a frame that carries quotes is, and its websocket wire bytes (RFC 6455 §5.2).

A `snapshot` or `quotes` frame is built from the board's entries (symbol -> (seq, quote
JSON)) and keeps them beside its text: an SSE stream's event ids (the last seq of each
symbol, sse.py) are read off them instead of parsing the text back. Every other frame
(welcome, ack, error, heartbeat...) is a plain string built by protocol.py.

A server's frames are not masked, so the bytes on the wire are the same for every client:
a frame shared by a group is encoded once and written to each member's socket as is,
instead of being encoded and framed again per client (see connection.py). The same goes
for its permessage-deflate form (RFC 7692): compressed once per shared frame without
context (the server never takes its context over, which the extension's negotiation
says), it is the same bytes for every member that negotiated deflate, so its CPU is paid
per frame, not per client as a compressor per connection would (service/deflate.py).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Literal

from .compact import Entry, full_quotes
from .protocol import quotes_frame

_FIN_TEXT = 0x81
# The same with RSV1 set: the message is compressed (RFC 7692 §6).
_FIN_TEXT_DEFLATED = 0xC1
# A shared frame is compressed only from this many bytes of text (the default of
# WS_DEFLATE_MIN_BYTES). Compact frames of 64-255 bytes (a few deltas: the demo at max_hz 4)
# deflate to about 0.7 of their size, larger ones to 0.44; below 64 (one or two deltas) it
# saves nothing and only spends zlib's time (bench/README.md, "Bytes per viewer").
DEFLATE_MIN_BYTES = 64
# zlib's level 6 (its default): measured 10-15% smaller than level 1 on quotes frames, and
# paid once per shared frame.
DEFLATE_LEVEL = 6
# A compressor's setup is most of its cost on frames this small: zlib's default memLevel 8
# and a 32 KB window took 41 µs for a 100-byte frame, memLevel 5 and a window no larger
# than the frame 10 µs, for the same bytes. A smaller window than the client's is valid
# (RFC 7692 §7.1.2: the server's window bits are a maximum).
DEFLATE_MEM_LEVEL = 5

QuoteKind = Literal["snapshot", "quotes"]
# The quotes of a frame: symbol -> (seq, JSON, quote), latest per symbol (the conflated
# path), or (symbol, seq, JSON) in order, several of a symbol at a time (every mode).
Quoted = dict[str, Entry] | list[tuple[str, int, str]]


def _frame(first: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = bytes((first, n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


def text_frame(payload: bytes) -> bytes:
    return _frame(_FIN_TEXT, payload)


def deflated_frame(payload: bytes) -> bytes | None:
    """The text frame compressed without context (RFC 7692 §7.2.1: a sync flush, its
    trailing 00 00 ff ff removed); None when that would not be smaller."""
    bits = min(zlib.MAX_WBITS, max(9, len(payload).bit_length()))
    compressor = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -bits, DEFLATE_MEM_LEVEL)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if len(data) - 4 >= len(payload):
        return None
    return _frame(_FIN_TEXT_DEFLATED, data[:-4])


def quotes_text(kind: QuoteKind, quotes: Quoted, compact: bool = False) -> str:
    """A snapshot or quotes frame in protocol 1's shape; for a compact client each quote
    also carries its symbol's index (service/compact.py)."""
    if isinstance(quotes, dict):
        if compact:
            return quotes_frame(kind, full_quotes((s, e[1]) for s, e in quotes.items()))
        return quotes_frame(kind, [e[1] for e in quotes.values()])
    if compact:
        return quotes_frame(kind, full_quotes((s, text) for s, _, text in quotes))
    return quotes_frame(kind, [text for _, _, text in quotes])


class Frame:
    """A frame of quotes: its type, its text, and the quotes it was built from."""

    __slots__ = ("kind", "quotes", "text")

    def __init__(self, kind: QuoteKind, quotes: Quoted, text: str | None = None,
                 compact: bool = False) -> None:
        self.kind = kind
        self.quotes = quotes
        self.text = quotes_text(kind, quotes, compact) if text is None else text

    def seqs(self) -> Iterator[tuple[str, int]]:
        """(symbol, seq) of each quote, in the frame's order."""
        quotes = self.quotes
        if isinstance(quotes, dict):
            return ((symbol, entry[0]) for symbol, entry in quotes.items())
        return ((symbol, seq) for symbol, seq, _ in quotes)


class Prepared(Frame):
    """A frame of quotes with its wire bytes, made once and shared by a group's members;
    compressed from `deflate_from` bytes of text (0: never) when that makes it smaller."""

    __slots__ = ("wire",)

    def __init__(self, kind: QuoteKind, quotes: Quoted, text: str | None = None,
                 compact: bool = False, deflate_from: int = 0) -> None:
        super().__init__(kind, quotes, text, compact)
        payload = self.text.encode()
        wire = None
        if deflate_from and len(payload) >= deflate_from:
            wire = deflated_frame(payload)
        self.wire = text_frame(payload) if wire is None else wire


def text_of(frame: str | Frame) -> str:
    return frame if isinstance(frame, str) else frame.text


def wire_of(frame: str | Frame) -> bytes:
    """A frame's wire bytes: a shared frame's own, any other's framed now."""
    return frame.wire if isinstance(frame, Prepared) else text_frame(text_of(frame).encode())
