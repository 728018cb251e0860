"""A primary under Redis Sentinel: redis+sentinel://[user:pass@]H:P[,H:P...]/MASTER[/DB].

Through redis-py's Sentinel: every new connection asks the sentinels which server is the
primary now, so after a failover our own reconnect (the service's back-off, the
publisher's retries) lands on the promoted replica without any code of ours knowing.
The password is the data servers'; `?sentinel_password=` is for sentinels that have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from .addresses import Address, addresses, credentials

SCHEMES = ("redis+sentinel://", "rediss+sentinel://")


class _FollowingConnection(SentinelManagedConnection):
    """Asks the sentinels for the primary on every reconnect, not only the first.

    redis-py (8.1; redis/redis-py#3874) asks only in `connect()`; a retry inside a
    command reconnects through `connect_check_health` to the address the connection had.
    After a failover from a frozen primary every retry went to it, each held for the whole
    socket_timeout (the publisher stalled 8-20 s), and a connection still waiting on it
    when it thawed went back to the pool: the publisher then wrote to the old primary,
    heard by nobody, until the sentinels demoted it 10 s later (tests/test_sentinel.py).
    Costs one more SENTINEL MASTERS per new connection."""

    async def _connect(self) -> None:
        if self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super()._connect()  # type: ignore[no-untyped-call]


class _FollowingSSLConnection(_FollowingConnection, SentinelManagedSSLConnection):
    pass


def handles(url: str) -> bool:
    return url.startswith(SCHEMES)


@dataclass(frozen=True, slots=True)
class SentinelURL:
    sentinels: list[Address]
    master: str
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None
    ssl: bool


def parse(url: str) -> SentinelURL:
    parts = urlsplit(url)
    sentinels = addresses(parts, "sentinel")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("needs the master's name after the sentinels: "
                         "redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"the database after the master's name must be a number, not {path[1]!r}")
    query = parse_qs(parts.query)
    unknown = set(query) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}; "
                         "only sentinel_password is read")
    username, password = credentials(parts)
    return SentinelURL(
        sentinels=sentinels, master=unquote(path[0]), db=int(path[1]) if len(path) == 2 else 0,
        username=username, password=password,
        sentinel_password=query.get("sentinel_password", [None])[0],
        ssl=url.startswith("rediss+"),
    )


def check(url: str) -> None:
    try:
        parse(url)
    except ValueError as exc:
        raise ValueError(f"is not a valid Sentinel URL ({exc})") from None


def connect(url: str, **options: Any) -> aioredis.Redis:
    spec = parse(url)
    asking = {k: v for k, v in options.items() if k in ("socket_connect_timeout", "socket_timeout")}
    if spec.sentinel_password:
        asking["password"] = spec.sentinel_password
    # Any: Sentinel's constructor is untyped in some redis-py releases and typed in others.
    sentinel_class: Any = Sentinel
    sentinels = sentinel_class(spec.sentinels, sentinel_kwargs=asking)
    # With a connection_class of our own, TLS is that class (master_for's ssl= would
    # choose one for us).
    return sentinels.master_for(  # type: ignore[no-any-return]
        spec.master, db=spec.db, username=spec.username, password=spec.password,
        connection_class=_FollowingSSLConnection if spec.ssl else _FollowingConnection,
        **options)
