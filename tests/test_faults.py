"""Faults survived with real processes: a redis-server the test kills, freezes and
restarts; the service and the publisher as subprocesses; real websocket clients.

Each test prints what it measured (run with -s to see it); the asserts are the promises
of docs/failures.md, with bounds loose enough for a busy machine.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import orjson
import pytest
import redis

from tests.redis_server import CHANNELS, RedisServer, latest_in_redis, redis_server
from tests.service_proc import (
    PublisherProcess,
    ServiceProcess,
    feed_stack,
    http_get,
    run_service,
)
from tests.wsclient import ClientConnection, connect, recv_type

SYMBOLS = 34
FAST_PROBES = {"PROBE_INTERVAL_S": "0.5", "PROBE_TIMEOUT_S": "2", "REDIS_RETRY_MAX_S": "1",
               "FEED_SILENCE_S": "3"}


class Watcher:
    """A client that keeps its board by seq, as the protocol tells clients to, and notes
    every status it hears and any good quote it would have wrongly dropped."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.board: dict[str, dict[str, Any]] = {}
        self.statuses: list[tuple[float, str]] = []
        self.snapshots: list[float] = []
        self.good_dropped = 0
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            frame = orjson.loads(message)
            kind = frame["type"]
            if kind == "status":
                self.statuses.append((time.monotonic(), frame["feed"]))
            if kind == "snapshot":
                self.snapshots.append(time.monotonic())
            for quote in frame.get("quotes", ()):
                held = self.board.get(quote["symbol"])
                if held is None or quote["seq"] > held["seq"]:
                    self.board[quote["symbol"]] = quote
                elif quote["ts"] > held["ts"]:
                    self.good_dropped += 1

    def status_since(self, since: float, feed: str) -> float | None:
        """Seconds from `since` to the first `feed` status after it."""
        for at, state in self.statuses:
            if at >= since and state == feed:
                return at - since
        return None


class ReadyWatcher:
    """/readyz polled every 20 ms from the start of a fault, so a short outage (a failover
    can be over in a tenth of a second) is still seen answering 503."""

    def __init__(self, service: ServiceProcess) -> None:
        self.url = service.url + "/readyz"
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self.task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            status, body = await asyncio.to_thread(http_get, self.url, 1.0)
            self.answers.append((status, orjson.loads(body)))
            await asyncio.sleep(0.02)

    def not_ready(self) -> list[dict[str, Any]]:
        return [body for status, body in self.answers if status == 503]

    def saw(self, outage_s: float, check: Callable[[dict[str, Any]], bool]) -> bool:
        """Whether a 503 answer passed `check`. An outage shorter than a few polls (a
        failover the service followed within milliseconds of noticing it) may fall between
        two polls: then the clients' stale status is the evidence, and this says True."""
        return outage_s < 0.2 or any(check(body) for body in self.not_ready())

    def stop(self) -> None:
        self.task.cancel()


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {timeout}s: {what}")


async def fresh_board(service: ServiceProcess) -> dict[str, dict[str, Any]]:
    async with connect(service.ws_url + "?symbols=*") as ws:
        return {q["symbol"]: q for q in (await recv_type(ws, "snapshot"))["quotes"]}


async def converged(service: ServiceProcess, publisher: PublisherProcess,
                    clients: list[Watcher]) -> None:
    """With the publisher stopped, every client's board equals a fresh client's snapshot,
    and none dropped a good quote (no seq went down)."""
    publisher.stop()
    await asyncio.sleep(1)
    board = await fresh_board(service)
    assert len(board) == SYMBOLS
    for w in clients:
        assert w.board == board
        assert w.good_dropped == 0, "a client dropped a good quote (a seq went down)"


def redis_symbols(url: str) -> int:
    """How many symbols Redis holds a latest state for; -1 while it cannot be read."""
    try:
        return len(latest_in_redis(url))
    except redis.RedisError:
        return -1


@pytest.fixture
def stack() -> Iterator[tuple[RedisServer, ServiceProcess, PublisherProcess]]:
    with redis_server() as server, feed_stack(server.url, 100, FAST_PROBES) as (service, publisher):
        yield server, service, publisher


async def watchers(stack: AsyncExitStack, service: ServiceProcess, n: int) -> list[Watcher]:
    out = []
    for _ in range(n):
        ws = await stack.enter_async_context(connect(service.ws_url + "?symbols=*"))
        out.append(Watcher(ws))
    await until(lambda: all(len(w.board) == SYMBOLS for w in out), 10, "full boards")
    return out


async def test_redis_dies_and_comes_back_empty(
    stack: tuple[RedisServer, ServiceProcess, PublisherProcess],
) -> None:
    server, service, publisher = stack
    async with AsyncExitStack() as exits:
        clients = await watchers(exits, service, 3)
        await asyncio.sleep(0.5)
        seq_before = {s: max(w.board[s]["seq"] for w in clients) for s in clients[0].board}

        killed = time.monotonic()
        server.kill()
        await until(lambda: all(w.status_since(killed, "stale") is not None for w in clients),
                    5, "every client told stale within 5 s of losing Redis")
        to_stale = max(w.status_since(killed, "stale") or 0 for w in clients)

        assert server.start(), server.log()
        back = time.monotonic()
        await until(lambda: all(w.status_since(back, "live") is not None for w in clients),
                    10, "every client told live after Redis returned")
        to_live = max(w.status_since(back, "live") or 0 for w in clients)
        assert all(w.snapshots[-1] >= back for w in clients), "a fresh snapshot follows live"

        # The publisher refills the whole board, not only what ticked since, with seq
        # still rising, so every client takes the new quotes.
        await until(lambda: redis_symbols(server.url) == SYMBOLS, 10,
                    "all symbols back in Redis")
        await until(lambda: all(w.board[s]["seq"] > seq_before[s]
                                for w in clients for s in seq_before), 10,
                    "every symbol moved past its seq from before the outage")
        await converged(service, publisher, clients)
    print(f"\nredis killed: stale after {to_stale:.2f}s; restarted: live after {to_live:.2f}s")


async def test_frozen_redis_is_found_by_the_probe(
    stack: tuple[RedisServer, ServiceProcess, PublisherProcess],
) -> None:
    server, service, _ = stack
    async with AsyncExitStack() as exits:
        (client,) = await watchers(exits, service, 1)
        frozen = time.monotonic()
        server.freeze()
        try:
            await until(lambda: client.status_since(frozen, "stale") is not None, 5,
                        "stale within 5 s of Redis freezing")
        finally:
            server.thaw()
        thawed = time.monotonic()
        await until(lambda: client.status_since(thawed, "live") is not None, 10,
                    "live again after Redis thawed")
        to_stale = client.status_since(frozen, "stale")
        to_live = client.status_since(thawed, "live")
    print(f"\nredis frozen: stale after {to_stale:.2f}s; thawed: live after {to_live:.2f}s")


async def test_publisher_silence_then_restart_continues_every_seq(
    stack: tuple[RedisServer, ServiceProcess, PublisherProcess],
) -> None:
    _server, service, publisher = stack
    async with AsyncExitStack() as exits:
        (client,) = await watchers(exits, service, 1)
        stopped = time.monotonic()
        publisher.stop()
        await until(lambda: client.status_since(stopped, "stale") is not None, 6,
                    "stale after FEED_SILENCE_S without the publisher")
        to_stale = client.status_since(stopped, "stale")
        held = {s: dict(q) for s, q in client.board.items()}

        restarted = time.monotonic()
        publisher.start()
        await until(lambda: client.status_since(restarted, "live") is not None, 10,
                    "live again when quotes flow")
        to_live = client.status_since(restarted, "live")
        # The restarted publisher resumes: the board it republishes first carries the
        # same prices with seq going on, so nothing goes backwards.
        await until(lambda: all(client.board[s]["seq"] > held[s]["seq"] for s in held), 10,
                    "every symbol republished with a higher seq")
        assert client.good_dropped == 0
    print(f"\npublisher stopped: stale after {to_stale:.2f}s; restarted: live after {to_live:.2f}s")


async def test_a_resumed_publisher_starts_from_the_prices_in_redis(
    stack: tuple[RedisServer, ServiceProcess, PublisherProcess],
) -> None:
    server, _service, publisher = stack
    await asyncio.sleep(1)
    publisher.stop()
    client = redis.Redis.from_url(server.url)
    try:
        before = {k: orjson.loads(v) for k, v in latest_in_redis(server.url).items()}
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(*CHANNELS)
        publisher.start()
        # Each partition's channel carries its part of the first batch: the first quote
        # heard of each symbol is the one the resumed publisher started from.
        first: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 10
        while len(first) < len(before) and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            for quote in orjson.loads(message["data"]) if message else ():
                first.setdefault(quote["symbol"], quote)
        pubsub.close()
    finally:
        client.close()
    assert set(first) == set(before)
    for symbol, quote in first.items():
        assert quote["seq"] == before[symbol]["seq"] + 1
        if quote["kind"] == "stock":
            assert quote["price"] == before[symbol]["price"], symbol


# A client that stops reading.


def stalled_client(port: int) -> socket.socket:
    """Upgrade to a websocket subscribed to everything, then never read a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws?symbols=* HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return sock


def server_ended(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Drain what was buffered: True once the server closed or reset the connection,
    False if it is still open after `timeout`."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def ages_for(ws: ClientConnection, seconds: float) -> tuple[list[float], float]:
    """Ages (ms, receipt minus the quote's ts) of what arrived, and the longest gap (s)."""
    ages: list[float] = []
    gap = 0.0
    last = time.monotonic()
    deadline = last + seconds
    while (now := time.monotonic()) < deadline:
        async with asyncio.timeout(5):
            frame = orjson.loads(await ws.recv())
        now = time.monotonic()
        gap, last = max(gap, now - last), now
        received = time.time() * 1000
        ages += [received - q["ts"] for q in frame.get("quotes", ())]
    return ages, gap


def p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99)]


async def test_stalled_readers_stay_bounded_and_do_not_slow_others() -> None:
    service = ServiceProcess({"SIM_RATE": "2000", "SEND_TIMEOUT_S": "2",
                              "TCP_SEND_BUFFER": "16384"})
    service.start()
    stalled: list[socket.socket] = []
    try:
        async with connect(service.ws_url + "?symbols=*") as healthy:
            await recv_type(healthy, "snapshot")
            before, _ = await ages_for(healthy, 2)
            rss_start = rss_kb(service.pid)
            stalled = [stalled_client(service.port) for _ in range(10)]
            during, gap = await ages_for(healthy, 6)
            rss_end = rss_kb(service.pid)
            await until(lambda: service.log().count("a send took over") >= 10, 5,
                        "every stalled reader closed as a slow consumer")
            after, _ = await ages_for(healthy, 1)
        for sock in stalled:
            assert server_ended(sock), "a stalled reader's connection was ended by the server"
    finally:
        for sock in stalled:
            sock.close()
        service.stop()
    growth = (rss_end - rss_start) / 1024
    print(f"\nstalled readers: healthy p99 age {p99(before):.1f} ms before, "
          f"{p99(during):.1f} ms during; longest gap {gap * 1000:.0f} ms; "
          f"service RSS {rss_start / 1024:.1f} -> {rss_end / 1024:.1f} MiB")
    assert gap < 1.0, "the healthy client kept receiving"
    assert growth < 10, f"RSS grew {growth:.1f} MiB with 10 stalled readers"
    assert len(after) > 0


# Admission: a restart must not become a connection storm.


async def first_frame_or_close(url: str) -> str | int:
    async with connect(url) as ws:
        try:
            async with asyncio.timeout(5):
                return orjson.loads(await ws.recv())["type"]
        except Exception:
            return ws.close_code or 0


async def test_connection_cap_answers_1013() -> None:
    service = ServiceProcess({"MAX_CONNECTIONS": "5"})
    service.start()
    try:
        async with AsyncExitStack() as exits:
            for _ in range(5):
                ws = await exits.enter_async_context(connect(service.ws_url))
                await recv_type(ws, "welcome")
            assert await first_frame_or_close(service.ws_url) == 1013
        # Room again once they left.
        await asyncio.sleep(0.3)
        assert await first_frame_or_close(service.ws_url) == "welcome"
    finally:
        service.stop()


async def test_connection_rate_limit_answers_1013() -> None:
    service = ServiceProcess({"MAX_CONNECTS_PER_S": "5"})
    service.start()
    try:
        results = await asyncio.gather(*(first_frame_or_close(service.ws_url) for _ in range(20)))
        assert results.count("welcome") >= 5
        assert results.count(1013) >= 10
        assert set(results) <= {"welcome", 1013}
    finally:
        service.stop()


@pytest.fixture(scope="module")
def plain_service() -> Iterator[ServiceProcess]:
    yield from run_service()


@pytest.mark.parametrize("path", ["/nope", "/static/../service/app.py", "/static/%2e%2e/README.md",
                                  "/static/", "/ws/x", "/%00", "/static/nope.js"])
def test_http_never_answers_500(plain_service: ServiceProcess, path: str) -> None:
    status, body = http_get(plain_service.url + path)
    assert status in (404, 405), (path, status)
    assert b"Traceback" not in body
