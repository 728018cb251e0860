"""What every Redis feed does the same way, whatever the topology behind it.

redis-py reconnects silently or not at all depending on how the client was built, and
never notices a frozen server (measured with redis-py 8.1: a SIGSTOPped Redis went unseen
even with health_check_interval=1), so the feeds own recovery themselves: their
clients have no retries of their own; a probe published every PROBE_INTERVAL_S must come
back through the subscription; on any failure the feed is marked stale, the loop backs
off with jitter, subscribes again, reloads the latest state, and only then says live.
The subclasses hold the connections (redis_pubsub.py: one; redis_cluster.py: one per node).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, Literal

from redis.exceptions import RedisError

from quote_bus.payload import decode_payload
from quote_bus.refusal import is_refusal
from quote_core.backoff import backoff
from quote_core.quote import Quote

from ..hub import Hub
from ..settings import Settings
from . import LostHook

log = logging.getLogger("service.redis_feed")


class FeedLost(Exception):
    """The probe did not come back in time: Redis is frozen or the subscription is dead."""


class FeedMisconfigured(Exception):
    """Redis refused us before we were ever subscribed (a wrong password, user or
    database in REDIS_URL): retrying cannot fix that, so the process stops instead of
    serving a feed that never comes, or of being restarted in a loop."""


# Whatever ends a session: the feed is stale and retries after a back-off.
FAILURES = (RedisError, OSError, FeedLost)


async def first_failure(*coros: Coroutine[Any, Any, None]) -> None:
    """Run them until one fails, then end the others and raise that failure.

    Not a TaskGroup: Python 3.11's loses a cancellation that arrives as a child fails
    (the feed then retried and outlived its shutdown) and leaves `cancelling()` raised
    after every child failure, so neither can be trusted here."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()


async def close_quietly(pubsub: Any) -> None:
    """A frozen server must not hold us up while we give up on it."""
    try:
        async with asyncio.timeout(1):
            await pubsub.aclose()
    except (TimeoutError, OSError, Exception):
        pass


class RedisEdge:
    # How long the first quotes after a quiet spell wait for the rest of their batch:
    # nothing on one connection, which brings a batch in one read; a cluster's nodes each
    # bring their partitions on their own connection, a fraction of a millisecond apart.
    gather_s = 0.0

    def __init__(self, settings: Settings, hub: Hub) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.hub = hub
        self.layout = settings.layout
        self._last_junk_log = 0.0
        self._attempt = 0
        self._lost_at: float | None = None
        self._ever_subscribed = False
        self._batch: list[Quote] = []
        self._last_fan_out = 0.0
        self.on_lost: list[LostHook] = []

    # What the subclass decides.

    def state(self, now: float) -> Literal["live", "stale"]:
        raise NotImplementedError

    def heard(self, p: int) -> None:
        """The publisher spoke on partition `p` (quotes, or its `[]` heartbeat)."""
        raise NotImplementedError

    def why_stale(self, now: float) -> str:
        raise NotImplementedError

    # Shared.

    def refresh(self) -> None:
        now = time.monotonic()
        state = self.state(now)
        if state != self.hub.feed:
            if state == "stale":
                log.warning("feed stale: %s", self.why_stale(now))
            self.hub.set_feed(state)

    def backoff_s(self) -> float:
        delay = backoff(self._attempt, self.settings.redis_retry_max_s)
        self._attempt += 1
        return delay

    def note_lost(self, reason: str) -> None:
        """Log and count an outage once, at its start."""
        if self._lost_at is None:
            self._lost_at = time.monotonic()
            self.hub.stats["redis_reconnects"] += 1
            log.warning("redis lost: %s", reason, extra={"event": "redis_lost", "reason": reason})

    def note_regained(self, what: str) -> None:
        self._ever_subscribed = True
        self._attempt = 0
        if self._lost_at is None:
            log.info("subscribed to %s", what, extra={"event": "redis_subscribed"})
        else:
            down = round(time.monotonic() - self._lost_at, 3)
            log.info("redis regained after %.1fs", down,
                     extra={"event": "redis_regained", "down_s": down})
            self._lost_at = None

    def misconfigured(self, exc: BaseException) -> FeedMisconfigured | None:
        """A refusal before any subscription ever worked is fatal; later, an outage."""
        if is_refusal(exc) and not self._ever_subscribed:
            return FeedMisconfigured(f"redis refused the connection: {exc}")
        return None

    def decode_latest(self, p: int, held: dict[bytes, bytes]) -> list[Quote]:
        """A partition's latest-state hash as quotes; junk is counted and a symbol in the
        wrong partition logged, since publisher and service then disagree on the layout."""
        key = self.layout.latest(p)
        quotes: list[Quote] = []
        for symbol, payload in held.items():
            good, errors = decode_payload(payload)
            quotes += good
            for reason in errors:
                self._junk(f"{key}[{symbol!r}]: {reason}")
        misplaced = [q.symbol for q in quotes if self.layout.partition(q.symbol) != p]
        if misplaced:
            log.warning("%s holds %s, which REDIS_PARTITIONS=%d puts elsewhere: do the "
                        "publisher and the service use the same REDIS_PARTITIONS?",
                        key, ", ".join(misplaced[:5]), self.layout.partitions)
        return quotes

    def ingest(self, payload: bytes, p: int) -> None:
        """Queue a message's quotes for the next fan-out: at most one per FANOUT_INTERVAL_MS,
        and at once after a quiet spell. Every fan-out costs one wake-up and one write per
        client, so under a stream of small messages batching them is what keeps a thousand
        clients current; a quote arriving alone is not delayed."""
        quotes, errors = decode_payload(payload)
        for reason in errors:
            self._junk(reason)
        if quotes or not errors:
            self.heard(p)
            if not quotes and self.hub.feed != "live":
                self.refresh()
        if quotes:
            if not self._batch:
                loop = asyncio.get_running_loop()
                delay = max(self._last_fan_out + self.settings.fanout_interval_ms / 1000
                            - loop.time(), self.gather_s)
                if delay > 0:
                    loop.call_later(delay, self._fan_out)
                else:
                    loop.call_soon(self._fan_out)
            self._batch += quotes

    def _fan_out(self) -> None:
        self._last_fan_out = asyncio.get_running_loop().time()
        batch, self._batch = self._batch, []
        if self.hub.feed != "live":
            self.refresh()
        self.hub.publish(batch)

    def _junk(self, reason: str) -> None:
        """Count every bad payload; log at most one line a second so junk cannot flood logs."""
        self.hub.stats["junk_dropped"] += 1
        now = time.monotonic()
        if now - self._last_junk_log >= 1.0:
            self._last_junk_log = now
            log.warning("dropped a bad payload from redis (%d so far): %s",
                        self.hub.stats["junk_dropped"], reason)
