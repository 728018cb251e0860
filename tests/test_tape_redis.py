"""The tape in a private redis-server: the publisher's script appends every quote to its
symbol's stream in the same call, trims it by length and by time, and the service's
reader finds a position by seq."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from publisher.redis_sink import RedisSink, connect
from service.settings import Settings
from service.tape import read_after
from service.tape.redis import RedisTape
from tests.redis_server import redis_url  # noqa: F401
from tests.test_publisher_redis import q


def settings(url: str, **extra: object) -> Settings:
    return Settings(redis_url=url, redis_prefix="test", redis_partitions=4, **extra)  # type: ignore[arg-type]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    r = connect(redis_url)
    yield r
    await r.aclose()


async def tape_seqs(client: aioredis.Redis, key: str) -> list[int]:
    return [orjson.loads(fields[b"q"])["seq"] for _, fields in await client.xrange(key)]


async def test_every_published_quote_is_on_its_symbols_tape(client: aioredis.Redis,
                                                           redis_url: str) -> None:  # noqa: F811
    s = settings(redis_url)
    sink = RedisSink(client, s)
    for _ in range(3):
        await sink.publish([q("OGDC"), q("PPL"), q("OGDC", 11.0)])
    layout = s.layout
    assert await tape_seqs(client, layout.tape("OGDC")) == [1, 2, 3, 4, 5, 6]
    assert await tape_seqs(client, layout.tape("PPL")) == [1, 2, 3]
    # The tape holds exactly what was published and stored, in the partition's slot.
    (_, fields), = await client.xrevrange(layout.tape("OGDC"), count=1)
    latest = await client.hget(layout.latest(layout.partition("OGDC")), "OGDC")
    assert fields[b"q"] == latest
    assert layout.tape("OGDC").startswith(f"test:{{{layout.partition('OGDC')}}}:")


async def test_the_reader_finds_a_position_by_seq(client: aioredis.Redis,
                                                  redis_url: str) -> None:  # noqa: F811
    s = settings(redis_url)
    sink = RedisSink(client, s)
    for i in range(30):  # interleaved with another symbol, as a partition's tape is not
        await sink.publish([q("OGDC", 10 + i / 100), q("PPL")])
    tape = RedisTape(s)
    try:
        found = await read_after(tape, "OGDC", 12, 30)
        assert found is not None and [x.seq for x in found] == list(range(13, 31))
        assert await read_after(tape, "OGDC", 30, 30) == []
        # More published since `upto` was read: still exactly (12, 25].
        found = await read_after(tape, "OGDC", 12, 25)
        assert found is not None and [x.seq for x in found] == list(range(13, 26))
    finally:
        await tape.aclose()


async def test_the_tape_is_capped_by_length_and_a_gap_before_it_is_not_covered(
        client: aioredis.Redis, redis_url: str) -> None:  # noqa: F811
    s = settings(redis_url, tape_max_len=100)
    sink = RedisSink(client, s)
    for _ in range(30):
        await sink.publish([q("OGDC")] * 20)  # 600 quotes
    key = s.layout.tape("OGDC")
    held = await tape_seqs(client, key)
    # Trimmed approximately (whole nodes of 100 entries), never below the cap.
    assert 100 <= len(held) < 300 and held[-1] == 600
    assert held == list(range(held[0], 601))
    tape = RedisTape(s)
    try:
        assert await read_after(tape, "OGDC", 10, 600) is None  # older than the tape
        found = await read_after(tape, "OGDC", 550, 600)
        assert found is not None and len(found) == 50
    finally:
        await tape.aclose()


async def test_the_tape_is_trimmed_by_time(client: aioredis.Redis,
                                           redis_url: str) -> None:  # noqa: F811
    s = settings(redis_url, tape_retention_s=60.0)
    key = s.layout.tape("OGDC")
    # Entries from two minutes ago (ids are Redis's clock in ms), then a publish: more than
    # a whole node of them, since trimming with ~ removes whole nodes only.
    (now_s, _) = await client.time()
    old_ms = (int(now_s) - 120) * 1000
    for i in range(250):
        await client.xadd(key, {"q": b"{}"}, id=f"{old_ms}-{i}")
    await RedisSink(client, s).publish([q("OGDC")])
    ids = [entry_id for entry_id, _ in await client.xrange(key)]
    assert len(ids) <= 51  # at least the two whole nodes of old entries are gone


async def test_a_tape_of_the_wrong_type_fails_the_batch_whole(client: aioredis.Redis,
                                                              redis_url: str) -> None:  # noqa: F811
    s = settings(redis_url)
    sink = RedisSink(client, s)
    await sink.publish([q("OGDC")])
    await client.delete(s.layout.tape("PPL"))
    await client.set(s.layout.tape("PPL"), "not a stream")
    same_partition = next(sym for sym in ("HBL", "ENGRO", "LUCK", "MCB", "UBL", "TRG", "PSO")
                          if s.layout.partition(sym) == s.layout.partition("PPL"))
    with pytest.raises(ResponseError, match=re.escape(f"WRONGTYPE {s.layout.tape('PPL')}")):
        await sink.publish([q(same_partition), q("PPL")])
    assert await client.xlen(s.layout.tape(same_partition)) == 0


async def test_the_light_read_gives_ids_times_and_prices_and_skips_junk(
        client: aioredis.Redis, redis_url: str) -> None:  # noqa: F811
    s = settings(redis_url)
    await RedisSink(client, s).publish([q("OGDC", 10.5), q("OGDC", 11.25)])
    key = s.layout.tape("OGDC")
    await client.xadd(key, {"q": b'{"ts": 1, "price": "NaN"}'})
    await client.xadd(key, {"q": b"not json"})
    await RedisSink(client, s).publish([q("OGDC", 12.0)])
    tape = RedisTape(s)
    try:
        ids = [i.decode() for i, _ in await client.xrange(key)]
        forward = await tape.prices("OGDC", "-", 10)
        assert [(p[0], p[2]) for p in forward] == [(ids[0], 10.5), (ids[1], 11.25), (ids[4], 12.0)]
        assert all(p[1] == 1_700_000_000_000 for p in forward)
        assert await tape.prices("OGDC", "+", 2, back=True) == [forward[2]]  # junk skipped
    finally:
        await tape.aclose()
