"""The Redis edge: one pub/sub subscription per process, feeding the hub.

redis-py reconnects silently or not at all depending on how the client was built, and
never notices a frozen server (FIELD-NOTES), so this edge owns recovery itself: its
clients have no retries of their own; a probe published every PROBE_INTERVAL_S must come
back through the subscription; on any failure the feed is marked stale, the loop backs
off with jitter, subscribes again, reloads the latest state, and only then says live.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import topology
from .backoff import backoff
from .feed_health import FeedHealth
from .hub import Hub
from .node import NODE_ID
from .quote import Quote, decode_payload
from .settings import Settings

log = logging.getLogger("service.redis_feed")


class FeedLost(Exception):
    """The probe did not come back in time: Redis is frozen or the subscription is dead."""


class FeedMisconfigured(Exception):
    """Redis refused us before we were ever subscribed (a wrong password, user or
    database in REDIS_URL): retrying cannot fix that, so the process stops instead of
    serving a feed that never comes, or of being restarted in a loop."""


# Refusals that mean the URL is wrong. After a first success they are taken as passing
# (a password being rotated) and retried like any outage.
_REFUSALS = (AuthenticationError, AuthorizationError, ResponseError)


async def _first_failure(*coros: Coroutine[Any, Any, None]) -> None:
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


class RedisFeed:
    def __init__(self, settings: Settings, hub: Hub) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.hub = hub
        self.health = FeedHealth(settings.feed_silence_s, settings.probe_timeout_s)
        # Our own back-off is the only retry: redis-py's would hide an outage.
        self.client = topology.connect(
            settings.redis_url,
            socket_connect_timeout=2,
            socket_timeout=settings.probe_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.probe_channel = f"{settings.redis_probe_channel}:{NODE_ID}"
        self._last_junk_log = 0.0
        self._attempt = 0
        self._lost_at: float | None = None
        self._ever_subscribed = False
        self._batch: list[Quote] = []
        self._last_fan_out = 0.0

    async def run(self) -> None:
        """Listen until cancelled, whatever Redis does."""
        while True:
            try:
                await self._session()
            except _REFUSALS as exc:
                if not self._ever_subscribed:
                    raise FeedMisconfigured(f"redis refused the connection: {exc}") from None
                await self._lost(exc)
            except (RedisConnectionError, RedisTimeoutError, OSError, FeedLost) as exc:
                await self._lost(exc)

    async def _lost(self, exc: Exception) -> None:
        reason = str(exc) or type(exc).__name__
        if self._lost_at is None:
            self._lost_at = time.monotonic()
            self.hub.stats["redis_reconnects"] += 1
            log.warning("redis lost: %s", reason, extra={"event": "redis_lost", "reason": reason})
        self.health.lost()
        self.hub.set_feed("stale")
        delay = backoff(self._attempt, self.settings.redis_retry_max_s)
        self._attempt += 1
        log.debug("redis retry in %.2fs: %s", delay, reason)
        await asyncio.sleep(delay)

    async def _session(self) -> None:
        settings = self.settings
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            # Subscribe first, then read the board: a quote published in between is seen
            # twice at worst, and the hub drops the older by seq.
            await pubsub.subscribe(settings.redis_channel, settings.redis_heartbeat_channel,
                                   self.probe_channel)
            self.hub.load(await self.read_latest())
            self._ever_subscribed = True
            now = time.monotonic()
            self.health.connected_at(now)
            self._attempt = 0
            if self._lost_at is None:
                log.info("subscribed to redis channel %r", settings.redis_channel,
                         extra={"event": "redis_subscribed"})
            else:
                down = round(now - self._lost_at, 3)
                log.info("redis regained after %.1fs", down,
                         extra={"event": "redis_regained", "down_s": down})
                self._lost_at = None
            self._refresh()
            await _first_failure(self._listen(pubsub), self._watch())
        finally:
            # A frozen server must not hold us up here too.
            try:
                async with asyncio.timeout(1):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            except (TimeoutError, RedisConnectionError, OSError):
                pass

    async def _listen(self, pubsub: Any) -> None:
        channel = self.settings.redis_channel.encode()
        heartbeat = self.settings.redis_heartbeat_channel.encode()
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            name = message["channel"]
            if name == channel:
                self.ingest(message["data"])
            elif name == heartbeat:
                self.health.heard(time.monotonic())
                if self.hub.feed != "live":
                    self._refresh()
            else:
                self._probe_back(message["data"])
        raise RedisConnectionError("subscription ended")

    async def _watch(self) -> None:
        """Send probes; judge the broker by their return and the publisher by silence."""
        interval = self.settings.probe_interval_s
        while True:
            now = time.monotonic()
            if self.health.probe_overdue(now):
                raise FeedLost(f"no probe came back through pub/sub in "
                               f"{self.settings.probe_timeout_s}s")
            await self.client.publish(self.probe_channel, repr(now))
            self._refresh()
            await asyncio.sleep(min(interval, 0.5) if self.hub.feed != "live" else interval)

    def _probe_back(self, payload: bytes) -> None:
        try:
            sent_at = float(payload)
        except ValueError:
            return
        self.health.probe_returned(sent_at, time.monotonic())

    def _refresh(self) -> None:
        state = self.health.state(time.monotonic())
        if state != self.hub.feed:
            if state == "stale":
                log.warning("no quote or publisher heartbeat for %ss", self.settings.feed_silence_s)
            self.hub.set_feed(state)

    async def read_latest(self) -> list[Quote]:
        raw = await self.client.hgetall(self.settings.redis_latest_key)
        quotes: list[Quote] = []
        for symbol, payload in raw.items():
            good, errors = decode_payload(payload)
            quotes += good
            for reason in errors:
                self._junk(f"{self.settings.redis_latest_key}[{symbol!r}]: {reason}")
        return quotes

    def ingest(self, payload: bytes) -> None:
        """Queue a message's quotes for the next fan-out: at most one per FANOUT_INTERVAL_MS,
        and at once after a quiet spell. Every fan-out costs one wake-up and one write per
        client, so under a stream of small messages batching them is what keeps a thousand
        clients current; a quote arriving alone is not delayed."""
        quotes, errors = decode_payload(payload)
        for reason in errors:
            self._junk(reason)
        if quotes:
            if not self._batch:
                loop = asyncio.get_running_loop()
                delay = self._last_fan_out + self.settings.fanout_interval_ms / 1000 - loop.time()
                if delay > 0:
                    loop.call_later(delay, self._fan_out)
                else:
                    loop.call_soon(self._fan_out)
            self._batch += quotes

    def _fan_out(self) -> None:
        self._last_fan_out = asyncio.get_running_loop().time()
        batch, self._batch = self._batch, []
        self.health.heard(time.monotonic())
        if self.hub.feed != "live":
            self._refresh()
        self.hub.publish(batch)

    def _junk(self, reason: str) -> None:
        """Count every bad payload; log at most one line a second so junk cannot flood logs."""
        self.hub.stats["junk_dropped"] += 1
        now = time.monotonic()
        if now - self._last_junk_log >= 1.0:
            self._last_junk_log = now
            log.warning("dropped a bad payload from redis (%d so far): %s",
                        self.hub.stats["junk_dropped"], reason)

    def report(self) -> dict[str, Any]:
        return self.health.report(time.monotonic())

    async def aclose(self) -> None:
        await self.client.aclose()
