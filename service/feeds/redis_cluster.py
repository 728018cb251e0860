"""The feed from a Redis Cluster: sharded pub/sub, one connection per node that owns a
partition, each partition proved alive by its own probe.

Classic pub/sub in a cluster sends every message to every node; SSUBSCRIBE keeps a
partition's messages on its slot's shard, so adding primaries adds capacity. The slot map
comes from CLUSTER SHARDS; each node subscription SSUBSCRIBEs its partitions' channels and
probe channels, reads their boards from that node, and probes them. A subscription ends when
its node fails (its partitions go stale), when a probe does not come back (a frozen
node), or when the node unsubscribes a channel itself, which Redis does when the slot
moves away (resharding, failover): the map is read again and subscriptions follow it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from quote_bus.topology import addresses, cluster
from quote_runtime.node import NODE_ID

from ..hub import Hub
from ..settings import Settings
from .health import FeedHealth
from .redis_edge import (
    FAILURES,
    FeedLost,
    FeedMisconfigured,
    RedisEdge,
    close_quietly,
    first_failure,
    log,
)

Address = addresses.Address

# Read the slot map this often even when nothing told us it changed.
RECHECK_S = 10.0


class SlotMoved(Exception):
    """The node unsubscribed one of our channels: its slot now lives elsewhere."""


@dataclass(eq=False)
class NodeSubscription:
    """The sharded subscription to one primary: the partitions it serves, and its task."""

    address: Address
    partitions: frozenset[int]
    task: asyncio.Task[None] | None = field(default=None)


class ClusterFeed(RedisEdge):
    # bench/cluster.py: without it half the fan-outs went with one node's partitions and
    # the rest waited a FANOUT_INTERVAL_MS (p50 age 24 ms against 8 ms with it).
    gather_s = 0.002
    def __init__(self, settings: Settings, hub: Hub) -> None:
        super().__init__(settings, hub)
        assert settings.redis_url is not None
        self.spec = cluster.parse(settings.redis_url)
        n = self.layout.partitions
        self.health = [FeedHealth(settings.feed_silence_s, settings.probe_timeout_s)
                       for _ in range(n)]
        self.slots = [cluster.slot_of(self.layout.channel(p)) for p in range(n)]
        self.channel_of = {self.layout.channel(p).encode(): p for p in range(n)}
        self.probe_of = {self.layout.probe(p, NODE_ID).encode(): p for p in range(n)}
        self.subscriptions: dict[Address, NodeSubscription] = {}
        self.known: list[Address] = []
        self.wake = asyncio.Event()
        self.failed = False
        self.fatal: FeedMisconfigured | None = None

    async def run(self) -> None:
        """Follow the slot map until cancelled, whatever the cluster does."""
        try:
            while True:
                if self.fatal is not None:
                    raise self.fatal
                if self.failed:
                    self.failed = False
                    await asyncio.sleep(self.backoff_s())
                try:
                    owners = await cluster.slot_owners(self.spec, self.known,
                                                       self.settings.probe_timeout_s)
                except FAILURES as exc:
                    if (fatal := self.misconfigured(exc)) is not None:
                        raise fatal from None
                    self._lost(range(self.layout.partitions), f"slot map: {exc}")
                    self.failed = True
                    continue
                log.debug("slot map read; following it")
                await self._follow(owners)
                if self.failed:
                    continue
                self.wake.clear()
                try:
                    async with asyncio.timeout(RECHECK_S):
                        await self.wake.wait()
                except TimeoutError:
                    pass
        finally:
            await self._end(list(self.subscriptions.values()))

    async def _follow(self, owners: dict[int, Address]) -> None:
        """Have one subscription per node, each serving exactly the partitions it owns now."""
        wanted: dict[Address, set[int]] = {}
        for p, slot in enumerate(self.slots):
            owner = owners.get(slot)
            if owner is not None:
                wanted.setdefault(owner, set()).add(p)
        # The primaries to ask for the next map: new ones first, then the known ones in
        # their order (one that failed was moved last).
        current = list(dict.fromkeys(owners.values()))
        self.known = ([a for a in current if a not in self.known]
                      + [a for a in self.known if a in current])
        unowned = [p for p, slot in enumerate(self.slots) if slot not in owners]
        if unowned:
            # Mid-failover: ask again after a back-off rather than at the next recheck.
            self._lost(unowned, "no node serves their slots")
            self.failed = True
        stale = [s for a, s in self.subscriptions.items() if wanted.get(a) != set(s.partitions)]
        await self._end(stale)
        for address, partitions in wanted.items():
            if address not in self.subscriptions:
                subscription = NodeSubscription(address, frozenset(partitions))
                self.subscriptions[address] = subscription
                subscription.task = asyncio.create_task(self._serve(subscription),
                                                   name=f"feed {address[0]}:{address[1]}")

    async def _end(self, subscriptions: list[NodeSubscription]) -> None:
        for subscription in subscriptions:
            if subscription.task is not None:
                subscription.task.cancel()
        await asyncio.gather(*(s.task for s in subscriptions if s.task is not None),
                             return_exceptions=True)

    async def _serve(self, subscription: NodeSubscription) -> None:
        try:
            await self._subscription(subscription)
        except SlotMoved:
            pass  # planned: the map is read again at once, nothing is reported down
        except FAILURES as exc:
            self.fatal = self.fatal or self.misconfigured(exc)
            self._failed(subscription, exc)
        finally:
            if self.subscriptions.get(subscription.address) is subscription:
                del self.subscriptions[subscription.address]
            self.wake.set()

    def _failed(self, subscription: NodeSubscription, exc: Exception) -> None:
        host, port = subscription.address
        reason = f"{host}:{port}: {exc or type(exc).__name__}"
        log.debug("cluster node subscription ended: %s (partitions %s)", reason,
                  sorted(subscription.partitions))
        self._lost(subscription.partitions, reason)
        self.failed = True
        # Ask the others for the slot map first: a frozen node would hold each ask for
        # the whole timeout.
        if subscription.address in self.known:
            self.known.remove(subscription.address)
            self.known.append(subscription.address)

    def _lost(self, partitions: Any, reason: str) -> None:
        self.note_lost(reason)
        for p in partitions:
            self.health[p].lost()
        self.refresh()

    async def _subscription(self, subscription: NodeSubscription) -> None:
        host, port = subscription.address
        parts = sorted(subscription.partitions)
        client = aioredis.Redis(
            host=host, port=port, socket_connect_timeout=2,
            socket_timeout=self.settings.probe_timeout_s, retry=Retry(NoBackoff(), 0),
            **self.spec.node_options())
        pubsub = client.pubsub()
        try:
            for p in parts:  # one SSUBSCRIBE per slot: Redis refuses channels of several
                await pubsub.ssubscribe(self.layout.channel(p), self.layout.probe(p, NODE_ID))
            # Subscribed first, then the boards: a quote in between is seen twice at
            # worst and the hub keeps the higher seq. Read from this node, so a slot that
            # is no longer here fails with MOVED instead of being read elsewhere.
            async with client.pipeline(transaction=False) as pipe:
                for p in parts:
                    pipe.hgetall(self.layout.latest(p))
                hashes = await pipe.execute()
            board = [q for p, held in zip(parts, hashes, strict=True)
                     for q in self.decode_latest(p, held)]
            if self.hub.feed == "live":
                # A planned move (the feed stayed live): what was published while we were
                # between nodes goes out as updates; nothing older than sent does.
                self.hub.publish(board)
            else:
                self.hub.load(board)
            now = time.monotonic()
            for p in parts:
                self.health[p].connected_at(now)
            if all(h.connected for h in self.health):
                self.note_regained(f"{self.layout.partitions} partitions on "
                                   f"{len(self.subscriptions)} cluster nodes (sharded pub/sub)")
            self.refresh()
            await first_failure(self._listen(pubsub), self._watch(client, parts))
        finally:
            await close_quietly(pubsub)
            await close_quietly(client)

    async def _listen(self, pubsub: Any) -> None:
        async for message in pubsub.listen():
            kind = message["type"]
            name = message["channel"]
            if kind == "smessage":
                p = self.channel_of.get(name)
                if p is not None:
                    self.ingest(message["data"], p)
                elif (p := self.probe_of.get(name)) is not None:
                    self._probe_back(p, message["data"])
            elif kind == "sunsubscribe":
                raise SlotMoved(name)
        raise aioredis.ConnectionError("subscription ended")

    async def _watch(self, client: aioredis.Redis, parts: list[int]) -> None:
        """Probe each partition through its own shard channel; judge it by the return."""
        interval = self.settings.probe_interval_s
        wake_at: float | None = None
        while True:
            now = time.monotonic()
            if wake_at is not None:
                for p in parts:
                    self.health[p].watcher_late(now - wake_at)
            late = [p for p in parts if self.health[p].probe_overdue(now)]
            if late:
                raise FeedLost(f"no probe came back in {self.settings.probe_timeout_s}s "
                               f"for partitions {late}")
            async with client.pipeline(transaction=False) as pipe:
                for p in parts:
                    pipe.execute_command("SPUBLISH", self.layout.probe(p, NODE_ID), repr(now))
                await pipe.execute()
            self.refresh()
            delay = min(interval, 0.5) if self.hub.feed != "live" else interval
            wake_at = time.monotonic() + delay
            await asyncio.sleep(delay)

    def _probe_back(self, p: int, payload: bytes) -> None:
        try:
            sent_at = float(payload)
        except ValueError:
            return
        self.health[p].probe_returned(sent_at, time.monotonic())

    def state(self, now: float) -> Literal["live", "stale"]:
        return "live" if all(h.state(now) == "live" for h in self.health) else "stale"

    def heard(self, p: int) -> None:
        self.health[p].heard(time.monotonic())

    def stale_partitions(self, now: float) -> list[int]:
        return [p for p, h in enumerate(self.health) if h.state(now) != "live"]

    def why_stale(self, now: float) -> str:
        down = [p for p, h in enumerate(self.health) if not h.connected]
        if down:
            return f"partitions {down} have no node"
        return (f"partitions {self.stale_partitions(now)} had no quote or publisher "
                f"heartbeat for {self.settings.feed_silence_s}s")

    def report(self) -> dict[str, Any]:
        """/readyz: the whole feed as one Redis feed reports it, plus where each partition
        is served and which are stale."""
        now = time.monotonic()
        reports = [h.report(now) for h in self.health]
        rtts = [r["probe_rtt_ms"] for r in reports if r["probe_rtt_ms"] is not None]
        heard = [r["last_heard_s_ago"] for r in reports if r["last_heard_s_ago"] is not None]
        return {
            "redis": "connected" if all(h.connected for h in self.health) else "lost",
            "probe_rtt_ms": max(rtts) if rtts else None,
            "last_heard_s_ago": max(heard) if heard else None,
            "publisher": "silent" if any(r["publisher"] == "silent" for r in reports) else "heard",
            "partitions_stale": self.stale_partitions(now),
            "nodes": {f"{a[0]}:{a[1]}": sorted(s.partitions) for a, s in self.subscriptions.items()},
        }

    async def aclose(self) -> None:
        await self._end(list(self.subscriptions.values()))
