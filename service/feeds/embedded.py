"""The embedded default: the simulated market in this process, no Redis needed.

It keeps Redis's contract (a seq per symbol assigned at publish, the latest state kept
for snapshots) so the demo behaves exactly like the real pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quote_core.quote import Quote, now_ms
from quote_sim.simulate import market_from_settings, run_simulation

from ..hub import Hub
from ..settings import Settings
from ..tape.memory import MemoryTape
from . import LostHook


class MemoryBroker:
    """A publisher sink that hands quotes straight to the hub, and keeps them on the tape."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.tape = hub.every.tape if isinstance(hub.every.tape, MemoryTape) else None
        self.seq: dict[str, int] = {}
        # Nothing persists across a restart here, so seq starts from the clock: a client
        # that held seq N from the previous run still sees every new quote as newer (a
        # symbol would need over a thousand updates a second to outrun it).
        self.first_seq = now_ms()

    async def publish(self, quotes: Sequence[Quote]) -> list[Quote]:
        stamped = []
        for quote in quotes:
            seq = self.seq.get(quote.symbol, self.first_seq) + 1
            self.seq[quote.symbol] = seq
            stamped.append(quote.with_seq(seq))
        if self.tape is not None:
            for quote in stamped:
                self.tape.append(quote)
        self.hub.publish(stamped)
        return stamped


class EmbeddedFeed:
    def __init__(self, settings: Settings, hub: Hub) -> None:
        self.on_lost: list[LostHook] = []  # it never loses anything
        self.settings = settings
        self.hub = hub

    async def run(self) -> None:
        self.hub.set_feed("live")
        await run_simulation(MemoryBroker(self.hub), market_from_settings(self.settings),
                             self.settings.sim_rate)

    def report(self) -> dict[str, Any]:
        return {"source": "embedded simulation"}

    async def aclose(self) -> None:
        return None
