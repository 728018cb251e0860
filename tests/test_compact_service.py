"""The compact encoding and shared deflate on a running service: what compact clients
rebuild equals what protocol-1 clients are sent, field for field, over websockets (with and
without deflate, through the SDK too) and SSE; protocol 1 is untouched for clients that do
not ask."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from quote_client import QuoteClient
from quote_core.compact import Decoder

from .service_proc import ServiceProcess, run_service
from .sseclient import open_sse
from .test_client import wait_until
from .wsclient import connect, recv

Key = tuple[str, int]


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    # 100 quotes/s: frames at max_hz 4 are large enough that deflate applies to them.
    yield from run_service({"SIM_RATE": "100"}, ready="/readyz")


class RawClient:
    """A websocket client that sees the frames themselves: RSV1, sizes on the wire."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 extensions: str) -> None:
        self.reader, self.writer, self.extensions = reader, writer, extensions
        self.compressed = self.frames = self.wire_bytes = 0

    @classmethod
    async def open(cls, url: str, deflate: bool) -> RawClient:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        writer.write((f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                      f"Sec-WebSocket-Key: {key}\r\n{offer if deflate else ''}\r\n").encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
        assert head.startswith("HTTP/1.1 101"), head
        extensions = ""
        for line in head.split("\r\n"):
            if line.lower().startswith("sec-websocket-extensions:"):
                extensions = line.split(":", 1)[1].strip()
        return cls(reader, writer, extensions)

    async def message(self, timeout: float = 5.0) -> Any:
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            n = second & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(n)
        assert first & 0x80 and first & 0x0F == 1, "a whole text frame"
        self.frames += 1
        self.wire_bytes += n + 2
        if first & 0x40:
            self.compressed += 1
            payload = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
        return orjson.loads(payload)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def quotes_of(decoder: Decoder, message: Any, into: dict[Key, dict[str, Any]]) -> int:
    """The message's quotes, as protocol 1's, by (symbol, seq); how many were deltas."""
    if isinstance(message, dict) and message.get("type") not in ("quotes", "snapshot"):
        return 0
    for quote in decoder.quotes(message):
        into[quote["symbol"], quote["seq"]] = quote
    return sum(isinstance(e, list) for e in message[1:]) if isinstance(message, list) else 0


async def protocol_1(url: str, seconds: float) -> tuple[dict[Key, dict[str, Any]], list[Any]]:
    """What a protocol-1 client gets: its quotes, and every message as sent."""
    got: dict[Key, dict[str, Any]] = {}
    messages: list[Any] = []
    async with connect(url, compression=None) as ws:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            message = await recv(ws)
            messages.append(message)
            quotes_of(Decoder(), message, got)
    return got, messages


def same_quotes(a: dict[Key, dict[str, Any]], b: dict[Key, dict[str, Any]]) -> int:
    """Both saw most of the same quotes, and each seen by both is the same, field for field."""
    common = a.keys() & b.keys()
    assert len(common) >= 0.8 * min(len(a), len(b)) > 0, (len(common), len(a), len(b))
    differ = [(k, a[k], b[k]) for k in sorted(common) if a[k] != b[k]]
    assert not differ, differ[:3]
    return len(common)


async def test_compact_with_deflate_rebuilds_protocol_1_field_for_field(
        service: ServiceProcess) -> None:
    query = "?symbols=*&max_hz=4"
    raw = await RawClient.open(service.ws_url + query + "&encoding=compact", deflate=True)
    reference = asyncio.create_task(protocol_1(service.ws_url + query, 6.0))
    assert raw.extensions == ("permessage-deflate; server_no_context_takeover; "
                              "client_no_context_takeover")
    welcome = await raw.message()
    assert welcome["type"] == "welcome" and welcome["encoding"] == "compact"
    decoder, got, deltas = Decoder(), {}, 0
    end = time.monotonic() + 6.0
    while time.monotonic() < end:
        deltas += quotes_of(decoder, await raw.message(), got)
    await raw.close()
    p1, messages = await reference
    assert same_quotes(p1, got) > 100
    assert deltas > 100 and raw.compressed > 5, (deltas, raw.compressed)
    assert all(isinstance(m, dict) for m in messages), "protocol 1 never gets an array"
    assert "encoding" not in messages[0], "nor a welcome that says more than it did"
    assert all("i" not in q for m in messages if m["type"] in ("quotes", "snapshot")
               for q in m["quotes"])


async def test_protocol_1_with_deflate_is_protocol_1_compressed(service: ServiceProcess) -> None:
    raw = await RawClient.open(service.ws_url + "?symbols=*&max_hz=4", deflate=True)
    got: dict[Key, dict[str, Any]] = {}
    reference = asyncio.create_task(protocol_1(service.ws_url + "?symbols=*&max_hz=4", 4.0))
    welcome = await raw.message()
    assert "encoding" not in welcome
    end = time.monotonic() + 4.0
    while time.monotonic() < end:
        message = await raw.message()
        assert isinstance(message, dict)
        quotes_of(Decoder(), message, got)
    await raw.close()
    p1, _ = await reference
    same_quotes(p1, got)
    assert raw.compressed > 5, "protocol 1's shared frames go compressed too"


async def test_the_sdk_on_compact_holds_the_board_a_protocol_1_client_holds(
        service: ServiceProcess) -> None:
    async with QuoteClient(service.ws_url, symbols="*", max_hz=4) as compact, \
            QuoteClient(service.ws_url, symbols="*", max_hz=4, encoding="json",
                        compression=False) as json_client:
        assert compact.welcome is not None and compact.welcome.encoding == "compact"
        assert json_client.welcome is not None and json_client.welcome.encoding == "json"
        await asyncio.sleep(2.0)  # let the market move

        def seqs(client: QuoteClient) -> dict[str, int | None]:
            return {s: q.seq for s, q in client.board.items()}

        await wait_until(lambda: seqs(compact) == seqs(json_client), 10,
                         "both clients at the same point of the tape")
        assert compact.board == json_client.board
        assert len(compact.board) == 34


async def test_an_event_stream_in_compact_rebuilds_protocol_1(service: ServiceProcess) -> None:
    reference = asyncio.create_task(protocol_1(service.ws_url + "?symbols=*&max_hz=4", 5.0))
    decoder, got, deltas, ids = Decoder(), {}, 0, []
    async with await open_sse(service.url + "/sse?symbols=*&max_hz=4&encoding=compact") as sse:
        welcome = (await sse.event_of("welcome")).json
        assert welcome["encoding"] == "compact"
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            event = await sse.event()
            if event.kind in ("quotes", "snapshot"):
                deltas += quotes_of(decoder, event.json, got)
                ids.append(event.id)
    p1, _ = await reference
    same_quotes(p1, got)
    assert deltas > 50 and all(ids), "deltas came, each event with its resume id"


async def test_an_unknown_encoding_is_protocol_1_with_an_error(service: ServiceProcess) -> None:
    async with connect(service.ws_url + "?encoding=zstd-dict&symbols=OGDC") as ws:
        welcome = await recv(ws)
        assert welcome["encoding"] == "json"
        error = await recv(ws)
        assert error["type"] == "error" and error["code"] == "bad_request"
        assert "zstd-dict" in error["message"] and "json" in error["message"]
        ack = await recv(ws)
        snapshot = await recv(ws)
        assert ack["type"] == "ack" and snapshot["quotes"][0]["symbol"] == "OGDC"
        assert "i" not in snapshot["quotes"][0]


async def test_deflate_can_be_turned_off() -> None:
    """WS_DEFLATE_MIN_BYTES=0: the offer is declined (no extension in the answer), and the
    compact encoding works as before."""
    with contextlib.contextmanager(run_service)({"SIM_RATE": "100",
                                                "WS_DEFLATE_MIN_BYTES": "0"}) as service:
        raw = await RawClient.open(service.ws_url + "?symbols=*&max_hz=4&encoding=compact",
                                   deflate=True)
        assert raw.extensions == ""
        assert (await raw.message())["encoding"] == "compact"
        decoder, got, deltas = Decoder(), {}, 0
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            deltas += quotes_of(decoder, await raw.message(), got)
        await raw.close()
        assert deltas > 10 and raw.compressed == 0
