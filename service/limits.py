"""Rate limits, sans I/O: the caller passes the clock, so tests need no sleeping."""

from __future__ import annotations

from typing import Literal


class TokenBucket:
    """`rate` per second with a burst of one second's worth."""

    __slots__ = ("last", "rate", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.tokens = float(rate)
        self.last: float | None = None

    def take(self, now: float) -> bool:
        if self.last is not None:
            self.tokens = min(self.rate, self.tokens + max(0.0, now - self.last) * self.rate)
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
