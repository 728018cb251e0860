"""Websocket wire bytes of a server text frame (RFC 6455 §5.2), built once per frame.

A server's frames are not masked, so the bytes on the wire are the same for every client:
a frame shared by a group is encoded once and written to each member's socket as is,
instead of being encoded and framed again per client (see connection.py).
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = bytes((_FIN_TEXT, n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, n)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, n)
    return header + payload


class Prepared:
    """A frame's text and its wire bytes, made once and shared by a group's members."""

    __slots__ = ("text", "wire")

    def __init__(self, text: str) -> None:
        self.text = text
        self.wire = text_frame(text.encode())
