"""The viewers scenario's uWebSockets.js peer (bench/peers/node/uws_viewers_peer.js) for real.

A private redis-server, the peer under Node as bench/viewers.py starts it (PORT,
REDIS_URL, REDIS_CHANNEL), quotes published the way bench/publisher.py publishes them
(its PerQuoteSink: the project's Lua script, one `[quote]` message per quote on
`quotes:{0}`), and two websocket clients at max_hz 2 and 10. Checked: the snapshot holds
the board, the `[]` heartbeat and a stale quote change nothing, frames come at no more
than the asked rate with at most one entry per symbol, the quote texts are the published
ones byte for byte, and both clients end holding the final board.

The peer's npm packages come from bench/peers/node/package-lock.json: `npm ci` there when
node_modules is older than the lock file (the Makefile's `bench` target does the same).
Without node or npm the test fails naming what is missing. Every wait is a condition
with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import websockets
from websockets.asyncio.client import ClientConnection

from bench.publisher import PerQuoteSink
from publisher.redis_sink import PUBLISH_SCRIPT
from quote_bus.layout import Layout
from quote_core.quote import Quote
from service.settings import Settings
from tests.redis_server import RedisServer, free_port
from tests.service_proc import end_process

pytestmark = pytest.mark.timeout(180)  # npm ci on a fresh checkout; the test itself ~6 s

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "bench" / "peers" / "node"
PEER = NODE_DIR / "uws_viewers_peer.js"
LAYOUT = Layout(partitions=1)
CHANNEL = LAYOUT.channel(0)
SYMBOLS = ("OGDC", "PPL", "KSE100")
WINDOW_S = 3.0
RATES = (2.0, 10.0)


def node_peer_deps() -> str:
    """The node executable, with the peers' npm packages installed (npm ci if needed)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: the Node peers need Node.js 20+ (bash .ci/system-packages)")
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm not found: bench/peers/node/node_modules is missing and npm ci "
                        "needs npm (bash .ci/system-packages)")
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=NODE_DIR, capture_output=True, text=True, timeout=150,
                              check=False)
        if done.returncode != 0:
            pytest.fail(f"npm ci in bench/peers/node failed:\n{done.stderr[-2000:]}")
    return node


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    assert server.start(), f"redis-server did not start: {server.log_path.read_text()[-1000:]}"
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def sink(redis_server: RedisServer) -> AsyncIterator[PerQuoteSink]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.script_load(PUBLISH_SCRIPT)  # as bench/publisher.py: a pipeline needs it loaded
    try:
        yield PerQuoteSink(client, Settings(redis_url=redis_server.url, redis_partitions=1))
    finally:
        await client.aclose()


@pytest.fixture
def peer(redis_server: RedisServer, tmp_path: Path) -> Iterator[int]:
    """The peer as bench/viewers.py starts it; its port once it listens and subscribed."""
    node = node_peer_deps()
    port = free_port()
    log_path = tmp_path / "peer.log"
    env = {**os.environ, "PORT": str(port), "REDIS_URL": redis_server.url, "REDIS_CHANNEL": CHANNEL}
    env.pop("UWS_USE_FALLBACK", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([node, str(PEER)], cwd=NODE_DIR, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    r = redis.Redis.from_url(redis_server.url)
    try:
        deadline = time.monotonic() + 15
        while not (b"ready on" in log_path.read_bytes() and r.pubsub_numsub(CHANNEL)[0][1] >= 1):
            assert proc.poll() is None, f"peer exited ({proc.returncode}): {log_path.read_text()}"
            assert time.monotonic() < deadline, f"peer not ready in 15 s: {log_path.read_text()}"
            time.sleep(0.05)
        yield port
        assert proc.poll() is None, f"peer died: {log_path.read_text()}"
    finally:
        r.close()
        end_process(proc)


class Viewer:
    """One client: every frame with its arrival time, the board it holds (symbol -> quote)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[tuple[float, str, dict[str, Any]]] = []
        self.board: dict[str, dict[str, Any]] = {}
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            assert isinstance(raw, str)
            frame = json.loads(raw)
            self.frames.append((time.monotonic(), raw, frame))
            for q in frame.get("quotes", []):
                held = self.board.get(q["symbol"])
                if held is None or q["seq"] > held["seq"]:
                    self.board[q["symbol"]] = q

    def quotes_frames(self, since: float, until: float) -> list[tuple[str, dict[str, Any]]]:
        return [(raw, f) for t, raw, f in self.frames
                if f["type"] == "quotes" and since <= t < until]


async def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.02)


def latest(r: redis.Redis) -> dict[str, str]:
    """What the publisher's script stored as each symbol's latest quote text."""
    def text(b: bytes | str) -> str:
        return b.decode() if isinstance(b, bytes) else b

    return {text(k): text(v) for k, v in r.hgetall(LAYOUT.latest(0)).items()}


async def test_uws_viewers_peer(redis_server: RedisServer, sink: PerQuoteSink, peer: int) -> None:
    r = redis.Redis.from_url(redis_server.url)
    prices = {"OGDC": 137.75, "PPL": 98.5, "KSE100": 71902.0}
    await sink.publish([Quote.make(s, p, p - 1, kind="index" if s == "KSE100" else "stock")
                        for s, p in prices.items()])
    r.publish(CHANNEL, "[]")  # the publisher's heartbeat: nothing in it
    # A stale quote (seq below the held one) must not replace the board's entry.
    stale = json.loads(latest(r)["OGDC"]) | {"price": 1.0, "seq": 0}
    r.publish(CHANNEL, json.dumps([stale]))
    await asyncio.sleep(0.2)  # the peer has read what was published (it is one loopback hop)

    url = f"ws://127.0.0.1:{peer}/ws?symbols=*&max_hz="
    with pytest.raises(websockets.InvalidStatus):  # outside 0.5..50: refused
        await websockets.connect(url + "100", open_timeout=5)
    async with websockets.connect(url + "2", open_timeout=5) as ws2, \
            websockets.connect(url + "10", open_timeout=5) as ws10:
        viewers = {2.0: Viewer(ws2), 10.0: Viewer(ws10)}
        await wait_for(lambda: all(v.frames for v in viewers.values()), 5, "the snapshots")
        board = latest(r)
        for v in viewers.values():
            _, raw, first = v.frames[0]
            assert first["type"] == "snapshot"
            assert {q["symbol"]: q["seq"] for q in first["quotes"]} == dict.fromkeys(SYMBOLS, 1)
            assert {q["symbol"]: q["price"] for q in first["quotes"]} == prices
            for text in board.values():  # the stored texts, spliced as they are
                assert text in raw

        # Quotes much faster than either rate, for WINDOW_S: frames come at most at the rate.
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < WINDOW_S:
            symbol = SYMBOLS[n % len(SYMBOLS)]
            p = prices[symbol] = round(prices[symbol] + 0.01, 2)
            await sink.publish([Quote.make(symbol, p, p - 1,
                                           kind="index" if symbol == "KSE100" else "stock")])
            n += 1
            await asyncio.sleep(0.01)
        t1 = time.monotonic()
        assert n > 100
        for hz, v in viewers.items():
            frames = v.quotes_frames(t0, t1)
            assert hz * WINDOW_S * 0.5 <= len(frames) <= hz * WINDOW_S + 1, \
                f"{len(frames)} frames in {WINDOW_S} s at max_hz {hz:g}"
            for _, f in frames:
                symbols = [q["symbol"] for q in f["quotes"]]
                assert len(symbols) == len(set(symbols)) > 0  # conflated: one entry per symbol

        # After the last publish both boards end on the published board, quote for quote.
        board = latest(r)
        final = {s: json.loads(t) for s, t in board.items()}
        await wait_for(lambda: all(v.board == final for v in viewers.values()), 3,
                       "both boards to hold the final quotes")
        for v in viewers.values():
            last_raw = v.quotes_frames(t0, time.monotonic())[-1][0]
            assert any(text in last_raw for text in board.values())
            assert not any(f["type"] == "quotes" and not f["quotes"] for _, _, f in v.frames)
        assert final["OGDC"]["price"] == prices["OGDC"] != 1.0
    for v in viewers.values():  # closed by us: each reader ends, and raised nothing
        await asyncio.wait_for(v.task, 5)
    r.close()
