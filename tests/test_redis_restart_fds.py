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
import time
from contextlib import AsyncExitStack

import orjson

from bench.soak import fd_kinds, tcp_sockets
from quote_sim.seed import load_instruments
from tests.redis_server import redis_server
from tests.service_proc import feed_stack, http_get
from tests.wsclient import connect, recv_type


def redis_sockets(pid: int, service_port: int, redis_port: int) -> tuple[int, int]:
    """The process's sockets to Redis that are open (established), and those that are
    dead but held (in another TCP state, or closed by the kernel and in no table): the
    soak's own reading of /proc (bench/soak.py)."""
    kinds = fd_kinds(pid, tcp_sockets(), service_port, redis_port)
    dead = sum(n for kind, n in kinds.items()
               if kind.startswith("socket: redis (") or kind == "socket: closed, still held")
    return kinds.get("socket: redis", 0), dead


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
        pid, ports = service.proc.pid, (service.port, rs.port)
        symbols = [i.symbol for i in load_instruments()]
        wait_until(lambda: http_get(f"{service.url}/readyz")[0] == 200, 10, "live")
        time.sleep(1)  # some tape to recover
        asyncio.run(recover_at_once(service.ws_url, symbols))
        live_before, dead_before = redis_sockets(pid, *ports)
        assert dead_before == 0 and live_before > 4, (live_before, dead_before)

        rs.kill()
        rs.start()
        wait_until(lambda: http_get(f"{service.url}/readyz")[0] == 200, 30, "live again")
        asyncio.run(recover_at_once(service.ws_url, symbols[:1]))
        # Every connection the dead server left is closed, not held.
        wait_until(lambda: redis_sockets(pid, *ports)[1] == 0, 10,
                   "sockets to the dead Redis still held")
        assert redis_sockets(pid, *ports)[0] < live_before
