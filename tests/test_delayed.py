"""The delayed tier end to end: a real redis-server, the publisher and the service with
DELAY_S=3. A delayed client never sees a quote younger than DELAY_S, and it sees, DELAY_S
later, exactly the quotes a real-time client saw; REST and history keep to the mark too,
and the tier comes back from the tape alone after a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.redis_server import RedisServer, redis_server
from tests.service_proc import PublisherProcess, ServiceProcess, http_fetch
from tests.test_auth import SECRET, token
from tests.test_faults import until
from tests.wsclient import connect, recv_type

DELAY_S = 3.0
SYMBOLS = ["OGDC", "PPL", "KSE100", "HBL"]
ENV = {"TOKEN_SECRET": SECRET, "DELAY_S": str(DELAY_S), "FEED_SILENCE_S": "0"}


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[RedisServer, ServiceProcess]]:
    with redis_server() as server:
        publisher = PublisherProcess(server.url, rate=100)
        publisher.start()
        service = ServiceProcess({"REDIS_URL": server.url, **ENV})
        try:
            service.start("/readyz")
            yield server, service
        finally:
            service.stop()
            publisher.stop()


Seen = list[tuple[float, dict[str, Any]]]  # (arrival, quote)


async def watch(url: str, seconds: float, seen: Seen, snapshot: list[dict[str, Any]]) -> None:
    """Every quote of SYMBOLS in every mode for `seconds`, with its arrival time."""
    async with connect(url) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "id": 1, "symbols": SYMBOLS,
                                    "mode": "every"}).decode())
        await recv_type(ws, "ack")
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(left):
                    frame = orjson.loads(await ws.recv())
            except TimeoutError:
                break
            now = time.time() * 1000
            if frame["type"] == "snapshot":
                snapshot += frame["quotes"]
            seen += [(now, q) for q in frame.get("quotes", [])]


async def test_a_delayed_client_sees_what_a_realtime_one_saw_delay_s_before(
        stack: tuple[RedisServer, ServiceProcess]) -> None:
    _, service = stack
    live: Seen = []
    late: Seen = []
    late_snapshot: list[dict[str, Any]] = []  # empty here: the day began < DELAY_S ago
    delayed = f"{service.ws_url}?token={token({'tier': 'delayed'})}"
    await asyncio.gather(watch(service.ws_url, 4 + DELAY_S, live, []),
                         watch(delayed, 4 + DELAY_S + 1, late, late_snapshot))
    assert late and live
    # Never younger than DELAY_S, and always marked.
    for arrived, quote in late:
        assert quote["delayed"] is True
        assert quote["ts"] <= arrived - DELAY_S * 1000, (arrived - quote["ts"], quote)
    # What a real-time client saw, the delayed one sees DELAY_S later: for each symbol,
    # the same quotes in the same order, over the run of seqs the real-time client saw
    # that had come of age by the end.
    end_ms = late[-1][0]
    compared = 0
    for symbol in SYMBOLS:
        saw = [(q["seq"], q["price"]) for _, q in live
               if q["symbol"] == symbol and q["ts"] <= end_ms - DELAY_S * 1000 - 500]
        if not saw:
            continue
        first, last = saw[0][0], saw[-1][0]
        later = [(q["seq"], q["price"]) for _, q in late
                 if q["symbol"] == symbol and first <= q["seq"] <= last]
        assert later == saw, symbol
        compared += len(saw)
    assert compared > 20
    got = [q for _, q in late]
    lags = sorted(arrived - q["ts"] for arrived, q in late)
    print(f"\ndelayed tier: {len(got)} quotes, lag behind ts {lags[0]:.0f}..{lags[-1]:.0f} ms "
          f"(median {lags[len(lags) // 2]:.0f}) for DELAY_S={DELAY_S:g}")
    assert lags[-1] < DELAY_S * 1000 + 2000  # loose: the tick is 0.1 s; a busy machine lags


async def test_the_welcome_says_delayed_and_rest_keeps_to_the_mark(
        stack: tuple[RedisServer, ServiceProcess]) -> None:
    _, service = stack
    delayed = token({"tier": "delayed"})
    async with connect(f"{service.ws_url}?symbols=OGDC&token={delayed}") as ws:
        welcome = await recv_type(ws, "welcome")
        assert (welcome["tier"], welcome["delay_s"]) == ("delayed", DELAY_S)
        snapshot = await recv_type(ws, "snapshot")
        assert snapshot["quotes"][0]["delayed"] is True
    status, _, body = http_fetch(f"{service.url}/quotes?token={delayed}")
    now = time.time() * 1000
    quotes = orjson.loads(body)["quotes"]
    assert status == 200 and quotes
    assert all(q["delayed"] is True and q["ts"] <= now - DELAY_S * 1000 for q in quotes)
    status, _, body = http_fetch(f"{service.url}/quotes")
    assert all("delayed" not in q for q in orjson.loads(body)["quotes"])  # real time
    status, _, body = http_fetch(f"{service.url}/history?symbols=OGDC&token={delayed}")
    now = time.time() * 1000
    points = orjson.loads(body)["history"]["OGDC"]
    assert status == 200 and points and all(ts <= now - DELAY_S * 1000 for ts, _ in points)


async def test_the_delayed_board_comes_back_from_the_tape_after_a_restart(
        stack: tuple[RedisServer, ServiceProcess]) -> None:
    _, service = stack
    url = f"{service.ws_url}?symbols=*&token={token({'tier': 'delayed'})}"
    async with connect(url) as ws:
        before = {q["symbol"]: q for q in (await recv_type(ws, "snapshot"))["quotes"]}
    service.restart()
    await until(lambda: http_fetch(service.url + "/readyz")[0] == 200, 15, "ready again")
    async with connect(url) as ws:
        after = (await recv_type(ws, "snapshot"))["quotes"]
        now = time.time() * 1000
    assert {q["symbol"] for q in after} == set(before)
    for q in after:
        assert q["delayed"] is True and q["ts"] <= now - DELAY_S * 1000
        assert q["seq"] >= before[q["symbol"]]["seq"]  # time went on, never back
