"""The load client: many websocket connections in one asyncio process, driven over stdio.

One client drives every server in the benchmark. It connects to
`ws://127.0.0.1:PORT/ws?symbols=*` (or, for socket.io, straight to the Engine.IO v4
websocket transport), reads frames and measures each quote's age at receipt from the
quote's own `ts` (the publisher's clock, ms since the epoch; same machine, same clock).

Frames understood:
- `{"type":"quotes","quotes":[...]}`: counted, aged, applied to the connection's board.
- `{"type":"snapshot","quotes":[...]}`: applied to the board only (not aged: it is state
  the client asked for, not an update).
- anything else (welcome, ack, status, heartbeat): ignored.
- socket.io: `0{...}` open -> send `40`; `2` ping -> send `3`; `42["quotes",[...]]`.

The per-frame cost is one orjson.loads and one tight loop over the quotes; picows (Cython)
does the websocket framing, on uvloop when it is installed (`--loop`; the service depends
on it, so it is): per frame most of the client's time is the event loop's, one read per
frame per connection. Without picows the websockets library is used instead (about
twice the CPU per message; the report says which one ran).

With `--parse-every N` a connection decodes only every Nth quotes frame while measuring
(ages, updates and quotes come from those) and just counts the others after checking
their `{"type":"quotes"` prefix: per frame it then costs a small fraction of a server's
frame, so a server that has no core to itself (WORKERS=2 on 2 cores) is not slowed down
by the client that measures it.

Like a browser, the client offers permessage-deflate (`--no-deflate` to stop): a server
whose defaults accept it (uvicorn, the websockets library) then compresses every frame
for every client, which is what such a server costs in front of browsers. The client
inflates those frames (zlib, raw deflate, with or without context takeover as agreed).

Harness protocol: one JSON object per line. On stdout the client prints
`{"event":"connected",...}` once every connection was tried, then answers each command
read on stdin: `start` (reset and start measuring), `stop` (print stats), `final`
(publisher's final seqs: report convergence), `quit`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import sys
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from bench.procs import raise_nofile

try:
    if os.environ.get("BENCH_CLIENT") == "websockets":  # force the fallback (to test it)
        raise ImportError("BENCH_CLIENT=websockets")
    from picows import WSListener, WSMsgType, ws_connect

    HAVE_PICOWS = True
except ImportError:
    HAVE_PICOWS = False
    WSListener = object  # type: ignore[assignment,misc]

HIST_MAX_MS = 120_000  # ages at or above this land in the last bucket
# --parse-every N: a connection decodes one frame in N and counts the others, which it
# recognises by this prefix (the service's frames and every relay's start so).
QUOTES_PREFIX = b'{"type":"quotes"'
PREFIX_LEN = len(QUOTES_PREFIX)
PARSE_EVERY = 1
LOOP_NAME = ["asyncio"]  # the client's own event loop, for the report
loads = orjson.loads
time_ns = time.time_ns


class Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.deflate = 0  # connections that agreed to permessage-deflate
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.parsed_frames = 0  # frames decoded (all of them unless --parse-every)
        self.quotes = 0
        self.updates = 0  # seq advance: quotes delivered or superseded by a newer one
        self.bytes = 0
        self.ages = [0] * (HIST_MAX_MS + 1)  # every quote in a `quotes` frame
        self.held = [0] * (HIST_MAX_MS + 1)  # quotes that became the client's held state
        self.max_age = 0
        self.t0 = time.monotonic()
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self.closes: Counter[str] = Counter()


STATS = Stats()


def close_received(conn: Any, closes: Counter[str], transport: Any, frame: Any) -> None:
    """A picows connection got the server's close frame: count its code, answer it."""
    closes[str(frame.get_close_code().value)] += 1
    conn.closed = True
    with contextlib.suppress(Exception):
        transport.send_close(frame.get_close_code())
    transport.disconnect()


def disconnected(conn: Any, closes: Counter[str]) -> None:
    """A picows connection ended: an EOF unless a close frame came first; a connect still
    waiting for it fails."""
    if not conn.closed:
        closes["eof"] += 1
    conn.closed = True
    if not conn.ready.done():
        conn.ready.set_exception(ConnectionError("closed before ready"))


class Conn(WSListener):  # type: ignore[misc]
    """One connection's state; the frame path is kept as short as possible."""

    __slots__ = (
        "board",
        "closed",
        "compressed",
        "frames_total",
        "inflate",
        "last_advance",
        "parts",
        "quote_frames",
        "ready",
        "reset_inflate",
        "sio",
        "skip",
        "stalled",
        "transport",
    )

    def __init__(self, sio: bool, stalled: bool) -> None:
        self.sio = sio
        self.stalled = stalled
        self.board: dict[str, int] = {}
        self.transport: Any = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.frames_total = 0
        self.quote_frames = 0  # quote frames since the last `start`
        self.last_advance = 0.0
        self.inflate: Any = None
        self.reset_inflate = False
        self.parts: list[bytes] | None = None  # a fragmented message being collected
        self.compressed = False
        self.skip = 0  # frames left to count without decoding (--parse-every)

    # picows callbacks

    def on_ws_connected(self, transport: Any) -> None:
        self.transport = transport
        agreed = transport.response.headers.get("Sec-WebSocket-Extensions", "")
        if "permessage-deflate" in agreed:
            self.inflate = zlib.decompressobj(-15)
            self.reset_inflate = "server_no_context_takeover" in agreed
            STATS.deflate += 1
        if not self.sio and not self.ready.done():
            self.ready.set_result(None)

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        t = frame.msg_type
        if t is WSMsgType.TEXT or t is WSMsgType.BINARY:
            if frame.fin and not frame.rsv1:
                self.on_text(frame.get_payload_as_memoryview(), frame.payload_size)
            elif frame.fin:
                self.on_text(self.inflated(frame.get_payload_as_bytes()), frame.payload_size)
            else:
                self.parts = [frame.get_payload_as_bytes()]
                self.compressed = frame.rsv1
        elif t is WSMsgType.CONTINUATION:
            if self.parts is None:
                return
            self.parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                data = b"".join(self.parts)
                self.parts = None
                self.on_text(self.inflated(data) if self.compressed else data, len(data))
        elif t is WSMsgType.CLOSE:
            close_received(self, STATS.closes, transport, frame)
        # picows answers pings by itself (enable_auto_pong)

    def on_ws_disconnected(self, transport: Any) -> None:
        disconnected(self, STATS.closes)

    def inflated(self, data: bytes) -> bytes:
        out = self.inflate.decompress(data + b"\x00\x00\xff\xff")
        if self.reset_inflate:
            self.inflate = zlib.decompressobj(-15)
        return out

    # transport-neutral

    def send(self, text: bytes) -> None:
        if HAVE_PICOWS:
            self.transport.send(WSMsgType.TEXT, text)
        else:  # websockets fallback
            asyncio.get_running_loop().create_task(self.transport.send(text.decode()))

    def on_text(self, buf: Any, size: int) -> None:
        self.frames_total += 1
        if self.sio:
            head = buf[0]
            if head == 52:  # '4': a socket.io packet
                second = buf[1]
                if second == 50:  # '42' event
                    event = loads(buf[2:])
                    if event[0] != "quotes":
                        return
                    quotes = event[1]
                    update = True
                elif second == 48:  # '40' connected to the namespace
                    if not self.ready.done():
                        self.ready.set_result(None)
                    return
                else:
                    return
            elif head == 50:  # '2' ping
                self.send(b"3")
                return
            elif head == 48:  # '0' engine open
                self.send(b"40")
                return
            else:
                return
        else:
            if self.skip and STATS.measuring and buf[:PREFIX_LEN] == QUOTES_PREFIX:
                # Counted, not decoded: the frame path of a cheap client (--parse-every).
                self.skip -= 1
                S = STATS
                S.frames += 1
                S.bytes += size
                self.quote_frames += 1
                return
            frame = loads(buf)
            kind = frame.get("type")
            if kind == "quotes":
                update = True
            elif kind == "snapshot":
                update = False
            else:
                return
            quotes = frame["quotes"]
        board = self.board
        S = STATS
        if not (update and S.measuring):
            moved = False
            for q in quotes:
                s = q["symbol"]
                seq = q["seq"]
                if seq > board.get(s, 0):
                    board[s] = seq
                    moved = True
            if moved:
                self.last_advance = time.time()
            return
        now = time_ns() // 1_000_000
        ages = S.ages
        held = S.held
        top = HIST_MAX_MS
        advance = 0
        worst = 0
        for q in quotes:
            age = now - q["ts"]
            if age < 0:
                age = 0
            elif age > top:
                age = top
            if age > worst:
                worst = age
            ages[age] += 1
            s = q["symbol"]
            seq = q["seq"]
            had = board.get(s, 0)
            if seq > had:
                board[s] = seq
                advance += seq - had if had else 1
                held[age] += 1
        if worst > S.max_age:
            S.max_age = worst
        S.frames += 1
        S.parsed_frames += 1
        self.skip = PARSE_EVERY - 1
        S.quotes += len(quotes)
        S.updates += advance
        S.bytes += size
        self.quote_frames += 1
        if advance:
            self.last_advance = time.time()


# ---- connecting -------------------------------------------------------------------------

def small_rcvbuf_factory(rcvbuf: int) -> Any:
    def factory(parsed_url: Any) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        return sock
    return factory


DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"  # what browsers send
OFFER_DEFLATE = True


async def open_picows(url: str, conn: Conn, rcvbuf: int) -> None:
    kwargs: dict[str, Any] = {}
    if OFFER_DEFLATE:
        kwargs["extra_headers"] = {"Sec-WebSocket-Extensions": DEFLATE_OFFER}
    if conn.stalled and rcvbuf:
        kwargs["socket_factory"] = small_rcvbuf_factory(rcvbuf)
    await ws_connect(lambda: conn, url, websocket_handshake_timeout=30,
                     max_frame_size=64 * 1024 * 1024, **kwargs)


async def open_websockets(url: str, conn: Conn, rcvbuf: int) -> None:  # pragma: no cover
    from websockets.asyncio.client import connect

    sock = None
    if conn.stalled and rcvbuf:
        host_port = url.split("//", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    ws = await connect(url, sock=sock, compression="deflate" if OFFER_DEFLATE else None,
                       max_size=None, ping_interval=None, open_timeout=30)
    conn.transport = ws
    if not conn.sio:
        conn.ready.set_result(None)

    async def pump() -> None:
        try:
            async for message in ws:
                data = message.encode() if isinstance(message, str) else message
                conn.on_text(memoryview(data), len(data))
        except Exception:
            pass
        finally:
            STATS.closes[str(ws.close_code or "eof")] += 1
            conn.closed = True

    if not conn.stalled or conn.sio:
        asyncio.get_running_loop().create_task(pump())


def stall(conn: Conn) -> None:
    """Stop reading: the socket's receive buffer fills and the server must cope."""
    if HAVE_PICOWS:
        conn.transport.underlying_transport.pause_reading()
    else:  # pragma: no cover
        conn.transport.transport.pause_reading()


async def connect_all(url: str, n: int, n_stalled: int, sio: bool, concurrency: int,
                      timeout: float, rcvbuf: int) -> tuple[list[Conn], dict[str, Any]]:
    sem = asyncio.Semaphore(concurrency)
    conns: list[Conn] = []
    errors: Counter[str] = Counter()
    opener = open_picows if HAVE_PICOWS else open_websockets
    # Stalled clients are spread evenly among the others.
    stalled_at = {round(i * n / n_stalled) for i in range(n_stalled)} if n_stalled else set()

    async def one(i: int) -> Conn | None:
        conn = Conn(sio, i in stalled_at)
        async with sem:
            try:
                async with asyncio.timeout(30):
                    await opener(url, conn, rcvbuf)
                    await conn.ready
            except Exception as exc:
                errors[type(exc).__name__] += 1
                if conn.transport is not None and HAVE_PICOWS:
                    with contextlib.suppress(Exception):
                        conn.transport.disconnect(False)
                return None
        if conn.stalled:
            stall(conn)
        return conn

    t0 = time.monotonic()
    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
        errors["connect_timeout"] += 1
    elapsed = time.monotonic() - t0
    for task in done:
        conn = task.result()
        if conn is not None:
            conns.append(conn)
    return conns, {
        "event": "connected",
        "ok": len(conns),
        "failed": n - len(conns),
        "stalled": sum(c.stalled for c in conns),
        "errors": dict(errors),
        "connect_s": round(elapsed, 3),
        "library": "picows" if HAVE_PICOWS else "websockets",
        "loop": LOOP_NAME[0],
        "deflate": STATS.deflate,
    }


# ---- reporting --------------------------------------------------------------------------

def sparse(hist: list[int]) -> dict[str, int]:
    return {str(i): c for i, c in enumerate(hist) if c}


TCP_ESTABLISHED = 1


def still_established(conn: Conn) -> bool:
    """A stalled connection reads nothing, so it never sees the server's close frame or
    FIN; ask the kernel instead (a FIN moves it to CLOSE_WAIT, a RST to CLOSE)."""
    if conn.closed:
        return False
    try:
        if HAVE_PICOWS:
            sock = conn.transport.underlying_transport.get_extra_info("socket")
        else:  # pragma: no cover
            sock = conn.transport.transport.get_extra_info("socket")
        if sock is None:
            return False
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == TCP_ESTABLISHED
    except (OSError, AttributeError):
        return False


def local_port(conn: Conn) -> int | None:
    try:
        t = conn.transport.underlying_transport if HAVE_PICOWS else conn.transport.transport
        return t.get_extra_info("sockname")[1]
    except (AttributeError, TypeError, IndexError):
        return None


def stats_report(conns: list[Conn]) -> dict[str, Any]:
    S = STATS
    wall = time.monotonic() - S.t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru.ru_utime - S.ru0.ru_utime) + (ru.ru_stime - S.ru0.ru_stime)
    healthy = [c for c in conns if not c.stalled]
    return {
        "event": "stats",
        "wall_s": round(wall, 3),
        "cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else 0.0,
        "frames": S.frames,
        "parsed_frames": S.parsed_frames,
        "quotes": S.quotes,
        "updates": S.updates,
        "bytes": S.bytes,
        "max_age_ms": S.max_age,
        "ages": sparse(S.ages),
        "held": sparse(S.held),
        "closes": dict(S.closes),
        "healthy": len(healthy),
        "healthy_open": sum(not c.closed for c in healthy),
        "healthy_with_quotes": sum(c.quote_frames > 0 for c in healthy),
        "stalled": len(conns) - len(healthy),
        "stalled_open": sum(still_established(c) for c in conns if c.stalled),
        "stalled_ports": [local_port(c) for c in conns if c.stalled],
    }


async def converged_at(boards: Sequence[Any], final: dict[str, int], t_stop: float,
                       deadline_s: float) -> list[float]:
    """Sorted: for each connection whose `board` came to hold every final seq by the
    deadline, its `last_advance` in seconds after the publisher stopped (wall clock, shared
    with the harness; negative: held before the harness saw the publisher exit)."""
    when: dict[int, float] = {}
    items = list(final.items())
    end = t_stop + deadline_s
    while True:
        for i, c in enumerate(boards):
            if i not in when and all(c.board.get(s, 0) >= v for s, v in items):
                when[i] = c.last_advance - t_stop
        if len(when) == len(boards) or time.time() >= end:
            break
        await asyncio.sleep(0.05)
    return sorted(when.values())


async def convergence(conns: list[Conn], final: dict[str, int], t_stop: float,
                      deadline_s: float) -> dict[str, Any]:
    """When did each healthy client hold the publisher's final state?"""
    healthy = [c for c in conns if not c.stalled]
    times = await converged_at(healthy, final, t_stop, deadline_s)
    return {
        "event": "converged",
        "clients": len(healthy),
        "converged": len(times),
        "within_1s": sum(t <= 1.0 for t in times),
        "max_s": round(times[-1], 3) if times else None,
        "p50_s": round(times[len(times) // 2], 3) if times else None,
        "deadline_s": deadline_s,
    }


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


async def serve_driver(info: dict[str, Any], start: Callable[[], None],
                       stop: Callable[[], dict[str, Any]],
                       final: Callable[[dict[str, int], float, float], Awaitable[dict[str, Any]]]
                       ) -> None:
    """The driver protocol: `info` once, then one answer per command line on stdin
    (`start`, `stop`, `final`, `quit`). Shared with bench/fastclient.py."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit(info)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = orjson.loads(line)
        op = cmd["cmd"]
        if op == "start":
            start()
        elif op == "stop":
            emit(stop())
        elif op == "final":
            emit(await final(cmd["seqs"], cmd["t_stop"], cmd.get("deadline_s", 5.0)))
        elif op == "quit":
            break


async def main_async(args: argparse.Namespace) -> None:
    conns, info = await connect_all(args.url, args.conns, args.stall, args.sio,
                                    args.concurrency, args.connect_timeout, args.stall_rcvbuf)

    def start() -> None:
        STATS.reset()
        for c in conns:
            c.quote_frames = 0
        STATS.measuring = True

    def stop() -> dict[str, Any]:
        STATS.measuring = False
        return stats_report(conns)

    await serve_driver(info, start, stop,
                       lambda seqs, t_stop, deadline: convergence(conns, seqs, t_stop, deadline))
    # Abrupt: the kernel closes every socket at exit; a polite close of 10k connections
    # would only measure the server's close path.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--conns", type=int, required=True)
    parser.add_argument("--stall", type=int, default=0, help="connections that stop reading")
    parser.add_argument("--sio", action="store_true", help="speak Engine.IO v4 / socket.io")
    parser.add_argument("--concurrency", type=int, default=256, help="handshakes in flight")
    parser.add_argument("--connect-timeout", type=float, default=90.0)
    parser.add_argument("--no-deflate", action="store_true",
                        help="do not offer permessage-deflate (browsers do)")
    parser.add_argument("--stall-rcvbuf", type=int, default=8192,
                        help="SO_RCVBUF of stalled connections (bytes; 0: kernel default)")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="the client's event loop (auto: uvloop when installed)")
    parser.add_argument("--parse-every", type=int, default=1,
                        help="decode one quotes frame in N per connection (ages, updates), "
                        "only count the others")
    args = parser.parse_args()
    global OFFER_DEFLATE, PARSE_EVERY
    OFFER_DEFLATE = not args.no_deflate
    PARSE_EVERY = max(1, args.parse_every)
    raise_nofile()
    runner = asyncio.run
    if args.loop != "asyncio":
        try:
            import uvloop

            runner = uvloop.run
            LOOP_NAME[0] = "uvloop"
        except ImportError:
            if args.loop == "uvloop":
                raise
    with contextlib.suppress(KeyboardInterrupt):
        runner(main_async(args))
    # Skip interpreter teardown of thousands of sockets.
    os._exit(0)


if __name__ == "__main__":
    main()
