"""Which Redis we talk to: one server, a primary found through Sentinel, or a Cluster.

Publisher and service build their clients here, so both accept the same REDIS_URL forms
and follow a failover the same way. One module per topology, behind `check` and
`connect`; `sharded` says whether quotes travel by sharded pub/sub (SPUBLISH).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from . import cluster, sentinel, single

Client = aioredis.Redis | RedisCluster


def _module(url: str) -> ModuleType:
    for module in (sentinel, cluster):
        if module.handles(url):
            return module
    return single


def check(url: str) -> None:
    """Raise ValueError naming what is wrong with REDIS_URL, before anything connects."""
    _module(url).check(url)


def connect(url: str, **options: Any) -> Client:
    """A client for REDIS_URL; `options` are redis-py connection options (timeouts, retry)."""
    client: Client = _module(url).connect(url, **options)
    return client


async def drop_idle(client: Client) -> None:
    """Close the sockets of the client's idle pooled connections. Once one connection
    failed (the server restarted or the path died), the idle ones are as dead, and
    redis-py keeps each one's socket, in CLOSE_WAIT and then held, until it is used again:
    the extra connections of a busy moment never are (bench/soak.py: 3-6 descriptors held
    for good after every Redis restart). They reconnect when next used."""
    try:
        if isinstance(client, RedisCluster):
            for node in client.get_nodes():
                await node.disconnect_free_connections()
        else:
            await client.connection_pool.disconnect(inuse_connections=False)
    except Exception:  # closing what is already broken: nothing to report
        pass


def sharded(url: str) -> bool:
    """A cluster: quotes go by SPUBLISH/SSUBSCRIBE, so each stays on its slot's shard
    instead of being broadcast to every node."""
    return cluster.handles(url)


def shown(url: str) -> str:
    """The URL without credentials, for logs."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
