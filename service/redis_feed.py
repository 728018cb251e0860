"""The Redis edge: one pub/sub subscription per process, feeding the hub.

redis-py reconnects silently or not at all depending on how the client was built
(FIELD-NOTES), so this loop owns recovery itself: on any connection error it marks the
feed stale, backs off with jitter, subscribes again, reloads the latest state, and only
then says live.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .backoff import backoff
from .hub import Hub
from .quote import Quote, decode_payload
from .settings import Settings

log = logging.getLogger("service.redis_feed")


class RedisFeed:
    def __init__(self, settings: Settings, hub: Hub) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.hub = hub
        self.client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, health_check_interval=5
        )
        self._last_junk_log = 0.0

    async def run(self) -> None:
        """Listen until cancelled, whatever Redis does."""
        self._attempt = 0
        while True:
            try:
                await self._subscribe_and_listen()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.hub.set_feed("stale")
                self.hub.stats["redis_reconnects"] += 1
                delay = backoff(self._attempt, self.settings.redis_retry_max_s)
                self._attempt += 1
                log.warning("redis lost (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)

    async def _subscribe_and_listen(self) -> None:
        settings = self.settings
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            # Subscribe first, then read the board: a quote published in between is seen
            # twice at worst, and the hub drops the older by seq.
            await pubsub.subscribe(settings.redis_channel)
            self.hub.load(await self.read_latest())
            self.hub.set_feed("live")
            self._attempt = 0
            log.info("listening on redis channel %r", settings.redis_channel)
            async for message in pubsub.listen():
                if message["type"] == "message":
                    self.ingest(message["data"])
        finally:
            await pubsub.aclose()

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
        quotes, errors = decode_payload(payload)
        for reason in errors:
            self._junk(reason)
        if quotes:
            self.hub.publish(quotes)

    def _junk(self, reason: str) -> None:
        """Count every bad payload; log at most one line a second so junk cannot flood logs."""
        self.hub.stats["junk_dropped"] += 1
        now = time.monotonic()
        if now - self._last_junk_log >= 1.0:
            self._last_junk_log = now
            log.warning("dropped a bad payload from redis (%d so far): %s",
                        self.hub.stats["junk_dropped"], reason)

    async def aclose(self) -> None:
        await self.client.aclose()


