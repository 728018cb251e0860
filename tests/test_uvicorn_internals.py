"""connection.py writes shared frames straight to uvicorn's transport and aborts stalled
peers through it (`_raw_writer`, `Connection._abort`): private parts of uvicorn's
websockets-sansio protocol. Without them everything still works, only slower, so an
upgrade that changed them would go unnoticed; this fails loudly instead, on both event
loops the service runs on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from websockets.sync.client import connect

from service.app import QuoteService, create_app
from service.server import listening_socket, uvicorn_config
from service.settings import Settings
from tests.redis_server import free_port


@pytest.fixture(params=["asyncio", "uvloop"])
def running(request: pytest.FixtureRequest) -> Iterator[tuple[QuoteService, int, str]]:
    import uvicorn

    settings = replace(Settings(), port=free_port(), loop=request.param)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(settings, app))
    sock = listening_socket(settings.host, settings.port, 10_000)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield app.state.service, settings.port, request.param
    finally:
        server.should_exit = True
        thread.join(10)


def test_shared_frames_reach_uvicorns_transport(running: tuple[QuoteService, int, str]) -> None:
    service, port, loop = running
    with connect(f"ws://127.0.0.1:{port}/ws?symbols=*", compression=None) as ws:
        ws.recv(timeout=5)
        (connection,) = service.connections
        raw = connection._raw
        assert raw is not None, "uvicorn's websocket protocol changed: shared frames take the slow path"
        assert raw.conn.extensions == []
        assert ("uvloop" in type(raw.transport).__module__) == (loop == "uvloop")
        assert hasattr(raw.transport, "write") and hasattr(raw.transport, "abort")
        assert raw.writable.is_set() and raw.close_sent is False
        # The abort path finds the same transport through the server's send callable.
        from service.connection import SERVER_SEND

        assert getattr(connection.websocket.scope[SERVER_SEND], "__self__", None) is raw
        # A client that keeps up is written to by the fan-out itself: no sender task.
        for _ in range(3):
            ws.recv(timeout=5)
        assert connection._sender is None, "frames went through a sender task"
        group = connection.outbox.group
        assert group is not None and connection in group.lane, "the group does not write it"
        assert hasattr(raw.transport, "get_write_buffer_size") and hasattr(raw.transport,
                                                                           "is_closing")
