"""The delayed tier: the board as it stood DELAY_S ago, replayed from the tape.

Exchanges license real-time prices to paying readers and delayed ones (15 minutes is
common) to the public. A second hub serves the delayed clients exactly as the first serves
the others (conflation, rates, every mode, snapshots), fed here: every TICK_S each
symbol's tape is read up to now - DELAY_S and every quote whose `ts` has come of age is
published to it, in order, marked `"delayed": true`. So a delayed board moves as time does,
a quarter of a second at most behind its mark, never shows a quote younger than DELAY_S,
and is rebuilt from Redis alone after a restart (nothing here outlives the process). The
tick reads every symbol in one round trip, and only while someone is served delayed.
"""

from __future__ import annotations

import asyncio
import logging
import time

from quote_core.quote import Quote

from .hub import Hub
from .settings import Settings
from .tape import Entry, Tape

log = logging.getLogger("service.delayed")

TICK_S = 0.1
# Entries are read up to this far past the mark (Redis's clock dates them, the publisher's
# `ts` decides): what a clock skew between the two could hide.
SLACK_MS = 5000
# Entries read per symbol per tick; a symbol faster than this catches up over ticks.
PER_TICK = 2000
# Idle this long (no delayed client, no delayed request): the next start reloads the
# board at the mark instead of replaying what passed meanwhile.
IDLE_S = 5.0
# Where a symbol stood at the mark is found reading back from it, this many at a time.
START_PAGE = 256
START_PAGES = 40


class DelayedFeed:
    def __init__(self, settings: Settings, source: Hub, hub: Hub, tape: Tape) -> None:
        self.delay_ms = int(settings.delay_s * 1000)
        self.source = source  # the real-time hub: which symbols there are
        self.hub = hub
        self.tape = tape
        # symbol -> the tape position of the last quote passed on ("-": none yet)
        self.positions: dict[str, str] = {}
        self.last_step = 0.0
        self.wanted_at = -IDLE_S
        self._lock = asyncio.Lock()
        self._failures = 0

    def mark_ms(self) -> int:
        """Now minus DELAY_S: no quote with a later `ts` may be shown."""
        return int(time.time() * 1000) - self.delay_ms

    def needed(self) -> bool:
        return bool(self.hub.members) or time.monotonic() - self.wanted_at < IDLE_S

    async def fresh(self) -> None:
        """The delayed board up to date (within TICK_S), for a request about to read it."""
        self.wanted_at = time.monotonic()
        if time.monotonic() - self.last_step > TICK_S:
            await self.step()

    async def run(self) -> None:
        while True:
            if self.needed():
                try:
                    await self.step()
                    self._failures = 0
                except Exception as exc:  # Redis away: the delayed board waits with it
                    self._failures += 1
                    if self._failures == 1:
                        log.warning("cannot read the tape for the delayed tier: %s", exc)
                    self.hub.set_feed("stale")
                    await asyncio.sleep(min(5.0, 0.2 * self._failures))
            elif self.positions and time.monotonic() - self.last_step > IDLE_S:
                self.positions.clear()  # reload at the mark when next needed
            await asyncio.sleep(TICK_S)

    async def step(self) -> None:
        async with self._lock:
            mark = self.mark_ms()
            new = [s for s in self.source.board if s not in self.positions]
            if new:
                self.hub.load(await self._start(new, mark))
            due: list[Quote] = []
            if self.positions:
                read = await self.tape.window(
                    {s: ("-" if p == "-" else "(" + p) for s, p in self.positions.items()},
                    str(mark + SLACK_MS), PER_TICK)
                for symbol, entries in read.items():
                    due += self._due(symbol, entries, mark)
            if due:
                self.hub.publish(due)
            self.last_step = time.monotonic()
            if self.hub.feed != "live":
                self.hub.set_feed("live")

    def _due(self, symbol: str, entries: list[Entry], mark: int) -> list[Quote]:
        """The entries whose time has come, in order; the first that has not stops it."""
        out = []
        for entry in entries:
            if entry.quote.ts > mark:
                break
            out.append(entry.quote)
            self.positions[symbol] = entry.id
        return out

    async def _start(self, symbols: list[str], mark: int) -> list[Quote]:
        """Each symbol's state at the mark (its last quote with ts at or before it), and
        its position there; a symbol with none yet starts from the tape's beginning."""
        states: list[Quote] = []
        for symbol in symbols:
            self.positions[symbol] = "-"
            end = str(mark + SLACK_MS)
            for _ in range(START_PAGES):  # back past what came within the slack
                page = await self.tape.back(symbol, end, START_PAGE)
                found = next((e for e in page if e.quote.ts <= mark), None)
                if found is not None:
                    states.append(found.quote)
                    self.positions[symbol] = found.id
                    break
                if len(page) < START_PAGE:
                    break  # the tape's beginning: nothing of this symbol is old enough
                end = "(" + page[-1].id
        return states

