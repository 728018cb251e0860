"""GET /quotes and GET /history against the real processes: a private redis-server, the
service (`python -m service`) and the publisher (`python -m publisher simulate`, and
`replay` for a known burst) as subprocesses, the tape read straight from Redis with
redis-py to compare; and the embedded demo (no Redis), whose market never stops.

Every wait is a condition polled against a deadline.
"""

from __future__ import annotations

import gzip
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import redis

from quote_core.quote import Quote
from service.history import Point, Series
from tests.redis_server import LAYOUT, start_redis_server
from tests.service_proc import PublisherProcess, ServiceProcess, http_fetch as get, replay_file, run_service
from tests.test_history import check_reduced
from tests.wsclient import connect, recv_type

T = TypeVar("T")
SEED_SYMBOLS = 34


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    """`probe()` until it gives something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def get_json(url: str) -> Any:
    status, _, body = get(url)
    assert status == 200, (url, status, body)
    return orjson.loads(body)


def history(service: ServiceProcess, query: str) -> dict[str, list[Point]]:
    body = get_json(f"{service.url}/history?{query}")
    return {s: [(ts, price) for ts, price in points] for s, points in body["history"].items()}


def tape_points(client: redis.Redis, symbol: str) -> list[Point]:
    """The symbol's tape straight from Redis, as (ts, price)."""
    rows = client.xrange(LAYOUT.tape(symbol))
    quotes = [Quote.from_dict(orjson.loads(fields[b"q"])) for _, fields in rows]
    return [(q.ts, q.price) for q in quotes]


def expected(points: list[Point], n: int, since: int | None = None) -> list[Point]:
    series = Series()
    for i, (ts, price) in enumerate(points):
        series.append(f"{i + 1}-0", ts, price)
    return series.reduced(n, since)


async def ws_snapshot(service: ServiceProcess) -> list[dict[str, Any]]:
    async with connect(service.ws_url) as ws:
        await recv_type(ws, "welcome")
        await ws.send(orjson.dumps({"op": "subscribe", "id": 1, "symbols": "*"}).decode())
        await recv_type(ws, "ack")
        snapshot = await recv_type(ws, "snapshot")
    return snapshot["quotes"]  # type: ignore[no-any-return]


# --- through Redis ------------------------------------------------------------------------

class RedisStack:
    def __init__(self, url: str, service: ServiceProcess) -> None:
        self.url = url
        self.service = service
        self.redis = redis.Redis.from_url(url, socket_timeout=5)

    def tape_lengths(self) -> dict[str, int]:
        board = get_json(self.service.url + "/quotes")["quotes"]
        return {q["symbol"]: self.redis.xlen(LAYOUT.tape(q["symbol"])) for q in board}


@pytest.fixture(scope="module")
def stack() -> Iterator[RedisStack]:
    """A day's worth of tape in a few seconds: `publisher simulate` at 3000 quotes a
    second until every symbol's tape holds 60, then stopped, so the tape holds still."""
    with start_redis_server() as url:
        service = ServiceProcess({"REDIS_URL": url, "FEED_SILENCE_S": "0"})
        service.start(ready="/readyz")
        publisher = PublisherProcess(url, rate=3000)
        try:
            publisher.start()
            stack = RedisStack(url, service)

            def filled() -> bool:
                lengths = stack.tape_lengths()
                return len(lengths) == SEED_SYMBOLS and min(lengths.values()) >= 60

            wait_for("60 quotes on every tape", filled, timeout=20)
            assert publisher.stop() == 0
            yield stack
        finally:
            publisher.stop()
            service.stop()


@pytest.mark.parametrize("n", [4, 11, 300, 2000])
def test_history_is_the_tape_reduced_with_its_high_and_low(stack: RedisStack, n: int) -> None:
    got = history(stack.service, f"symbols=*&points={n}")
    assert len(got) == SEED_SYMBOLS
    for symbol, points in got.items():
        tape = tape_points(stack.redis, symbol)
        assert points == expected(tape, n), symbol
        check_reduced(tape, n, points)  # <= n points, first, last, high and low
        if n == 2000:
            assert points == tape  # shorter than n: every point


def test_history_since_and_symbols(stack: RedisStack) -> None:
    tape = tape_points(stack.redis, "OGDC")
    since = tape[len(tape) // 2][0]
    got = history(stack.service, f"symbols=ogdc,PPL,NOPE&points=10&since={since}")
    assert list(got) == ["NOPE", "OGDC", "PPL"]
    assert got["NOPE"] == []  # not on the board: nothing
    assert got["OGDC"] == expected(tape, 10, since)
    assert all(ts >= since for ts, _ in got["OGDC"])
    assert history(stack.service, f"symbols=OGDC&since={tape[-1][0] + 1}") == {"OGDC": []}


def test_history_extends_as_the_tape_grows(stack: RedisStack, tmp_path: Path) -> None:
    history(stack.service, "symbols=OGDC,PPL")  # the cache is warm
    # More new quotes of OGDC than the cache reads back from the newest (256), and a few
    # of PPL, then the tape holds still again.
    lines = [orjson.dumps({"symbol": "OGDC", "price": 130 + i % 17, "prev_close": 137.75}).decode()
             for i in range(300)]
    lines += [orjson.dumps({"symbol": "PPL", "price": 120 + i, "prev_close": 116.3}).decode()
              for i in range(3)]
    path = tmp_path / "burst.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = replay_file(stack.url, path)
    assert result.returncode == 0, result.stderr
    for symbol in ("OGDC", "PPL"):
        tape = tape_points(stack.redis, symbol)
        for n in (2000, 20):
            wait_for(f"/history of {symbol} to equal its tape (points={n})",
                     lambda s=symbol, t=tape, n=n: history(stack.service, f"symbols={s}&points={n}")[s]
                     == expected(t, n))


async def test_quotes_equal_a_websocket_snapshot(stack: RedisStack) -> None:
    status, headers, body = get(stack.service.url + "/quotes")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "public, max-age=1"
    assert headers["access-control-allow-origin"] == "*"
    board = orjson.loads(body)
    assert board["feed"] == "live"
    assert board["quotes"] == await ws_snapshot(stack.service)  # the same objects, by symbol
    assert [q["symbol"] for q in board["quotes"]] == sorted(q["symbol"] for q in board["quotes"])
    for raw in board["quotes"]:
        Quote.from_dict(raw, require_seq=True)  # the protocol's quote schema
    assert board["unknown"] == []
    some = get_json(stack.service.url + "/quotes?symbols=kse100,OGDC,NOPE")
    assert [q["symbol"] for q in some["quotes"]] == ["KSE100", "OGDC"]
    assert get_json(stack.service.url + "/quotes?symbols=*") == board


async def test_quotes_name_the_unknown_symbols_as_the_ack_does(stack: RedisStack) -> None:
    """A requested symbol without a quote is left out of `quotes` and named in `unknown`,
    sorted, as the websocket's ack names it for the same symbols; "*" has none."""
    some = get_json(stack.service.url + "/quotes?symbols=ogdc,ZZZ9,KSE100,NOPE")
    assert [q["symbol"] for q in some["quotes"]] == ["KSE100", "OGDC"]
    assert some["unknown"] == ["NOPE", "ZZZ9"]
    async with connect(stack.service.ws_url) as ws:
        await recv_type(ws, "welcome")
        await ws.send(orjson.dumps({"op": "subscribe", "id": 1,
                                    "symbols": ["OGDC", "ZZZ9", "KSE100", "NOPE"]}).decode())
        ack = await recv_type(ws, "ack")
    assert ack["unknown"] == some["unknown"]
    assert get_json(stack.service.url + "/quotes?symbols=OGDC")["unknown"] == []
    assert get_json(stack.service.url + "/quotes?symbols=NOPE") == {"quotes": [], "feed": "live",
                                                                  "unknown": ["NOPE"]}
    assert get_json(stack.service.url + "/quotes")["unknown"] == []


def test_bad_queries_are_400_with_the_protocol_codes(stack: RedisStack) -> None:
    base = stack.service.url
    cases = {
        "/history?points=3": "bad_request",
        "/history?points=2001": "bad_request",
        "/history?points=1e3": "bad_request",
        "/history?points=": "bad_request",
        "/history?since=-1": "bad_request",
        "/history?since=yesterday": "bad_request",
        "/history?symbols=OGDC,%3Cimg%3E": "bad_request",
        "/quotes?symbols=%3Cimg%20src=x%3E": "bad_request",
        "/quotes?symbols=" + ",".join(f"S{i}" for i in range(501)): "too_many_symbols",
    }
    for path, code in cases.items():
        status, headers, body = get(base + path)
        assert status == 400, path
        assert headers["content-type"] == "application/json"
        reply = orjson.loads(body)
        assert reply["error"] == code and reply["message"], (path, reply)


def test_history_is_gzipped_for_a_client_that_accepts_it(stack: RedisStack) -> None:
    status, headers, body = get(stack.service.url + "/history?points=300",
                                {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert headers["vary"] == "Accept-Encoding"
    plain = get(stack.service.url + "/history?points=300")[2]
    assert orjson.loads(gzip.decompress(body)) == orjson.loads(plain)
    assert len(body) < len(plain) / 2


def test_a_day_of_history_is_answered_quickly(stack: RedisStack) -> None:
    """Every symbol's day, warm: well under the time a page load can spare."""
    history(stack.service, "points=300")
    started = time.monotonic()
    for _ in range(10):
        history(stack.service, "points=300")
    assert (time.monotonic() - started) / 10 < 0.1


# --- the embedded demo --------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedded() -> Iterator[ServiceProcess]:
    yield from run_service({"SIM_RATE": "300"}, ready="/readyz")


async def test_embedded_quotes_equal_a_websocket_snapshot(embedded: ServiceProcess) -> None:
    """The market moves on meanwhile, so the snapshot is taken between two reads of
    /quotes: each of its quotes is between theirs, and equal where neither moved."""
    before = {q["symbol"]: q for q in get_json(embedded.url + "/quotes")["quotes"]}
    snapshot = {q["symbol"]: q for q in await ws_snapshot(embedded)}
    after_body = get_json(embedded.url + "/quotes")
    after = {q["symbol"]: q for q in after_body["quotes"]}
    assert after_body["feed"] == "live" and after_body["unknown"] == []
    assert set(before) == set(snapshot) == set(after) and len(after) == SEED_SYMBOLS
    same = 0
    for symbol, quote in snapshot.items():
        assert before[symbol]["seq"] <= quote["seq"] <= after[symbol]["seq"]
        if before[symbol]["seq"] == after[symbol]["seq"]:
            assert before[symbol] == quote == after[symbol]
            same += 1
    assert same > 0


def test_embedded_history_keeps_the_high_and_low(embedded: ServiceProcess) -> None:
    wait_for("30 points per symbol on the in-process tape",
             lambda: min(map(len, history(embedded, "points=2000").values())) >= 30)
    reduced = history(embedded, "points=10")
    full = history(embedded, "points=2000")  # read after: the same tape, grown
    for symbol, points in reduced.items():
        assert 4 <= len(points) <= 10
        every = full[symbol]
        # Every reduced point is on the tape, in order; up to its last one, the reduced
        # path has the tape's first point, high and low.
        at, positions = 0, []
        for p in points:
            at = every.index(p, at)
            positions.append(at)
            at += 1
        prefix = every[: positions[-1] + 1]
        assert points[0] == every[0]
        assert min(p for _, p in points) == min(p for _, p in prefix)
        assert max(p for _, p in points) == max(p for _, p in prefix)
    since = full["OGDC"][len(full["OGDC"]) // 2][0]
    assert all(ts >= since for ts, _ in history(embedded, f"symbols=OGDC&since={since}")["OGDC"])


def test_head_is_answered(embedded: ServiceProcess) -> None:
    """The endpoints answer HEAD (a health checker's or a cache's revalidation) too."""
    request = urllib.request.Request(embedded.url + "/quotes", method="HEAD")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200

