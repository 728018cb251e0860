"""permessage-deflate (RFC 7692) as a fan-out can afford it: compressed once per shared frame.

A compressor per connection, as websocket servers usually run the extension, keeps a zlib
context per client (tens of KB each) and compresses every frame once per client: the cost
that made this service turn deflate off. Here the server never takes its context over
(`server_no_context_takeover`), so a shared frame compressed once (wire.py) is valid for
every member that negotiated the extension, and the connection holds no compressor at all.
Its own small frames (acks, errors, the close) go uncompressed, which the RFC allows
message by message. The client is asked not to take its context over either, so what it
sends is inflated with a decompressor made per message and dropped after it.

This is the websockets library's extension API (websockets.extensions.base), given to
uvicorn's protocol in uvicorn_private.py.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

from websockets.exceptions import NegotiationError, PayloadTooBig
from websockets.extensions.base import Extension, ServerExtensionFactory
from websockets.frames import Frame, Opcode
from websockets.typing import ExtensionName, ExtensionParameter

NAME = ExtensionName("permessage-deflate")
# What the server answers an offer it accepts.
RESPONSE: list[ExtensionParameter] = [("server_no_context_takeover", None),
                                      ("client_no_context_takeover", None)]
_TAIL = b"\x00\x00\xff\xff"


class SharedDeflate(Extension):
    """One connection's side of the extension: inflates what the client compressed, and
    leaves what the server sends as it is (shared frames come compressed already)."""

    name = NAME

    def __init__(self) -> None:
        # The decompressor of a fragmented compressed message, between its frames.
        self._inflating: Any = None

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            if not frame.rsv1:
                return frame
            self._inflating = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
        elif frame.opcode != Opcode.CONT or self._inflating is None:
            return frame  # control frames, continuations of an uncompressed message
        inflating = self._inflating
        data = bytes(frame.data) + _TAIL if frame.fin else frame.data
        data = inflating.decompress(data, 0 if max_size is None else max_size)
        if inflating.unconsumed_tail:
            raise PayloadTooBig(None, max_size)
        if frame.fin:
            self._inflating = None
        return dataclasses.replace(frame, data=data, rsv1=False)

    def encode(self, frame: Frame) -> Frame:
        return frame


class SharedDeflateFactory(ServerExtensionFactory):
    """Accepts an offer of permessage-deflate unless it limits the server's window below
    zlib's 15 bits (the shared frames are compressed with 15): that client goes on
    uncompressed."""

    name = NAME

    def process_request_params(self, params: Sequence[ExtensionParameter],
                               accepted_extensions: Sequence[Extension]
                               ) -> tuple[list[ExtensionParameter], Extension]:
        if any(extension.name == NAME for extension in accepted_extensions):
            raise NegotiationError("permessage-deflate is already accepted")
        for name, value in params:
            if name == "server_max_window_bits":
                if value != str(zlib.MAX_WBITS):
                    raise NegotiationError(f"server_max_window_bits={value} is not offered")
            elif name not in ("server_no_context_takeover", "client_no_context_takeover",
                              "client_max_window_bits"):
                raise NegotiationError(f"unknown parameter {name}")
        return list(RESPONSE), SharedDeflate()
