"""The in-process fan-out: one board of latest quotes, and who wants which symbol.

The feed (Redis or embedded) calls `publish` with each batch; every quote is serialised
once here and handed to the outboxes of its subscribers, whose sender tasks coalesce
whatever is pending into one frame per write. Nothing in the conflated path awaits, so
subscription changes and fan-out never interleave: a subscriber's snapshot always comes
before any update it has not seen.

Every-mode subscribers (`"mode": "every"`) get each quote, in seq order per symbol. What
pub/sub did not bring (an outage, a reconnect that jumped the board) is read from the tape
(service/tape) before anything newer of that symbol is passed on, and a subscribe with
`since` is answered from the tape while the live quotes that arrive meanwhile wait for it:
the only two places here that await, each in a task of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from quote_core.quote import Quote, now_ms

from .outbox import EveryQueue, Group, Outbox, OutboxFull
from .protocol import (
    ALL,
    BAD_REQUEST,
    FORBIDDEN,
    TOO_MANY_SYMBOLS,
    FeedState as Feed,
    Id,
    Mode,
    ProtocolError,
    Symbols,
    ack,
    error,
    status,
)
from .tape import SLACK, Tape, read_after
from .wire import Frame

log = logging.getLogger("service.hub")


class Subscriber(Protocol):
    outbox: Outbox

    def wake(self) -> None:
        """Something is due in the outbox: send it (at once, when the socket takes it)."""

    def overflow(self, reason: str) -> None:
        """The subscriber is not reading: close it as a slow consumer."""


# A group's key: the subscription, the rate (None: the default, FANOUT_INTERVAL_MS), and
# the phase of a rated group.
GroupKey = tuple[Symbols, float | None, int]

# A seal writes the group's frame to every member in one pass, so a 4 Hz group of 20,000
# viewers would spend ~100 ms per seal, past the rate's own latency budget. A rated group
# therefore grows phases: past PHASE_MEMBERS members in each, a new phase of the same
# subscription and rate seals at its own offset within the interval (bench/viewers.py).
PHASE_MEMBERS = 1000

# The most quotes one gap fill reads from a symbol's tape (a long outage at a high rate):
# beyond it the every-mode stream jumps, as it would past the tape's own length.
FILL_MAX = 100_000


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _loop_call_later(delay: float, callback: Callable[[], None]) -> Any:
    return asyncio.get_running_loop().call_later(delay, callback)


def unknown(board: Mapping[str, object], symbols: Symbols) -> list[str]:
    """The requested symbols the board holds no quote for, sorted (none for "*"): the ack's
    `unknown`, and /quotes' (rest.py)."""
    return [] if symbols == ALL else sorted(s for s in symbols if s not in board)


class Hub:
    def __init__(self, max_symbols: int, *, default_hz: float | None = None,
                 clock: Callable[[], float] = _loop_time,
                 call_later: Callable[[float, Callable[[], None]], Any] = _loop_call_later,
                 tape: Tape | None = None, max_recovery: int = 10_000,
                 every_queue_bytes: int = 1 << 20, delayed: bool = False) -> None:
        self.max_symbols = max_symbols
        # The delayed tier's hub (service/delayed.py): every quote it sends says so.
        self.delayed = delayed
        # The rate of a client that asks for none: the fan-out's own (1000 /
        # FANOUT_INTERVAL_MS), or None when that has no cap. A client asking at least this
        # much is in the default groups; one asking less gets groups of its own rate.
        self.default_hz = default_hz
        # Rated groups seal on the event loop's clock and timers (injectable for tests).
        self.clock = clock
        self.call_later = call_later
        # symbol -> (seq, quote JSON)
        self.board: dict[str, tuple[int, str]] = {}
        # Clients with the same subscription and rate share a group (see outbox.py).
        self.groups: dict[GroupKey, Group] = {}
        # Clients that asked for a rate below the default: their max_hz.
        self.rates: dict[Subscriber, float] = {}
        self.by_symbol: dict[str, set[Group]] = {}
        # The groups of "*" (one per rate in use).
        self.everyone: list[Group] = []
        self.members: dict[Subscriber, Group | None] = {}
        self.feed: Feed = "stale"
        self.stats: Counter[str] = Counter()
        # Called with each batch and the seconds its fan-out took (metrics), if set.
        self.observer: Callable[[Sequence[Quote], float], None] | None = None
        # Every mode. The tape recovers and fills; the subscribers' symbols, by symbol.
        self.tape = tape
        self.max_recovery = max_recovery
        self.every_queue_bytes = every_queue_bytes
        self.every_subs: dict[Subscriber, Symbols] = {}
        self.every_by_symbol: dict[str, set[Subscriber]] = {}
        self.every_all: set[Subscriber] = set()
        # The last seq passed down the every path per symbol (kept while anyone listens).
        self.every_seq: dict[str, int] = {}
        # Symbols being filled from the tape: the live (seq, JSON) that wait meanwhile,
        # and the seq the fill must reach.
        self.holding: dict[str, list[tuple[int, str]]] = {}
        self.fill_to: dict[str, int] = {}
        # Subscribers reading their `since` from the tape: what arrived for them meanwhile.
        self.recovering: dict[Subscriber, list[tuple[str, int, str]]] = {}
        self._every_due: set[Subscriber] = set()
        # A subscribe's symbols its token does not cover: (its id, them), until its ack.
        self.refused: dict[Subscriber, tuple[Id, list[str]]] = {}
        # Set while the feed is live: a `since` that came before waits for it.
        self._live = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def text(self, quote: Quote) -> str:
        """A quote's JSON as this hub sends it (with `"delayed": true` in the delayed tier)."""
        text = quote.to_json().decode()
        return text[:-1] + ',"delayed":true}' if self.delayed else text

    # Subscribers

    def add(self, sub: Subscriber) -> None:
        self.members[sub] = None

    def remove(self, sub: Subscriber) -> None:
        if sub not in self.members:
            return
        self._set_every(sub, None)
        self.recovering.pop(sub, None)
        self.refused.pop(sub, None)
        self._move(sub, None, keep=())
        del self.members[sub]
        self.rates.pop(sub, None)
        self.stats["retired_frames_sent"] += sub.outbox.frames_taken
        self.stats["retired_quotes_sent"] += sub.outbox.quotes_taken

    def subscriptions(self, sub: Subscriber) -> Symbols:
        every = self.every_subs.get(sub)
        if every is not None:
            return every
        group = self.members.get(sub)
        return frozenset() if group is None else group.key

    def mode(self, sub: Subscriber) -> Mode | None:
        """The mode of the client's subscriptions; None while it holds none."""
        if sub in self.every_subs:
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
        new = None if key is None or key == frozenset() else self._group(key, rate)
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

    def _group(self, key: Symbols, hz: float | None) -> Group:
        """The group a client joins: the least full phase, or a new one when all are full."""
        phase = 0
        best: Group | None = None
        while (group := self.groups.get((key, hz, phase))) is not None:
            if best is None or len(group.members) < len(best.members):
                best = group
            phase += 1
        if best is not None and (hz is None or len(best.members) < PHASE_MEMBERS):
            return best
        group = self.groups[key, hz, phase] = Group(key, self.board, hz, phase)
        if key == ALL:
            self.everyone.append(group)
        else:
            for symbol in key:
                self.by_symbol.setdefault(symbol, set()).add(group)
        return group

    def _drop_group(self, group: Group) -> None:
        del self.groups[group.key, group.hz, group.phase]
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
        held = self.mode(sub)
        if held is not None and held != mode:
            raise ProtocolError(BAD_REQUEST, f"this connection's subscriptions are {held}: "
                                f'unsubscribe "*" first, or open another connection', id)
        mine = self.subscriptions(sub)
        added, after = self._added(mine, symbols, id)
        if mode == "every":
            return self._subscribe_every(sub, id, symbols, added, after, since or {})
        if max_hz is not None:
            self.set_rate(sub, max_hz)
        # A new rate alone moves the client to the group of its symbols at that rate.
        self._move(sub, after, keep=self.board.keys() if mine == ALL else mine)
        self._ack(sub, id, "subscribe", self._unknown(symbols))
        if added:
            self._snapshot(sub, added)
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
        if sub in self.every_subs:
            if symbols == ALL:
                self._set_every(sub, None)
            else:
                held = frozenset(self.board) if mine == ALL else mine
                self._set_every(sub, held - symbols)
            self._ack(sub, id, "unsubscribe", (), mode="every")
            return
        if symbols == ALL:
            self._move(sub, None, keep=())
        else:
            # Leaving some symbols of "*" turns it into the list of the others.
            held = frozenset(self.board) if mine == ALL else mine
            rest = held - symbols
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

    # Every mode

    def _subscribe_every(self, sub: Subscriber, id: Id, symbols: Symbols,
                         added: Iterable[str], after: Symbols, since: Mapping[str, int]
                         ) -> asyncio.Task[None] | None:
        if not self.every_subs:  # the first listener: the every path starts at the board
            self.every_seq = {s: seq for s, (seq, _) in self.board.items()}
        self._set_every(sub, after)
        if sub.outbox.every is None:
            sub.outbox.every = EveryQueue(self.every_queue_bytes)
        fresh = [s for s in added if s not in since]
        if not since:
            self._ack(sub, id, "subscribe", self._unknown(symbols), "every")
            self._snapshot(sub, fresh)
            return None
        if self.feed != "live" and self.tape is not None:
            # The board may not be loaded yet (a service just started, or Redis is
            # away): where each symbol stands is not known, so the answer waits for it,
            # and whatever arrives meanwhile waits for the answer.
            self.recovering[sub] = []
            return self._spawn(self._since_when_live(sub, id, symbols, fresh, since))
        gaps = self._gaps(since)
        if gaps == {}:
            self._ack(sub, id, "subscribe", self._unknown(symbols), "every", ())
            self._snapshot(sub, fresh)
            return None
        if gaps is None:
            self._ack(sub, id, "subscribe", self._unknown(symbols), "every", list(since))
            self._snapshot(sub, [*fresh, *since])
            return None
        self.recovering[sub] = []
        return self._spawn(self._recover(sub, id, symbols, fresh, since, gaps))

    def _gaps(self, since: Mapping[str, int]) -> dict[str, int] | None:
        """symbol -> the seq the every path stands at, for the symbols of `since` behind
        it: what the tape must give (the live quotes after it are held for the client
        meanwhile). None: more than MAX_RECOVERY together, or no tape to read."""
        upto = {s: self.every_seq.get(s, self.board.get(s, (0, ""))[0]) for s in since}
        gaps = {s: upto[s] for s in since if upto[s] > since[s]}
        if gaps and (self.tape is None
                     or sum(upto[s] - since[s] for s in gaps) > self.max_recovery):
            return None
        return gaps

    async def _since_when_live(self, sub: Subscriber, id: Id, symbols: Symbols,
                               fresh: list[str], since: Mapping[str, int]) -> None:
        while self.feed != "live":
            await self._live.wait()
        if sub in self.recovering:
            await self._recover(sub, id, symbols, fresh, since, self._gaps(since))

    async def _recover(self, sub: Subscriber, id: Id, symbols: Symbols, fresh: list[str],
                       since: Mapping[str, int], gaps: dict[str, int] | None) -> None:
        """Answer a `since`: the tape's quotes after it, then what arrived meanwhile
        (gaps None: none recovered, a snapshot instead)."""
        started = time.perf_counter()
        tape = self.tape
        reads: list[Any] = []
        if gaps and tape is not None:
            reads = await asyncio.gather(*(read_after(tape, s, since[s], upto)
                                           for s, upto in gaps.items()), return_exceptions=True)
        held = self.recovering.pop(sub, None)
        if held is None or sub not in self.members:
            return  # gone meanwhile
        unrecovered = list(since) if gaps is None else []
        found: dict[str, list[Quote]] = {}
        for symbol, read in zip(gaps or (), reads, strict=True):
            if isinstance(read, BaseException):
                log.warning("could not read the tape of %s to recover a client: %s", symbol, read)
            if isinstance(read, list):
                found[symbol] = read
            else:
                unrecovered.append(symbol)
        self._ack(sub, id, "subscribe", self._unknown(symbols), "every", unrecovered)
        self._snapshot(sub, [*fresh, *unrecovered])
        last = {s: self.board[s][0] for s in [*fresh, *unrecovered] if s in self.board}
        last.update((s, seq) for s, seq in since.items() if s not in found and s not in last)
        queue = sub.outbox.every
        assert queue is not None
        try:
            for symbol, quotes in found.items():
                for quote in quotes:
                    queue.put(symbol, quote.seq or 0, self.text(quote), backlog=True)
                last[symbol] = quotes[-1].seq or 0 if quotes else since[symbol]
            for symbol, seq, text in held:
                if seq > last.get(symbol, -1):
                    queue.put(symbol, seq, text, backlog=True)
                    last[symbol] = seq
        except OutboxFull as exc:
            self._set_every(sub, None)
            sub.overflow(str(exc))
            return
        count = sum(len(q) for q in found.values())
        self.stats["every_recovered_quotes"] += count
        if found or unrecovered:
            log.info("recovered %d quotes of %d symbols for a client in %.1f ms%s", count,
                     len(found), (time.perf_counter() - started) * 1000,
                     f"; not {', '.join(unrecovered)}: older than the tape or over "
                     f"MAX_RECOVERY" if unrecovered else "")
        sub.wake()

    def _set_every(self, sub: Subscriber, symbols: Symbols | None) -> None:
        """The client's every-mode symbols from now on (None or empty: none)."""
        old = self.every_subs.pop(sub, None)
        if old == ALL:
            self.every_all.discard(sub)
        elif old is not None:
            for symbol in old:
                subs = self.every_by_symbol.get(symbol)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self.every_by_symbol[symbol]
        if symbols:
            self.every_subs[sub] = symbols
            if symbols == ALL:
                self.every_all.add(sub)
            else:
                for symbol in symbols:
                    self.every_by_symbol.setdefault(symbol, set()).add(sub)
        if not self.every_subs:
            self.every_seq.clear()

    def _every(self, symbol: str, seq: int, text: str) -> None:
        """A quote down the every path: passed on if it follows the last, held behind a
        fill from the tape if some are missing before it."""
        holding = self.holding.get(symbol)
        if holding is not None:
            holding.append((seq, text))
            return
        last = self.every_seq.get(symbol)
        if last is not None and seq > last + 1 and self._listened(symbol):
            self._gap(symbol, seq - 1)
            self.holding[symbol].append((seq, text))
            return
        self.every_seq[symbol] = seq
        self._every_deliver(symbol, text)

    def _listened(self, symbol: str) -> bool:
        return bool(self.every_all) or symbol in self.every_by_symbol

    def _every_deliver(self, symbol: str, text: str) -> None:
        for group in (self.every_by_symbol.get(symbol, ()), self.every_all):
            for sub in list(group) if group else ():  # one that overflows leaves it
                self._every_put(sub, symbol, text)

    def _every_put(self, sub: Subscriber, symbol: str, text: str) -> None:
        held = self.recovering.get(sub)
        if held is not None:  # every_seq is this quote's: set before it is passed on
            held.append((symbol, self.every_seq[symbol], text))
            return
        queue = sub.outbox.every
        assert queue is not None
        try:
            queue.put(symbol, self.every_seq[symbol], text)
        except OutboxFull as exc:
            self._set_every(sub, None)
            self.recovering.pop(sub, None)
            self.stats["slow_consumer_closed"] += 1
            sub.overflow(str(exc))
            return
        self._every_due.add(sub)

    def _wake_every(self) -> None:
        due, self._every_due = self._every_due, set()
        for sub in due:
            sub.wake()

    def _gap(self, symbol: str, upto: int) -> None:
        """Quotes of `symbol` up to seq `upto` must come from the tape first."""
        self.fill_to[symbol] = max(self.fill_to.get(symbol, 0), upto)
        if symbol not in self.holding:  # no fill runs for it yet
            self.holding[symbol] = []
            self._spawn(self._fill(symbol))

    async def _fill(self, symbol: str) -> None:
        """Pass on the tape's quotes up to fill_to, then the held ones, until caught up.
        Where the tape lacks some (Redis lost them), the stream goes on past the hole."""
        try:
            while True:
                last = self.every_seq.get(symbol, 0)
                upto = self.fill_to.get(symbol, 0)
                if upto > last and self.tape is not None:
                    try:
                        entries = await self.tape.back(symbol, "+",
                                                       min(upto - last, FILL_MAX) + SLACK)
                    except Exception as exc:  # Redis down again: what it lacks is lost
                        log.warning("could not fill %s from the tape: %s", symbol, exc)
                        entries = []
                    last = self.every_seq.get(symbol, 0)
                    quotes = sorted((e.quote for e in entries if last < (e.quote.seq or 0) <= upto),
                                    key=lambda q: q.seq or 0)
                    if not quotes or quotes[0].seq != last + 1 or len(quotes) != upto - last:
                        log.warning("the tape lacks quotes of %s between seq %d and %d: every-mode "
                                    "clients see a jump there", symbol, last + 1, upto)
                    for quote in quotes:
                        self.every_seq[symbol] = quote.seq or 0
                        self._every_deliver(symbol, self.text(quote))
                    self.every_seq[symbol] = max(last, upto)
                    self.stats["every_filled_quotes"] += len(quotes)
                held = self.holding.get(symbol, [])
                done = 0
                for seq, text in held:
                    current = self.every_seq.get(symbol, 0)
                    if seq > current + 1 and self.fill_to.get(symbol, 0) < seq - 1:
                        self.fill_to[symbol] = seq - 1  # another hole: fill it first
                        break
                    done += 1
                    if seq > current:
                        self.every_seq[symbol] = seq
                        self._every_deliver(symbol, text)
                del held[:done]
                self._wake_every()
                if not held and self.fill_to.get(symbol, 0) <= self.every_seq.get(symbol, 0):
                    return
        finally:
            self.holding.pop(symbol, None)
            self.fill_to.pop(symbol, None)
            self._wake_every()

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _snapshot(self, sub: Subscriber, symbols: Iterable[str]) -> None:
        board = self.board
        held = {s: board[s] for s in sorted(symbols) if s in board}
        if held:
            self.queue_frame(sub, Frame("snapshot", held))

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
        every = bool(self.every_subs)
        for quote in quotes:
            symbol = quote.symbol
            seq = quote.seq or 0
            held = board.get(symbol)
            if held is not None and seq <= held[0]:
                self.stats["quotes_stale_dropped"] += 1
                continue
            text = self.text(quote)
            board[symbol] = entry = (seq, text)
            sent += 1
            if every:
                self._every(symbol, seq, text)
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
        if every:
            self._wake_every()
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
        if self.groups.get((group.key, group.hz, group.phase)) is group:
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
            held = fresh.get(quote.symbol)
            if held is None or seq > held[0]:
                fresh[quote.symbol] = (seq, self.text(quote))
        # In place: groups hold this board for members that fell too far behind.
        self.board.clear()
        self.board.update(fresh)
        if self.every_subs:  # what pub/sub missed comes from the tape, for every mode
            for symbol, (seq, _) in fresh.items():
                last = self.every_seq.get(symbol)
                if last is None or not self._listened(symbol):
                    self.every_seq[symbol] = max(seq, last or 0)
                elif seq > last:
                    self._gap(symbol, seq)

    def set_feed(self, feed: Feed) -> None:
        """Tell every client; on recovery each also gets a fresh snapshot of its symbols."""
        if feed == self.feed:
            return
        self.feed = feed
        if feed == "live":
            self._live.set()
        else:
            self._live.clear()
        log.log(logging.WARNING if feed == "stale" else logging.INFO, "feed %s", feed)
        frame = status(feed, now_ms())
        for sub in list(self.members):
            self.queue_frame(sub, frame)
            if feed == "live" and sub not in self.every_subs:  # every mode: filled instead
                mine = self.subscriptions(sub)
                self._snapshot(sub, self.board.keys() if mine == ALL else mine)

    def greet(self, sub: Subscriber) -> None:
        """A new client learns at once if the feed is down, instead of at the next change."""
        if self.feed == "stale":
            self.queue_frame(sub, status("stale", now_ms()))
