"""The websocket protocol, message by message, against the real service process
(embedded feed: the simulated market in-process, no Redis)."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator

import orjson
import pytest

from quote_core.quote import Quote
from tests.service_proc import ServiceProcess, http_get, run_service
from tests.wsclient import closed_code, connect, recv, recv_type

SEED_SYMBOLS = 34


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    yield from run_service({
        "SIM_RATE": "100", "HEARTBEAT_S": "0.5", "MAX_SYMBOLS": "40",
        "MAX_CLIENT_MSGS_PER_S": "20", "MAX_FRAME_BYTES": "4096", "WS_MAX_SIZE": "65536",
        "EVERY_QUEUE_BYTES": "200000", "MAX_RECOVERY": "500",
    }, ready="/readyz")


async def test_welcome_announces_the_configured_limits(service: ServiceProcess) -> None:
    async with connect(service.ws_url) as ws:
        welcome = await recv(ws)
    node = welcome.pop("node")
    assert welcome == {
        "type": "welcome", "protocol": 1, "heartbeat_s": 0.5,
        "limits": {"max_symbols": 40, "max_client_msgs_per_s": 20, "max_frame_bytes": 4096,
                   "every_queue_bytes": 200000, "max_recovery": 500},
    }
    # The worker's opaque id: the one its /readyz and its log lines give, and no host name.
    assert re.fullmatch(r"[0-9a-f]{12}", node)
    assert orjson.loads(http_get(service.url + "/readyz")[1])["node"] == node
    assert node in service.log()
    assert socket.gethostname() not in node


async def test_subscribe_ack_snapshot_then_only_subscribed_updates(service: ServiceProcess) -> None:
    async with connect(service.ws_url) as ws:
        await recv_type(ws, "welcome")
        await ws.send(orjson.dumps({"op": "subscribe", "id": 1,
                                    "symbols": ["ogdc", "KSE100", "NOPE"]}).decode())
        ack = await recv(ws)
        assert ack == {"type": "ack", "id": 1, "op": "subscribe",
                       "symbols": ["KSE100", "NOPE", "OGDC"], "unknown": ["NOPE"],
                       "max_hz": 50}
        snapshot = await recv(ws)
        assert snapshot["type"] == "snapshot"
        held = {q["symbol"]: Quote.from_dict(q, require_seq=True) for q in snapshot["quotes"]}
        assert set(held) == {"OGDC", "KSE100"}
        assert held["KSE100"].kind == "index" and held["OGDC"].kind == "stock"
        seen = 0
        while seen < 5:
            frame = await recv_type(ws, "quotes")
            symbols = [q["symbol"] for q in frame["quotes"]]
            assert len(symbols) == len(set(symbols)), "one entry per symbol per frame"
            for raw in frame["quotes"]:
                quote = Quote.from_dict(raw, require_seq=True)
                assert quote.symbol in {"OGDC", "KSE100"}
                assert quote.seq > held[quote.symbol].seq  # type: ignore[operator]
                assert quote.change == round(quote.price - quote.prev_close, 2)
                held[quote.symbol] = quote
                seen += 1


async def test_query_subscribes_to_everything_on_connect(service: ServiceProcess) -> None:
    async with connect(service.ws_url + "?symbols=*") as ws:
        await recv_type(ws, "welcome")
        ack = await recv(ws)
        assert ack["all"] is True and ack["id"] is None and len(ack["symbols"]) == SEED_SYMBOLS
        snapshot = await recv(ws)
        assert snapshot["type"] == "snapshot" and len(snapshot["quotes"]) == SEED_SYMBOLS


async def test_query_with_a_bad_symbol_gets_an_error_and_stays_open(service: ServiceProcess) -> None:
    async with connect(service.ws_url + "?symbols=OGDC,%3Cimg%3E") as ws:
        await recv_type(ws, "welcome")
        error = await recv_type(ws, "error")
        assert error["code"] == "bad_request"
        await ws.send('{"op":"ping","id":"still-here"}')
        assert (await recv_type(ws, "pong"))["id"] == "still-here"


async def test_unsubscribe_acks_the_remaining_set(service: ServiceProcess) -> None:
    async with connect(service.ws_url + "?symbols=OGDC,PPL") as ws:
        await recv_type(ws, "snapshot")
        await ws.send('{"op":"unsubscribe","id":"u","symbols":["PPL"]}')
        ack = await recv_type(ws, "ack")
        assert ack == {"type": "ack", "id": "u", "op": "unsubscribe", "symbols": ["OGDC"],
                       "unknown": [], "max_hz": 50}
        for _ in range(3):
            frame = await recv_type(ws, "quotes")
            assert {q["symbol"] for q in frame["quotes"]} <= {"OGDC"}


async def test_ping_pong(service: ServiceProcess) -> None:
    async with connect(service.ws_url) as ws:
        await recv_type(ws, "welcome")
        await ws.send('{"op":"ping","id":4}')
        pong = await recv_type(ws, "pong")
        assert pong["id"] == 4 and isinstance(pong["ts"], int)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "bad_json"),
        ("[1]", "bad_request"),
        ('{"op":"subscribe","id":1,"symbols":"OGDC"}', "bad_request"),
        ('{"op":"subscribe","id":1,"symbols":["<img src=x>"]}', "bad_request"),
        ('{"op":"teleport","id":1}', "unknown_op"),
        (orjson.dumps({"op": "subscribe", "id": 1,
                       "symbols": [f"S{i}" for i in range(41)]}).decode(), "too_many_symbols"),
        ('{"op":"ping","id":"' + "x" * 65 + '"}', "bad_request"),
        ('{"op":"ping","pad":"' + "x" * 5000 + '"}', "frame_too_large"),
        (b'{"op":"ping"}', "bad_request"),
    ],
)
async def test_bad_input_gets_an_error_and_the_connection_survives(
    service: ServiceProcess, message: str | bytes, code: str
) -> None:
    async with connect(service.ws_url) as ws:
        await recv_type(ws, "welcome")
        await ws.send(message)
        error = await recv_type(ws, "error")
        assert error["code"] == code and error["message"]
        await ws.send('{"op":"ping","id":"after"}')
        assert (await recv_type(ws, "pong"))["id"] == "after"


async def test_a_frame_past_the_websocket_limit_is_closed_with_1009(service: ServiceProcess) -> None:
    async with connect(service.ws_url, max_size=None) as ws:
        await recv_type(ws, "welcome")
        await ws.send("x" * 70_000)
        assert await closed_code(ws) == 1009


async def test_too_many_messages_are_refused_then_a_flood_is_closed(service: ServiceProcess) -> None:
    async with connect(service.ws_url) as ws:
        await recv_type(ws, "welcome")
        for i in range(25):
            await ws.send(f'{{"op":"ping","id":{i}}}')
        error = await recv_type(ws, "error")
        assert error["code"] == "rate_limited"
    async with connect(service.ws_url) as ws:
        await recv_type(ws, "welcome")
        for i in range(200):
            await ws.send(f'{{"op":"ping","id":{i}}}')
        assert await closed_code(ws) == 4029


async def test_one_misbehaving_client_does_not_disturb_another(service: ServiceProcess) -> None:
    async with connect(service.ws_url + "?symbols=*") as good:
        await recv_type(good, "snapshot")
        async with connect(service.ws_url) as bad:
            await recv_type(bad, "welcome")
            for payload in ["{", "[]", '{"op":"x"}', b"\x00\x01"] * 5:
                await bad.send(payload)
            for _ in range(200):
                await bad.send("{")
            assert await closed_code(bad) == 4029
        for _ in range(3):
            await recv_type(good, "quotes", timeout=3)


async def test_heartbeat_when_nothing_else_was_sent(service: ServiceProcess) -> None:
    async with connect(service.ws_url) as ws:
        await recv_type(ws, "welcome")
        beat = await recv(ws, timeout=3)
        assert beat["type"] == "heartbeat" and isinstance(beat["ts"], int)


def test_http_doors(service: ServiceProcess) -> None:
    assert http_get(service.url + "/healthz")[0] == 200
    status, body = http_get(service.url + "/readyz")
    assert status == 200 and orjson.loads(body)["feed"] == "live"
    assert http_get(service.url + "/no/such/page")[0] == 404
    status, body = http_get(service.url + "/ws")
    assert status == 426 and b"websocket" in body
    assert b"Traceback" not in body


async def test_shutdown_closes_clients_with_1001() -> None:
    service = ServiceProcess()
    service.start()
    try:
        async with connect(service.ws_url + "?symbols=*") as ws:
            await recv_type(ws, "snapshot")
            stopping = asyncio.get_running_loop().run_in_executor(None, service.stop)
            assert await closed_code(ws, timeout=10) == 1001
            # uvicorn re-raises the SIGTERM it caught once shutdown is complete.
            assert await stopping in (0, -15)
            assert '"event":"stop"' in service.log()
    finally:
        service.stop()
