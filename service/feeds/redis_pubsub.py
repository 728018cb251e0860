"""The feed from one Redis server or a Sentinel primary: one pub/sub connection per
process, subscribed to every partition's channel and to its own probe channel.

Under Sentinel every new connection asks the sentinels for the primary, so the reconnect
after a failover lands on the promoted replica with nothing here knowing about it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from quote_bus import topology
from quote_core.quote import Quote
from quote_runtime.node import NODE_ID

from ..hub import Hub
from ..settings import Settings
from .health import FeedHealth
from .redis_edge import FAILURES, FeedLost, RedisEdge, close_quietly, first_failure


class RedisFeed(RedisEdge):
    def __init__(self, settings: Settings, hub: Hub) -> None:
        super().__init__(settings, hub)
        assert settings.redis_url is not None
        self.health = FeedHealth(settings.feed_silence_s, settings.probe_timeout_s)
        # Our own back-off is the only retry: redis-py's would hide an outage.
        self.client = topology.connect(
            settings.redis_url,
            socket_connect_timeout=2,
            socket_timeout=settings.probe_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.channels = [self.layout.channel(p) for p in range(self.layout.partitions)]
        self.probe_channel = self.layout.probe(0, NODE_ID)

    async def run(self) -> None:
        """Listen until cancelled, whatever Redis does."""
        while True:
            try:
                await self._session()
            except FAILURES as exc:
                if (fatal := self.misconfigured(exc)) is not None:
                    raise fatal from None
                await self._lost(exc)

    async def _lost(self, exc: Exception) -> None:
        self.note_lost(str(exc) or type(exc).__name__)
        self.health.lost()
        self.hub.set_feed("stale")
        await topology.drop_idle(self.client)
        for hook in self.on_lost:
            await hook()
        await asyncio.sleep(self.backoff_s())

    async def _session(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            # Subscribe first, then read the board: a quote published in between is seen
            # twice at worst, and the hub drops the older by seq.
            await pubsub.subscribe(*self.channels, self.probe_channel)
            self.hub.load(await self.read_latest())
            self.health.connected_at(time.monotonic())
            self.note_regained(f"redis channels {self.layout.channel(0)}..."
                               f"{self.layout.channel(self.layout.partitions - 1)}")
            self.refresh()
            await first_failure(self._listen(pubsub), self._watch())
        finally:
            await close_quietly(pubsub)

    async def _listen(self, pubsub: Any) -> None:
        probe = self.probe_channel.encode()
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            if message["channel"] == probe:
                self._probe_back(message["data"])
            else:
                self.ingest(message["data"], 0)
        raise RedisConnectionError("subscription ended")

    async def _watch(self) -> None:
        """Send probes; judge the broker by their return and the publisher by silence."""
        interval = self.settings.probe_interval_s
        wake_at: float | None = None
        while True:
            now = time.monotonic()
            if wake_at is not None:
                self.health.watcher_late(now - wake_at)
            if self.health.probe_overdue(now):
                raise FeedLost(f"no probe came back through pub/sub in "
                               f"{self.settings.probe_timeout_s}s")
            await self.client.publish(self.probe_channel, repr(now))
            self.refresh()
            delay = min(interval, 0.5) if self.hub.feed != "live" else interval
            wake_at = time.monotonic() + delay
            await asyncio.sleep(delay)

    def _probe_back(self, payload: bytes) -> None:
        try:
            sent_at = float(payload)
        except ValueError:
            return
        self.health.probe_returned(sent_at, time.monotonic())

    async def read_latest(self) -> list[Quote]:
        async with self.client.pipeline(transaction=False) as pipe:
            for p in range(self.layout.partitions):
                pipe.hgetall(self.layout.latest(p))
            hashes = await pipe.execute()
        return [q for p, held in enumerate(hashes) for q in self.decode_latest(p, held)]

    def state(self, now: float) -> Literal["live", "stale"]:
        return self.health.state(now)

    def heard(self, p: int) -> None:
        self.health.heard(time.monotonic())

    def why_stale(self, now: float) -> str:
        if not self.health.connected:
            return "redis not connected"
        return f"no quote or publisher heartbeat for {self.settings.feed_silence_s}s"

    def report(self) -> dict[str, Any]:
        return self.health.report(time.monotonic())

    async def aclose(self) -> None:
        await self.client.aclose()
