"""The lean load generator: many viewers per process that count frames instead of parsing them.

One process holds `--conns` websocket connections (picows on uvloop) to
`ws://127.0.0.1:PORT/ws?symbols=*&max_hz=H`; bench/viewers.py runs several, each pinned
to the load CPU, and sums what they report. Per frame a connection only counts it and its
bytes (picows does the framing in Cython; no decode, no copy). What is measured comes from
samples:

- **age**: each connection decodes one text frame in `--decode-every` K (staggered over
  the connections) with orjson; every quote in it goes into a 1 ms histogram of age at
  receipt = receive time - the quote's own `ts` (the publisher's clock, ms since the
  epoch, same machine). Decoding one frame in K of every connection samples the frames
  uniformly, so the percentiles are the frames' percentiles.
- **boards**: `--boards` S connections of this process decode every frame (`quotes` and
  `snapshot`) and keep symbol -> highest seq; on `final` (the publisher's final seqs,
  read from Redis by the driver) the process reports how many of them hold every
  symbol's final seq, and when.
- **own cost**: getrusage of this process over the window, so the driver can give the
  generator's CPU µs per frame beside the server's.

The driver protocol is bench/loadclient.py's: one JSON object per line; on stdout
`{"event":"connected",...}` once every connection was tried, then an answer to each
command on stdin: `start` (reset, measure), `stop` (stats), `final` (convergence of the
boards), `quit`. Frames counted are every text frame received in the window (quotes, and
the rare heartbeat or status frame, which at 15 s per heartbeat is noise against 4+ Hz).
127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import time
from collections import Counter
from typing import Any

import orjson
from picows import WSListener, WSMsgType, ws_connect

from bench.loadclient import close_received, converged_at, disconnected, serve_driver, sparse
from bench.procs import raise_nofile

HIST_MAX_MS = 120_000
TEXT = WSMsgType.TEXT
CLOSE = WSMsgType.CLOSE
loads = orjson.loads
time_ns = time.time_ns


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # Bumped by each start: a viewer's `window` says whether it heard one (`silent`).
        self.window = getattr(self, "window", 0) + 1
        self.frames = 0
        self.bytes = 0
        self.decoded = 0  # frames decoded for the age sample
        self.aged = 0  # quotes in them
        self.ages = [0] * (HIST_MAX_MS + 1)
        self.max_age = 0
        self.t0 = time.monotonic()
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self.closes: Counter[str] = Counter()


S = Stats()
DECODE_EVERY = 20


def age_sample(payload: bytes) -> None:
    """One decoded frame into the age histogram (quotes frames only)."""
    frame = loads(payload)
    if frame.get("type") != "quotes":
        return
    now = time_ns() // 1_000_000
    ages = S.ages
    worst = 0
    quotes = frame["quotes"]
    for q in quotes:
        age = now - q["ts"]
        if age < 0:
            age = 0
        elif age > HIST_MAX_MS:
            age = HIST_MAX_MS
        if age > worst:
            worst = age
        ages[age] += 1
    if worst > S.max_age:
        S.max_age = worst
    S.decoded += 1
    S.aged += len(quotes)


class Viewer(WSListener):  # type: ignore[misc]
    """A connection that counts; one in K of its frames is decoded for ages."""

    __slots__ = ("closed", "countdown", "ready", "transport", "window")

    def __init__(self) -> None:
        self.transport: Any = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.window = 0
        self.countdown = random.randint(1, DECODE_EVERY)

    def on_ws_connected(self, transport: Any) -> None:
        self.transport = transport
        if not self.ready.done():
            self.ready.set_result(None)

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type is TEXT:
            S.frames += 1
            self.window = S.window
            S.bytes += frame.payload_size
            self.countdown -= 1
            if not self.countdown:
                self.countdown = DECODE_EVERY
                age_sample(frame.get_payload_as_bytes())
        elif frame.msg_type is CLOSE:
            self.on_close(transport, frame)

    def on_close(self, transport: Any, frame: Any) -> None:
        close_received(self, S.closes, transport, frame)

    def on_ws_disconnected(self, transport: Any) -> None:
        disconnected(self, S.closes)


class BoardViewer(Viewer):
    """A sampled connection: decodes every frame and keeps symbol -> highest seq."""

    __slots__ = ("board", "last_advance")

    def __init__(self) -> None:
        super().__init__()
        self.board: dict[str, int] = {}
        self.last_advance = 0.0

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type is TEXT:
            S.frames += 1
            self.window = S.window
            S.bytes += frame.payload_size
            payload = frame.get_payload_as_bytes()
            self.countdown -= 1
            if not self.countdown:
                self.countdown = DECODE_EVERY
                age_sample(payload)
            msg = loads(payload)
            if msg.get("type") not in ("quotes", "snapshot"):
                return
            board = self.board
            moved = False
            for q in msg["quotes"]:
                s = q["symbol"]
                if q["seq"] > board.get(s, 0):
                    board[s] = q["seq"]
                    moved = True
            if moved:
                self.last_advance = time.time()
        elif frame.msg_type is CLOSE:
            self.on_close(transport, frame)


async def connect_all(url: str, n: int, boards: int, concurrency: int,
                      timeout: float) -> tuple[list[Viewer], dict[str, Any]]:
    sem = asyncio.Semaphore(concurrency)
    errors: Counter[str] = Counter()
    # The board connections spread evenly over the others.
    board_at = {i * n // boards for i in range(boards)} if boards else set()

    async def one(i: int) -> Viewer | None:
        conn: Viewer = BoardViewer() if i in board_at else Viewer()
        async with sem:
            try:
                async with asyncio.timeout(30):
                    await ws_connect(lambda: conn, url, websocket_handshake_timeout=30,
                                     max_frame_size=64 * 1024 * 1024)
                    await conn.ready
            except Exception as exc:
                errors[type(exc).__name__] += 1
                if conn.transport is not None:
                    with contextlib.suppress(Exception):
                        conn.transport.disconnect(False)
                return None
        return conn

    t0 = time.monotonic()
    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
        errors["connect_timeout"] += 1
    conns = [c for t in done if (c := t.result()) is not None]
    return conns, {
        "event": "connected",
        "ok": len(conns),
        "failed": n - len(conns),
        "boards": sum(isinstance(c, BoardViewer) for c in conns),
        "errors": dict(errors),
        "connect_s": round(time.monotonic() - t0, 3),
    }


def stats_report(conns: list[Viewer]) -> dict[str, Any]:
    wall = time.monotonic() - S.t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru.ru_utime - S.ru0.ru_utime) + (ru.ru_stime - S.ru0.ru_stime)
    return {
        "event": "stats",
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 4),
        "user_s": round(ru.ru_utime - S.ru0.ru_utime, 4),
        "sys_s": round(ru.ru_stime - S.ru0.ru_stime, 4),
        "frames": S.frames,
        "bytes": S.bytes,
        "decoded": S.decoded,
        "aged": S.aged,
        "max_age_ms": S.max_age,
        "ages": sparse(S.ages),
        "closes": dict(S.closes),
        "open": sum(not c.closed for c in conns),
        "silent": sum(not c.closed and c.window != S.window for c in conns),
        "conns": len(conns),
    }


async def convergence(conns: list[Viewer], final: dict[str, int], t_stop: float,
                      deadline_s: float) -> dict[str, Any]:
    """When each board connection held every symbol's final seq."""
    boards = [c for c in conns if isinstance(c, BoardViewer)]
    times = await converged_at(boards, final, t_stop, deadline_s)
    return {
        "event": "converged",
        "boards": len(boards),
        "converged": len(times),
        "max_s": round(times[-1], 3) if times else None,
        "deadline_s": deadline_s,
    }


async def main_async(args: argparse.Namespace) -> None:
    conns, info = await connect_all(args.url, args.conns, args.boards, args.concurrency,
                                    args.connect_timeout)
    await serve_driver(info, S.reset, lambda: stats_report(conns),
                       lambda seqs, t_stop, deadline: convergence(conns, seqs, t_stop, deadline))


def viewer_url(base: str, max_hz: float | None) -> str:
    """`ws://HOST:PORT/ws` -> the all-symbols URL at `max_hz` (None: the server's rate)."""
    url = base + ("&" if "?" in base else "?") + "symbols=*"
    if max_hz is not None:
        url += f"&max_hz={max_hz:g}"
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/ws (the query is added)")
    parser.add_argument("--conns", type=int, required=True)
    parser.add_argument("--max-hz", type=float, help="?max_hz= (absent: the server's rate)")
    parser.add_argument("--decode-every", type=int, default=20,
                        help="decode one frame in K per connection for the age sample")
    parser.add_argument("--boards", type=int, default=4,
                        help="connections that decode everything and keep a board")
    parser.add_argument("--concurrency", type=int, default=256, help="handshakes in flight")
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    args = parser.parse_args()
    if not args.url.startswith(("ws://127.0.0.1:", "ws://localhost:")):
        parser.error("127.0.0.1 only")
    global DECODE_EVERY
    DECODE_EVERY = max(1, args.decode_every)
    args.url = viewer_url(args.url, args.max_hz)
    raise_nofile()
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main_async(args))
    os._exit(0)  # skip the teardown of thousands of sockets


if __name__ == "__main__":
    main()
