"""quote_client.QuoteClient against the real service as a subprocess: the board first,
updates by seq, subscription changes, errors, feed status, and reconnecting by itself
across a service restart."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
from websockets.exceptions import InvalidStatus

from quote_client import client as client_module
from quote_client.client import Feed, QuoteClient, ServerError, retry_delay
from quote_core.protocol import CLOSE_GOING_AWAY, CLOSE_RATE_LIMITED, CLOSE_TRY_AGAIN
from quote_core.quote import Quote, QuoteError
from tests.redis_server import free_port, start_redis_server
from tests.service_proc import ServiceProcess, replay, run_service, wait_publisher_silent

SEED_SYMBOLS = 34


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    yield from run_service({"SIM_RATE": "150", "HEARTBEAT_S": "1", "MAX_SYMBOLS": "10"},
                           ready="/readyz")


async def take(quotes: AsyncIterator[Quote], count: int, timeout: float = 10.0) -> list[Quote]:
    got: list[Quote] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append(await anext(quotes))
    return got


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def test_the_board_comes_first_then_updates_with_rising_seq(service: ServiceProcess) -> None:
    async with QuoteClient(service.ws_url, symbols=["OGDC", "ppl", "KSE100"]) as client:
        assert client.feed == "live"
        assert client.welcome is not None and client.welcome.limits["max_symbols"] == 10
        assert client.welcome.heartbeat_s == 1
        assert set(client.board) == {"OGDC", "PPL", "KSE100"}, "the snapshot is in on entry"
        assert client.board["KSE100"].kind == "index"
        async with contextlib.aclosing(client.quotes()) as quotes:
            first = await take(quotes, 3)
            assert {q.symbol for q in first} == {"OGDC", "PPL", "KSE100"}
            held = {q.symbol: q for q in first}
            for quote in await take(quotes, 15):
                assert quote.symbol in held
                assert quote.seq > held[quote.symbol].seq  # type: ignore[operator]
                held[quote.symbol] = quote
                assert client.board[quote.symbol].seq >= quote.seq  # type: ignore[operator]


async def test_quotes_with_symbols_subscribes_and_yields_only_those(service: ServiceProcess) -> None:
    async with QuoteClient(service.ws_url) as client:
        assert client.board == {} and client.subscriptions == frozenset()
        async with contextlib.aclosing(client.quotes(["OGDC", "PPL"])) as quotes:
            got = await take(quotes, 12)
        assert {q.symbol for q in got[:2]} == {"OGDC", "PPL"}
        assert {q.symbol for q in got} == {"OGDC", "PPL"}
        assert client.subscriptions == frozenset({"OGDC", "PPL"})


async def test_subscribe_and_unsubscribe_change_what_arrives(service: ServiceProcess) -> None:
    async with QuoteClient(service.ws_url, symbols="OGDC") as client:
        ack = await client.subscribe(["PPL", "NOPE"])
        assert ack.symbols == ("NOPE", "OGDC", "PPL") and ack.unknown == ("NOPE",)
        assert client.subscriptions == frozenset({"OGDC", "PPL", "NOPE"})
        await client.unsubscribe(["OGDC", "NOPE"])
        assert "OGDC" not in client.board and client.subscriptions == frozenset({"PPL"})
        async with contextlib.aclosing(client.quotes()) as quotes:
            assert {q.symbol for q in await take(quotes, 8)} == {"PPL"}
        ack = await client.subscribe("*")
        assert ack.all and ack.subscribed == "*" and client.subscriptions == ack.subscribed
        await wait_until(lambda: len(client.board) == SEED_SYMBOLS, 5, "the whole board")
        ack = await client.unsubscribe("*")
        assert ack.symbols == () and client.subscriptions == frozenset() and client.board == {}


async def test_a_url_query_becomes_the_subscription(service: ServiceProcess) -> None:
    async with QuoteClient(service.ws_url + "?symbols=ogdc,PPL") as client:
        assert client.url == service.ws_url
        assert client.subscriptions == frozenset({"OGDC", "PPL"})
        assert set(client.board) == {"OGDC", "PPL"}


async def test_errors_raise_clearly_and_change_nothing(service: ServiceProcess) -> None:
    async with QuoteClient(service.ws_url, symbols=["OGDC"]) as client:
        with pytest.raises(QuoteError, match="invalid symbol"):
            await client.subscribe(["<img src=x>"])
        with pytest.raises(ServerError) as refused:
            await client.subscribe([f"S{i}" for i in range(10)])
        assert refused.value.code == "too_many_symbols" and isinstance(refused.value.id, int)
        assert "at most 10 symbols" in str(refused.value)
        assert client.subscriptions == frozenset({"OGDC"})
        assert 0 < await client.ping() < 5
        assert client.feed == "live"


async def test_a_refused_first_subscription_fails_the_entry(service: ServiceProcess) -> None:
    with pytest.raises(ServerError, match="too_many_symbols"):
        async with QuoteClient(service.ws_url, symbols=[f"S{i}" for i in range(11)]):
            pass


async def test_nothing_listening_fails_within_open_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="could not connect"):
        async with QuoteClient(f"ws://127.0.0.1:{free_port()}/ws", open_timeout=1):
            pass
    assert time.monotonic() - started < 3


async def test_a_wrong_path_fails_at_once(service: ServiceProcess) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidStatus):
        async with QuoteClient(service.url.replace("http", "ws") + "/nope", open_timeout=10):
            pass
    assert time.monotonic() - started < 3, "a 4xx refusal is not retried"


async def test_requests_need_an_open_client(service: ServiceProcess) -> None:
    client = QuoteClient(service.ws_url)
    assert client.feed == "connecting"
    with pytest.raises(RuntimeError, match="not open"):
        await client.subscribe(["OGDC"])


def test_close_codes_that_say_slow_down_back_off_further(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, float]] = []

    def fake_backoff(attempt: int, cap: float) -> float:
        calls.append((attempt, cap))
        return 0.0

    monkeypatch.setattr(client_module, "backoff", fake_backoff)
    retry_delay(0, CLOSE_GOING_AWAY, 15)
    retry_delay(1, None, 15)
    retry_delay(0, CLOSE_RATE_LIMITED, 15)
    retry_delay(0, CLOSE_TRY_AGAIN, 15)
    retry_delay(0, 1008, 15)
    retry_delay(9, CLOSE_RATE_LIMITED, 15)
    assert calls == [(0, 15), (1, 15), (5, 15), (5, 15), (5, 15), (9, 15)]


async def test_reconnects_by_itself_across_a_service_restart() -> None:
    """SIGTERM (close 1001), the same port again: the client comes back on its own,
    resubscribes, takes the new snapshot, and quotes keep coming, by seq."""
    service = ServiceProcess({"SIM_RATE": "100", "HEARTBEAT_S": "1"})
    service.start("/readyz")
    statuses: list[Feed] = []
    try:
        async with QuoteClient(service.ws_url, symbols="*", max_backoff_s=2,
                               on_status=statuses.append) as client, \
                contextlib.aclosing(client.quotes()) as quotes:
            await take(quotes, SEED_SYMBOLS + 5)
            restarted = asyncio.create_task(asyncio.to_thread(service.restart))
            await wait_until(lambda: "reconnecting" in statuses, 10, "the client noticed")
            await restarted
            await wait_until(lambda: client.feed == "live", 15, "the client came back")
            assert client.reconnects >= 1
            assert statuses[-2:] == ["reconnecting", "live"]
            assert client.subscriptions == "*", "resubscribed to the same set"
            snapshot = {s: q.seq for s, q in client.board.items()}
            assert len(snapshot) == SEED_SYMBOLS
            updates = 0
            async with asyncio.timeout(10):
                while updates < 10:
                    quote = await anext(quotes)
                    if quote.seq > snapshot[quote.symbol]:  # type: ignore[operator]
                        updates += 1
                        assert client.board[quote.symbol].seq >= quote.seq  # type: ignore[operator]
    finally:
        service.stop()


def _replay(redis_url: str, text: str, path: Path) -> None:
    result = replay(redis_url, text, path)
    assert result.returncode == 0, result.stderr


def _ogdc(*prices: float) -> str:
    return "".join(orjson.dumps({"symbol": "OGDC", "price": p, "prev_close": 100}).decode() + "\n"
                   for p in prices)


async def test_after_a_restart_with_an_emptied_redis_the_new_seqs_win(tmp_path: Path) -> None:
    """Redis without persistence and the service both restart: seq counts from 1 again.
    The client must take the new snapshot (and, for a symbol the new service does not
    have yet, its first quote) instead of dropping them as older than what it held."""
    with start_redis_server() as url:
        broker = redis.Redis.from_url(url)
        service = ServiceProcess({"REDIS_URL": url, "FEED_SILENCE_S": "0"})
        await asyncio.to_thread(_replay, url, _ogdc(101, 102, 103), tmp_path / "a.txt")
        await asyncio.to_thread(service.start)
        try:
            async with QuoteClient(service.ws_url, symbols=["OGDC"], max_backoff_s=1) as client, \
                    contextlib.aclosing(client.quotes()) as quotes:
                assert (await anext(quotes)).seq == 3
                # The record is lost and written again from 1 while the old service still
                # holds seq 3 (so it drops this); then the service restarts and loads it.
                broker.flushall()
                await asyncio.to_thread(_replay, url, _ogdc(90), tmp_path / "b.txt")
                await asyncio.to_thread(service.restart)
                async with asyncio.timeout(15):
                    quote = await anext(quotes)
                assert (quote.seq, quote.price) == (1, 90), "the snapshot after a reconnect rules"
                await asyncio.to_thread(_replay, url, _ogdc(91), tmp_path / "c.txt")
                async with asyncio.timeout(10):
                    quote = await anext(quotes)
                assert (quote.seq, quote.price) == (2, 91)
                # Emptied again and restarted with nothing to load: OGDC is unknown to the
                # new service, so its old entry leaves the board and seq 1 is news again.
                reconnects = client.reconnects
                broker.flushall()
                await asyncio.to_thread(service.restart)
                await wait_until(lambda: client.reconnects > reconnects and client.feed == "live"
                                 and "OGDC" not in client.board, 15, "reconnected, OGDC unknown")
                await asyncio.to_thread(_replay, url, _ogdc(80), tmp_path / "d.txt")
                async with asyncio.timeout(10):
                    quote = await anext(quotes)
                assert (quote.seq, quote.price) == (1, 80)
                assert client.board["OGDC"] == quote
        finally:
            service.stop()
            broker.close()


@pytest.fixture
def redis_service() -> Iterator[tuple[str, ServiceProcess]]:
    """A Redis-fed service with no publisher: the feed goes stale after FEED_SILENCE_S."""
    with start_redis_server() as url:
        for service in run_service({"REDIS_URL": url, "FEED_SILENCE_S": "1"}):
            yield url, service




async def test_feed_status_follows_the_service(
    redis_service: tuple[str, ServiceProcess], tmp_path: Path
) -> None:
    url, service = redis_service
    await asyncio.to_thread(wait_publisher_silent, service)
    async with QuoteClient(service.ws_url, symbols=["OGDC"]) as client:
        assert client.feed == "stale", "a service whose feed is down says so at once"
        assert client.board == {}
        async with contextlib.aclosing(client.statuses()) as statuses, \
                contextlib.aclosing(client.quotes()) as quotes:
            assert await anext(statuses) == "stale"
            await asyncio.to_thread(_replay, url, "OGDC 137.75 Increased By ▲ 4.88 (3.67%)\n",
                                    tmp_path / "one.txt")
            async with asyncio.timeout(10):
                assert await anext(statuses) == "live"
                quote = await anext(quotes)
            assert quote.symbol == "OGDC" and quote.price == 137.75
            assert client.board["OGDC"] == quote


async def test_iterators_end_when_the_client_closes(service: ServiceProcess) -> None:
    client = QuoteClient(service.ws_url, symbols=["OGDC"])
    await client.start()
    got: list[Quote] = []

    async def consume() -> None:
        async for quote in client.quotes():
            got.append(quote)

    task = asyncio.create_task(consume())
    await wait_until(lambda: bool(got), 5, "a quote")
    async with asyncio.timeout(5):
        await client.aclose()
        await task
    with pytest.raises(RuntimeError):
        await client.ping()


async def test_max_hz_is_asked_on_connect_and_can_change(service: ServiceProcess) -> None:
    with pytest.raises(ValueError, match="max_hz"):
        QuoteClient(service.ws_url, max_hz=0.4)
    with pytest.raises(ValueError, match="max_hz"):
        QuoteClient(service.ws_url, max_hz=float("nan"))
    async with QuoteClient(service.ws_url, symbols=["OGDC", "PPL"], max_hz=2) as client:
        assert client.rate == 2 and client.max_hz == 2
        assert set(client.board) == {"OGDC", "PPL"}
        ack = await client.set_max_hz(10)
        assert ack.max_hz == 10 and client.rate == 10 and ack.symbols == ("OGDC", "PPL")
        ack = await client.subscribe("KSE100")
        assert ack.max_hz == 10, "a later subscribe keeps the rate"
        with pytest.raises(ValueError):
            await client.set_max_hz(51)
    async with QuoteClient(service.ws_url, max_hz=4) as client:
        assert client.rate == 4, "asked even with nothing to subscribe"
        assert (await client.subscribe("OGDC")).max_hz == 4
    async with QuoteClient(service.ws_url, symbols="OGDC") as client:
        assert client.rate == 50 and client.max_hz is None
