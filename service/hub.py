"""The in-process fan-out: one board of latest quotes, and who wants which symbol.

The feed (Redis or embedded) calls `publish` with each batch; every quote is serialised
once here and handed to the outboxes of its subscribers, whose sender tasks coalesce
whatever is pending into one frame per write. Nothing in the conflated path awaits, so
subscription changes and fan-out never interleave: a subscriber's snapshot always comes
before any update it has not seen.

Every-mode subscribers (`"mode": "every"`) get each quote, in seq order per symbol, from
the sequencer (service/sequencer.py), which the hub passes every quote while any listen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quote_core.quote import Quote, now_ms

from .compact import Entry
from .outbox import Form, Group, OutboxFull
from .protocol import (
    ALL,
    BAD_REQUEST,
    FORBIDDEN,
    TOO_MANY_SYMBOLS,
    FeedState,
    Id,
    Mode,
    ProtocolError,
    Symbols,
    ack,
    error,
    status,
)
from .sequencer import Sequencer, Subscriber
from .tape import Tape
from .wire import DEFLATE_MIN_BYTES, Frame

log = logging.getLogger("service.hub")


# A group's key: the subscription, the rate (None: the default, FANOUT_INTERVAL_MS), the
# phase of a rated group, and its members' form (outbox.py).
GroupKey = tuple[Symbols, float | None, int, Form]

# A seal writes the group's frame to every member in one pass, so a 4 Hz group of 20,000
# viewers would spend ~100 ms per seal, past the rate's own latency budget. A rated group
# therefore grows phases: past PHASE_MEMBERS members in each, a new phase of the same
# subscription and rate seals at its own offset within the interval (bench/viewers.py).
PHASE_MEMBERS = 1000

def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _loop_call_later(delay: float, callback: Callable[[], None]) -> Any:
    return asyncio.get_running_loop().call_later(delay, callback)


@dataclass(frozen=True, slots=True)
class Figures:
    """What the metrics report of a hub, counted where the hub keeps it."""

    frames_sent: int
    quotes_sent: int
    quotes_conflated: int
    groups: int
    # Subscribed (client, symbol) pairs; "*" counts once per client.
    subscriptions: int
    every_subscribers: int


def unknown(board: Mapping[str, object], symbols: Symbols) -> list[str]:
    """The requested symbols the board holds no quote for, sorted (none for "*"): the ack's
    `unknown`, and /quotes' (rest.py)."""
    return [] if symbols == ALL else sorted(s for s in symbols if s not in board)


class Hub:
    def __init__(self, max_symbols: int, *, default_hz: float | None = None,
                 clock: Callable[[], float] = _loop_time,
                 call_later: Callable[[float, Callable[[], None]], Any] = _loop_call_later,
                 tape: Tape | None = None, max_recovery: int = 10_000,
                 every_queue_bytes: int = 1 << 20, mark: str = "",
                 deflate_min_bytes: int = DEFLATE_MIN_BYTES) -> None:
        self.max_symbols = max_symbols
        # Shared frames from this size go compressed to deflate members (wire.py).
        self.deflate_min_bytes = deflate_min_bytes
        # What every quote this hub sends carries besides its fields (its tier's mark,
        # service/tiers.py: `"delayed": true`), as JSON members after a comma.
        self.mark = mark
        # The rate of a client that asks for none: the fan-out's own (1000 /
        # FANOUT_INTERVAL_MS), or None when that has no cap. A client asking at least this
        # much is in the default groups; one asking less gets groups of its own rate.
        self.default_hz = default_hz
        # Rated groups seal on the event loop's clock and timers (injectable for tests).
        self.clock = clock
        self.call_later = call_later
        # symbol -> (seq, quote JSON, quote)
        self.board: dict[str, Entry] = {}
        # Clients with the same subscription and rate share a group (see outbox.py).
        self.groups: dict[GroupKey, Group] = {}
        # Clients that asked for a rate below the default: their max_hz.
        self.rates: dict[Subscriber, float] = {}
        self.by_symbol: dict[str, set[Group]] = {}
        # The groups of "*" (one per rate in use).
        self.everyone: list[Group] = []
        self.members: dict[Subscriber, Group | None] = {}
        self.feed: FeedState = "stale"
        self.stats: Counter[str] = Counter()
        # Called with each batch and the seconds its fan-out took (metrics), if set.
        self.observer: Callable[[Sequence[Quote], float], None] | None = None
        # Every mode (service/sequencer.py): recovery and fills from the tape.
        self.every = Sequencer(self, tape, max_recovery, every_queue_bytes)
        # A subscribe's symbols its token does not cover: (its id, them), until its ack.
        self.refused: dict[Subscriber, tuple[Id, list[str]]] = {}

    def text(self, quote: Quote) -> str:
        """A quote's JSON as this hub sends it, with its tier's mark."""
        text = quote.to_json().decode()
        return text[:-1] + self.mark + "}" if self.mark else text

    # Subscribers

    def add(self, sub: Subscriber) -> None:
        self.members[sub] = None

    def remove(self, sub: Subscriber) -> None:
        if sub not in self.members:
            return
        self.every.leave(sub)
        self.refused.pop(sub, None)
        self._move(sub, None, keep=())
        del self.members[sub]
        self.rates.pop(sub, None)
        self.stats["retired_frames_sent"] += sub.outbox.frames_taken
        self.stats["retired_quotes_sent"] += sub.outbox.quotes_taken

    def figures(self) -> Figures:
        stats = self.stats
        groups = self.groups.values()
        outboxes = [sub.outbox for sub in self.members]
        return Figures(
            frames_sent=stats["retired_frames_sent"] + sum(o.frames_taken for o in outboxes),
            quotes_sent=stats["retired_quotes_sent"] + sum(o.quotes_taken for o in outboxes),
            quotes_conflated=stats["retired_quotes_conflated"] + sum(g.conflated for g in groups),
            groups=len(groups),
            subscriptions=sum(len(g.members) * (1 if g.key == ALL else len(g.key)) for g in groups),
            every_subscribers=len(self.every.subs))

    def has(self, sub: Subscriber) -> bool:
        return sub in self.members

    def subscriptions(self, sub: Subscriber) -> Symbols:
        every = self.every.subs.get(sub)
        if every is not None:
            return every
        group = self.members.get(sub)
        return frozenset() if group is None else group.key

    def mode(self, sub: Subscriber) -> Mode | None:
        """The mode of the client's subscriptions; None while it holds none."""
        if sub in self.every.subs:
            return "every"
        return None if self.members.get(sub) is None else "conflated"

    def max_hz(self, sub: Subscriber) -> float | None:
        """The rate in force for this client (what its acks say); None: no cap."""
        return self.rates.get(sub, self.default_hz)

    def _rate(self, max_hz: float) -> float | None:
        """A requested rate as a group's: None (the default groups) when it is no lower."""
        if self.default_hz is not None and max_hz >= self.default_hz:
            return None
        return max_hz

    def _move(self, sub: Subscriber, key: Symbols | None, keep: Iterable[str]) -> None:
        """Put the client in a group of `key` at its rate (None: in none)."""
        old = self.members[sub]
        rate = self.rates.get(sub)
        if old is not None and old.key == key and old.hz == rate:
            return
        new = (None if key is None or key == frozenset()
               else self._group(key, rate, sub.outbox.form))
        if old is not None:
            old.members.discard(sub)
            if not old.members:
                self._drop_group(old)
        if new is not None:
            new.members.add(sub)
            new.joined()
        self.members[sub] = new
        try:
            sub.outbox.join(new, keep)
        except OutboxFull as exc:
            sub.overflow(str(exc))

    def _group(self, key: Symbols, hz: float | None, form: Form) -> Group:
        """The group a client joins: the least full phase, or a new one when all are full."""
        phase = 0
        best: Group | None = None
        while (group := self.groups.get((key, hz, phase, form))) is not None:
            if best is None or len(group.members) < len(best.members):
                best = group
            phase += 1
        if best is not None and (hz is None or len(best.members) < PHASE_MEMBERS):
            return best
        group = self.groups[key, hz, phase, form] = Group(key, self.board, hz, phase, form,
                                                          self.deflate_min_bytes)
        if key == ALL:
            self.everyone.append(group)
        else:
            for symbol in key:
                self.by_symbol.setdefault(symbol, set()).add(group)
        return group

    def _drop_group(self, group: Group) -> None:
        del self.groups[group.key, group.hz, group.phase, group.form]
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        self.stats["retired_quotes_conflated"] += group.conflated
        if group.key == ALL:
            self.everyone.remove(group)
        else:
            for symbol in group.key:
                groups = self.by_symbol[symbol]
                groups.discard(group)
                if not groups:
                    del self.by_symbol[symbol]

    def subscribe(self, sub: Subscriber, id: Id, symbols: Symbols,
                  max_hz: float | None = None, *, mode: Mode = "conflated",
                  since: Mapping[str, int] | None = None,
                  entitled: Symbols = ALL) -> asyncio.Task[None] | None:
        """Add symbols, then queue the ack and the snapshot of what was added. A `max_hz`
        sets the client's rate for all its symbols (None: it stays as it is).

        In every mode with `since`, the ack waits for the tape: the task returned reads
        it (the caller awaits it before the client's next command); otherwise None.

        `entitled`: the symbols the client's token covers. "*" then means all of those;
        the others asked for are left out, and a `forbidden` error naming them follows
        the ack."""
        if entitled != ALL:
            if symbols == ALL:
                symbols = entitled
            else:
                refused = sorted(symbols - entitled)
                if refused:
                    self.refused[sub] = (id, refused)
                    symbols = symbols & entitled
            if since:
                since = {s: seq for s, seq in since.items() if s in entitled}
        current = self.mode(sub)
        if current is not None and current != mode:
            raise ProtocolError(BAD_REQUEST, f"this connection's subscriptions are {current}: "
                                f'unsubscribe "*" first, or open another connection', id)
        mine = self.subscriptions(sub)
        added, after = self._added(mine, symbols, id)
        if mode == "every":
            return self.every.subscribe(sub, id, symbols, added, after, since or {})
        if max_hz is not None:
            self.set_rate(sub, max_hz)
        # A new rate alone moves the client to the group of its symbols at that rate.
        self._move(sub, after, keep=self.board.keys() if mine == ALL else mine)
        self._ack(sub, id, "subscribe", self._unknown(symbols))
        if added:
            self.snapshot(sub, added)
        return None

    def _added(self, mine: Symbols, symbols: Symbols, id: Id) -> tuple[Iterable[str], Symbols]:
        """What a subscribe adds to `mine`, and the set after it."""
        if mine == ALL:
            return (), mine
        if symbols == ALL:
            return self.board.keys() - mine, ALL
        added = symbols - mine
        if len(mine) + len(added) > self.max_symbols:
            raise ProtocolError(
                TOO_MANY_SYMBOLS,
                f"at most {self.max_symbols} symbols per connection; "
                f"{len(mine)} held, {len(added)} more asked",
                id,
            )
        return added, mine | added

    def _unknown(self, symbols: Symbols) -> list[str]:
        return unknown(self.board, symbols)

    def set_rate(self, sub: Subscriber, max_hz: float) -> None:
        """The client's rate from now on; it takes effect at its next move (subscribe)."""
        rate = self._rate(max_hz)
        if rate is None:
            self.rates.pop(sub, None)
        else:
            self.rates[sub] = rate

    def unsubscribe(self, sub: Subscriber, id: Id, symbols: Symbols) -> None:
        mine = self.subscriptions(sub)
        if sub in self.every.subs:
            if symbols == ALL:
                self.every.set_symbols(sub, None)
            else:
                current = frozenset(self.board) if mine == ALL else mine
                self.every.set_symbols(sub, current - symbols)
            self._ack(sub, id, "unsubscribe", (), mode="every")
            return
        if symbols == ALL:
            self._move(sub, None, keep=())
        else:
            # Leaving some symbols of "*" turns it into the list of the others.
            current = frozenset(self.board) if mine == ALL else mine
            rest = current - symbols
            self._move(sub, rest, keep=rest)
        self._ack(sub, id, "unsubscribe", ())

    def _ack(self, sub: Subscriber, id: Id, op: str, unknown: Iterable[str],
             mode: Mode = "conflated", unrecovered: Iterable[str] | None = None) -> None:
        mine = self.subscriptions(sub)
        everything = mine == ALL
        symbols = self.board.keys() if everything else mine
        self.queue_frame(sub, ack(id, op, symbols, unknown, all=everything,
                                  max_hz=None if mode == "every" else self.max_hz(sub),
                                  mode=mode, unrecovered=unrecovered))
        refused = self.refused.pop(sub, None) if op == "subscribe" else None
        if refused is not None:
            self.stats[f"error_{FORBIDDEN}"] += 1
            self.queue_frame(sub, error(FORBIDDEN, "not covered by your token: "
                                        + ", ".join(refused[1][:20])
                                        + (" ..." if len(refused[1]) > 20 else ""), refused[0]))

    def ack_every(self, sub: Subscriber, id: Id, symbols: Symbols,
                  unrecovered: Iterable[str] | None) -> None:
        """The ack of an every-mode subscribe (sequencer.py)."""
        self._ack(sub, id, "subscribe", self._unknown(symbols), "every", unrecovered)

    async def aclose(self) -> None:
        await self.every.aclose()

    def snapshot(self, sub: Subscriber, symbols: Iterable[str]) -> None:
        board = self.board
        entries = {s: board[s] for s in sorted(symbols) if s in board}
        if entries:
            compact = sub.outbox.form[0]
            group = self.members.get(sub)
            if compact and group is not None:
                # Generations it has not taken yet are older than the snapshot, and their
                # deltas are against what it held before it: it gets them in full.
                sub.outbox.merge_next()
                group.joined()
            self.queue_frame(sub, Frame("snapshot", entries, compact=compact))

    def queue_frame(self, sub: Subscriber, frame: str | Frame) -> None:
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
        everyone = self.everyone
        touched: set[Group] = set()
        sent = 0
        sequencer = self.every if self.every else None
        for quote in quotes:
            symbol = quote.symbol
            seq = quote.seq or 0
            latest = board.get(symbol)
            if latest is not None and seq <= latest[0]:
                self.stats["quotes_stale_dropped"] += 1
                continue
            text = self.text(quote)
            board[symbol] = entry = (seq, text, quote)
            sent += 1
            if sequencer is not None:
                sequencer.put(symbol, seq, text)
            for group in by_symbol.get(symbol, ()):
                group.put(symbol, entry)
                touched.add(group)
            for group in everyone:
                group.put(symbol, entry)
        if sent:
            touched.update(everyone)
        for group in touched:
            if group.interval:
                self._seal_when_due(group)
            elif group.seal():
                self._deliver(group)
        if sequencer is not None:
            sequencer.wake_due()
        self.stats["quotes_in"] += sent
        if self.observer is not None:
            self.observer(quotes, time.perf_counter() - started)
        return sent

    def _seal_when_due(self, group: Group) -> None:
        """Seal a rated group at its next slot: quotes conflate in it meanwhile, and none
        waits longer than the interval."""
        if group.timer is not None:
            return
        now = self.clock()
        slot = group.next_slot(now)
        if slot <= now:
            self._seal_rated(group, slot)
        else:
            group.timer = self.call_later(slot - now, lambda: self._timer_due(group, slot))

    def _timer_due(self, group: Group, slot: float) -> None:
        group.timer = None
        if self.groups.get((group.key, group.hz, group.phase, group.form)) is group:
            self._seal_rated(group, slot)

    def _seal_rated(self, group: Group, slot: float) -> None:
        if group.seal():
            group.last_seal = slot
            self._deliver(group)

    @staticmethod
    def _deliver(group: Group) -> None:
        """A group sealed: the members in its lane are written at once, the others woken."""
        lane = group.lane
        if lane:
            group.write_lane()
        for sub in group.members:
            if sub not in lane:
                sub.wake()

    def load(self, quotes: Iterable[Quote]) -> None:
        """Take the broker's full latest state (at start and after every reconnect).

        A symbol never goes backwards: a replica promoted by Sentinel may lack the last
        writes (replication is asynchronous), and the quote we already sent stays until
        the publisher, which remembers its seqs, writes a newer one."""
        fresh = dict(self.board)
        for quote in quotes:
            seq = quote.seq or 0
            latest = fresh.get(quote.symbol)
            if latest is None or seq > latest[0]:
                fresh[quote.symbol] = (seq, self.text(quote), quote)
        changed = [(s, entry) for s, entry in fresh.items() if self.board.get(s) is not entry]
        # In place: groups hold this board for members that fell too far behind.
        self.board.clear()
        self.board.update(fresh)
        for group in self.groups.values():
            if group.compact:
                # Their deltas are against what the group sent; the board moved under it
                # (a client's next snapshot holds it): in full next, and the new quotes
                # pending, as if published.
                group.forget()
                for symbol, entry in changed:
                    if group.key == ALL or symbol in group.key:
                        group.put(symbol, entry)
        if self.every:  # what pub/sub missed comes from the tape, for every mode
            self.every.loaded(fresh)

    def set_feed(self, feed: FeedState) -> None:
        """Tell every client; on recovery each also gets a fresh snapshot of its symbols."""
        if feed == self.feed:
            return
        self.feed = feed
        self.every.set_live(feed == "live")
        log.log(logging.WARNING if feed == "stale" else logging.INFO, "feed %s", feed)
        frame = status(feed, now_ms())
        for sub in list(self.members):
            self.queue_frame(sub, frame)
            if feed == "live" and sub not in self.every.subs:  # every mode: filled instead
                mine = self.subscriptions(sub)
                self.snapshot(sub, self.board.keys() if mine == ALL else mine)

    def greet(self, sub: Subscriber) -> None:
        """A new client learns at once if the feed is down, instead of at the next change."""
        if self.feed == "stale":
            self.queue_frame(sub, status("stale", now_ms()))
