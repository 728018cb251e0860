"""/metrics's per-worker gauges (`quote_service_worker_*{pid}`, multiprocess mode
"liveall"): with WORKERS=2 any worker's answer carries each live worker's connections,
hub members, groups and asyncio tasks under its pid, and a killed worker's series leave
with it. bench/soak.py reads them to tell one worker's leak from the host's sums."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from contextlib import AsyncExitStack

import pytest

from tests.redis_server import redis_server
from tests.service_proc import ServiceProcess, http_get
from tests.test_client import wait_until
from tests.wsclient import connect, recv_type

pytestmark = pytest.mark.timeout(60)

SERIES = re.compile(r'^quote_service_worker_(\w+)\{pid="(\d+)"\} (\S+)$', re.MULTILINE)


def per_worker(url: str) -> dict[int, dict[str, float]]:
    status, body = http_get(url + "/metrics")
    assert status == 200
    out: dict[int, dict[str, float]] = {}
    for name, pid, value in SERIES.findall(body.decode()):
        out.setdefault(int(pid), {})[name] = float(value)
    return out


async def test_each_live_worker_reports_its_own_figures() -> None:
    with redis_server() as server:
        service = ServiceProcess({"REDIS_URL": server.url, "WORKERS": "2"})
        service.start()
        try:
            pids = {int(str(e["worker_pid"])) for e in service.wait_workers(2)}
            async with AsyncExitStack() as stack:
                for _ in range(6):
                    ws = await stack.enter_async_context(connect(service.ws_url + "?symbols=*"))
                    await recv_type(ws, "ack")

                def counted() -> bool:
                    # Whichever worker answers: every live one is there, the sums add up.
                    figures = per_worker(service.url)
                    return (set(figures) == pids
                            and sum(f["connections"] for f in figures.values()) == 6
                            and sum(f["members"] for f in figures.values()) == 6
                            and all(f["tasks"] > 0 for f in figures.values()))

                await wait_until(counted, 10, "each live worker under its pid, the sums right")
                victim = min(pids)
                os.kill(victim, signal.SIGKILL)
                ready = await asyncio.to_thread(service.wait_workers, 3)
                pids = {int(str(e["worker_pid"])) for e in ready} - {victim}
                await wait_until(lambda: set(per_worker(service.url)) == pids, 10,
                                 "the killed worker's series gone, its replacement's there")
        finally:
            service.stop()
