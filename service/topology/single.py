"""One Redis server: redis://, rediss:// and unix:// URLs, as redis-py reads them."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.connection import parse_url

SCHEMES = ("redis://", "rediss://", "unix://")


def check(url: str) -> None:
    if not url.startswith(SCHEMES):
        raise ValueError("must start with redis://, rediss://, unix://, redis+sentinel:// "
                         "or redis+cluster://")
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ValueError(f"is not a valid Redis URL ({exc})") from None


def connect(url: str, **options: Any) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, **options)
