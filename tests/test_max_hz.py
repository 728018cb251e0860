"""max_hz against the real service (embedded feed): the rate a client asks for caps its
`quotes` frames, it still converges, the default is not slowed, and bad values are refused
without ending the connection."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.service_proc import ServiceProcess, run_service
from tests.wsclient import ClientConnection, connect, recv, recv_type


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    # 200 quotes a second over the simulated market: far more than 2 frames' worth.
    yield from run_service({"SIM_RATE": "200", "HEARTBEAT_S": "5"}, ready="/readyz")


class Board:
    """What a client holds: the latest seq per symbol, and when each quotes frame came."""

    def __init__(self) -> None:
        self.seqs: dict[str, int] = {}
        self.quote_frames: list[float] = []
        self.ack: dict[str, Any] | None = None

    def take(self, frame: dict[str, Any], now: float) -> None:
        if frame["type"] == "ack":
            self.ack = frame
        if frame["type"] in ("snapshot", "quotes"):
            if frame["type"] == "quotes":
                self.quote_frames.append(now)
            for quote in frame["quotes"]:
                if quote["seq"] > self.seqs.get(quote["symbol"], 0):
                    self.seqs[quote["symbol"]] = quote["seq"]


async def read_into(ws: ClientConnection, board: Board) -> None:
    loop = asyncio.get_running_loop()
    while True:
        frame = orjson.loads(await ws.recv())
        board.take(frame, loop.time())


async def fresh_snapshot(service: ServiceProcess) -> dict[str, int]:
    async with connect(service.ws_url + "?symbols=*") as ws:
        snapshot = await recv_type(ws, "snapshot")
    return {q["symbol"]: q["seq"] for q in snapshot["quotes"]}


async def test_a_client_at_2_hz_gets_at_most_2_frames_a_second_and_converges(
        service: ServiceProcess) -> None:
    slow, fast = Board(), Board()
    loop = asyncio.get_running_loop()
    async with connect(service.ws_url + "?symbols=*&max_hz=2") as ws_slow, \
            connect(service.ws_url + "?symbols=*") as ws_fast:
        tasks = [asyncio.create_task(read_into(ws_slow, slow)),
                 asyncio.create_task(read_into(ws_fast, fast))]
        try:
            await asyncio.sleep(1.0)  # past the snapshot and the first frames
            start = loop.time()
            await asyncio.sleep(10.0)
            end = loop.time()
            snapshot = await fresh_snapshot(service)
            # Every symbol's latest state comes within 1/max_hz (0.5 s) of its publication.
            await asyncio.sleep(0.5 + 0.3)
            behind = {s: (slow.seqs.get(s), seq) for s, seq in snapshot.items()
                      if slow.seqs.get(s, 0) < seq}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert slow.ack is not None and slow.ack["max_hz"] == 2
    assert fast.ack is not None and fast.ack["max_hz"] == 50
    in_window = [t for t in slow.quote_frames if start <= t < end]
    assert len(in_window) <= 2 * 10 + 1, f"{len(in_window)} quotes frames in 10 s at 2 Hz"
    assert len(in_window) >= 2 * 10 * 0.8, "at 200 quotes/s every interval has something"
    gaps = [b - a for a, b in itertools.pairwise(in_window)]
    # Frames are sealed at least 0.5 s apart; the network may bunch two a little.
    assert sorted(gaps)[len(gaps) // 10] > 0.4, gaps
    fast_in_window = [t for t in fast.quote_frames if start <= t < end]
    assert len(fast_in_window) > 4 * len(in_window), "the default is not held back"
    assert not behind, f"the 2 Hz board lags the snapshot: {behind}"
    assert set(slow.seqs) >= set(snapshot)


async def test_a_rate_change_alone_takes_effect_and_acks(service: ServiceProcess) -> None:
    board = Board()
    loop = asyncio.get_running_loop()
    async with connect(service.ws_url + "?symbols=*") as ws:
        await recv_type(ws, "snapshot")
        await ws.send('{"op":"subscribe","id":"r","symbols":[],"max_hz":1}')
        ack = await recv_type(ws, "ack")
        assert ack["max_hz"] == 1 and ack["all"] is True
        task = asyncio.create_task(read_into(ws, board))
        try:
            await asyncio.sleep(0.2)  # what was in flight before the change
            start = loop.time()
            await asyncio.sleep(3.0)
            end = loop.time()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    frames = [t for t in board.quote_frames if start <= t < end]
    assert 2 <= len(frames) <= 4, frames


async def subscribe_reply(ws: ClientConnection, id: int, max_hz: object) -> dict[str, Any]:
    await ws.send(json.dumps({"op": "subscribe", "id": id, "symbols": ["OGDC"], "max_hz": max_hz}))
    while True:
        frame = await recv(ws)
        if frame["type"] in ("ack", "error") and frame.get("id") == id:
            return frame


async def test_max_hz_bounds_and_bad_values_keep_the_connection(service: ServiceProcess) -> None:
    async with connect(service.ws_url) as ws:
        await recv_type(ws, "welcome")
        assert (await subscribe_reply(ws, 1, 0.5))["max_hz"] == 0.5
        assert (await subscribe_reply(ws, 2, 50))["max_hz"] == 50
        for i, bad in enumerate([0.4, 51, "x", True, float("nan"), [4]], start=3):
            reply = await subscribe_reply(ws, i, bad)
            assert reply["type"] == "error" and reply["code"] == "bad_request", (bad, reply)
        # The refused requests changed nothing, and the connection still works.
        await ws.send('{"op":"ping","id":"p"}')
        assert (await recv_type(ws, "pong"))["id"] == "p"
        assert (await subscribe_reply(ws, 20, 4))["max_hz"] == 4
        await recv_type(ws, "quotes")


@pytest.mark.parametrize("raw", ["0.4", "51", "x", "true", "NaN"])
async def test_a_bad_max_hz_in_the_url_is_an_error_and_the_connection_stays(
        service: ServiceProcess, raw: str) -> None:
    async with connect(service.ws_url + f"?symbols=OGDC&max_hz={raw}") as ws:
        await recv_type(ws, "welcome")
        error = await recv(ws)
        assert error["type"] == "error" and error["code"] == "bad_request" and "max_hz" in error["message"]
        await ws.send('{"op":"subscribe","id":1,"symbols":["OGDC"]}')
        ack = await recv_type(ws, "ack")
        assert ack["max_hz"] == 50 and ack["symbols"] == ["OGDC"]
        await recv_type(ws, "snapshot")


async def test_a_url_rate_alone_applies_to_later_subscribes(service: ServiceProcess) -> None:
    async with connect(service.ws_url + "?max_hz=4") as ws:
        await recv_type(ws, "welcome")
        await ws.send('{"op":"subscribe","id":1,"symbols":["OGDC"]}')
        assert (await recv_type(ws, "ack"))["max_hz"] == 4
