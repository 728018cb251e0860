"""The SSE stream without sockets: the resume position, the event text, the query, and an
EventStream driven through a real Hub with a fake ASGI send and receive."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.routing import Route

from service import protocol, uvicorn_private
from service.app import WebApp
from service.forwarded import behind_proxies
from service.hub import Hub
from service.protocol import ALL, ProtocolError
from service.security import SecurityHeaders
from service.settings import Settings
from service.sse import (
    RETRY_MS,
    EventStream,
    StreamRequest,
    advance,
    close_event,
    decode_position,
    encode_position,
    format_event,
    frame_type,
    parse_request,
)
from service.tape.memory import MemoryTape
from service.tiers import Tier
from service.wire import Frame

from .test_every import Market
from .test_hub import q

# The position


def test_the_position_is_symbol_colon_seq_sorted_by_symbol() -> None:
    assert encode_position({"PPL": 901, "OGDC": 5812, "KSE100": 7}) == "KSE100:7,OGDC:5812,PPL:901"
    assert encode_position({}) == ""
    assert encode_position({"BRK.B": 1, "A-1": 0}) == "A-1:0,BRK.B:1"


def test_a_position_decodes_to_what_was_encoded() -> None:
    position = {"OGDC": 5812, "PPL": 901, "BRK.B": 0}
    assert decode_position(encode_position(position)) == position
    assert decode_position("") == {} and decode_position("  ") == {}
    assert decode_position(" ogdc:3 , PPL:4") == {"OGDC": 3, "PPL": 4}  # as symbols are


@pytest.mark.parametrize("raw", ["OGDC", "OGDC:", "OGDC:-1", "OGDC:1.5", "OGDC:x", ":5",
                                 "OGDC:1,", "OGDC:1,,PPL:2", "OG DC:1", "OGDC:1:2",
                                 "OGDC:1,OGDC:2", "OGDC:١", "A" * 17 + ":1",
                                 "OGDC:" + "9" * 17])
def test_anything_else_is_a_bad_request(raw: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        decode_position(raw, "Last-Event-ID")
    assert exc.value.code == "bad_request" and "Last-Event-ID" in exc.value.message


def entry(symbol: str, seq: int) -> tuple[str, int, str]:
    return symbol, seq, q(symbol, 1, seq).to_json().decode()


def test_advance_keeps_the_highest_seq_of_each_symbol() -> None:
    position = {"OGDC": 10, "HBL": 3}
    advance(position, Frame("quotes", [entry("OGDC", 11), entry("OGDC", 12), entry("PPL", 4)]))
    assert position == {"OGDC": 12, "HBL": 3, "PPL": 4}
    # A snapshot may carry an older state than a recovery reached: the position never falls.
    _, seq, text = entry("OGDC", 5)
    advance(position, Frame("snapshot", {"OGDC": (seq, text)}))
    assert position["OGDC"] == 12


def test_a_frame_of_quotes_carries_the_seqs_its_text_holds() -> None:
    """What SSE reads off the frame instead of parsing its text back (wire.py)."""
    every = Frame("quotes", [entry("OGDC", 11), entry("PPL", 4), entry("OGDC", 12)])
    latest = Frame("snapshot", {"PPL": entry("PPL", 4)[1:], "OGDC": entry("OGDC", 12)[1:]})
    for frame in (every, latest):
        parsed = orjson.loads(frame.text)
        assert parsed["type"] == frame.kind
        assert list(frame.seqs()) == [(x["symbol"], x["seq"]) for x in parsed["quotes"]]


# Events


@pytest.mark.parametrize(("frame", "kind"), [
    (protocol.welcome(node="n", heartbeat_s=15, max_symbols=1, max_client_msgs_per_s=1,
                      max_frame_bytes=1, every_queue_bytes=1, max_recovery=1), "welcome"),
    (protocol.ack(None, "subscribe", ["OGDC"], [], all=False), "ack"),
    (protocol.status("stale", 1), "status"),
    (protocol.heartbeat(1), "heartbeat"),
    (protocol.error("bad_request", "no"), "error"),
    (protocol.pong(1, 1), "pong"),
    ('{"ts": 1, "type": "odd"}', "message"),  # not built by protocol.py: not parsed either
])
def test_the_frame_type_is_read_off_the_frame(frame: str, kind: str) -> None:
    assert frame_type(frame) == kind


def test_the_event_text() -> None:
    assert format_event("heartbeat", '{"type":"heartbeat","ts":1}') == (
        'event: heartbeat\ndata: {"type":"heartbeat","ts":1}\n\n')
    assert format_event("quotes", '{"type":"quotes","quotes":[]}', "OGDC:5") == (
        'event: quotes\nid: OGDC:5\ndata: {"type":"quotes","quotes":[]}\n\n')
    # Line breaks cannot end the event early: each line is a data line of its own.
    assert format_event("x", '{\r\n"a":\r1\n}') == 'event: x\ndata: {\ndata: "a":\ndata: 1\ndata: }\n\n'
    assert close_event(4008, "slow consumer") == (
        'event: close\ndata: {"type":"close","code":4008,"reason":"slow consumer"}\n\n')


# The query


def request(query: dict[str, str], headers: dict[str, str] | None = None,
            max_symbols: int = 10) -> StreamRequest:
    return parse_request(query, headers or {}, max_symbols)


def test_a_plain_stream_is_conflated_at_the_default_rate() -> None:
    assert request({"symbols": "ogdc,PPL"}) == StreamRequest(frozenset({"OGDC", "PPL"}))
    assert request({"symbols": "*", "max_hz": "4"}) == StreamRequest(ALL, max_hz=4.0)


def test_conflated_mode_ignores_last_event_id() -> None:
    assert request({"symbols": "OGDC"}, {"last-event-id": "OGDC:5"}).since is None
    assert request({"symbols": "OGDC"}, {"last-event-id": "junk"}).since is None


def test_every_mode_resumes_from_since_or_last_event_id_which_wins() -> None:
    assert request({"symbols": "OGDC,PPL", "mode": "every"}) == StreamRequest(
        frozenset({"OGDC", "PPL"}), "every")
    assert request({"symbols": "OGDC,PPL", "mode": "every", "since": "OGDC:5"}).since == {"OGDC": 5}
    resumed = request({"symbols": "OGDC,PPL", "mode": "every", "since": "OGDC:5"},
                      {"last-event-id": "OGDC:9,PPL:2"})
    assert resumed.since == {"OGDC": 9, "PPL": 2}
    # Symbols the URL no longer subscribes are left out of a Last-Event-ID; with "*" none is.
    assert request({"symbols": "OGDC", "mode": "every"},
                   {"last-event-id": "OGDC:9,PPL:2"}).since == {"OGDC": 9}
    assert request({"symbols": "*", "mode": "every"},
                   {"last-event-id": "OGDC:9,PPL:2"}).since == {"OGDC": 9, "PPL": 2}
    assert request({"symbols": "OGDC", "mode": "every"}, {"last-event-id": ""}).since is None


@pytest.mark.parametrize(("query", "headers", "code"), [
    ({}, {}, "bad_request"),
    ({"symbols": ""}, {}, "bad_request"),
    ({"symbols": "OGDC,??"}, {}, "bad_request"),
    ({"symbols": ",".join(f"S{i}" for i in range(11))}, {}, "too_many_symbols"),
    ({"symbols": "OGDC", "max_hz": "abc"}, {}, "bad_request"),
    ({"symbols": "OGDC", "max_hz": "100"}, {}, "bad_request"),
    ({"symbols": "OGDC", "mode": "all"}, {}, "bad_request"),
    ({"symbols": "OGDC", "mode": "every", "max_hz": "4"}, {}, "bad_request"),
    ({"symbols": "OGDC", "since": "OGDC:1"}, {}, "bad_request"),
    ({"symbols": "OGDC", "mode": "every", "since": "PPL:1"}, {}, "bad_request"),
    ({"symbols": "OGDC", "mode": "every", "since": "OGDC"}, {}, "bad_request"),
    ({"symbols": "OGDC", "mode": "every"}, {"last-event-id": "OGDC:x"}, "bad_request"),
])
def test_a_bad_query_is_refused_with_the_protocols_code(
        query: dict[str, str], headers: dict[str, str], code: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        request(query, headers)
    assert exc.value.code == code


# The stream, through a real hub


class Client:
    """The ASGI side of one response: what was sent, a send that can be held back (a
    peer that stopped reading), and a disconnect on demand."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.open = asyncio.Event()
        self.open.set()
        self.gone = asyncio.Event()
        self.changed = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        await self.open.wait()
        self.messages.append(message)
        self.changed.set()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    @property
    def text(self) -> str:
        return b"".join(m.get("body", b"") for m in self.messages[1:]).decode()

    def events(self) -> list[tuple[str, str | None, Any]]:
        """(event, id, data as JSON) of each complete event so far."""
        out = []
        for block in self.text.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "event" in fields:
                out.append((fields["event"], fields.get("id"), orjson.loads(fields["data"])))
        return out

    async def until(self, check: Callable[[], bool], timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()

    @property
    def ended(self) -> bool:
        return bool(self.messages) and self.messages[-1].get("more_body") is False


SETTINGS = Settings(heartbeat_s=5, send_timeout_s=2, every_queue_bytes=4000, max_symbols=10)


async def started(hub: Hub, req: StreamRequest, settings: Settings = SETTINGS
                  ) -> tuple[EventStream, Client, asyncio.Task[None]]:
    stream = EventStream(Tier(hub), settings, req)
    stream.open()
    client = Client()
    task = asyncio.get_running_loop().create_task(stream.run(client.receive, client.send))  # type: ignore[arg-type]
    await client.until(lambda: any(e[0] == "welcome" for e in client.events()))
    return stream, client, task


async def ended(task: Awaitable[None]) -> None:
    async with asyncio.timeout(2):
        await task


async def test_a_stream_starts_with_retry_and_welcome_then_ack_snapshot_and_quotes() -> None:
    hub = Hub(max_symbols=10, default_hz=None)
    hub.set_feed("live")
    hub.publish([q("OGDC", 137.75, 1), q("PPL", 125.05, 7)])
    stream, client, task = await started(hub, StreamRequest(frozenset({"OGDC", "PPL", "NEW"})))
    start = client.messages[0]
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-type"] == b"text/event-stream"
    assert client.text.startswith(f"retry: {RETRY_MS}\n\nevent: welcome\ndata: {{")
    await client.until(lambda: len(client.events()) >= 3)
    hub.publish([q("OGDC", 138, 2)])
    await client.until(lambda: len(client.events()) >= 4)
    hub.publish([q("NEW", 5, 1), q("OGDC", 139, 3)])
    await client.until(lambda: len(client.events()) >= 5)
    (welcome, _, w), (ack, ack_id, a), (snap, snap_id, s), (quotes, id1, _), (_, id2, _) = (
        client.events())
    assert (welcome, w["limits"]["every_queue_bytes"]) == ("welcome", 4000)
    assert (ack, ack_id, a["unknown"], a["id"]) == ("ack", None, ["NEW"], None)
    assert (snap, snap_id) == ("snapshot", "OGDC:1,PPL:7")
    assert [x["seq"] for x in s["quotes"]] == [1, 7]
    # Each id is the whole position so far: symbols that did not move in this frame too.
    assert (quotes, id1, id2) == ("quotes", "OGDC:2,PPL:7", "NEW:1,OGDC:3,PPL:7")
    assert stream in hub.members
    client.gone.set()
    await ended(task)
    assert stream not in hub.members and not hub.groups


async def test_every_mode_resumes_from_the_tape_with_positions_as_ids() -> None:
    tape = MemoryTape(1000, 86_400)
    hub = Hub(max_symbols=10, tape=tape)
    hub.set_feed("live")
    market = Market(hub, tape)
    market.publish("OGDC", 20)
    market.publish("PPL", 5)
    req = StreamRequest(frozenset({"OGDC", "PPL"}), "every", since={"OGDC": 15, "PPL": 5})
    _, client, task = await started(hub, req)
    market.publish("OGDC", 2)
    await client.until(lambda: sum(len(d.get("quotes", ())) for _, _, d in client.events()) >= 7)
    events = client.events()
    assert events[1][2] == {"type": "ack", "id": None, "op": "subscribe",
                            "symbols": ["OGDC", "PPL"], "unknown": [], "mode": "every",
                            "recovered": True}
    seqs = [x["seq"] for kind, _, d in events if kind == "quotes" for x in d["quotes"]]
    assert seqs == list(range(16, 23))
    assert events[-1][1] == "OGDC:22,PPL:5"
    client.gone.set()
    await ended(task)


async def test_a_slow_consumer_gets_what_was_queued_then_a_close_event_and_the_end() -> None:
    tape = MemoryTape(1000, 86_400)
    hub = Hub(max_symbols=10, tape=tape, every_queue_bytes=SETTINGS.every_queue_bytes)
    market = Market(hub, tape)
    stream, client, task = await started(hub, StreamRequest(frozenset({"OGDC"}), "every"))
    client.open.clear()  # the peer stops reading: the write in flight never finishes
    market.publish("OGDC")
    await asyncio.sleep(0.01)
    for _ in range(100):
        market.publish("OGDC")
    assert stream.closing == (4008, "slow consumer")
    assert stream not in hub.every.subs  # nothing more piles up for it
    client.open.set()
    await ended(task)
    assert client.ended
    kind, _, data = client.events()[-1]
    assert (kind, data) == ("close", {"type": "close", "code": 4008, "reason": "slow consumer"})
    assert client.text.endswith('event: close\ndata: {"type":"close","code":4008,'
                                '"reason":"slow consumer"}\n\n')
    assert stream not in hub.members
    assert hub.stats["slow_consumer_closed"] == 1


async def test_close_ends_the_stream_after_what_is_due() -> None:
    hub = Hub(max_symbols=10, default_hz=None)
    hub.publish([q("OGDC", 137.75, 1)])
    stream, client, task = await started(hub, StreamRequest(frozenset({"OGDC"})))
    hub.publish([q("OGDC", 138, 2)])
    stream.close(protocol.CLOSE_GOING_AWAY, "server shutting down")
    await ended(task)
    assert [e[0] for e in client.events()][-2:] == ["quotes", "close"]
    assert client.events()[-1][2]["code"] == 1001 and client.ended
    assert stream not in hub.members


async def test_the_sweeper_sends_heartbeats_and_ends_a_stuck_write() -> None:
    hub = Hub(max_symbols=10, default_hz=None)
    stream, client, task = await started(hub, StreamRequest(frozenset({"OGDC"})))
    now = asyncio.get_running_loop().time()
    stream.check(now + 1)  # not silent for long: nothing
    stream.check(now + SETTINGS.heartbeat_s + 0.1)
    await client.until(lambda: client.events()[-1][0] == "heartbeat")
    assert client.events()[-1][1] is None  # no id: the position is not a heartbeat's
    client.open.clear()
    hub.publish([q("OGDC", 1, 1)])
    await asyncio.sleep(0.01)
    assert stream.sending_since is not None
    stream.check(stream.sending_since + SETTINGS.send_timeout_s / 2)
    assert not task.done()
    stream.check(stream.sending_since + SETTINGS.send_timeout_s + 0.1)
    await ended(task)
    assert stream not in hub.members and not client.ended
    assert hub.stats["slow_consumer_closed"] == 1


async def test_the_transport_is_found_through_the_services_middleware_stack() -> None:
    """As app.py and server.py wrap the route: uvicorn's proxy-header layers, WebApp, then
    Starlette's error and exception middleware and ours, each with a send of its own. The
    route still finds the server's own send in the scope, and the transport behind it."""
    found = []

    class Probe:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            found.append(uvicorn_private.transport_of(uvicorn_private.server_send(scope)))
            await Response("ok")(scope, receive, send)

    class Transport:
        aborted = False

        def abort(self) -> None:
            self.aborted = True

    class Cycle:  # uvicorn's request cycle: its send is a method, beside the transport
        def __init__(self) -> None:
            self.transport = Transport()
            self.sent: list[Any] = []

        async def send(self, message: Any) -> None:
            self.sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    app = behind_proxies(WebApp(routes=[Route("/x", Probe())],
                                  middleware=[Middleware(SecurityHeaders)]), "127.0.0.1")
    cycle = Cycle()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/x", "raw_path": b"/x",
             "root_path": "", "query_string": b"", "headers": [],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    await app(scope, receive, cycle.send)
    assert found == [cycle.transport]
    assert cycle.sent[0]["status"] == 200
    assert uvicorn_private.abort(cycle.send) and cycle.transport.aborted

    async def other(message: Any) -> None:  # another server's send: nothing to abort
        pass

    assert uvicorn_private.transport_of(other) is None and not uvicorn_private.abort(other)
    assert uvicorn_private.transport_of(None) is None

