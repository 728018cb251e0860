"""Where quotes come from, one module per source behind one interface (`QuoteSource`).

embedded.py: the simulated market in this process (no Redis); redis_pubsub.py: one Redis
server or a Sentinel primary; redis_cluster.py: a Redis Cluster, by sharded pub/sub.
What the two Redis feeds share (recovery, batching, junk) is redis_edge.py; health.py
decides live or stale from what they observed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..hub import Hub
from ..settings import Settings

# Called when the feed loses its Redis (the engine releases the tape's idle connections).
LostHook = Callable[[], Awaitable[None]]


class QuoteSource(Protocol):
    on_lost: list[LostHook]

    async def run(self) -> None: ...

    def report(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


def make_feed(settings: Settings, hub: Hub) -> QuoteSource:
    if not settings.redis_url:
        from .embedded import EmbeddedFeed

        return EmbeddedFeed(settings, hub)
    from quote_bus import topology

    if topology.sharded(settings.redis_url):
        from .redis_cluster import ClusterFeed

        return ClusterFeed(settings, hub)
    from .redis_pubsub import RedisFeed

    return RedisFeed(settings, hub)
