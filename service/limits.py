"""Rate limits, sans I/O: the caller passes the clock, so tests need no sleeping."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal


class TokenBucket:
    """`rate` per second with a burst of `burst` (default: one second's worth)."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(rate if burst is None else burst)
        self.tokens = self.burst
        self.last: float | None = None

    def take(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class RateLimiter:
    """Client messages: past the rate a message is refused with `rate_limited`; a client
    that keeps sending after a further second's worth of refusals is flooding and gets
    close 4029."""

    __slots__ = ("bucket", "refused")

    def __init__(self, per_second: int) -> None:
        self.bucket = TokenBucket(per_second)
        self.refused = TokenBucket(per_second)

    def check(self, now: float) -> Literal["ok", "limited", "close"]:
        if self.bucket.take(now):
            return "ok"
        return "limited" if self.refused.take(now) else "close"


class KeyedBuckets:
    """A TokenBucket per key (a client address), in bounded memory: a bucket that has had
    time to refill is the same as no bucket, so idle ones are dropped by a sweep at most
    once per refill time; past `max_keys` the oldest is dropped (that key starts full
    again: with that many keys at once, the global limits are what hold)."""

    __slots__ = ("buckets", "burst", "max_keys", "rate", "refill_s", "swept")

    def __init__(self, rate: float, burst: float, max_keys: int = 65536) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self.refill_s = self.burst / self.rate
        self.buckets: dict[Hashable, TokenBucket] = {}
        self.swept = 0.0

    def take(self, key: Hashable, now: float) -> bool:
        if now - self.swept >= self.refill_s:
            self.sweep(now)
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                del self.buckets[next(iter(self.buckets))]
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket.take(now)

    def sweep(self, now: float) -> None:
        """Drop every bucket full again by `now`."""
        self.swept = now
        full = [key for key, bucket in self.buckets.items()
                if bucket.last is None
                or bucket.tokens + (now - bucket.last) * self.rate >= self.burst]
        for key in full:
            del self.buckets[key]

    def __len__(self) -> int:
        return len(self.buckets)
