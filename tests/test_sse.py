"""`GET /sse` against the real service process, read by a real HTTP client over a socket
(tests/sseclient.py): the embedded feed (`make run`'s mode), and a real redis-server with
the real publisher for the every-mode resume with Last-Event-ID, checked against the tape."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from service.sse import decode_position, encode_position
from tests.nginx_server import nginx
from tests.redis_server import LAYOUT, redis_server
from tests.service_proc import ServiceProcess, feed_stack, http_get, run_service
from tests.sseclient import Event, SseStream, StreamEnded, open_sse
from tests.wsclient import closed_code, connect, recv

# A service of a test's own, stopped at the end however the test ends.
serving = contextmanager(run_service)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def readyz(service: ServiceProcess) -> dict[str, Any]:
    report: dict[str, Any] = orjson.loads(http_get(service.url + "/readyz")[1])
    return report


def gauge(service: ServiceProcess, name: str) -> float:
    text = http_get(service.url + "/metrics")[1].decode()
    found = re.search(rf"^quote_service_{name} (\S+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


def quotes_of(event: Event) -> list[dict[str, Any]]:
    return list(event.json["quotes"]) if event.kind in ("snapshot", "quotes") else []


class Tracker:
    """What a client keeps from the quote events it read: every (symbol, seq) in order,
    and the position each event's id must equal (the last seq of each symbol so far)."""

    def __init__(self, start: dict[str, int] | None = None) -> None:
        self.position: dict[str, int] = dict(start or {})
        self.seen: dict[str, list[int]] = {}
        self.quotes: dict[tuple[str, int], dict[str, Any]] = {}

    def take(self, event: Event) -> None:
        for quote in quotes_of(event):
            symbol, seq = quote["symbol"], quote["seq"]
            self.position[symbol] = max(seq, self.position.get(symbol, -1))
            if event.kind == "quotes":
                self.seen.setdefault(symbol, []).append(seq)
                self.quotes[symbol, seq] = quote
        if event.kind in ("snapshot", "quotes"):
            assert event.id == encode_position(self.position), "the id is the position"
        else:
            assert event.id is None, f"{event.kind} events carry no id"

    async def read_until(self, stream: SseStream, done: Callable[[], bool],
                         timeout: float) -> list[Event]:
        events = []
        async with asyncio.timeout(timeout):
            while not done():
                event = await stream.event(timeout)
                self.take(event)
                events.append(event)
        return events


def assert_one_event(event: Event, kind: str, has_id: bool) -> None:
    """The exact lines: `event:`, `id:` when it carries quotes, one `data:` line."""
    expected = ["event", "id", "data"] if has_id else ["event", "data"]
    assert [line.split(": ", 1)[0] for line in event.lines] == expected
    assert event.lines[0] == f"event: {kind}"
    assert event.lines[-1] == f"data: {event.data}" and "\n" not in event.data
    assert event.json["type"] == kind


# The embedded feed


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    yield from run_service({
        "SIM_RATE": "150", "HEARTBEAT_S": "0.5", "MAX_SYMBOLS": "40",
        "EVERY_QUEUE_BYTES": "300000", "MAX_RECOVERY": "2000",
    }, ready="/readyz")


async def test_a_stream_is_retry_welcome_ack_snapshot_then_quotes_with_positions(
        service: ServiceProcess) -> None:
    async with connect(service.ws_url) as ws:
        ws_welcome = await recv(ws)
    async with await open_sse(service.url + "/sse?symbols=ogdc,KSE100,NOPE") as stream:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.headers["x-accel-buffering"] == "no"
        assert stream.headers["access-control-allow-origin"] == "*"
        welcome = await stream.event()
        assert stream.retry == 2000  # the `retry:` line came first
        assert_one_event(welcome, "welcome", has_id=False)
        assert welcome.json == ws_welcome  # the websocket's frame, as it is
        ack = await stream.event()
        assert_one_event(ack, "ack", has_id=False)
        assert ack.json == {"type": "ack", "id": None, "op": "subscribe",
                            "symbols": ["KSE100", "NOPE", "OGDC"], "unknown": ["NOPE"],
                            "max_hz": 50}
        tracker = Tracker()
        snapshot = await stream.event()
        assert_one_event(snapshot, "snapshot", has_id=True)
        tracker.take(snapshot)
        assert set(tracker.position) == {"OGDC", "KSE100"}
        held = dict(tracker.position)
        events = await tracker.read_until(
            stream, lambda: sum(map(len, tracker.seen.values())) >= 8, timeout=10)
        for event in events:
            assert_one_event(event, "quotes", has_id=True)
            symbols = [x["symbol"] for x in event.json["quotes"]]
            assert len(symbols) == len(set(symbols)), "conflated: one entry per symbol"
        for symbol, seqs in tracker.seen.items():
            assert seqs == sorted(seqs) and seqs[0] > held[symbol]
        assert stream.last_event_id == encode_position(tracker.position)


async def test_a_conflated_stream_resumed_with_last_event_id_gets_a_fresh_snapshot(
        service: ServiceProcess) -> None:
    url = service.url + "/sse?symbols=OGDC,PPL"
    async with await open_sse(url) as stream:
        tracker = Tracker()
        await tracker.read_until(stream, lambda: len(tracker.seen) == 2, timeout=10)
        last_id = stream.last_event_id
    async with await open_sse(url, {"Last-Event-ID": last_id}) as stream:
        await stream.event_of("welcome")
        ack = (await stream.event()).json
        assert ack["type"] == "ack" and "recovered" not in ack and "mode" not in ack
        snapshot = await stream.event()
        assert snapshot.kind == "snapshot"
        for quote in quotes_of(snapshot):
            assert quote["seq"] >= decode_position(last_id)[quote["symbol"]]
        assert {x["symbol"] for x in quotes_of(snapshot)} == {"OGDC", "PPL"}


async def test_every_mode_gets_every_quote_and_resumes_from_since_or_last_event_id(
        service: ServiceProcess) -> None:
    url = service.url + "/sse?symbols=OGDC,PPL,KSE100&mode=every"
    async with await open_sse(url) as stream:
        await stream.event_of("welcome")
        ack = (await stream.event()).json
        assert ack["mode"] == "every" and "max_hz" not in ack and "recovered" not in ack
        tracker = Tracker()
        tracker.take(await stream.event_of("snapshot"))
        start = dict(tracker.position)
        await tracker.read_until(stream, lambda: len(tracker.seen) == 3 and all(
            len(s) >= 3 for s in tracker.seen.values()), timeout=15)
        for symbol, seqs in tracker.seen.items():
            assert seqs == list(range(start[symbol] + 1, start[symbol] + 1 + len(seqs)))
        position = stream.last_event_id
    await asyncio.sleep(0.5)  # quotes published while away
    for how in ("since", "Last-Event-ID"):
        if how == "since":
            resumed = await open_sse(f"{url}&since={position}")
        else:  # as a reconnecting EventSource does: the header wins over the URL's since
            resumed = await open_sse(f"{url}&since=OGDC:1", {"Last-Event-ID": position})
        async with resumed as stream:
            await stream.event_of("welcome")
            ack = (await stream.event()).json
            assert ack["recovered"] is True, ack
            at = decode_position(position)
            again = Tracker(at)
            events = await again.read_until(stream, lambda: len(again.seen) == 3 and all(  # noqa: B023
                len(s) >= 2 for s in again.seen.values()), timeout=15)  # noqa: B023
            assert events[0].kind == "quotes"  # no snapshot: nothing was missed
            for symbol, seqs in again.seen.items():
                assert seqs == list(range(at[symbol] + 1, at[symbol] + 1 + len(seqs))), how
            position = stream.last_event_id


async def test_a_quiet_stream_gets_heartbeats(service: ServiceProcess) -> None:
    async with await open_sse(service.url + "/sse?symbols=NOPE") as stream:
        await stream.event_of("welcome")
        assert (await stream.event()).json["unknown"] == ["NOPE"]
        started = time.monotonic()
        first = await stream.event(timeout=3)
        second = await stream.event(timeout=3)
        for event in (first, second):
            assert_one_event(event, "heartbeat", has_id=False)
            assert isinstance(event.json["ts"], int)
        assert 0.6 < time.monotonic() - started < 3  # HEARTBEAT_S=0.5 apart, swept ~4x/s


@pytest.mark.parametrize(("query", "code"), [
    ("", "bad_request"),
    ("?symbols=", "bad_request"),
    ("?symbols=OGDC,%3F%3F", "bad_request"),
    ("?symbols=" + ",".join(f"S{i}" for i in range(41)), "too_many_symbols"),
    ("?symbols=OGDC&max_hz=abc", "bad_request"),
    ("?symbols=OGDC&max_hz=0.1", "bad_request"),
    ("?symbols=OGDC&mode=fast", "bad_request"),
    ("?symbols=OGDC&mode=every&max_hz=4", "bad_request"),
    ("?symbols=OGDC&since=OGDC:5", "bad_request"),
    ("?symbols=OGDC&mode=every&since=PPL:5", "bad_request"),
    ("?symbols=OGDC&mode=every&since=OGDC:-5", "bad_request"),
])
async def test_a_bad_query_gets_400_with_the_protocols_code(
        service: ServiceProcess, query: str, code: str) -> None:
    async with await open_sse(service.url + "/sse" + query) as answer:
        assert answer.status == 400
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["access-control-allow-origin"] == "*"
        body = answer.json
        assert body["error"] == code and isinstance(body["message"], str) and body["message"]


async def test_a_bad_last_event_id_in_every_mode_is_a_400(service: ServiceProcess) -> None:
    async with await open_sse(service.url + "/sse?symbols=OGDC&mode=every",
                              {"Last-Event-ID": "OGDC:?"}) as answer:
        assert answer.status == 400 and "Last-Event-ID" in answer.json["message"]


async def test_a_preflight_is_answered_for_polyfills(service: ServiceProcess) -> None:
    async with await open_sse(service.url + "/sse?symbols=OGDC", method="OPTIONS") as answer:
        assert answer.status == 204
        assert answer.headers["access-control-allow-origin"] == "*"
        assert "last-event-id" in answer.headers["access-control-allow-headers"].lower()


async def test_a_client_that_leaves_is_removed_from_the_hub(service: ServiceProcess) -> None:
    wait_until(lambda: readyz(service)["connections"] == 0, 5, "no client left over")
    stream = await open_sse(service.url + "/sse?symbols=OGDC,PPL")
    await stream.event_of("snapshot")
    assert readyz(service)["connections"] == 1
    assert gauge(service, "subscriptions") == 2
    await stream.close()  # no goodbye: the socket just closes
    wait_until(lambda: readyz(service)["connections"] == 0, 5, "the stream counted no more")
    wait_until(lambda: gauge(service, "subscriptions") == 0, 5, "the stream out of the hub")


# Limits, draining, and a client that stops reading: a service each


async def test_streams_share_the_websockets_admission_limit() -> None:
    with serving({"MAX_CONNECTIONS": "1"}) as service:
        first = await open_sse(service.url + "/sse?symbols=OGDC")
        await first.event_of("welcome")
        async with await open_sse(service.url + "/sse?symbols=OGDC") as refused:
            assert refused.status == 503
            assert refused.headers["retry-after"] == "2"
            assert refused.headers["access-control-allow-origin"] == "*"
            assert refused.json["error"] == "try_again_later"
        async with connect(service.ws_url) as ws:  # the stream holds the one place
            assert await closed_code(ws) == 1013
        await first.close()
        wait_until(lambda: readyz(service)["connections"] == 0, 5, "the place freed")
        async with await open_sse(service.url + "/sse?symbols=OGDC") as again:
            assert again.status == 200
            await again.event_of("welcome")


async def test_draining_ends_the_stream_with_a_close_event() -> None:
    service = ServiceProcess({"DRAIN_S": "0.5"})
    service.start()
    try:
        async with await open_sse(service.url + "/sse?symbols=OGDC") as stream:
            await stream.event_of("snapshot")
            assert service.proc is not None
            service.proc.send_signal(signal.SIGTERM)
            events = await stream.until_end(timeout=10)
            assert events[-1].kind == "close"
            assert events[-1].json == {"type": "close", "code": 1001,
                                       "reason": "server shutting down"}
            assert stream.ended  # the response ended, as EventSource then reconnects
        # uvicorn re-raises the SIGTERM it caught once shutdown is complete.
        assert service.proc.wait(15) in (0, -signal.SIGTERM)
        assert '"event":"stop"' in service.log()
    finally:
        service.stop()


async def test_a_client_that_stops_reading_is_ended_by_the_send_timeout() -> None:
    with serving({"SEND_TIMEOUT_S": "1", "TCP_SEND_BUFFER": "4096", "SIM_RATE": "2000",
                  "HEARTBEAT_S": "5"}, ready="/readyz") as service:
        stream = await open_sse(service.url + "/sse?symbols=*&mode=every", recv_buffer=4096)
        try:
            await stream.event_of("welcome")
            assert readyz(service)["connections"] == 1
            # Not reading any more: the socket's buffers fill, then the server's write hangs.
            wait_until(lambda: readyz(service)["connections"] == 0, 20,
                       "a stalled stream ended")
            assert "closing the event stream of" in service.log()
            assert "a send took over 1.0s" in service.log()
            assert gauge(service, "slow_client_disconnects_total") >= 1
            # Its connection was dropped, not left to drain: reading on meets its end.
            with pytest.raises((StreamEnded, ConnectionError)):
                async with asyncio.timeout(10):
                    while True:
                        await stream.event()
        finally:
            await stream.close()


async def test_through_the_projects_nginx_events_arrive_as_they_are_sent(
        tmp_path: Path) -> None:
    """deploy/nginx.conf in front (two upstreams, as it is written): nothing is buffered,
    so heartbeats half a second apart arrive half a second apart."""
    env = {"HEARTBEAT_S": "0.5"}
    with serving(env) as one, serving(env) as two, nginx([one.port, two.port], tmp_path) as proxy:
        async with await open_sse(f"http://127.0.0.1:{proxy.port}/sse?symbols=NOPE") as stream:
            assert stream.status == 200
            assert stream.headers["content-type"] == "text/event-stream"
            assert "x-accel-buffering" not in stream.headers  # nginx's, not passed on
            await stream.event_of("welcome")
            assert (await stream.event()).kind == "ack"
            first = await stream.event(timeout=3)
            arrived = time.monotonic()
            second = await stream.event(timeout=3)
            assert first.kind == second.kind == "heartbeat"
            assert 0.2 < time.monotonic() - arrived < 2


# With Redis and the real publisher


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[str, ServiceProcess]]:
    with redis_server() as server, feed_stack(server.url, 200, {"HEARTBEAT_S": "2"}) as (
            service, _):
        wait_until(lambda: http_get(service.url + "/readyz")[0] == 200
                   and readyz(service)["symbols"] == 34, 15, "the feed live, every symbol in")
        yield server.url, service


def tape(url: str, symbol: str) -> dict[int, dict[str, Any]]:
    """seq -> the quote, of everything on the symbol's tape (Redis Stream)."""
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        entries: Any = client.xrange(LAYOUT.tape(symbol))
    finally:
        client.close()
    quotes = [orjson.loads(fields[b"q"]) for _, fields in entries]
    return {q["seq"]: q for q in quotes}


SYMBOLS = ("OGDC", "PPL", "HBL", "KSE100")


async def test_with_redis_a_stream_carries_the_same_frames(
        stack: tuple[str, ServiceProcess]) -> None:
    _, service = stack
    async with await open_sse(service.url + "/sse?symbols=" + ",".join(SYMBOLS)) as stream:
        assert_one_event(await stream.event(), "welcome", has_id=False)
        ack = await stream.event()
        assert_one_event(ack, "ack", has_id=False)
        assert ack.json["symbols"] == sorted(SYMBOLS) and ack.json["unknown"] == []
        tracker = Tracker()
        snapshot = await stream.event()
        assert_one_event(snapshot, "snapshot", has_id=True)
        tracker.take(snapshot)
        assert set(tracker.position) == set(SYMBOLS)
        events = await tracker.read_until(stream, lambda: len(tracker.seen) == 4, timeout=15)
        for event in events:
            assert_one_event(event, "quotes", has_id=True)


async def test_with_redis_every_mode_resumes_after_a_disconnect_exactly_as_the_tape_has_it(
        stack: tuple[str, ServiceProcess]) -> None:
    url, service = stack
    stream_url = service.url + "/sse?mode=every&symbols=" + ",".join(SYMBOLS)

    def enough(tracker: Tracker, n: int) -> Callable[[], bool]:
        return lambda: all(len(tracker.seen.get(s, ())) >= n for s in SYMBOLS)

    async with await open_sse(stream_url) as first:
        await first.event_of("welcome")
        assert (await first.event()).json["mode"] == "every"
        tracker = Tracker()
        tracker.take(await first.event_of("snapshot"))
        start = dict(tracker.position)
        await tracker.read_until(first, enough(tracker, 3), timeout=20)
        left_at = decode_position(first.last_event_id)
    # Away for a while: the publisher goes on, and each symbol gets quotes we did not see.
    wait_until(lambda: all(max(tape(url, s)) >= left_at[s] + 3 for s in SYMBOLS), 20,
               "every symbol moved on while the client was away")
    async with await open_sse(stream_url, {"Last-Event-ID": encode_position(left_at)}) as again:
        await again.event_of("welcome")
        ack = (await again.event()).json
        assert ack["recovered"] is True and "unrecovered" not in ack, ack
        resumed = Tracker(left_at)
        events = await resumed.read_until(again, enough(resumed, 6), timeout=20)
        assert "snapshot" not in [e.kind for e in events]
    for symbol in SYMBOLS:
        # The first stream: every seq after its snapshot; the second: every seq after the
        # position it resumed from, nothing missed and nothing repeated.
        before = tracker.seen[symbol]
        assert before == list(range(start[symbol] + 1, start[symbol] + 1 + len(before)))
        assert before[-1] == left_at[symbol]
        after = resumed.seen[symbol]
        assert after == list(range(left_at[symbol] + 1, left_at[symbol] + 1 + len(after)))
        # And each quote is the one the publisher wrote on the tape for that seq.
        on_tape = tape(url, symbol)
        for seq in [*before, *after]:
            got = (tracker if seq in before else resumed).quotes[symbol, seq]
            assert got == on_tape[seq], (symbol, seq)
