"""The tiers a grant puts a client in (service/auth.py): real time, or delayed by DELAY_S.

A tier is the hub its clients are served from, how that hub is brought up to date before
it answers, how far its data reaches, and what it tells clients about itself. Code that
serves a client asks its tier; none branches on the tier's name.
"""

from __future__ import annotations

from .auth import TierName
from .delayed import DelayedFeed
from .hub import Hub

# What every quote of the delayed tier carries (PROTOCOL.md): `"delayed": true`.
DELAYED_MARK = ',"delayed":true'


class Tier:
    """Real time: the feed's own hub, current as it stands."""

    name: TierName = "realtime"
    # Seconds behind real time, as the welcome and `auth` frames say (None: not delayed).
    delay_s: float | None = None
    # Whether its hub is fed by the feed itself (what came in is counted once: metrics).
    from_feed = True

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def fresh(self) -> Hub:
        """The hub, brought up to where it should stand before an HTTP answer from it."""
        return self.hub

    def until_ms(self) -> int | None:
        """The newest `ts` this tier may show (None: anything the feed has)."""
        return None


class DelayedTier(Tier):
    """The board as it stood DELAY_S ago (service/delayed.py): a hub of its own, fed from
    the tape, each quote marked."""

    name: TierName = "delayed"
    from_feed = False

    def __init__(self, hub: Hub, feed: DelayedFeed, delay_s: float) -> None:
        super().__init__(hub)
        self.feed = feed
        self.delay_s = delay_s

    async def fresh(self) -> Hub:
        await self.feed.fresh()
        return self.hub

    def until_ms(self) -> int:
        return self.feed.mark_ms()
