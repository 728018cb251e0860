"""Every mode (`"mode": "every"`): each quote once, in seq order per symbol, none lost.

The conflated fan-out (hub.py) may drop a quote a newer one replaces; this path may not.
What pub/sub did not bring (an outage, a reconnect that jumped the board) is read from the
tape (service/tape) before anything newer of that symbol is passed on, and a subscribe
with `since` is answered from the tape while the live quotes that arrive meanwhile wait for
it: the only two places of the fan-out that await, each in a task of its own.

The hub owns the board and the acks; this module owns who listens in every mode, where the
every path stands per symbol, and the quotes that wait for the tape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from quote_core.quote import Quote

from .compact import Entry
from .outbox import EveryQueue, Outbox, OutboxFull
from .protocol import ALL, Id, Symbols
from .tape import SLACK, Tape, read_after

log = logging.getLogger("service.hub")

# The most quotes one gap fill reads from a symbol's tape (a long outage at a high rate):
# beyond it the every-mode stream jumps, as it would past the tape's own length.
FILL_MAX = 100_000


class Subscriber(Protocol):
    outbox: Outbox

    def wake(self) -> None:
        """Something is due in the outbox: send it (at once, when the socket takes it)."""

    def overflow(self, reason: str) -> None:
        """The subscriber is not reading: close it as a slow consumer."""


class Host(Protocol):
    """What the sequencer needs of the hub it serves."""

    board: dict[str, Entry]
    stats: Counter[str]

    def text(self, quote: Quote) -> str: ...

    def has(self, sub: Subscriber) -> bool: ...

    def ack_every(self, sub: Subscriber, id: Id, symbols: Symbols,
                  unrecovered: Iterable[str] | None) -> None: ...

    def snapshot(self, sub: Subscriber, symbols: Iterable[str]) -> None: ...


class Sequencer:
    def __init__(self, host: Host, tape: Tape | None, max_recovery: int,
                 queue_bytes: int) -> None:
        self.host = host
        self.tape = tape
        self.max_recovery = max_recovery
        self.queue_bytes = queue_bytes
        # The subscribers' symbols, and the same by symbol ("*" apart).
        self.subs: dict[Subscriber, Symbols] = {}
        self.by_symbol: dict[str, set[Subscriber]] = {}
        self.everyone: set[Subscriber] = set()
        # The last seq passed down the every path per symbol (kept while anyone listens).
        self.seq: dict[str, int] = {}
        # Symbols being filled from the tape: the live (seq, JSON) that wait meanwhile,
        # and the seq the fill must reach.
        self.waiting: dict[str, list[tuple[int, str]]] = {}
        self.fill_to: dict[str, int] = {}
        # Subscribers reading their `since` from the tape: what arrived for them meanwhile.
        self.recovering: dict[Subscriber, list[tuple[str, int, str]]] = {}
        self._due: set[Subscriber] = set()
        # Set while the feed is live: a `since` that came before waits for it.
        self._live = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def __bool__(self) -> bool:
        """Anyone listening: the hub passes quotes down this path only then."""
        return bool(self.subs)

    def subscribe(self, sub: Subscriber, id: Id, symbols: Symbols, added: Iterable[str],
                  after: Symbols, since: Mapping[str, int]) -> asyncio.Task[None] | None:
        """As Hub.subscribe in every mode: the task that reads `since` from the tape, if any."""
        host = self.host
        if not self.subs:  # the first listener: the every path starts at the board
            self.seq = {s: entry[0] for s, entry in host.board.items()}
        self.set_symbols(sub, after)
        if sub.outbox.every is None:
            sub.outbox.every = EveryQueue(self.queue_bytes, compact=sub.outbox.form[0])
        fresh = [s for s in added if s not in since]
        if not since:
            host.ack_every(sub, id, symbols, None)
            host.snapshot(sub, fresh)
            return None
        if not self._live.is_set() and self.tape is not None:
            # The board may not be loaded yet (a service just started, or Redis is
            # away): where each symbol stands is not known, so the answer waits for it,
            # and whatever arrives meanwhile waits for the answer.
            self.recovering[sub] = []
            return self._spawn(self._since_when_live(sub, id, symbols, fresh, since))
        gaps = self._gaps(since)
        if gaps == {}:
            host.ack_every(sub, id, symbols, ())
            host.snapshot(sub, fresh)
            return None
        if gaps is None:
            host.ack_every(sub, id, symbols, list(since))
            host.snapshot(sub, [*fresh, *since])
            return None
        self.recovering[sub] = []
        return self._spawn(self._recover(sub, id, symbols, fresh, since, gaps))

    def leave(self, sub: Subscriber) -> None:
        self.set_symbols(sub, None)
        self.recovering.pop(sub, None)

    def _gaps(self, since: Mapping[str, int]) -> dict[str, int] | None:
        """symbol -> the seq the every path stands at, for the symbols of `since` behind
        it: what the tape must give (the live quotes after it wait for the client
        meanwhile). None: more than MAX_RECOVERY together, or no tape to read."""
        board = self.host.board
        upto = {s: self.seq.get(s, board.get(s, (0, ""))[0]) for s in since}
        gaps = {s: upto[s] for s in since if upto[s] > since[s]}
        if gaps and (self.tape is None
                     or sum(upto[s] - since[s] for s in gaps) > self.max_recovery):
            return None
        return gaps

    async def _since_when_live(self, sub: Subscriber, id: Id, symbols: Symbols,
                               fresh: list[str], since: Mapping[str, int]) -> None:
        while not self._live.is_set():
            await self._live.wait()
        if sub in self.recovering:
            await self._recover(sub, id, symbols, fresh, since, self._gaps(since))

    async def _recover(self, sub: Subscriber, id: Id, symbols: Symbols, fresh: list[str],
                       since: Mapping[str, int], gaps: dict[str, int] | None) -> None:
        """Answer a `since`: the tape's quotes after it, then what arrived meanwhile
        (gaps None: none recovered, a snapshot instead)."""
        started = time.perf_counter()
        host = self.host
        tape = self.tape
        reads: list[Any] = []
        if gaps and tape is not None:
            reads = await asyncio.gather(*(read_after(tape, s, since[s], upto)
                                           for s, upto in gaps.items()), return_exceptions=True)
        arrived = self.recovering.pop(sub, None)
        if arrived is None or not host.has(sub):
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
        host.ack_every(sub, id, symbols, unrecovered)
        host.snapshot(sub, [*fresh, *unrecovered])
        board = host.board
        last = {s: board[s][0] for s in [*fresh, *unrecovered] if s in board}
        last.update((s, seq) for s, seq in since.items() if s not in found and s not in last)
        queue = sub.outbox.every
        assert queue is not None
        try:
            for symbol, quotes in found.items():
                for quote in quotes:
                    queue.put(symbol, quote.seq or 0, host.text(quote), backlog=True)
                last[symbol] = quotes[-1].seq or 0 if quotes else since[symbol]
            for symbol, seq, text in arrived:
                if seq > last.get(symbol, -1):
                    queue.put(symbol, seq, text, backlog=True)
                    last[symbol] = seq
        except OutboxFull as exc:
            self.set_symbols(sub, None)
            sub.overflow(str(exc))
            return
        count = sum(len(q) for q in found.values())
        host.stats["every_recovered_quotes"] += count
        if found or unrecovered:
            log.info("recovered %d quotes of %d symbols for a client in %.1f ms%s", count,
                     len(found), (time.perf_counter() - started) * 1000,
                     f"; not {', '.join(unrecovered)}: older than the tape or over "
                     f"MAX_RECOVERY" if unrecovered else "")
        sub.wake()

    def set_symbols(self, sub: Subscriber, symbols: Symbols | None) -> None:
        """The client's every-mode symbols from now on (None or empty: none)."""
        old = self.subs.pop(sub, None)
        if old == ALL:
            self.everyone.discard(sub)
        elif old is not None:
            for symbol in old:
                subs = self.by_symbol.get(symbol)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self.by_symbol[symbol]
        if symbols:
            self.subs[sub] = symbols
            if symbols == ALL:
                self.everyone.add(sub)
            else:
                for symbol in symbols:
                    self.by_symbol.setdefault(symbol, set()).add(sub)
        if not self.subs:
            self.seq.clear()

    def put(self, symbol: str, seq: int, text: str) -> None:
        """A quote down the every path: passed on if it follows the last, kept behind a
        fill from the tape if some are missing before it."""
        waiting = self.waiting.get(symbol)
        if waiting is not None:
            waiting.append((seq, text))
            return
        last = self.seq.get(symbol)
        if last is not None and seq > last + 1 and self._listened(symbol):
            self._gap(symbol, seq - 1)
            self.waiting[symbol].append((seq, text))
            return
        self.seq[symbol] = seq
        self._deliver(symbol, text)

    def _listened(self, symbol: str) -> bool:
        return bool(self.everyone) or symbol in self.by_symbol

    def _deliver(self, symbol: str, text: str) -> None:
        for group in (self.by_symbol.get(symbol, ()), self.everyone):
            for sub in list(group) if group else ():  # one that overflows leaves it
                self._put_one(sub, symbol, text)

    def _put_one(self, sub: Subscriber, symbol: str, text: str) -> None:
        arrived = self.recovering.get(sub)
        if arrived is not None:  # seq is this quote's: set before it is passed on
            arrived.append((symbol, self.seq[symbol], text))
            return
        queue = sub.outbox.every
        assert queue is not None
        try:
            queue.put(symbol, self.seq[symbol], text)
        except OutboxFull as exc:
            self.set_symbols(sub, None)
            self.recovering.pop(sub, None)
            self.host.stats["slow_consumer_closed"] += 1
            sub.overflow(str(exc))
            return
        self._due.add(sub)

    def wake_due(self) -> None:
        """Wake the subscribers quotes were put for since the last call: once per batch."""
        due, self._due = self._due, set()
        for sub in due:
            sub.wake()

    def loaded(self, board: Mapping[str, Entry]) -> None:
        """The broker's full state was loaded: what pub/sub missed comes from the tape."""
        for symbol, (seq, _, _) in board.items():
            last = self.seq.get(symbol)
            if last is None or not self._listened(symbol):
                self.seq[symbol] = max(seq, last or 0)
            elif seq > last:
                self._gap(symbol, seq)

    def set_live(self, live: bool) -> None:
        if live:
            self._live.set()
        else:
            self._live.clear()

    def _gap(self, symbol: str, upto: int) -> None:
        """Quotes of `symbol` up to seq `upto` must come from the tape first."""
        self.fill_to[symbol] = max(self.fill_to.get(symbol, 0), upto)
        if symbol not in self.waiting:  # no fill runs for it yet
            self.waiting[symbol] = []
            self._spawn(self._fill(symbol))

    async def _fill(self, symbol: str) -> None:
        """Pass on the tape's quotes up to fill_to, then the waiting ones, until caught up.
        Where the tape lacks some (Redis lost them), the stream goes on past the hole."""
        host = self.host
        try:
            while True:
                last = self.seq.get(symbol, 0)
                upto = self.fill_to.get(symbol, 0)
                if upto > last and self.tape is not None:
                    try:
                        entries = await self.tape.back(symbol, "+",
                                                       min(upto - last, FILL_MAX) + SLACK)
                    except Exception as exc:  # Redis down again: what it lacks is lost
                        log.warning("could not fill %s from the tape: %s", symbol, exc)
                        entries = []
                    last = self.seq.get(symbol, 0)
                    quotes = sorted((e.quote for e in entries if last < (e.quote.seq or 0) <= upto),
                                    key=lambda q: q.seq or 0)
                    if not quotes or quotes[0].seq != last + 1 or len(quotes) != upto - last:
                        log.warning("the tape lacks quotes of %s between seq %d and %d: every-mode "
                                    "clients see a jump there", symbol, last + 1, upto)
                    for quote in quotes:
                        self.seq[symbol] = quote.seq or 0
                        self._deliver(symbol, host.text(quote))
                    self.seq[symbol] = max(last, upto)
                    host.stats["every_filled_quotes"] += len(quotes)
                waiting = self.waiting.get(symbol, [])
                done = 0
                for seq, text in waiting:
                    current = self.seq.get(symbol, 0)
                    if seq > current + 1 and self.fill_to.get(symbol, 0) < seq - 1:
                        self.fill_to[symbol] = seq - 1  # another hole: fill it first
                        break
                    done += 1
                    if seq > current:
                        self.seq[symbol] = seq
                        self._deliver(symbol, text)
                del waiting[:done]
                self.wake_due()
                if not waiting and self.fill_to.get(symbol, 0) <= self.seq.get(symbol, 0):
                    return
        finally:
            self.waiting.pop(symbol, None)
            self.fill_to.pop(symbol, None)
            self.wake_due()

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
