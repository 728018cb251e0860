"""docs/asyncapi.yaml against the code: its shape, its references, its examples, and real
frames of every server type from running services validated against its schemas, in
protocol 1 and in the compact encoding (`?encoding=compact`), whose quote frames are also
decoded as docs/PROTOCOL.md says and compared with what a protocol-1 client receives.

The validation is strict where the document is lenient: the document lets clients ignore
unknown fields (additional properties allowed), but here every field a real frame carries
must be declared, so a field added to the code without the document fails this test.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7

from quote_core.quote import Quote, derived_change
from service import protocol
from tests.redis_server import start_redis_server
from tests.service_proc import ROOT, ServiceProcess, http_get, replay, run_service, wait_publisher_silent
from tests.sseclient import open_sse
from tests.wsclient import ClientConnection, connect, recv

DOC_PATH = ROOT / "docs" / "asyncapi.yaml"
DOC: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
SERVER_TYPES = {"welcome", "ack", "snapshot", "quotes", "pong", "status", "heartbeat", "error"}
COMPACT = "compactQuotes"  # the compact encoding's quotes frame: an array, without `type`
SERVER_MESSAGES = SERVER_TYPES | {COMPACT}
CLIENT_OPS = {"subscribe", "unsubscribe", "ping", "auth"}
BASE = "urn:psx-quotes:asyncapi"


def _strict(node: Any) -> Any:
    """Every object schema that lists properties and says nothing else about extra ones
    gets additionalProperties: false (a copy; the document stays lenient)."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def _validators(document: dict[str, Any]) -> dict[str, Draft7Validator]:
    """A validator per message, resolving `$ref`s inside the document."""
    registry: Registry[Any] = Registry().with_resource(BASE, DRAFT7.create_resource(document))
    return {name: Draft7Validator({"$ref": f"{BASE}#/components/messages/{name}/payload"},
                                  registry=registry)
            for name in document["components"]["messages"]}


LENIENT = _validators(copy.deepcopy(DOC))
STRICT = _validators(_strict(DOC))


def message_of(frame: dict[str, Any] | list[Any]) -> str:
    """The document's message for a frame: an array is the compact quotes frame, an object
    is named by its `type` (or `op`)."""
    if isinstance(frame, list):
        return COMPACT
    name = frame.get("type") or frame.get("op")
    assert isinstance(name, str), f"a frame without type or op: {frame}"
    return name


def check_frame(frame: dict[str, Any] | list[Any]) -> None:
    """Validate a real frame against the message its `type` (or `op`) names."""
    name = message_of(frame)
    assert name in LENIENT, f"no message in the document for {frame}"
    for validators in (LENIENT, STRICT):
        errors = sorted(validators[name].iter_errors(frame), key=lambda e: list(e.path))
        assert not errors, f"{name} frame {frame} breaks the schema: " + "; ".join(
            f"{list(e.path)}: {e.message}" for e in errors)


def _pointer(ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = DOC
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


# The document itself


def test_document_is_asyncapi_3_shaped() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    assert DOC["info"]["title"] and DOC["info"]["version"]
    assert DOC["servers"]["local"]["protocol"] == "ws"
    (channel,) = DOC["channels"].values()
    assert channel["address"] == "/ws"
    assert channel["bindings"]["ws"]["query"]["properties"]["symbols"]["type"] == "string"
    assert channel["bindings"]["ws"]["query"]["properties"]["max_hz"]["type"] == "string"
    assert channel["bindings"]["ws"]["query"]["properties"]["encoding"]["enum"] == [
        "json", "compact"]
    assert set(channel["messages"]) == SERVER_MESSAGES | CLIENT_OPS
    assert set(DOC["components"]["messages"]) == SERVER_MESSAGES | CLIENT_OPS
    for name, operation in DOC["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        assert operation["channel"] == {"$ref": "#/channels/quotes"}, name
        for ref in [m["$ref"] for m in operation["messages"]] + [
                m["$ref"] for m in operation.get("reply", {}).get("messages", [])]:
            # An operation's messages must be messages of its channel (AsyncAPI 3).
            assert ref.startswith("#/channels/quotes/messages/"), (name, ref)


def test_every_reference_resolves() -> None:
    refs = list(_refs(DOC))
    assert len(refs) > 50
    for ref in refs:
        _pointer(ref)


def test_operations_cover_every_frame_in_the_right_direction() -> None:
    sent: set[str] = set()
    received: set[str] = set()
    for operation in DOC["operations"].values():
        names = {m["$ref"].rsplit("/", 1)[1] for m in operation["messages"]}
        (received if operation["action"] == "receive" else sent).update(names)
        sent.update(m["$ref"].rsplit("/", 1)[1] for m in operation.get("reply", {}).get("messages", []))
    assert received == CLIENT_OPS
    assert sent == SERVER_MESSAGES


def test_codes_match_the_protocol_module() -> None:
    codes = {v for k, v in vars(protocol).items() if k.isupper() and isinstance(v, str)
             and k not in ("ALL",) and re.fullmatch(r"[a-z_]+", v)}
    assert set(DOC["components"]["schemas"]["ErrorCode"]["enum"]) == codes
    close = {v for k, v in vars(protocol).items() if k.startswith("CLOSE_")}
    assert {int(c) for c in DOC["channels"]["quotes"]["x-close-codes"]} == close
    for code in close:
        assert f"| {code} |" in DOC["channels"]["quotes"]["description"]
    assert DOC["components"]["schemas"]["Welcome"]["properties"]["protocol"]["const"] == (
        protocol.PROTOCOL_VERSION)


def test_examples_in_the_document_validate() -> None:
    count = 0
    for name, message in DOC["components"]["messages"].items():
        assert message.get("examples"), f"message {name} has no example"
        for example in message["examples"]:
            payload = example["payload"]
            check_frame(payload)
            quotes = payload[1:] if isinstance(payload, list) else payload.get("quotes", ())
            for quote in quotes:
                if isinstance(quote, dict):
                    Quote.from_dict(quote, require_seq=True)  # the code agrees with the example
            count += 1
    assert count >= 14


def test_examples_in_protocol_md_validate() -> None:
    """The prose contract's JSON lines are messages of this document too."""
    checked = set()
    for frame in _protocol_md_frames():
        check_frame(frame)
        checked.add(message_of(frame))
    assert checked >= CLIENT_OPS | {"welcome", "ack", "pong", "status", "heartbeat", "error",
                                    "snapshot", "quotes", COMPACT}


def _protocol_md_frames() -> list[dict[str, Any] | list[Any]]:
    """The JSON lines of docs/PROTOCOL.md that are frames: objects with `op` or `type`, and
    compact quotes frames (arrays that start with an integer)."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    frames: list[dict[str, Any] | list[Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith(('{"op"', '{"type"')) and not re.match(r"\[\d", line):
            continue
        try:
            frame = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # `[QUOTE, ...]` placeholders
        if isinstance(frame, list) and not (frame and type(frame[0]) is int):
            continue
        frames.append(frame)
    return frames


class CompactDecoder:
    """A client of the compact encoding, as docs/PROTOCOL.md describes it: it learns indexes
    from quote objects carrying `i`, applies delta entries to what it holds, and yields the
    quotes a protocol-1 client would have received (without `i`)."""

    def __init__(self) -> None:
        self.symbols: dict[int, str] = {}
        self.held: dict[str, dict[str, Any]] = {}
        self.deltas = 0
        self.full = 0

    def _learn(self, quote: dict[str, Any]) -> dict[str, Any]:
        assert isinstance(quote.get("i"), int), f"a compact session's quote without i: {quote}"
        known = self.symbols.setdefault(quote["i"], quote["symbol"])
        assert known == quote["symbol"], f"index {quote['i']} was {known}, now {quote}"
        plain = {k: v for k, v in quote.items() if k != "i"}
        self.held[quote["symbol"]] = plain
        return plain

    def frame(self, frame: dict[str, Any] | list[Any]) -> list[dict[str, Any]]:
        """The protocol-1 quotes this frame stands for ([] for frames without quotes)."""
        if isinstance(frame, dict):
            if frame.get("type") not in ("snapshot", "quotes"):
                return []
            return [self._learn(quote) for quote in frame["quotes"]]
        assert type(frame[0]) is int and len(frame) >= 2, frame
        t = frame[0]
        out = []
        for entry in frame[1:]:
            if isinstance(entry, dict):
                quote = self._learn(entry)
                self.full += 1
            else:
                i, price, dseq, dts, *rest = entry
                assert i in self.symbols, f"a delta for index {i}, never announced: {frame}"
                held = self.held[self.symbols[i]]
                change, change_pct = derived_change(price, held["prev_close"])
                quote = {**held, "price": price, "seq": held["seq"] + dseq, "ts": t + dts,
                         "change": change, "change_pct": change_pct}
                for name, value in (rest[0] if rest else {}).items():
                    if value is None:
                        quote.pop(name, None)
                    else:
                        quote[name] = value
                self.held[quote["symbol"]] = quote
                self.deltas += 1
            t = quote["ts"]
            out.append(quote)
        return out


def test_the_compact_example_of_protocol_md_decodes_to_its_protocol_1_frame() -> None:
    """The snapshot with `i`, the compact frame after it and the protocol-1 frame it stands
    for, as docs/PROTOCOL.md shows them, agree: the example is the rule applied."""
    frames = _protocol_md_frames()
    (compact,) = [f for f in frames if isinstance(f, list)]
    at = frames.index(compact)
    snapshot = next(f for f in reversed(frames[:at]) if isinstance(f, dict)
                    and f.get("type") == "snapshot" and all("i" in q for q in f["quotes"]))
    protocol_1 = frames[at + 1]
    assert isinstance(protocol_1, dict) and protocol_1["type"] == "quotes"
    decoder = CompactDecoder()
    decoder.frame(snapshot)
    decoded = decoder.frame(compact)
    assert decoded == protocol_1["quotes"]
    assert decoder.deltas and decoder.full
    for quote in decoded:
        assert Quote.from_dict(quote, require_seq=True).to_dict() == quote
    yaml_example = DOC["components"]["messages"][COMPACT]["examples"][0]["payload"]
    assert yaml_example == compact, "the document's example is PROTOCOL.md's"


def test_a_frame_that_breaks_the_schema_is_caught() -> None:
    """The checker itself: a wrong kind, a missing seq, an unknown field all fail."""
    good = DOC["components"]["messages"]["snapshot"]["examples"][0]["payload"]
    for broken in ({"kind": "bond"}, {"seq": None}, {"colour": "green"}, {"price": 0},
                   {"i": -1}, {"i": "0"}):
        frame = copy.deepcopy(good)
        frame["quotes"][0].update(broken)
        if broken == {"seq": None}:
            del frame["quotes"][0]["seq"]
        with pytest.raises(AssertionError):
            check_frame(frame)
    compact = DOC["components"]["messages"][COMPACT]["examples"][0]["payload"]
    check_frame(compact)
    full = {k: v for k, v in compact[2].items() if k != "i"}
    for frame in ([], [compact[0]], ["1624435200400", *compact[1:]], [compact[0], full],
                  [compact[0], [0, 137.8, 0, 5]], [compact[0], [0, 137.8, 1]],
                  [compact[0], [0, 137.8, 1, 5.5]], [compact[0], [-1, 137.8, 1, 5]],
                  [compact[0], [0, 137.8, 1, 5, {}]], [compact[0], [0, 137.8, 1, 5, {"colour": 1}]],
                  [compact[0], [0, 137.8, 1, 5, {"state": "asleep"}]],
                  [compact[0], [0, 137.8, 1, 5, {"volume": 1}, 0]]):
        with pytest.raises(AssertionError):
            check_frame(frame)


# Real frames from running services


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    yield from run_service({"SIM_RATE": "100", "HEARTBEAT_S": "0.3", "MAX_SYMBOLS": "10",
                            "MAX_CLIENT_MSGS_PER_S": "20"}, ready="/readyz")


class Recorder:
    """Every frame a websocket received, validated as it arrives."""

    def __init__(self) -> None:
        self.by_type: dict[str, list[dict[str, Any]]] = {}
        self.errors: set[str] = set()

    def note(self, frame: Any) -> Any:
        check_frame(frame)
        name = message_of(frame)
        self.by_type.setdefault(name, []).append(frame)
        if name == "error":
            self.errors.add(frame["code"])
        return frame

    async def until(self, ws: ClientConnection, kind: str, timeout: float = 5.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                frame = self.note(await recv(ws, timeout))
                if message_of(frame) == kind:
                    return frame


async def send(ws: ClientConnection, message: dict[str, Any] | str | bytes) -> None:
    if isinstance(message, dict):
        check_frame(message)  # what we send is a documented client message too
        message = orjson.dumps(message).decode()
    await ws.send(message)


async def test_every_frame_of_the_embedded_service_matches(service: ServiceProcess) -> None:
    seen = Recorder()
    async with connect(service.ws_url) as ws:
        seen.note(await recv(ws))
        await send(ws, {"op": "ping", "id": "p1"})
        await seen.until(ws, "pong")
        await seen.until(ws, "heartbeat", timeout=3)  # nothing subscribed: only heartbeats
        await send(ws, {"op": "subscribe", "id": 1, "symbols": ["ogdc", "KSE100", "NOPE"]})
        ack = await seen.until(ws, "ack")
        assert ack["unknown"] == ["NOPE"]
        await seen.until(ws, "snapshot")
        for _ in range(5):
            await seen.until(ws, "quotes")
        await send(ws, {"op": "unsubscribe", "id": 2, "symbols": ["NOPE"]})
        await seen.until(ws, "ack")
        await send(ws, {"op": "subscribe", "id": 3, "symbols": "*"})
        assert (await seen.until(ws, "ack")).get("all") is True
        await seen.until(ws, "snapshot")
        await send(ws, {"op": "unsubscribe", "id": "u", "symbols": ["PPL"]})
        assert "all" not in await seen.until(ws, "ack")
        await send(ws, {"op": "unsubscribe", "id": 4, "symbols": "*"})
        await seen.until(ws, "ack")
        await send(ws, {"op": "subscribe", "id": 7, "symbols": ["OGDC"], "max_hz": 4})
        assert (await seen.until(ws, "ack"))["max_hz"] == 4
        await seen.until(ws, "quotes")
        await send(ws, {"op": "subscribe", "id": 8, "symbols": [], "max_hz": 2.5})
        assert (await seen.until(ws, "ack"))["max_hz"] == 2.5
        await send(ws, {"op": "unsubscribe", "id": 9, "symbols": "*"})
        await seen.until(ws, "ack")
        bad: list[str | bytes] = [
            "{not json", "[1]", '{"op":"teleport","id":5}',
            orjson.dumps({"op": "subscribe", "id": 6,
                          "symbols": [f"S{i}" for i in range(11)]}).decode(),
            '{"op":"ping","pad":"' + "x" * 5000 + '"}', b'{"op":"ping"}',
        ]
        for message in bad:
            await send(ws, message)
            await seen.until(ws, "error")
        assert seen.errors == {"bad_json", "bad_request", "unknown_op", "too_many_symbols",
                               "frame_too_large"}
        await asyncio.sleep(1.1)  # a fresh second of allowance, then a burst past it
        for i in range(25):
            await send(ws, {"op": "ping", "id": 100 + i})
        while "rate_limited" not in seen.errors:
            await seen.until(ws, "error")
        ids = {f.get("id") for f in seen.by_type["error"]}
        assert 5 in ids and 6 in ids, "errors echo valid ids"
    async with connect(service.ws_url + "?symbols=OGDC,PPL") as ws:
        assert (await seen.until(ws, "ack"))["id"] is None
        await seen.until(ws, "snapshot")
    async with connect(service.ws_url + "?symbols=OGDC,%3Cb%3E") as ws:
        assert "id" not in await seen.until(ws, "error")
    async with connect(service.ws_url + "?symbols=OGDC&max_hz=0.5") as ws:
        assert (await seen.until(ws, "ack"))["max_hz"] == 0.5
        await seen.until(ws, "snapshot")
    assert set(seen.by_type) == SERVER_TYPES - {"status"}
    # A client that does not ask for an encoding gets protocol 1: no `encoding`, no `i`.
    assert all("encoding" not in f for f in seen.by_type["welcome"])
    assert not [q for kind in ("snapshot", "quotes") for f in seen.by_type[kind]
                for q in f["quotes"] if "i" in q]


# The compact encoding (`?encoding=compact`)


def _has_indexed_snapshot(seen: Recorder) -> bool:
    return any(all("i" in q for q in f["quotes"]) for f in seen.by_type.get("snapshot", ()))


async def _compact_beside_protocol_1(service: ServiceProcess, query: str, seconds: float = 3.0
                                     ) -> tuple[Recorder, CompactDecoder, int]:
    """A compact client and a protocol-1 client on the same query, side by side for
    `seconds` (and until the compact one saw a compact frame and a snapshot with `i`):
    every frame of both validated, the compact quotes decoded, and each quote both saw (the
    same symbol and seq) identical field for field. Returns the compact client's record,
    its decoder, and how many quotes both saw."""
    seen, plain = Recorder(), Recorder()
    decoder = CompactDecoder()
    decoded: dict[tuple[str, int], dict[str, Any]] = {}
    received: dict[tuple[str, int], dict[str, Any]] = {}

    async def compact_client() -> None:
        async with connect(f"{service.ws_url}?encoding=compact&{query}") as ws:
            welcome = seen.note(await recv(ws))
            assert welcome["type"] == "welcome" and welcome["encoding"] == "compact"
            assert ws.response is not None
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert "permessage-deflate" in extensions and "server_no_context_takeover" in extensions
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            async with asyncio.timeout(seconds + 10):
                while (loop.time() < end or COMPACT not in seen.by_type
                       or not _has_indexed_snapshot(seen)):
                    for quote in decoder.frame(seen.note(await recv(ws))):
                        check_frame({"type": "quotes", "quotes": [quote]})
                        assert Quote.from_dict(quote, require_seq=True).to_dict() == quote
                        decoded[(quote["symbol"], quote["seq"])] = quote

    async def protocol_1_client() -> None:
        async with connect(f"{service.ws_url}?{query}") as ws:
            welcome = plain.note(await recv(ws))
            assert "encoding" not in welcome
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while loop.time() < end:
                frame = plain.note(await recv(ws))
                assert isinstance(frame, dict), "an array frame to a protocol-1 client"
                for quote in frame.get("quotes", ()) if frame["type"] in ("snapshot", "quotes") else ():
                    assert "i" not in quote
                    received[(quote["symbol"], quote["seq"])] = quote

    await asyncio.gather(compact_client(), protocol_1_client())
    both = decoded.keys() & received.keys()
    for key in both:
        assert decoded[key] == received[key], key
    return seen, decoder, len(both)


async def test_every_frame_of_a_compact_session_matches(service: ServiceProcess) -> None:
    """`/ws?encoding=compact&symbols=*`: every frame validates, snapshots carry `i`, compact
    arrays come, and the quotes rebuilt from them are a protocol-1 client's."""
    seen, decoder, both = await _compact_beside_protocol_1(service, "symbols=*")
    assert seen.by_type["ack"][0]["id"] is None and seen.by_type["ack"][0].get("all") is True
    assert _has_indexed_snapshot(seen) and seen.by_type[COMPACT]
    assert decoder.deltas > 0
    assert both >= 20, f"only {both} quotes seen by both clients"


async def test_every_frame_of_a_compact_session_at_4_hz_matches(service: ServiceProcess) -> None:
    seen, decoder, _ = await _compact_beside_protocol_1(service, "symbols=*&max_hz=4")
    assert seen.by_type["ack"][0]["max_hz"] == 4
    assert _has_indexed_snapshot(seen) and seen.by_type[COMPACT]
    assert decoder.deltas > 0


async def test_an_unknown_encoding_is_protocol_1_with_an_error(service: ServiceProcess) -> None:
    seen = Recorder()
    async with connect(service.ws_url + "?encoding=foo") as ws:
        welcome = seen.note(await recv(ws))
        assert welcome["type"] == "welcome" and welcome["encoding"] == "json"
        error = seen.note(await recv(ws))
        assert error["type"] == "error" and error["code"] == "bad_request"
        assert "id" not in error and "foo" in error["message"]
        await send(ws, {"op": "ping", "id": "still-here"})
        assert (await seen.until(ws, "pong"))["id"] == "still-here"
    async with connect(service.ws_url + "?encoding=json&symbols=OGDC,PPL") as ws:
        assert seen.note(await recv(ws))["encoding"] == "json"
        await seen.until(ws, "ack")
        await seen.until(ws, "snapshot")
        await seen.until(ws, "quotes")
    async with await open_sse(service.url + "/sse?symbols=OGDC&encoding=foo") as stream:
        assert stream.status == 200, "an unknown encoding is no bad request on a stream either"
        events = [await stream.event(), await stream.event()]
        assert [e.kind for e in events] == ["welcome", "error"]
        assert seen.note(events[0].json)["encoding"] == "json"
        assert seen.note(events[1].json)["code"] == "bad_request"
    assert COMPACT not in seen.by_type
    assert not [q for kind in ("snapshot", "quotes") for f in seen.by_type[kind]
                for q in f["quotes"] if "i" in q]


async def test_every_event_of_a_compact_stream_matches(service: ServiceProcess) -> None:
    """`/sse?encoding=compact`: the same frames as the events' data, the compact array in a
    `quotes` event with its resume position as the id."""
    seen = Recorder()
    decoder = CompactDecoder()
    async with await open_sse(service.url + "/sse?symbols=*&encoding=compact") as stream:
        assert stream.status == 200
        async with asyncio.timeout(15):
            while COMPACT not in seen.by_type or not _has_indexed_snapshot(seen):
                event = await stream.event()
                frame = seen.note(event.json)
                assert event.kind == (frame["type"] if isinstance(frame, dict) else "quotes")
                if event.kind in ("snapshot", "quotes"):
                    assert event.id and re.fullmatch(r"[A-Z0-9.\-]+:\d+(,[A-Z0-9.\-]+:\d+)*",
                                                     event.id), event.id
                decoder.frame(frame)
    assert seen.by_type["welcome"][0]["encoding"] == "compact"


def _replay(redis_url: str, text: str, path: Path) -> None:
    result = replay(redis_url, text, path)
    assert result.returncode == 0, result.stderr




async def test_status_frames_of_a_redis_fed_service_match(tmp_path: Path) -> None:
    """No publisher: past FEED_SILENCE_S the feed is stale (a newcomer hears it right after
    welcome); a replayed quote brings it back live, with a fresh snapshot."""
    seen = Recorder()
    with start_redis_server() as url:
        for service in run_service({"REDIS_URL": url, "FEED_SILENCE_S": "1", "HEARTBEAT_S": "5"}):
            await asyncio.to_thread(wait_publisher_silent, service)
            async with connect(service.ws_url + "?symbols=*") as ws:
                seen.note(await recv(ws))
                assert (await seen.until(ws, "status"))["feed"] == "stale"
                await asyncio.to_thread(_replay, url, "OGDC 137.75 Increased By ▲ 4.88 (3.67%)\n",
                                        tmp_path / "one.txt")
                live = await seen.until(ws, "status", timeout=10)
                assert live["feed"] == "live"
                await seen.until(ws, "quotes", timeout=5)
    assert {f["feed"] for f in seen.by_type["status"]} == {"stale", "live"}


def test_the_service_serves_the_document(service: ServiceProcess) -> None:
    status, body = http_get(service.url + "/asyncapi.json")
    assert status == 200
    assert orjson.loads(body) == DOC
    status, body = http_get(service.url + "/asyncapi.yaml")
    assert status == 200
    assert body.decode("utf-8") == DOC_PATH.read_text(encoding="utf-8")
    import urllib.request

    with urllib.request.urlopen(service.url + "/asyncapi.json", timeout=2) as response:
        assert response.headers["Content-Type"] == "application/json"
    with urllib.request.urlopen(service.url + "/asyncapi.yaml", timeout=2) as response:
        assert response.headers["Content-Type"].startswith("text/yaml")
