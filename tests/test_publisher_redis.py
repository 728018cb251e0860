"""RedisSink against a private redis-server: seq, latest hashes, one message per
partition's part of a batch, each atomic."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator
from typing import Any, Self

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from publisher.redis_sink import MAX_BATCH, RedisRefused, RedisSink, connect, wire_body
from publisher.settings import Settings
from quote_bus.layout import Layout
from quote_bus.payload import decode_payload
from quote_core.quote import Quote
from quote_sim.market import Market
from quote_sim.seed import load_instruments
from quote_sim.simulate import run_simulation
from quote_sim.sink import QuoteSink
from tests.redis_server import redis_server, redis_url  # noqa: F401

# One partition: a batch is one script call and one message, as the tests below count.
SETTINGS = Settings(redis_prefix="test", redis_partitions=1)
CHANNEL, LATEST, SEQ = "test:{0}", "test:{0}:latest", "test:{0}:seq"


def q(symbol: str, price: float = 10.0, prev_close: float = 9.5, **extra: Any) -> Quote:
    return Quote.make(symbol, price, prev_close, ts=1_700_000_000_000, **extra)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    r = connect(redis_url)
    yield r
    await r.aclose()


class Subscriber:
    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self.pubsub = client.pubsub()
        self.channel = channel

    async def __aenter__(self) -> Self:
        await self.pubsub.subscribe(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()

    async def messages(self, count: int, timeout: float = 5.0) -> list[bytes]:
        out: list[bytes] = []
        async with asyncio.timeout(timeout):
            while len(out) < count:
                msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    out.append(msg["data"])
        return out

    async def nothing_more(self) -> bool:
        return await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) is None


def test_redis_sink_is_a_quote_sink(client: aioredis.Redis) -> None:
    sink: QuoteSink = RedisSink(client, SETTINGS)
    assert sink is not None


async def test_seq_rises_per_symbol_and_latest_is_stored(client: aioredis.Redis) -> None:
    sink = RedisSink(client, SETTINGS)
    first = await sink.publish([q("OGDC"), q("PPL"), q("OGDC", 10.5)])
    assert [(x.symbol, x.seq) for x in first] == [("OGDC", 1), ("PPL", 1), ("OGDC", 2)]
    [third] = await sink.publish([q("OGDC", 11.0)])
    assert third.seq == 3 and third == q("OGDC", 11.0).with_seq(3)
    assert await client.hgetall(SEQ) == {b"OGDC": b"3", b"PPL": b"1"}
    latest = await client.hgetall(LATEST)
    assert set(latest) == {b"OGDC", b"PPL"}
    assert Quote.from_dict(orjson.loads(latest[b"OGDC"]), require_seq=True) == third


async def test_one_array_message_per_batch_with_orjson_numbers(client: aioredis.Redis) -> None:
    sink = RedisSink(client, SETTINGS)
    batch = [q("OGDC", 137.75, 132.87), q("KSE100", 71902, 70666.8, kind="index"),
             q("HBL", 112.4, 112.76, volume=12345, state="trading")]
    async with Subscriber(client, CHANNEL) as sub:
        published = await sink.publish(batch)
        [payload] = await sub.messages(1)
        assert await sub.nothing_more()
    expected = b"[" + b",".join(
        wire_body(x)[:-1] + b',"seq":%d}' % (x.seq or 0) for x in published
    ) + b"]"
    assert payload == expected
    good, bad = decode_payload(payload)
    assert bad == [] and good == published
    assert b'"price":137.75' in payload and b'"prev_close":70666.8' in payload


async def test_large_batches_are_chunked(client: aioredis.Redis) -> None:
    sink = RedisSink(client, SETTINGS)
    batch = [q(f"S{i % 700}") for i in range(MAX_BATCH * 2 + 100)]
    async with Subscriber(client, CHANNEL) as sub:
        published = await sink.publish(batch)
        payloads = await sub.messages(3)
    assert [len(orjson.loads(p)) for p in payloads] == [MAX_BATCH, MAX_BATCH, 100]
    assert [x.symbol for x in published] == [x.symbol for x in batch]
    assert published[-1].seq == 2  # S399: the second time it appears
    assert await client.hlen(LATEST) == 700


async def test_empty_publish_does_nothing(client: aioredis.Redis) -> None:
    sink = RedisSink(client, SETTINGS)
    async with Subscriber(client, CHANNEL) as sub:
        assert await sink.publish([]) == []
        assert await sub.nothing_more()


async def test_seq_keeps_rising_after_redis_loses_its_memory(client: aioredis.Redis) -> None:
    sink = RedisSink(client, SETTINGS)
    for _ in range(3):
        await sink.publish([q("OGDC"), q("PPL")])
    await client.flushall()  # a restart with empty memory
    out = await sink.publish([q("OGDC"), q("OGDC"), q("TRG")])
    assert [x.seq for x in out] == [4, 5, 1]
    # PPL did not tick, yet Redis holds it again: the whole board is restored.
    assert await client.hgetall(SEQ) == {b"OGDC": b"5", b"TRG": b"1", b"PPL": b"4"}
    latest = await client.hgetall(LATEST)
    assert {k: orjson.loads(v)["seq"] for k, v in latest.items()} == {
        b"OGDC": 5, b"TRG": 1, b"PPL": 4}


async def test_a_batch_is_all_or_nothing(client: aioredis.Redis) -> None:
    sink = RedisSink(client, SETTINGS)
    await sink.publish([q("OGDC")])
    await client.delete(LATEST)
    await client.set(LATEST, "not a hash")
    async with Subscriber(client, CHANNEL) as sub:
        with pytest.raises(ResponseError, match=re.escape("WRONGTYPE test:{0}:latest")):
            await sink.publish([q("OGDC"), q("PPL")])
        assert await sub.nothing_more()
    assert await client.hgetall(SEQ) == {b"OGDC": b"1"}


async def test_concurrent_publishers_never_share_a_seq(redis_url: str) -> None:  # noqa: F811
    clients = [connect(redis_url) for _ in range(3)]
    sinks = [RedisSink(c, SETTINGS) for c in clients]
    symbols = ["OGDC", "PPL", "HBL"]

    async def hammer(sink: RedisSink) -> list[list[Quote]]:
        return [await sink.publish([q(s) for s in symbols * 3]) for _ in range(40)]

    try:
        results = await asyncio.gather(*(hammer(s) for s in sinks))
    finally:
        for c in clients:
            await c.aclose()
    seqs: dict[str, list[int]] = {s: [] for s in symbols}
    for batches in results:
        for batch in batches:
            for s in symbols:
                mine = [x.seq or 0 for x in batch if x.symbol == s]
                # Scripts do not interleave: a batch's seqs for a symbol are consecutive.
                assert mine == list(range(mine[0], mine[0] + 3))
                seqs[s] += mine
    for s in symbols:
        assert sorted(seqs[s]) == list(range(1, 3 * 40 * 3 + 1))


async def test_script_survives_a_flushed_script_cache(client: aioredis.Redis) -> None:
    sink = RedisSink(client, SETTINGS)
    await sink.publish([q("OGDC")])
    await client.script_flush()
    [again] = await sink.publish([q("OGDC")])
    assert again.seq == 2


async def test_default_names_come_from_settings(client: aioredis.Redis) -> None:
    layout = Layout()
    p = layout.partition("OGDC")
    sink = RedisSink(client, Settings())
    async with Subscriber(client, f"quotes:{{{p}}}") as sub:
        await sink.publish([q("OGDC")])
        assert len(await sub.messages(1)) == 1
    assert await client.hexists(f"quotes:{{{p}}}:latest", "OGDC")
    assert await client.hget(f"quotes:{{{p}}}:seq", "OGDC") == b"1"


async def test_each_partition_gets_its_own_part_of_a_batch(client: aioredis.Redis) -> None:
    settings = Settings(redis_prefix="t4", redis_partitions=4)
    layout = settings.layout
    symbols = [f"S{i}" for i in range(40)]
    by_partition = layout.split(symbols, str)
    assert len(by_partition) == 4
    sink = RedisSink(client, settings)
    pubsub = client.pubsub()
    await pubsub.subscribe(*(layout.channel(p) for p in range(4)))
    try:
        published = await sink.publish([q(s) for s in symbols])
        got: dict[bytes, list[str]] = {}
        async with asyncio.timeout(5):
            while len(got) < 4:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    got[msg["channel"]] = [x["symbol"] for x in orjson.loads(msg["data"])]
    finally:
        await pubsub.aclose()
    assert [x.symbol for x in published] == symbols and {x.seq for x in published} == {1}
    for p, members in by_partition.items():
        assert got[layout.channel(p).encode()] == members
        assert set(await client.hkeys(layout.latest(p))) == {m.encode() for m in members}


async def test_heartbeat_is_an_empty_batch_on_every_partition(client: aioredis.Redis) -> None:
    settings = Settings(redis_prefix="hb", redis_partitions=3)
    pubsub = client.pubsub()
    await pubsub.subscribe(*(settings.layout.channel(p) for p in range(3)))
    try:
        await RedisSink(client, settings).heartbeat()
        got = []
        async with asyncio.timeout(5):
            while len(got) < 3:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    got.append((msg["channel"], msg["data"]))
    finally:
        await pubsub.aclose()
    assert sorted(got) == [(b"hb:{0}", b"[]"), (b"hb:{1}", b"[]"), (b"hb:{2}", b"[]")]


async def test_an_upgraded_publisher_resumes_from_the_single_hash(client: aioredis.Redis) -> None:
    """The layout before partitions kept one `quotes:latest` hash; its seqs carry on."""
    old = q("OGDC", 150.0).with_seq(41)
    await client.hset("up:latest", "OGDC", old.to_json())
    sink = RedisSink(client, Settings(redis_prefix="up"))
    assert await sink.resume() == [old]
    [again] = await sink.publish([q("OGDC", 151.0)])
    assert again.seq == 42


async def test_a_changed_partition_count_carries_every_seq_on(client: aioredis.Redis) -> None:
    """REDIS_PARTITIONS lowered from 8 to 2: the publisher reads the 8 partitions the last
    one recorded, moves each symbol's state to its new partition, and seq goes on."""
    symbols = [f"S{i}" for i in range(12)]
    wide = RedisSink(client, Settings(redis_prefix="re", redis_partitions=8))
    await wide.resume()
    first = await wide.publish([q(s) for s in symbols])
    narrow_layout = Layout("re", 2)
    sink = RedisSink(client, Settings(redis_prefix="re", redis_partitions=2))
    resumed = {x.symbol: x.seq for x in await sink.resume()}
    assert set(resumed) == set(symbols)
    for p in range(8):
        held = {k.decode() for k in await client.hkeys(f"re:{{{p}}}:latest")}
        assert all(narrow_layout.partition(s) == p for s in held), (p, held)
    board = {}
    for p in range(2):
        for payload in (await client.hgetall(narrow_layout.latest(p))).values():
            quote = orjson.loads(payload)
            board[quote["symbol"]] = quote["seq"]
    # Moved symbols were republished (seq 2) in their new partition; the others kept 1.
    assert board == resumed
    assert all(board[x.symbol] >= (x.seq or 0) for x in first)
    assert {s for s, seq in board.items() if seq == 2} == {
        s for s in symbols if Layout("re", 8).partition(s) != narrow_layout.partition(s)}
    assert await client.hget("re:layout", "partitions") == b"2"
    [after] = await sink.publish([q("S0")])
    assert after.seq == board["S0"] + 1


@pytest.fixture
async def acl_user(client: aioredis.Redis, redis_url: str) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    """A client logged in as a user of its own, whose rights the test then takes away."""
    await client.acl_setuser("pub", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                             commands=["+@all"], reset=True)
    user = connect(redis_url.replace("redis://", "redis://pub:pw@"))
    yield user
    await user.aclose()
    await client.acl_deluser("pub")


async def rights(client: aioredis.Redis, change: str) -> None:
    await client.acl_setuser("pub", enabled=True, commands=[change])  # enabled: else it is off


async def test_a_refusal_before_the_first_publish_is_final(client: aioredis.Redis,
                                                           acl_user: aioredis.Redis) -> None:
    """A user without EVALSHA is refused its first batch: RedisRefused, which the loop does
    not retry (it stops the publisher with exit 3); the same refusal after a first publish
    is retried, as the service retries one after its first subscription."""
    await rights(client, "-evalsha")
    refused = RedisSink(acl_user, SETTINGS)
    with pytest.raises(RedisRefused, match="no permissions to run the 'evalsha' command"):
        await refused.publish([q("OGDC")])
    market = Market(load_instruments(), random.Random(1))
    with pytest.raises(RedisRefused):
        await asyncio.wait_for(run_simulation(refused, market, 100, retry_max_s=0.05), 5)

    await rights(client, "+evalsha")
    sink = RedisSink(acl_user, SETTINGS)
    await sink.publish([q("OGDC")])
    await rights(client, "-evalsha")
    with pytest.raises(NoPermissionError):
        await sink.publish([q("OGDC")])


async def test_resume_refused_is_final_too(client: aioredis.Redis, acl_user: aioredis.Redis) -> None:
    await rights(client, "-hget")
    with pytest.raises(RedisRefused, match="no permissions to run the 'hget' command"):
        await RedisSink(acl_user, SETTINGS).resume()


async def test_a_cluster_that_refuses_the_login_is_final() -> None:
    """redis-py's cluster client wraps the refusal in its own exception: still final."""
    with redis_server(args=["--requirepass", "right-password"]) as server:
        client = connect(f"redis+cluster://:wrong@127.0.0.1:{server.port}")
        try:
            with pytest.raises(RedisRefused, match="invalid username-password pair"):
                await RedisSink(client, SETTINGS).resume()
        finally:
            await client.aclose()
