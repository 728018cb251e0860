"""Which Redis we talk to: one server, or a primary found through Sentinel.

Publisher and service build their clients here, so both accept the same REDIS_URL forms
and follow a failover the same way. One module per topology, behind `connect` and `check`.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from . import sentinel, single


def check(url: str) -> None:
    """Raise ValueError naming what is wrong with REDIS_URL, before anything connects."""
    (sentinel if sentinel.handles(url) else single).check(url)


def connect(url: str, **options: Any) -> aioredis.Redis:
    """A client for REDIS_URL; `options` are redis-py connection options (timeouts, retry)."""
    client: aioredis.Redis = (sentinel if sentinel.handles(url) else single).connect(url, **options)
    return client


def shown(url: str) -> str:
    """The URL without credentials, for logs."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
