"""The Redis settings the publisher and the service both read: they must agree on them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from quote_runtime.settings import POSITIVE, ConfigError, SettingsGroup, refused, setting, within

from .layout import Layout


@dataclass(frozen=True)
class RedisSettings(SettingsGroup):
    # Where the feed comes from: redis://, rediss://, unix://,
    # redis+sentinel://H:P[,H:P...]/MASTER[/DB] or redis+cluster://H:P[,H:P...]
    # (quote_bus/topology). None: the service's embedded broker with the simulated market
    # (the publisher needs it).
    redis_url: str | None = None
    # Redis names (quote_bus/layout.py): symbols are spread over REDIS_PARTITIONS
    # partitions, each with its own channel, latest-state hash and seq hash named
    # {REDIS_PREFIX}:{P}..., so a Redis Cluster spreads them over its nodes.
    redis_prefix: str = "quotes"
    redis_partitions: int = setting(16, within(1, 1024, "1-1024"))
    # The tape (service/tape): the publisher appends every quote to its symbol's Redis
    # Stream, trimmed to this many seconds (a trading day and more) and this many quotes
    # per symbol; every-update clients recover what they missed from it.
    tape_retention_s: float = setting(86400.0, POSITIVE)
    tape_max_len: int = setting(100000, POSITIVE)
    # Back-off between Redis reconnect attempts.
    redis_retry_max_s: float = setting(5.0, POSITIVE)

    def check(self) -> None:
        super().check()
        if not self.redis_prefix or any(c in self.redis_prefix for c in "{} "):
            raise refused("redis_prefix", "a non-empty name without braces or spaces",
                          self.redis_prefix)
        if self.redis_url is not None:
            from .topology import check

            try:
                check(self.redis_url)
            except ValueError as exc:
                raise ConfigError(f"REDIS_URL {exc}: got {_without_password(self.redis_url)!r}") from None

    @property
    def layout(self) -> Layout:
        return Layout(self.redis_prefix, self.redis_partitions)


def _without_password(url: str) -> str:
    """REDIS_URL as given, its passwords masked: an error may go to a shared log."""
    scheme, sep, rest = url.partition("://")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    tail = re.sub(r"([?&][^=&]*password=)[^&]*", r"\1***", rest[end:])
    return f"{scheme}{sep}{userinfo}{at}{hosts}{tail}"
