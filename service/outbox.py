"""Per-client outbound state, bounded whatever the client does (sans I/O).

Quotes are conflated: only the latest per symbol waits, so a slow reader costs at most one
entry per subscribed symbol and never a growing queue (FIELD-NOTES: the one-slow-client
freeze). Control frames (ack, snapshot, pong, error, status) keep their order and are few,
but they are bounded too: a client that lets them pile up is not reading.
"""

from __future__ import annotations

from collections import deque

from .protocol import quotes_frame


class OutboxFull(Exception):
    """The client let too many control frames pile up: it is not reading."""


class Outbox:
    __slots__ = ("conflated", "control", "frames_taken", "max_control", "quotes", "quotes_taken")

    def __init__(self, max_control: int = 64) -> None:
        self.control: deque[str] = deque()
        self.quotes: dict[str, str] = {}
        self.max_control = max_control
        # Plain counters, read by /metrics at scrape time: nothing on the hot path locks.
        self.conflated = 0
        self.frames_taken = 0
        self.quotes_taken = 0

    def __bool__(self) -> bool:
        return bool(self.control or self.quotes)

    def put_quote(self, symbol: str, quote_json: str) -> bool:
        """Returns True when the outbox was empty, i.e. the sender needs waking."""
        quotes = self.quotes
        was_empty = not quotes and not self.control
        if symbol in quotes:
            self.conflated += 1
            # Re-insert so that the frame lists symbols in the order they last changed.
            del quotes[symbol]
        quotes[symbol] = quote_json
        return was_empty

    def put_control(self, frame: str) -> None:
        if len(self.control) >= self.max_control:
            raise OutboxFull(f"{len(self.control)} control frames unsent")
        self.control.append(frame)

    def drop_quotes(self, symbols: frozenset[str] | None = None) -> None:
        """Forget pending quotes of symbols the client just left (None: all of them)."""
        if symbols is None:
            self.quotes.clear()
        else:
            for symbol in symbols & self.quotes.keys():
                del self.quotes[symbol]

    def take(self) -> list[str]:
        """Everything due, in order: control frames first, then one frame of quotes."""
        frames = list(self.control)
        self.control.clear()
        if self.quotes:
            frames.append(quotes_frame("quotes", self.quotes.values()))
            self.quotes_taken += len(self.quotes)
            self.quotes = {}
        self.frames_taken += len(frames)
        return frames
