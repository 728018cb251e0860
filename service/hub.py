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

from quote_client.quote import Quote, now_ms

from .outbox import Group, Outbox, OutboxFull
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
        # Clients with the same subscription share a group (see outbox.py).
        self.groups: dict[Symbols, Group] = {}
        self.by_symbol: dict[str, set[Group]] = {}
        self.members: dict[Subscriber, Group | None] = {}
        self.feed: Feed = "stale"
        self.stats: Counter[str] = Counter()
        # Called with each batch and the seconds its fan-out took (metrics), if set.
        self.observer: Callable[[Sequence[Quote], float], None] | None = None

    # Subscribers

    def add(self, sub: Subscriber) -> None:
        self.members[sub] = None

    def remove(self, sub: Subscriber) -> None:
        if sub not in self.members:
            return
        self._move(sub, None, keep=())
        del self.members[sub]
        self.stats["retired_frames_sent"] += sub.outbox.frames_taken
        self.stats["retired_quotes_sent"] += sub.outbox.quotes_taken

    def subscriptions(self, sub: Subscriber) -> Symbols:
        group = self.members.get(sub)
        return frozenset() if group is None else group.key

    def _move(self, sub: Subscriber, key: Symbols | None, keep: Iterable[str]) -> None:
        old = self.members[sub]
        new = None if key is None or key == frozenset() else self._group(key)
        if new is old:
            return
        if old is not None:
            old.members.discard(sub)
            if not old.members:
                self._drop_group(old)
        if new is not None:
            new.members.add(sub)
        self.members[sub] = new
        try:
            sub.outbox.join(new, keep)
        except OutboxFull as exc:
            sub.overflow(str(exc))

    def _group(self, key: Symbols) -> Group:
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(key, self.board)
            if key != ALL:
                for symbol in key:
                    self.by_symbol.setdefault(symbol, set()).add(group)
        return group

    def _drop_group(self, group: Group) -> None:
        del self.groups[group.key]
        self.stats["retired_quotes_conflated"] += group.conflated
        if group.key != ALL:
            for symbol in group.key:
                groups = self.by_symbol[symbol]
                groups.discard(group)
                if not groups:
                    del self.by_symbol[symbol]

    def subscribe(self, sub: Subscriber, id: Id, symbols: Symbols) -> None:
        """Add symbols, then queue the ack and the snapshot of what was added."""
        mine = self.subscriptions(sub)
        if mine == ALL:
            added: Iterable[str] = ()
        elif symbols == ALL:
            added = self.board.keys() - mine
            self._move(sub, ALL, keep=mine)
        else:
            added = symbols - mine
            if len(mine) + len(added) > self.max_symbols:
                raise ProtocolError(
                    TOO_MANY_SYMBOLS,
                    f"at most {self.max_symbols} symbols per connection; "
                    f"{len(mine)} held, {len(added)} more asked",
                    id,
                )
            if added:
                self._move(sub, mine | added, keep=mine)
        requested = self.board.keys() if symbols == ALL else symbols
        unknown = [s for s in requested if s not in self.board]
        self._ack(sub, id, "subscribe", unknown)
        if added:
            self._snapshot(sub, added)

    def unsubscribe(self, sub: Subscriber, id: Id, symbols: Symbols) -> None:
        mine = self.subscriptions(sub)
        if symbols == ALL:
            self._move(sub, None, keep=())
        else:
            # Leaving some symbols of "*" turns it into the list of the others.
            held = frozenset(self.board) if mine == ALL else mine
            rest = held - symbols
            self._move(sub, rest, keep=rest)
        self._ack(sub, id, "unsubscribe", ())

    def _ack(self, sub: Subscriber, id: Id, op: str, unknown: Iterable[str]) -> None:
        mine = self.subscriptions(sub)
        everything = mine == ALL
        symbols = self.board.keys() if everything else mine
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
        """Fan a batch out; a quote whose seq is not newer than the board's is dropped.

        Work per quote is per group, not per client; each touched group then seals one
        frame for all its members."""
        started = time.perf_counter()
        board = self.board
        by_symbol = self.by_symbol
        everyone = self.groups.get(ALL)
        touched: set[Group] = set()
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
            for group in by_symbol.get(symbol, ()):
                group.put(symbol, text)
                touched.add(group)
            if everyone is not None:
                everyone.put(symbol, text)
                touched.add(everyone)
        for group in touched:
            if group.seal():
                for sub in group.members:
                    sub.wake()
        self.stats["quotes_in"] += sent
        if self.observer is not None:
            self.observer(quotes, time.perf_counter() - started)
        return sent

    def load(self, quotes: Iterable[Quote]) -> None:
        """Take the broker's full latest state (at start and after every reconnect).

        A symbol never goes backwards: a replica promoted by Sentinel may lack the last
        writes (replication is asynchronous), and the quote we already sent stays until
        the publisher, which remembers its seqs, writes a newer one."""
        fresh = dict(self.board)
        for quote in quotes:
            seq = quote.seq or 0
            held = fresh.get(quote.symbol)
            if held is None or seq > held[0]:
                fresh[quote.symbol] = (seq, quote.to_json().decode())
        # In place: groups hold this board for members that fell too far behind.
        self.board.clear()
        self.board.update(fresh)

    def set_feed(self, feed: Feed) -> None:
        """Tell every client; on recovery each also gets a fresh snapshot of its symbols."""
        if feed == self.feed:
            return
        self.feed = feed
        log.log(logging.WARNING if feed == "stale" else logging.INFO, "feed %s", feed)
        frame = status(feed, now_ms())
        for sub in list(self.members):
            self.queue_frame(sub, frame)
            if feed == "live":
                mine = self.subscriptions(sub)
                self._snapshot(sub, self.board.keys() if mine == ALL else mine)

    def greet(self, sub: Subscriber) -> None:
        """A new client learns at once if the feed is down, instead of at the next change."""
        if self.feed == "stale":
            self.queue_frame(sub, status("stale", now_ms()))
