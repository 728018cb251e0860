"""The in-process fan-out: one board of latest quotes, and who wants which symbol.

The feed (Redis or embedded) calls `publish` with each batch; every quote is serialised
once here and handed to the outboxes of its subscribers, whose sender tasks coalesce
whatever is pending into one frame per write. Nothing in this module awaits, so
subscription changes and fan-out never interleave: a subscriber's snapshot always comes
before any update it has not seen.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Protocol

from .outbox import Outbox, OutboxFull
from .protocol import (
    ALL,
    TOO_MANY_SYMBOLS,
    Id,
    ProtocolError,
    Symbols,
    ack,
    quotes_frame,
    status,
)
from .quote import Quote, now_ms

log = logging.getLogger("service.hub")

Feed = Literal["live", "stale"]


class Subscriber(Protocol):
    outbox: Outbox

    def wake(self) -> None:
        """Tell the sender task there is something to send."""

    def overflow(self, reason: str) -> None:
        """The subscriber is not reading: close it as a slow consumer."""


class Hub:
    def __init__(self, max_symbols: int) -> None:
        self.max_symbols = max_symbols
        # symbol -> (seq, quote JSON)
        self.board: dict[str, tuple[int, str]] = {}
        self.by_symbol: dict[str, set[Subscriber]] = {}
        self.everyone: set[Subscriber] = set()
        self.explicit: dict[Subscriber, set[str]] = {}
        self.feed: Feed = "stale"
        self.stats: Counter[str] = Counter()
        # Called with each batch and the seconds its fan-out took (metrics), if set.
        self.observer: Callable[[Sequence[Quote], float], None] | None = None

    # Subscribers

    def add(self, sub: Subscriber) -> None:
        self.explicit[sub] = set()

    def remove(self, sub: Subscriber) -> None:
        if sub not in self.explicit:
            return
        outbox = sub.outbox
        self.stats["retired_frames_sent"] += outbox.frames_taken
        self.stats["retired_quotes_sent"] += outbox.quotes_taken
        self.stats["retired_quotes_conflated"] += outbox.conflated
        for symbol in self.explicit.pop(sub, ()):
            self._unindex(sub, symbol)
        self.everyone.discard(sub)

    def _unindex(self, sub: Subscriber, symbol: str) -> None:
        subs = self.by_symbol.get(symbol)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.by_symbol[symbol]

    def subscriptions(self, sub: Subscriber) -> tuple[set[str], bool]:
        return self.explicit.get(sub, set()), sub in self.everyone

    def subscribe(self, sub: Subscriber, id: Id, symbols: Symbols) -> None:
        """Add symbols, then queue the ack and the snapshot of what was added."""
        mine = self.explicit[sub]
        if symbols == ALL:
            added = set(self.board) if sub not in self.everyone else set()
            for symbol in mine:
                self._unindex(sub, symbol)
            mine.clear()
            self.everyone.add(sub)
        elif sub in self.everyone:
            added = set()
        else:
            added = set(symbols) - mine
            if len(mine) + len(added) > self.max_symbols:
                raise ProtocolError(
                    TOO_MANY_SYMBOLS,
                    f"at most {self.max_symbols} symbols per connection; "
                    f"{len(mine)} held, {len(added)} more asked",
                    id,
                )
            mine |= added
            for symbol in added:
                self.by_symbol.setdefault(symbol, set()).add(sub)
        requested = self.board.keys() if symbols == ALL else symbols
        unknown = [s for s in requested if s not in self.board]
        self._ack(sub, id, "subscribe", unknown)
        if added:
            self._snapshot(sub, added)

    def unsubscribe(self, sub: Subscriber, id: Id, symbols: Symbols) -> None:
        mine = self.explicit[sub]
        if symbols == ALL:
            removed = None
            for symbol in mine:
                self._unindex(sub, symbol)
            mine.clear()
            self.everyone.discard(sub)
        else:
            removed = frozenset(symbols)
            if sub in self.everyone:
                # Leaving some symbols of "*" turns it into the list of the others.
                self.everyone.discard(sub)
                keep = set(self.board) - removed
                mine |= keep
                for symbol in keep:
                    self.by_symbol.setdefault(symbol, set()).add(sub)
            for symbol in removed & mine:
                mine.discard(symbol)
                self._unindex(sub, symbol)
        sub.outbox.drop_quotes(removed)
        self._ack(sub, id, "unsubscribe", ())

    def _ack(self, sub: Subscriber, id: Id, op: str, unknown: Iterable[str]) -> None:
        everything = sub in self.everyone
        symbols = self.board.keys() if everything else self.explicit[sub]
        self.queue_frame(sub, ack(id, op, symbols, unknown, all=everything))

    def _snapshot(self, sub: Subscriber, symbols: Iterable[str]) -> None:
        board = self.board
        held = [board[s][1] for s in sorted(symbols) if s in board]
        if held:
            self.queue_frame(sub, quotes_frame("snapshot", held))

    def queue_frame(self, sub: Subscriber, frame: str) -> None:
        try:
            sub.outbox.put_control(frame)
        except OutboxFull as exc:
            sub.overflow(str(exc))
            return
        sub.wake()

    # Feed

    def publish(self, quotes: Sequence[Quote]) -> int:
        """Fan a batch out; a quote whose seq is not newer than the board's is dropped."""
        started = time.perf_counter()
        board = self.board
        by_symbol = self.by_symbol
        everyone = self.everyone
        sent = 0
        for quote in quotes:
            symbol = quote.symbol
            seq = quote.seq or 0
            held = board.get(symbol)
            if held is not None and seq <= held[0]:
                self.stats["quotes_stale_dropped"] += 1
                continue
            text = quote.to_json().decode()
            board[symbol] = (seq, text)
            sent += 1
            for targets in (by_symbol.get(symbol, ()), everyone):
                for sub in targets:
                    if sub.outbox.put_quote(symbol, text):
                        sub.wake()
        self.stats["quotes_in"] += sent
        if self.observer is not None:
            self.observer(quotes, time.perf_counter() - started)
        return sent

    def load(self, quotes: Iterable[Quote]) -> None:
        """Take the broker's full latest state (at start and after every reconnect).

        Redis is the record: a symbol whose seq went backwards (the publisher's state was
        lost) is taken as it is rather than shadowed by what we held."""
        fresh: dict[str, tuple[int, str]] = {}
        for quote in quotes:
            fresh[quote.symbol] = (quote.seq or 0, quote.to_json().decode())
        for symbol, held in self.board.items():
            fresh.setdefault(symbol, held)
        self.board = fresh

    def set_feed(self, feed: Feed) -> None:
        """Tell every client; on recovery each also gets a fresh snapshot of its symbols."""
        if feed == self.feed:
            return
        self.feed = feed
        log.log(logging.WARNING if feed == "stale" else logging.INFO, "feed %s", feed)
        frame = status(feed, now_ms())
        for sub in list(self.explicit):
            self.queue_frame(sub, frame)
            if feed == "live":
                mine, everything = self.subscriptions(sub)
                self._snapshot(sub, self.board.keys() if everything else mine)

    def greet(self, sub: Subscriber) -> None:
        """A new client learns at once if the feed is down, instead of at the next change."""
        if self.feed == "stale":
            self.queue_frame(sub, status("stale", now_ms()))
