"""deploy/nginx.conf never takes an instance out of the upstream (issue 25, the reconnect storm).

With `max_fails=1 fail_timeout=5s`, an instance that failed one connect (refused while it
restarted, or a connect timeout while a reconnect storm filled its accept queue) was marked
down; 5 s later nginx lets one connection through to try it, and only that connection's end
counts as the success that brings it back. A websocket ends hours later: meanwhile every
new viewer got 502 "no live upstreams" (bench/storm.py saw 160,000 of them in 3 minutes).
Here the only live instance refuses once, comes back, one websocket is held open through
nginx, and more must still get through.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from tests.nginx_server import nginx
from tests.redis_server import free_port, redis_server
from tests.service_proc import ServiceProcess
from tests.wsclient import ClientConnection, connect, recv_type

pytestmark = pytest.mark.timeout(60)


async def open_viewer(url: str) -> ClientConnection:
    ws = await connect(url + "?symbols=*", open_timeout=5)
    await recv_type(ws, "welcome")
    return ws


async def first_viewer(url: str, timeout: float) -> ClientConnection:
    """Retried until one gets through: nginx may still hold the refusal for a moment."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await open_viewer(url)
        except InvalidStatus:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def test_an_instance_that_refused_once_is_not_taken_out() -> None:
    with redis_server() as server, tempfile.TemporaryDirectory(prefix="test-nginx-") as tmp:
        live = ServiceProcess({"REDIS_URL": server.url, "DRAIN_S": "0"})
        live.start()
        try:
            # The other upstream is a port nobody listens on: a stopped instance.
            with nginx([free_port(), live.port], Path(tmp)) as proxy:
                await (await open_viewer(proxy.ws_url)).close()
                live.stop()
                with pytest.raises(InvalidStatus) as refused:
                    await open_viewer(proxy.ws_url)
                assert refused.value.response.status_code == 502
                live.start()
                held = await first_viewer(proxy.ws_url, timeout=10)
                try:
                    more = [await open_viewer(proxy.ws_url) for _ in range(5)]
                    for ws in more:
                        await ws.close()
                finally:
                    await held.close()
        finally:
            live.stop()
