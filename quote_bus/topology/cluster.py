"""A Redis Cluster: redis+cluster://[user:pass@]H:P[,H:P...] (startup nodes).

The publisher gets redis-py's RedisCluster, which routes each partition's script to the
node owning its slot and follows MOVED and ASK while slots move. The service does not
subscribe through it (redis-py's async cluster pub/sub polls its nodes in turn); it reads
the slot map here and holds one SSUBSCRIBE connection per node itself (feeds/cluster.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AuthenticationError, AuthorizationError, NoPermissionError

from .addresses import Address, addresses, credentials

SCHEMES = ("redis+cluster://", "rediss+cluster://")



def handles(url: str) -> bool:
    return url.startswith(SCHEMES)


@dataclass(frozen=True, slots=True)
class ClusterURL:
    nodes: list[Address]
    username: str | None
    password: str | None
    ssl: bool

    def node_options(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password, "ssl": self.ssl}


def parse(url: str) -> ClusterURL:
    parts = urlsplit(url)
    nodes = addresses(parts, "node")
    if parts.path.strip("/"):
        raise ValueError("a cluster has only database 0: nothing may follow the nodes")
    if parts.query:
        raise ValueError(f"no options are read, got ?{parts.query}")
    username, password = credentials(parts)
    return ClusterURL(nodes=nodes, username=username, password=password,
                      ssl=url.startswith("rediss+"))


def check(url: str) -> None:
    try:
        parse(url)
    except ValueError as exc:
        raise ValueError(f"is not a valid cluster URL ({exc})") from None


def connect(url: str, **options: Any) -> RedisCluster:
    spec = parse(url)
    # health_check_interval is per connection in redis-py's cluster too, but the cluster
    # client takes no retry_on_error list: its own retries cover MOVED and failovers.
    options.pop("retry_on_error", None)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in spec.nodes],
        require_full_coverage=False, **spec.node_options(), **options)


def slot_of(key: str) -> int:
    return int(key_slot(key.encode()))


async def slot_owners(spec: ClusterURL, known: list[Address], timeout_s: float
                      ) -> dict[int, Address]:
    """Each slot's primary, from the first node that answers CLUSTER SHARDS: the startup
    nodes and whatever primaries were seen before, so a dead startup node is no outage.
    A primary the cluster has marked failed is left out: its replica is about to take its
    slots, and a session on it would only wait out a timeout (a frozen node)."""
    errors: list[str] = []
    refusals: list[aioredis.RedisError] = []
    for host, port in dict.fromkeys([*known, *spec.nodes]):
        # No retries: the next node is the retry.
        client = aioredis.Redis(host=host, port=port, socket_connect_timeout=timeout_s,
                                socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
                                **spec.node_options())
        try:
            shards = await client.execute_command("CLUSTER SHARDS")  # type: ignore[no-untyped-call]
        except (aioredis.RedisError, OSError) as exc:
            errors.append(f"{host}:{port}: {exc}")
            if isinstance(exc, (AuthenticationError, AuthorizationError, NoPermissionError)):
                refusals.append(exc)
            continue
        finally:
            await client.aclose()
        return _owners(shards, host)
    if refusals and len(refusals) == len(errors):
        # Every node said no (a wrong password, or a user without CLUSTER SHARDS): the
        # feed's refusal, fatal before it ever subscribed, not an outage to wait out.
        raise refusals[0]
    raise aioredis.ConnectionError("no cluster node answered CLUSTER SHARDS: " + "; ".join(errors))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _owners(shards: list[dict[bytes, Any]], asked: str) -> dict[int, Address]:
    """redis-py reads CLUSTER SHARDS into dicts: slots as [start, end, ...] pairs, nodes with
    role and health. A node's endpoint "?" (unknown) means the address we asked it by."""
    owners: dict[int, Address] = {}
    for shard in shards:
        primary = next((n for n in shard[b"nodes"] if _text(n[b"role"]) == "master"
                        and _text(n[b"health"]) == "online"), None)
        if primary is None:
            continue
        endpoint = _text(primary.get(b"endpoint") or primary[b"ip"])
        address = (asked if endpoint in ("?", "") else endpoint, int(primary[b"port"]))
        bounds = [int(x) for x in shard[b"slots"]]
        for start, end in zip(bounds[::2], bounds[1::2], strict=True):
            for slot in range(start, end + 1):
                owners[slot] = address
    return owners
