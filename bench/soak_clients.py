"""The soak's moving clients (bench/soak.py), in a process of their own so that their CPU
is not the service's: the churn, and the every-mode consumers.

    python -m bench.soak_clients --port PORT --symbols A,B,C --secret S [--seed 1]

Driven over stdin/stdout, one JSON object a line (as bench/viewers_load.c is):

- `{"cmd": "churn", "rate": 50, "vanish_s": 60}`: from now on, `rate` new clients a second,
  each picking (seeded) what it does: a websocket or an SSE stream; no token, a realtime
  token, a delayed-tier token, or a token that expires in seconds (refreshed with
  `{"op": "auth"}`, or left to expire: the service sends `token_expired`, then closes with
  1008 after TOKEN_GRACE_S); symbols on the URL or by `subscribe`, some with `max_hz`,
  changed a few times (subscribe, unsubscribe); a pause in reading; and a way to leave: a
  close frame (SSE: the socket closed), an abort (SO_LINGER 0: an RST) or vanishing (it
  stops reading and keeps the socket open for `vanish_s`, then aborts; see `vanish`).
- `{"cmd": "stop_churn"}`: no new churn client; every one still there (vanished ones too)
  aborts now; answered `{"event": "churn_stopped", "counts": {...}}` once all are gone.
- `{"cmd": "final", "seqs": {SYMBOL: seq}, "deadline_s": 30}`: answered `{"event":
  "every", ...}` once every every-mode consumer holds `seqs` for its symbols (or at the
  deadline): what each received, per symbol as runs of consecutive seqs and a count of
  repeats, to be checked against the tape.
- `{"cmd": "quit"}`, or EOF.

Every-mode consumers (`--every N`) run while `{"cmd": "every", "on": true}` says (until
`"on": false`, when each leaves with a close frame): each subscribes to a few symbols in
`"mode": "every"`, and every few seconds leaves (close or abort) and comes back with
`since` = the last seq it holds of each symbol; the service must send the quotes in
between from the tape, nothing missing or repeated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
from websockets.asyncio.client import ClientConnection, connect

# How long a churn client lives before it leaves (seconds, uniform).
LIFE_S = (1.0, 8.0)
# How long an every-mode consumer stays connected before it leaves and comes back.
EVERY_STAY_S = (2.0, 8.0)


def mint(secret: str, exp_in_s: float, tier: str = "realtime") -> str:
    return jwt.encode({"exp": int(time.time() + exp_in_s), "sub": "soak", "tier": tier},
                      secret, algorithm="HS256")


def rst(sock: socket.socket | None) -> None:
    """Make the next close of this socket an abort: SO_LINGER 0 sends an RST, no FIN."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# ---- the churn ------------------------------------------------------------------------------

@dataclass
class Plan:
    """What one churn client does, drawn from the seeded generator."""
    transport: str  # ws, sse
    token: str  # none, realtime, delayed, short-refreshed, short-expiring
    symbols: list[str]
    on_url: bool
    max_hz: float | None
    changes: int
    pause: bool
    leave: str  # close, abort, vanish
    life_s: float


def draw(rng: random.Random, symbols: list[str]) -> Plan:
    transport = "ws" if rng.random() < 0.7 else "sse"
    token = rng.choices(["none", "realtime", "delayed", "short-refreshed", "short-expiring"],
                        [40, 25, 15, 10, 10])[0]
    if transport == "sse" and token == "short-refreshed":
        token = "short-expiring"  # an SSE stream cannot send `auth`
    chosen = ["*"] if rng.random() < 0.3 else rng.sample(symbols, rng.randint(1, min(5, len(symbols))))
    return Plan(transport=transport, token=token, symbols=chosen,
                on_url=transport == "sse" or rng.random() < 0.5,
                max_hz=rng.choice([None, None, 1.0, 4.0, 10.0]),
                changes=0 if transport == "sse" else rng.randint(0, 3),
                pause=rng.random() < 0.2,
                leave=rng.choices(["close", "abort", "vanish"], [50, 25, 25])[0],
                life_s=rng.uniform(*LIFE_S))


@dataclass
class Churn:
    port: int
    symbols: list[str]
    secret: str
    rng: random.Random
    vanish_s: float = 60.0
    running: bool = False
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)

    def token_for(self, plan: Plan) -> str | None:
        if plan.token == "none":
            return None
        if plan.token.startswith("short"):
            return mint(self.secret, 3.0)
        return mint(self.secret, 3600.0, "delayed" if plan.token == "delayed" else "realtime")

    def query(self, plan: Plan, token: str | None) -> str:
        parts = []
        if plan.on_url:
            parts.append("symbols=" + ",".join(plan.symbols))
            if plan.max_hz is not None:
                parts.append(f"max_hz={plan.max_hz:g}")
        if token:
            parts.append("token=" + token)
        return "?" + "&".join(parts) if parts else ""

    async def run(self, rate: float) -> None:
        self.running = True
        interval = 1.0 / rate
        next_at = time.monotonic()
        while not self.stopping.is_set():
            plan = draw(self.rng, self.symbols)
            task = asyncio.create_task(self.client(plan))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            next_at += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), max(0.0, next_at - time.monotonic()))

    async def stop(self) -> dict[str, int]:
        self.stopping.set()
        while self.tasks:
            await asyncio.wait(set(self.tasks))
        return dict(self.counts)

    async def client(self, plan: Plan) -> None:
        """One churn client's life; whatever happens to it is counted, never raised."""
        self.counts[f"{plan.transport}:{plan.token}:{plan.leave}"] += 1
        try:
            async with asyncio.timeout(plan.life_s + self.vanish_s + 60):
                if plan.transport == "ws":
                    await self.ws_client(plan)
                else:
                    await self.sse_client(plan)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counts[f"ended by {type(exc).__name__}"] += 1

    async def linger(self, seconds: float) -> bool:
        """Wait `seconds`, or less if the churn stops; True if it stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        return self.stopping.is_set()

    async def ws_client(self, plan: Plan) -> None:
        token = self.token_for(plan)
        url = f"ws://127.0.0.1:{self.port}/ws{self.query(plan, token)}"
        async with connect(url, open_timeout=10, close_timeout=2, max_size=None,
                           ping_interval=None) as ws:
            reader = asyncio.create_task(drain_ws(ws))
            try:
                if not plan.on_url:
                    sub: dict[str, Any] = {"op": "subscribe", "id": 1, "symbols": plan.symbols}
                    if plan.max_hz is not None:
                        sub["max_hz"] = plan.max_hz
                    await ws.send(orjson.dumps(sub).decode())
                step = plan.life_s / (plan.changes + 2)
                for i in range(plan.changes):
                    if await self.linger(step):
                        break
                    change = self.rng.sample(self.symbols, min(3, len(self.symbols)))
                    op = "unsubscribe" if i % 2 else "subscribe"
                    await ws.send(orjson.dumps({"op": op, "id": 10 + i, "symbols": change}).decode())
                if plan.token == "short-refreshed":
                    await self.linger(1.0)
                    await ws.send(orjson.dumps({"op": "auth", "id": 99,
                                                "token": mint(self.secret, 3600.0)}).decode())
                if plan.pause:  # stop reading for a while, then go on
                    pause(ws.transport)
                    await self.linger(self.rng.uniform(1.0, 4.0))
                    resume(ws.transport)
                await self.linger(step)
                await self.leave(plan, ws.transport, ws.close)
            finally:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader

    async def leave(self, plan: Plan, transport: Any,
                    close: Callable[[], Awaitable[None]]) -> None:
        if plan.leave == "vanish":
            pause(transport)
            await self.linger(self.vanish_s)
            # Did the service give up on it first (a FIN came: CLOSE_WAIT here)?
            state = tcp_state(transport.get_extra_info("socket"))
            self.counts[f"vanished {plan.transport}, " + (
                "the service had closed it" if state == TCP_CLOSE_WAIT else "still open")] += 1
            plan.leave = "abort"
        if plan.leave == "abort":
            rst(transport.get_extra_info("socket"))
            transport.abort()
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await close()

    async def sse_client(self, plan: Plan) -> None:
        token = self.token_for(plan)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port), 10)
        try:
            writer.write(f"GET /sse{self.query(plan, token)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Accept: text/event-stream\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = head.split(b" ", 2)[1].decode()
            self.counts[f"sse {status}"] += 1
            drain = asyncio.create_task(drain_stream(reader))
            try:
                if plan.pause:
                    pause(writer.transport)
                    await self.linger(self.rng.uniform(1.0, 4.0))
                    resume(writer.transport)
                await self.linger(plan.life_s)

                async def close() -> None:
                    writer.close()
                    await writer.wait_closed()

                await self.leave(plan, writer.transport, close)
            finally:
                drain.cancel()
                with contextlib.suppress(BaseException):
                    await drain
        finally:
            if not writer.transport.is_closing():
                writer.transport.abort()


TCP_CLOSE_WAIT = 8


def tcp_state(sock: socket.socket | None) -> int | None:
    """The socket's TCP state (tcp_info's first byte; 1 established, 8 close-wait)."""
    if sock is None:
        return None
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return None


def pause(transport: Any) -> None:
    with contextlib.suppress(Exception):
        transport.pause_reading()


def resume(transport: Any) -> None:
    with contextlib.suppress(Exception):
        transport.resume_reading()


async def drain_ws(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        async for _ in ws:
            pass


async def drain_stream(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await reader.read(65536):
            pass


# ---- every-mode consumers -------------------------------------------------------------------

@dataclass
class Runs:
    """One symbol's seqs as received: runs of consecutive seqs, and repeats (a seq not
    above the last one)."""
    runs: list[list[int]] = field(default_factory=list)
    repeats: int = 0

    def add(self, seq: int) -> None:
        if self.runs and seq <= self.runs[-1][1]:
            self.repeats += 1
        elif self.runs and seq == self.runs[-1][1] + 1:
            self.runs[-1][1] = seq
        else:
            self.runs.append([seq, seq])

    @property
    def last(self) -> int | None:
        return self.runs[-1][1] if self.runs else None


@dataclass
class EveryConsumer:
    port: int
    symbols: list[str]
    rng: random.Random
    got: dict[str, Runs] = field(default_factory=dict)
    sessions: int = 0
    unrecovered: int = 0
    closes: Counter[str] = field(default_factory=Counter)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def since(self) -> dict[str, int]:
        return {s: r.last for s, r in self.got.items() if r.last is not None}

    async def run(self) -> None:
        while not self.done.is_set():
            try:
                await self.session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.closes[type(exc).__name__] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), self.rng.uniform(0.1, 1.0))

    async def session(self) -> None:
        async with connect(f"ws://127.0.0.1:{self.port}/ws", open_timeout=10, close_timeout=2,
                           max_size=None) as ws:
            self.sessions += 1
            sub: dict[str, Any] = {"op": "subscribe", "id": 1, "symbols": self.symbols,
                                   "mode": "every"}
            since = self.since()
            if since:
                sub["since"] = since
            await ws.send(orjson.dumps(sub).decode())
            stay = self.rng.uniform(*EVERY_STAY_S)
            leave = asyncio.get_running_loop().time() + stay
            while not self.done.is_set():
                timeout = leave - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancel that
                # comes as the frame does, and the consumer would never stop.
                try:
                    async with asyncio.timeout(timeout):
                        raw = await ws.recv()
                except TimeoutError:
                    break
                self.take(orjson.loads(raw))
            if self.done.is_set() or self.rng.random() < 0.5:
                await ws.close()
            else:
                rst(ws.transport.get_extra_info("socket"))
                ws.transport.abort()

    def take(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "ack" and frame.get("recovered") is False:
            self.unrecovered += len(frame.get("unrecovered") or [])
        if kind in ("quotes", "snapshot"):
            for quote in frame["quotes"]:
                self.got.setdefault(quote["symbol"], Runs()).add(int(quote["seq"]))
            self.progress.set()

    def holds(self, seqs: dict[str, int]) -> bool:
        return all((self.got.get(s) or Runs()).last == seqs[s] for s in self.symbols if s in seqs)

    def report(self) -> dict[str, Any]:
        return {"symbols": self.symbols, "sessions": self.sessions,
                "unrecovered": self.unrecovered, "errors": dict(self.closes),
                "got": {s: {"runs": r.runs, "repeats": r.repeats} for s, r in self.got.items()}}


async def final(consumers: list[EveryConsumer], seqs: dict[str, int], deadline_s: float
                ) -> dict[str, Any]:
    """Once every consumer holds the final seqs (or at the deadline): what they got."""
    end = time.monotonic() + deadline_s
    while not all(c.holds(seqs) for c in consumers) and time.monotonic() < end:
        for c in consumers:
            c.progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.progress.wait() for c in consumers)), 0.5)
    held = sum(c.holds(seqs) for c in consumers)
    for c in consumers:
        c.done.set()
    return {"event": "every_final", "held_final": held, "consumers": [c.report() for c in consumers]}


# ---- the driver -----------------------------------------------------------------------------

def say(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    symbols = [s for s in args.symbols.split(",") if s]
    rng = random.Random(args.seed)
    consumers = [EveryConsumer(args.port, rng.sample(symbols, min(3, len(symbols))),
                               random.Random(rng.random())) for _ in range(args.every)]
    every_tasks: list[asyncio.Task[None]] = []
    churn: Churn | None = None
    churn_task: asyncio.Task[None] | None = None
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    say({"event": "ready", "every": len(consumers)})
    while line := await stdin.readline():
        cmd = orjson.loads(line)
        if cmd["cmd"] == "churn":
            churn = Churn(args.port, symbols, args.secret, random.Random(rng.random()),
                          vanish_s=float(cmd.get("vanish_s", 60)))
            churn_task = asyncio.create_task(churn.run(float(cmd["rate"])))
        elif cmd["cmd"] == "stop_churn":
            counts = await churn.stop() if churn is not None else {}
            if churn_task is not None:
                await churn_task
            say({"event": "churn_stopped", "counts": counts})
        elif cmd["cmd"] == "every":
            # On: the consumers (re)connect, with `since` once they hold quotes. Off: each
            # leaves (a close frame) and stays away until the next "on".
            if cmd["on"] and not every_tasks:
                every_tasks = [asyncio.create_task(c.run()) for c in consumers]
            elif not cmd["on"]:
                await stop_all(every_tasks)
                every_tasks = []
            say({"event": "every", "on": bool(cmd["on"])})
        elif cmd["cmd"] == "final":
            say(await final(consumers, cmd["seqs"], float(cmd.get("deadline_s", 30))))
        elif cmd["cmd"] == "quit":
            break
    for c in consumers:
        c.done.set()
    await stop_all(every_tasks)


async def stop_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel these tasks until they are done (a cancel can still be lost in a library's
    wait_for on 3.11)."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--symbols", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
