"""A Redis restart leaves no socket held (found by bench/soak.py, issue 25).

redis-py keeps a pool's idle connections until each is used again; after the server
restarted, their sockets sat in CLOSE_WAIT and then, closed by the kernel, their
descriptors stayed held: the extra connections of a busy moment (here: the tape's, from
34 concurrent /history reads) are never used again, so they were held for good. Now a
lost Redis closes the idle connections of the feed's and the tape's pools
(quote_bus.topology.drop_idle).
"""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import AsyncExitStack

import orjson

from quote_sim.seed import load_instruments
from tests.redis_server import redis_server
from tests.service_proc import feed_stack, http_get
from tests.wsclient import connect, recv_type


def redis_sockets(pid: int, redis_port: int) -> tuple[int, int]:
    """The process's socket descriptors to Redis that are open (ESTABLISHED) and those
    that are dead but held (any other TCP state, or in no TCP table at all)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    tcp: dict[str, tuple[int, str]] = {}  # inode -> (remote port, state)
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                tcp[fields[9]] = (int(fields[2].rsplit(":", 1)[1], 16), fields[3])
    unix = set()
    with open(f"/proc/{pid}/net/unix") as lines:
        next(lines)
        unix = {line.split()[6] for line in lines if len(line.split()) > 6}
    live = sum(1 for i in inodes if tcp.get(i) == (redis_port, "01"))
    dead = sum(1 for i in inodes if (i in tcp and tcp[i][0] == redis_port and tcp[i][1] != "01")
               or (i not in tcp and i not in unix))
    return live, dead


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


async def recover_at_once(ws_url: str, symbols: list[str]) -> None:
    """A busy moment for the tape: one every-mode subscribe with `since` per symbol, all at
    once, each recovered by its own read (the tape's pool opens a connection per read)."""
    async with AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(connect(ws_url)) for _ in symbols]
        for i, (ws, symbol) in enumerate(zip(sockets, symbols, strict=True)):
            await recv_type(ws, "welcome")
            await ws.send(orjson.dumps({"op": "subscribe", "id": i, "symbols": [symbol],
                                        "mode": "every", "since": {symbol: 1}}).decode())
        for ws in sockets:
            await recv_type(ws, "ack", timeout=10)


def test_a_redis_restart_leaves_no_socket_held() -> None:
    with redis_server() as rs, feed_stack(rs.url, rate=200, ready="/readyz") as (service, _):
        assert service.proc is not None
        pid, port = service.proc.pid, rs.port
        symbols = [i.symbol for i in load_instruments()]
        wait_until(lambda: http_get(f"{service.url}/readyz")[0] == 200, 10, "live")
        time.sleep(1)  # some tape to recover
        asyncio.run(recover_at_once(service.ws_url, symbols))
        live_before, dead_before = redis_sockets(pid, port)
        assert dead_before == 0 and live_before > 4, (live_before, dead_before)

        rs.kill()
        rs.start()
        wait_until(lambda: http_get(f"{service.url}/readyz")[0] == 200, 30, "live again")
        asyncio.run(recover_at_once(service.ws_url, symbols[:1]))
        # Every connection the dead server left is closed, not held.
        wait_until(lambda: redis_sockets(pid, port)[1] == 0, 10,
                   f"sockets to the dead Redis still held: {redis_sockets(pid, port)}")
        assert redis_sockets(pid, port)[0] < live_before
