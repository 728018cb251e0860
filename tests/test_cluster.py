"""A real Redis Cluster (six redis-servers, three primaries) under the publisher and the
service: quotes travel by sharded pub/sub, spread over the primaries; a primary killed
is followed to its promoted replica; a partition whose slot moves is followed.

Each test prints what it measured (run with -s); bounds are loose for a busy machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack

import orjson
import pytest
import redis
from redis.crc import key_slot

from tests.redis_cluster import RedisCluster, client, redis_cluster
from tests.redis_server import LAYOUT
from tests.service_proc import PublisherProcess, ServiceProcess, feed_stack, http_get
from tests.test_faults import FAST_PROBES, ReadyWatcher, converged, until, watchers
from tests.wsclient import ClientConnection, connect, recv_type

Stack = tuple[RedisCluster, ServiceProcess, PublisherProcess]


@pytest.fixture
def stack() -> Iterator[Stack]:
    with redis_cluster() as cluster, \
            feed_stack(cluster.url, 200, FAST_PROBES) as (service, publisher):
        yield cluster, service, publisher


def channels(port: int, command: str = "PUBSUB SHARDCHANNELS") -> set[str]:
    """The channels with subscribers on that node: sharded, or classic (PUBSUB CHANNELS)."""
    c = client(port)
    try:
        return {name.decode() for name in c.execute_command(command)}
    finally:
        c.close()


def slot(p: int) -> int:
    return int(key_slot(LAYOUT.channel(p).encode()))


async def test_quotes_go_by_sharded_pubsub_spread_over_the_primaries(stack: Stack) -> None:
    cluster, service, publisher = stack
    async with AsyncExitStack() as exits:
        clients = await watchers(exits, service, 20)
        quote_channels = {LAYOUT.channel(p) for p in range(LAYOUT.partitions)}
        where = {port: channels(port) & quote_channels for port in cluster.primaries()}
        assert set().union(*where.values()) == quote_channels, where
        assert sum(1 for names in where.values() if names) >= 2, where
        for node in cluster.live():
            classic = channels(node.port, "PUBSUB CHANNELS")
            assert not {n for n in classic if n.startswith(LAYOUT.prefix)}, classic
        status, body = http_get(service.url + "/readyz")
        assert status == 200 and orjson.loads(body)["partitions_stale"] == []
        await converged(service, publisher, clients)
    print("\ncluster: partitions per primary "
          + ", ".join(f":{port} {len(names)}" for port, names in where.items()))


@pytest.mark.parametrize("fault", ["killed", "frozen"])
async def test_a_lost_primary_is_followed_to_its_replica(stack: Stack, fault: str) -> None:
    """Killed: its connections drop at once. Frozen (SIGSTOP): they stay open and only the
    partitions' probes notice; once thawed it rejoins as a replica of its replacement."""
    cluster, service, publisher = stack
    async with AsyncExitStack() as exits:
        clients = await watchers(exits, service, 20)
        await asyncio.sleep(0.5)
        seq_before = {s: max(w.board[s]["seq"] for w in clients) for s in clients[0].board}
        victim = cluster.owner_of(slot(0))
        mine = [p for p in range(LAYOUT.partitions) if cluster.owner_of(slot(p)) == victim]

        ready = ReadyWatcher(service)
        exits.callback(ready.stop)
        killed = time.monotonic()
        if fault == "killed":
            cluster.node(victim).kill()
        else:
            cluster.node(victim).freeze()
        await until(lambda: all(w.status_since(killed, "stale") is not None for w in clients),
                    5, f"every client told stale when a primary was {fault}")
        to_stale = max(w.status_since(killed, "stale") or 0 for w in clients)
        await until(lambda: cluster.owner_of(slot(0)) != victim, 20, "a replica promoted")
        promoted = time.monotonic() - killed
        await until(lambda: all(w.status_since(killed, "live") is not None for w in clients),
                    20, "every client told live after the replica took over")
        to_live = max(w.status_since(killed, "live") or 0 for w in clients)
        outage = min((w.status_since(killed, "live") or 0) - (w.status_since(killed, "stale") or 0)
                     for w in clients)
        assert ready.saw(outage, lambda body: body["partitions_stale"] == mine), \
            f"/readyz never named the lost partitions {mine}: {ready.answers[-3:]}"
        new_owner = cluster.owner_of(slot(0))
        assert new_owner != victim
        assert all(w.snapshots[-1] >= killed for w in clients), "a fresh snapshot follows live"
        await until(lambda: all(w.board[s]["seq"] > seq_before[s]
                                for w in clients for s in seq_before), 10,
                    "every symbol moved past its seq from before the failover")
        caught_up = time.monotonic() - killed
        assert http_get(service.url + "/readyz")[0] == 200
        if fault == "frozen":
            cluster.node(victim).thaw()
            await until(lambda: victim not in cluster.primaries(), 15,
                        "the thawed primary rejoined as a replica")
        await converged(service, publisher, clients)
    print(f"\ncluster, primary :{victim} {fault} ({len(mine)} partitions): stale after "
          f"{to_stale:.2f}s, replica promoted at {promoted:.2f}s, live after {to_live:.2f}s on "
          f":{new_owner}; every symbol past "
          f"its old seq at {caught_up:.2f}s")


def move_slot(number: int, source: int, target: int, others: list[int]) -> None:
    """Reshard one slot the way redis-cli --cluster reshard does: IMPORTING on the
    target, MIGRATING on the source, MIGRATE its keys, then SETSLOT NODE everywhere."""
    src, dst = client(source), client(target)
    try:
        src_id = src.execute_command("CLUSTER MYID").decode()
        dst_id = dst.execute_command("CLUSTER MYID").decode()
        dst.execute_command("CLUSTER SETSLOT", number, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", number, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", number, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        dst.execute_command("CLUSTER SETSLOT", number, "NODE", dst_id)
        src.execute_command("CLUSTER SETSLOT", number, "NODE", dst_id)
        for port in others:
            c = client(port)
            try:
                c.execute_command("CLUSTER SETSLOT", number, "NODE", dst_id)
            except redis.RedisError:
                pass  # a replica learns it from its primary
            finally:
                c.close()
    finally:
        src.close()
        dst.close()


async def test_a_partition_whose_slot_moves_is_followed(stack: Stack) -> None:
    cluster, service, publisher = stack
    async with AsyncExitStack() as exits:
        clients = await watchers(exits, service, 5)
        p = max(range(LAYOUT.partitions),
                key=lambda p: sum(1 for s in clients[0].board if LAYOUT.partition(s) == p))
        symbols = [s for s in clients[0].board if LAYOUT.partition(s) == p]
        source = cluster.owner_of(slot(p))
        target = next(port for port in cluster.primaries() if port != source)
        others = [n.port for n in cluster.live() if n.port not in (source, target)]

        started = time.monotonic()
        await asyncio.to_thread(move_slot, slot(p), source, target, others)
        moved = time.monotonic()
        held = {s: max(w.board[s]["seq"] for w in clients) for s in symbols}
        await until(lambda: LAYOUT.channel(p) in channels(target), 10,
                    "the service subscribed where the slot went")
        followed = time.monotonic() - moved
        await until(lambda: all(w.board[s]["seq"] > held[s] for w in clients for s in symbols),
                    10, f"quotes of partition {p} ({', '.join(symbols)}) arrive from the new node")
        arriving = time.monotonic() - moved
        assert LAYOUT.channel(p) not in channels(source)
        await until(lambda: all(w.statuses[-1][1] == "live" for w in clients if w.statuses)
                    and http_get(service.url + "/readyz")[0] == 200, 10, "the feed is live")
        stale_during = sum(1 for w in clients for at, feed in w.statuses
                           if feed == "stale" and at >= started)
        await converged(service, publisher, clients)
    print(f"\ncluster, slot {slot(p)} (partition {p}: {', '.join(symbols)}) moved :{source} -> "
          f":{target} in {moved - started:.2f}s; subscribed there after {followed:.2f}s, its "
          f"quotes arriving after {arriving:.2f}s; {stale_during} stale statuses over 5 clients")


async def test_every_mode_recovers_from_the_tapes_on_every_shard(stack: Stack) -> None:
    """A consumer of every quote disconnects, quotes go on, and it resumes with `since`:
    each symbol's tape is read on its own shard, and what it got, before and after, is
    exactly each tape's run of seqs."""
    cluster, service, _ = stack
    symbols = ["HBL", "KSE100", "OGDC", "PPL"]
    assert len({cluster_slot_owner(cluster, s) for s in symbols}) >= 2
    got: dict[str, list[int]] = {s: [] for s in symbols}

    async def take(ws: ClientConnection, more: int) -> None:
        """Read quotes until every symbol has `more` beyond what it held."""
        want = {s: len(got[s]) + more for s in symbols}
        async with asyncio.timeout(20):
            while any(len(got[s]) < want[s] for s in symbols):
                frame = orjson.loads(await ws.recv())
                if frame["type"] in ("quotes", "snapshot"):
                    for q in frame["quotes"]:
                        got[q["symbol"]].append(q["seq"])

    async with connect(service.ws_url) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "id": 1, "symbols": symbols,
                                    "mode": "every"}).decode())
        assert (await recv_type(ws, "ack"))["mode"] == "every"
        await take(ws, 3)
    since = {s: got[s][-1] for s in symbols}
    await asyncio.sleep(1.0)  # published meanwhile: on the tapes only
    async with connect(service.ws_url) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "id": 2, "symbols": symbols,
                                    "mode": "every", "since": since}).decode())
        ack = await recv_type(ws, "ack")
        assert ack["recovered"] is True, ack
        await take(ws, 12)
    tapes = redis.RedisCluster(host="127.0.0.1", port=cluster.live()[0].port)
    try:
        for s in symbols:
            assert got[s] == list(range(got[s][0], got[s][-1] + 1)), (s, got[s])
            on_tape = [orjson.loads(fields[b"q"])["seq"]
                       for _, fields in tapes.xrange(LAYOUT.tape(s))]
            assert got[s] == [seq for seq in on_tape if got[s][0] <= seq <= got[s][-1]]
    finally:
        tapes.close()
    print("\ncluster every mode: resumed "
          + ", ".join(f"{s} after {since[s]} ({got[s][-1] - since[s]} more)" for s in symbols))


def cluster_slot_owner(cluster: RedisCluster, symbol: str) -> int:
    number = key_slot(LAYOUT.tape(symbol).encode())
    owners = cluster.owners_from(cluster.live()[0].port)
    return next(port for (first, last), port in owners.items() if first <= number <= last)
