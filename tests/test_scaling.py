"""Several instances behind a real nginx, one of them with two workers, on one Redis.

Real processes throughout: redis-server, the simulated publisher, two service instances
(`python -m service`, WORKERS=1 and WORKERS=2) and nginx running deploy/nginx.conf. The
clients are the project's own QuoteClient, which reconnects with jittered back-off. Each
test prints what it measured (run with -s to see it).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from quote_client.client import QuoteClient
from tests.nginx_server import Nginx, nginx
from tests.redis_server import redis_server
from tests.service_proc import PublisherProcess, ServiceProcess, http_get
from tests.test_faults import SYMBOLS, until
from tests.wsclient import connect, recv_type

CLIENTS = 60
ENV = {"PROBE_INTERVAL_S": "0.5", "PROBE_TIMEOUT_S": "2", "REDIS_RETRY_MAX_S": "1",
       "FEED_SILENCE_S": "3", "DRAIN_S": "2", "FORWARDED_ALLOW_IPS": "127.0.0.1"}


@dataclass
class Stack:
    one: ServiceProcess  # WORKERS=1
    two: ServiceProcess  # WORKERS=2
    publisher: PublisherProcess
    nginx: Nginx

    def node_of_one(self) -> str:
        return str(orjson.loads(http_get(self.one.url + "/readyz")[1])["node"])


@pytest.fixture
def stack() -> Iterator[Stack]:
    with redis_server() as server, tempfile.TemporaryDirectory(prefix="test-nginx-") as tmp:
        env = {"REDIS_URL": server.url, **ENV}
        one = ServiceProcess(env)
        two = ServiceProcess({**env, "WORKERS": "2"})
        publisher = PublisherProcess(server.url, rate=50)
        started: list[ServiceProcess | PublisherProcess] = []
        try:
            for process in (one, two):
                process.start(ready="/readyz")
                started.append(process)
            two.wait_workers(2)
            publisher.start()
            started.append(publisher)
            with nginx([one.port, two.port], Path(tmp)) as proxy:
                yield Stack(one, two, publisher, proxy)
        finally:
            for process in reversed(started):
                process.stop()


class Reader:
    """A QuoteClient through nginx, and a task that reads every quote it yields, noting
    any whose seq is below one this client already held for the symbol."""

    def __init__(self, client: QuoteClient) -> None:
        self.client = client
        self.held: dict[str, int] = {}
        self.went_back: list[tuple[str, int, int]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for quote in self.client.quotes():
            seq = quote.seq or 0
            held = self.held.get(quote.symbol, 0)
            if seq < held:
                self.went_back.append((quote.symbol, held, seq))
            self.held[quote.symbol] = max(held, seq)

    @property
    def node(self) -> str | None:
        return self.client.welcome.node if self.client.welcome else None

    def board(self) -> dict[str, tuple[int | None, float]]:
        return {s: (q.seq, q.price) for s, q in self.client.board.items()}


@pytest.fixture
async def readers(stack: Stack) -> AsyncIterator[list[Reader]]:
    async with AsyncExitStack() as exits:
        clients = [QuoteClient(stack.nginx.ws_url, symbols="*", max_backoff_s=1) for _ in range(CLIENTS)]
        await asyncio.gather(*(exits.enter_async_context(c) for c in clients))
        out = [Reader(c) for c in clients]
        await until(lambda: all(len(c.board) == SYMBOLS for c in clients), 10, "full boards")
        yield out
        for reader in out:
            reader.task.cancel()


async def fresh_board(url: str) -> dict[str, tuple[int | None, float]]:
    async with QuoteClient(url, symbols="*") as client:
        return {s: (q.seq, q.price) for s, q in client.board.items()}


async def converged(stack: Stack, readers: list[Reader], timeout: float) -> float:
    """Stop the publisher, then until every board equals a fresh client's snapshot."""
    stack.publisher.stop()
    started = time.monotonic()
    fresh: dict[str, tuple[int | None, float]] = {}

    async def check() -> None:
        nonlocal fresh
        fresh = await fresh_board(stack.nginx.ws_url)

    deadline = started + timeout
    while time.monotonic() < deadline:
        await check()
        if len(fresh) == SYMBOLS and all(r.board() == fresh for r in readers):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    behind = sum(r.board() != fresh for r in readers)
    pytest.fail(f"{behind} of {len(readers)} boards differ from a fresh snapshot after {timeout}s")


async def test_clients_spread_over_every_worker_and_agree(stack: Stack, readers: list[Reader]) -> None:
    nodes = {r.node for r in readers}
    assert None not in nodes
    assert len(nodes) >= 3, f"60 clients landed on {len(nodes)} nodes: {nodes}"
    counts = sorted(sum(r.node == n for r in readers) for n in nodes)
    took = await converged(stack, readers, 10)
    assert all(not r.went_back for r in readers)
    print(f"\n{CLIENTS} clients through nginx on {len(nodes)} nodes {counts}; "
          f"boards equal a fresh snapshot {took:.2f}s after the publisher stopped")


async def test_sigterm_drains_an_instance_to_the_other(stack: Stack, readers: list[Reader]) -> None:
    survivor = stack.node_of_one()
    leaving = [r for r in readers if r.node != survivor]
    assert leaving, "some clients were on the two-worker instance"
    terminated = time.monotonic()
    assert stack.two.proc is not None
    stack.two.proc.send_signal(signal.SIGTERM)
    await until(lambda: all(r.node == survivor and r.client.feed == "live" for r in readers), 10,
                "every client back, on the surviving instance")
    back = time.monotonic() - terminated
    assert stack.two.proc.wait(10) == 0, stack.two.log()
    assert {r.client.last_close_code for r in leaving} == {1001}
    # Spread over DRAIN_S (2 s), not all at one instant.
    drained = stack.two.events("draining")
    assert len(drained) == 2, stack.two.log()
    took = await converged(stack, readers, 10 - (time.monotonic() - terminated))
    assert [r.went_back for r in readers if r.went_back] == []
    print(f"\nSIGTERM: {len(leaving)} clients closed with 1001 over DRAIN_S=2, all back on the "
          f"survivor {back:.2f}s after the signal; boards equal a fresh snapshot "
          f"{back + took:.2f}s after it; no seq went back")


def metric(url: str, name: str) -> float | None:
    status, body = http_get(url + "/metrics")
    assert status == 200
    found = re.search(rf"^{name} (\S+)$", body.decode(), re.MULTILINE)
    return float(found.group(1)) if found else None


async def test_a_killed_worker_is_replaced_and_metrics_count_the_host(
    stack: Stack, readers: list[Reader],
) -> None:
    survivor = stack.node_of_one()
    ready = stack.two.events("worker_ready")
    victim = next(e for e in ready if any(r.node == e["worker_node"] for r in readers))
    on_victim = [r for r in readers if r.node == victim["worker_node"]]
    killed = time.monotonic()
    os.kill(int(str(victim["worker_pid"])), signal.SIGKILL)
    await until(lambda: len(stack.two.events("worker_ready")) > len(ready), 5,
                "the supervisor started a replacement within 5 s")
    replaced = time.monotonic() - killed
    await until(lambda: all(r.node != victim["worker_node"] and r.client.feed == "live"
                            for r in on_victim), 10, "the dead worker's clients reconnected")
    reconnected = time.monotonic() - killed

    def host_connections_right() -> bool:
        expected = sum(r.node != survivor for r in readers)
        return (metric(stack.two.url, "quote_service_connections") == expected
                and metric(stack.two.url, "quote_service_workers") == 2)

    await until(host_connections_right, 5, "/metrics on the instance counts its clients on both workers")
    # Whichever worker answers: ask several times.
    for _ in range(6):
        assert host_connections_right()
    sent = metric(stack.two.url, "quote_service_frames_sent_total")
    assert sent is not None and sent > 0
    print(f"\nSIGKILL a worker: replaced after {replaced:.2f}s; its {len(on_victim)} clients "
          f"reconnected after {reconnected:.2f}s; /metrics counts "
          f"{sum(r.node != survivor for r in readers)} connections on the instance")


async def test_the_real_client_address_comes_from_a_trusted_proxy_only(stack: Stack) -> None:
    """A flood is logged with the client's address: through nginx the real one (from
    X-Forwarded-For / X-Real-IP), straight from an untrusted peer its own, never a forged one."""

    async def flood(url: str, source: str, headers: dict[str, str] | None = None) -> int | None:
        async with connect(url, local_addr=(source, 0), additional_headers=headers) as ws:
            await recv_type(ws, "welcome")
            for i in range(200):
                try:
                    await ws.send(orjson.dumps({"op": "ping", "id": i}).decode())
                except Exception:
                    break
            try:
                async with asyncio.timeout(5):
                    async for _ in ws:
                        pass
            except Exception:
                pass
            return ws.close_code

    async def flood_logged(service: ServiceProcess, address: str) -> None:
        await until(lambda: f"closing {address}:" in service.log(), 5, f"a flood logged as {address}")

    assert await flood(stack.nginx.ws_url, "127.0.0.7") == 4029
    where = stack.one if "closing 127.0.0.7:" in stack.one.log() else stack.two
    await flood_logged(where, "127.0.0.7")
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}
    assert await flood(stack.one.ws_url, "127.0.0.8", forged) == 4029
    await flood_logged(stack.one, "127.0.0.8")
    assert "203.0.113.9" not in stack.one.log()
    # From the trusted peer, X-Real-IP alone is believed too.
    assert await flood(stack.one.ws_url, "127.0.0.1", {"X-Real-IP": "198.51.100.4"}) == 4029
    await flood_logged(stack.one, "198.51.100.4")
