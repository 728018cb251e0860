"""The whole path through a real redis-server: `publisher replay` -> Redis -> service ->
websocket clients, and a client that connects afterwards gets the result as its snapshot."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from quote_core.quote import Quote
from quote_core.text import format_line
from tests.redis_server import LAYOUT, latest_in_redis, start_redis_server
from tests.service_proc import ROOT, ServiceProcess, http_get, replay, run_service
from tests.wsclient import ClientConnection, connect, recv, recv_type

SEED = (ROOT / "quote_sim" / "data" / "psx_ticker.txt").read_text(encoding="utf-8").splitlines()

MIXED_FILE = "\n".join([
    "# the seed's text form",
    *SEED,
    "",
    "symbol,price,prev_close,kind,ts",
    "ENGRO,301.25,298.10,stock,1700000000000",
    "LUCK,812.00,820.50,stock,1700000000001",
    "KSE-ALL,48210.55,48001.20,index,1700000000002",
    "BAD ROW,1,2,stock,3",
    "MARI,NaN,100,stock,1700000000003",
    '{"symbol":"EFERT","price":150.5,"prev_close":149.0,"ts":1700000000004}',
    '{"symbol":"SYS","price":-1,"prev_close":400,"ts":1700000000005}',
    '{"symbol":"MEBL","kind":"stock","price":240.1,"prev_close":240.1,"ts":1700000000006,"volume":12000}',
    "not a quote at all",
]) + "\n"
GOOD_COUNT = len(SEED) + 3 + 2
REJECTED_LINES = ("line 41", "line 42", "line 44", "line 46")


@pytest.fixture
def stack() -> Iterator[tuple[str, ServiceProcess]]:
    with start_redis_server() as url:
        yield from ((url, s) for s in run_service({"REDIS_URL": url}, ready="/readyz"))




async def collect(ws: ClientConnection, count: int) -> dict[str, dict[str, Any]]:
    """Read `quotes` frames until `count` distinct quotes arrived; symbol -> quote."""
    got: dict[str, dict[str, Any]] = {}
    seen = 0
    while seen < count:
        frame = await recv_type(ws, "quotes", timeout=10)
        for quote in frame["quotes"]:
            assert quote["symbol"] not in got, "each symbol appears once in this file"
            got[quote["symbol"]] = quote
            seen += 1
    return got


async def test_replay_reaches_every_subscriber_and_later_snapshots(
    stack: tuple[str, ServiceProcess], tmp_path: Path
) -> None:
    url, service = stack
    async with connect(service.ws_url + "?symbols=*") as a, connect(service.ws_url) as b:
        ack = await recv_type(a, "ack")
        assert ack["all"] is True and ack["symbols"] == []
        await recv_type(b, "welcome")
        await b.send('{"op":"subscribe","id":1,"symbols":["OGDC","KSE100","ENGRO","EFERT"]}')
        ack = await recv_type(b, "ack")
        assert ack["unknown"] == ["EFERT", "ENGRO", "KSE100", "OGDC"]

        result = await asyncio.to_thread(replay, url, MIXED_FILE, tmp_path / "mixed.txt")
        assert result.returncode == 1, result.stderr
        for line in REJECTED_LINES:
            assert line in result.stderr
        assert f"published {GOOD_COUNT}, rejected 4" in result.stderr

        everything = await collect(a, GOOD_COUNT)
        some = await collect(b, 4)

    # The numbers arrive as published: every seed line reads back exactly.
    for line in SEED:
        symbol = line.split()[0]
        quote = Quote.from_dict(everything[symbol], require_seq=True)
        assert format_line(quote) == line
        assert quote.seq == 1
    engro = everything["ENGRO"]
    assert (engro["price"], engro["prev_close"], engro["change"], engro["change_pct"]) == (
        301.25, 298.1, 3.15, 1.06)
    assert everything["KSE-ALL"]["kind"] == "index"
    assert everything["MEBL"]["volume"] == 12000
    assert {"BAD ROW", "MARI", "SYS"}.isdisjoint(everything)
    assert some == {s: everything[s] for s in ("OGDC", "KSE100", "ENGRO", "EFERT")}

    # Nothing invalid reached Redis.
    assert len(latest_in_redis(url)) == GOOD_COUNT

    # A client connecting afterwards gets the same board as its snapshot, then updates.
    async with connect(service.ws_url + "?symbols=*") as late:
        snapshot = await recv_type(late, "snapshot")
        assert {q["symbol"]: q for q in snapshot["quotes"]} == everything
        update = "OGDC 140.00 Increased By ▲ 7.13 (5.37%)\n"
        result = await asyncio.to_thread(replay, url, update, tmp_path / "update.txt")
        assert result.returncode == 0, result.stderr
        (ogdc,) = (await recv_type(late, "quotes"))["quotes"]
        assert (ogdc["symbol"], ogdc["price"], ogdc["seq"]) == ("OGDC", 140.0, 2)


async def test_junk_on_the_channel_is_dropped_and_the_feed_goes_on(
    stack: tuple[str, ServiceProcess], tmp_path: Path
) -> None:
    url, service = stack
    client = redis.Redis.from_url(url)
    try:
        async with connect(service.ws_url + "?symbols=OGDC") as ws:
            await recv_type(ws, "ack")
            for junk in [b"\xff\xfe", b"{not json", b"[1,2,3]", b'{"symbol":"OGDC"}',
                         b'{"symbol":"OGDC","price":NaN,"prev_close":1,"ts":1,"seq":9}',
                         b'[{"symbol":"<b>","price":1,"prev_close":1,"ts":1,"seq":1}]']:
                client.publish(LAYOUT.channel(LAYOUT.partition("OGDC")), junk)
            result = await asyncio.to_thread(
                replay, url, "OGDC 137.75 Increased By ▲ 4.88 (3.67%)\n", tmp_path / "one.txt")
            assert result.returncode == 0, result.stderr
            (quote,) = (await recv_type(ws, "quotes"))["quotes"]
            assert quote["price"] == 137.75
    finally:
        client.close()
    assert "dropped a bad payload from redis" in service.log()


async def test_redis_loss_is_announced_as_stale(stack: tuple[str, ServiceProcess]) -> None:
    url, service = stack
    async with connect(service.ws_url + "?symbols=*") as ws:
        await recv_type(ws, "ack")
        client = redis.Redis.from_url(url)
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=True)
        status = await recv_type(ws, "status", timeout=5)
        assert status["feed"] == "stale"
        code, body = http_get(service.url + "/readyz")
        assert code == 503 and orjson.loads(body)["feed"] == "stale"
    async with connect(service.ws_url) as late:
        await recv_type(late, "welcome")
        assert (await recv(late))["feed"] == "stale", "a newcomer hears at once"
