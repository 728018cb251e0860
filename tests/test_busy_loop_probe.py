"""A service whose event loop was held up is not fooled into calling Redis lost (issue 25).

In the reconnect storm (bench/storm.py) a survivor's loop ran seconds late under the
handshakes; its Redis probe, waiting unread in the socket, was judged overdue, the feed
went stale, and every client got a stale status, then live and a fresh snapshot: more
seconds of work, another overdue probe, round again. Here the whole process is stopped
(SIGSTOP) for longer than PROBE_TIMEOUT_S, then let go: Redis was fine all along, so no
`redis_lost`, and a client sees no `stale`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import orjson
import pytest

from tests.redis_server import redis_server
from tests.service_proc import PublisherProcess, ServiceProcess
from tests.wsclient import connect, recv_type

pytestmark = pytest.mark.timeout(60)

PROBE_TIMEOUT_S = 1.5


async def test_a_stopped_loop_does_not_make_a_healthy_redis_lost() -> None:
    with redis_server() as server:
        service = ServiceProcess({"REDIS_URL": server.url, "PROBE_TIMEOUT_S": str(PROBE_TIMEOUT_S),
                                  "PROBE_INTERVAL_S": "0.5"})
        publisher = PublisherProcess(server.url, rate=20)
        service.start(ready="/readyz")
        publisher.start()
        try:
            async with connect(service.ws_url + "?symbols=*") as ws:
                await recv_type(ws, "quotes", timeout=10)
                for _ in range(2):  # stopped at two points of its probe cycle
                    os.kill(service.pid, signal.SIGSTOP)
                    await asyncio.sleep(PROBE_TIMEOUT_S * 2)  # the whole process: nothing of it runs
                    os.kill(service.pid, signal.SIGCONT)
                    seen = []
                    deadline = time.monotonic() + PROBE_TIMEOUT_S
                    while time.monotonic() < deadline:
                        async with asyncio.timeout(deadline - time.monotonic() + 1):
                            frame = orjson.loads(await ws.recv())
                        seen.append(frame)
                    statuses = [f for f in seen if f["type"] == "status"]
                    assert statuses == [], statuses
                    assert any(f["type"] == "quotes" for f in seen)
        finally:
            publisher.stop()
            service.stop()
    assert service.events("redis_lost") == []
