"""One Redis server: redis://, rediss:// and unix:// URLs, as redis-py reads them."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

SCHEMES = ("redis://", "rediss://", "unix://")
FORM = "redis[s]://[USER:PASSWORD@]HOST[:PORT][/DB][?OPTION=VALUE...] or unix:///PATH[?db=DB]"


def check(url: str) -> None:
    if not url.startswith(SCHEMES):
        raise ValueError("must start with redis://, rediss://, unix://, redis+sentinel:// "
                         "or redis+cluster://")
    try:
        _check(url)
    except ValueError as exc:
        raise ValueError(f"is not a valid Redis URL ({exc}; the form is {FORM})") from None


def _check(url: str) -> None:
    """What redis-py would take silently (a database that is not a number: database 0) or
    only fail on at the first connection (an option it does not know)."""
    parts = urlsplit(url)
    dbs = parse_qs(parts.query).get("db", [])
    if url.startswith("unix://"):
        if not parts.path:
            raise ValueError("no socket path")
    else:
        if not parts.hostname:
            raise ValueError("no host")
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port is not None and not 0 < port < 65536:
            given = parts.netloc.rpartition("@")[2].rpartition(":")[2]
            raise ValueError(f"the port must be 1-65535, not {given!r}")
        if not dbs and parts.path.strip("/"):
            dbs = [parts.path[1:]]
    for db in dbs:
        if not (db.isascii() and db.isdigit()):
            raise ValueError(f"the database must be a number 0 or more, not {db!r}")
    try:
        # Builds the connection object without connecting: redis-py's own check of every
        # option's name and value.
        aioredis.ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
    except TypeError as exc:
        raise ValueError(f"an option redis-py does not take: {exc}") from None
    except (ValueError, RedisError) as exc:
        raise ValueError(str(exc)) from None


def connect(url: str, **options: Any) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, **options)
