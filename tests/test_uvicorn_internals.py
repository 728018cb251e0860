"""The canary of service/uvicorn_private.py, which holds every use of uvicorn's private
internals: shared frames written straight to the websocket protocol's transport, stalled
websocket and SSE peers aborted through the transport behind the server's own send, and
the listeners closed first on shutdown (server.py). Without them everything still works,
only slower or less tidily, so an upgrade that changed them would go unnoticed; this fails
loudly instead, through the real server, on both event loops the service runs on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pytest
import uvicorn
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from service import uvicorn_private
from service.app import create_app
from service.connection import Connection
from service.engine import Engine
from service.server import Worker, listening_socket, uvicorn_config
from service.settings import Settings
from service.sse import EventStream
from tests.redis_server import free_port

T = TypeVar("T")


@dataclass
class Running:
    engine: Engine
    server: uvicorn.Server
    port: int
    loop_name: str

    def call(self, function: Callable[[], T]) -> T:
        """`function()` run in the server's event loop, which is another thread's."""
        (listener,) = uvicorn_private.listeners(self.server)
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(function())
            except BaseException as exc:  # handed to the test's thread
                done.set_exception(exc)

        listener.get_loop().call_soon_threadsafe(run)
        return done.result(timeout=5)


@pytest.fixture(params=["asyncio", "uvloop"])
def running(request: pytest.FixtureRequest) -> Iterator[Running]:
    settings = replace(Settings(), port=free_port(), loop=request.param)
    app = create_app(settings)
    server = Worker(uvicorn_config(settings, app), app.state.engine)
    sock = listening_socket(settings.host, settings.port, 10_000)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    # Worker.startup installs its listeners just after uvicorn says started.
    wait_for(lambda: server.started and uvicorn_private.listeners(server), "the server did not start")
    try:
        yield Running(app.state.engine, server, settings.port, request.param)
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(check: Callable[[], object], message: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def only_client(engine: Engine, kind: type[T]) -> T:
    wait_for(lambda: len(engine.registry.sessions) == 1, "the server does not hold the client")
    (client,) = engine.registry.sessions
    assert isinstance(client, kind)
    return client


def assert_loops_transport(transport: Any, loop_name: str) -> None:
    assert ("uvloop" in type(transport).__module__) == (loop_name == "uvloop")


def test_shared_frames_reach_uvicorns_transport(running: Running) -> None:
    with connect(f"ws://127.0.0.1:{running.port}/ws?symbols=*", compression=None) as ws:
        ws.recv(timeout=5)
        connection = only_client(running.engine, Connection)
        send = uvicorn_private.server_send(connection.websocket.scope)
        raw = uvicorn_private.raw_protocol(send)
        assert raw is not None, "uvicorn's websocket protocol changed: shared frames take the slow path"
        assert raw.conn.extensions == []  # type: ignore[attr-defined]
        # The handshake's request and response, held by uvicorn for the connection's life
        # though read only until the upgrade, are let go (about 2 KB a client).
        assert raw.request is None and raw.response is None  # type: ignore[attr-defined]
        assert_loops_transport(raw.transport, running.loop_name)
        for name in ("write", "is_closing", "get_write_buffer_size", "abort"):
            assert callable(getattr(raw.transport, name)), name
        assert isinstance(raw.writable, asyncio.Event) and isinstance(raw.close_sent, bool)
        assert raw.writable.is_set() and raw.close_sent is False
        assert connection._writer is not None and connection._direct_open()
        # The abort path finds the same transport through the server's send callable.
        assert uvicorn_private.transport_of(send) is raw.transport
        # A client that keeps up is written to by the fan-out itself: no sender task.
        for _ in range(3):
            ws.recv(timeout=5)
        assert connection._sender is None, "frames went through a sender task"
        group = connection.outbox.group
        assert group is not None and connection in group.lane, "the group does not write it"
        # What a close sets, the direct path reads: no direct write after it.
        def open_once_closing() -> bool:
            raw.close_sent = True
            try:
                return connection._direct_open()
            finally:
                raw.close_sent = False

        assert running.call(open_once_closing) is False


def test_the_deflate_offer_reaches_the_handshake(running: Running) -> None:
    """SharedDeflateProtocol replaces the extensions uvicorn's protocol offers: an upgrade
    that built `conn` elsewhere, or read another attribute, would leave deflate off."""
    with connect(f"ws://127.0.0.1:{running.port}/ws?symbols=*&encoding=compact",
                 compression="deflate") as ws:
        ws.recv(timeout=5)
        assert "server_no_context_takeover" in ws.response.headers["Sec-WebSocket-Extensions"]
        connection = only_client(running.engine, Connection)
        send = uvicorn_private.server_send(connection.websocket.scope)
        raw = uvicorn_private.raw_protocol(send)
        assert isinstance(raw, uvicorn_private.SharedDeflateProtocol)
        assert uvicorn_private.deflate_negotiated(send)
        assert connection.outbox.form == (True, True)
        assert connection._writer is not None, "deflate keeps the direct path"


def test_a_stalled_websocket_peer_can_be_aborted(running: Running) -> None:
    with connect(f"ws://127.0.0.1:{running.port}/ws?symbols=OGDC", compression=None) as ws:
        ws.recv(timeout=5)
        connection = only_client(running.engine, Connection)
        send = uvicorn_private.server_send(connection.websocket.scope)
        assert running.call(lambda: uvicorn_private.abort(send)), "no transport to abort"
        with pytest.raises(ConnectionClosedError):  # dropped: no close frame, no timeout
            while True:
                ws.recv(timeout=5)


def test_a_stalled_sse_peer_can_be_aborted(running: Running) -> None:
    """The HTTP protocol's request cycle (httptools or h11) holds the transport that
    sse.py aborts: found through the real /sse stream, past all of the app's middleware."""
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as client:
        client.sendall(b"GET /sse?symbols=OGDC HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while b"event: welcome" not in received:
            chunk = client.recv(65536)
            assert chunk, "the stream ended before its welcome"
            received += chunk
        stream = only_client(running.engine, EventStream)
        send = stream._server_send
        assert send is not None, "sse.py did not get the server's own send"
        transport = uvicorn_private.transport_of(send)
        assert transport is not None, "uvicorn's HTTP protocol changed: a stalled SSE peer is not dropped"
        assert_loops_transport(transport, running.loop_name)
        assert running.call(lambda: uvicorn_private.abort(send))
        try:
            while client.recv(65536):
                pass
        except ConnectionResetError:
            pass  # the abort's RST: what a stalled peer gets
        wait_for(lambda: not running.engine.registry.sessions, "the stream outlived its transport")


def test_the_listeners_stop_accepting(running: Running) -> None:
    """server.py closes uvicorn's listeners before draining: new clients go elsewhere."""
    listeners = uvicorn_private.listeners(running.server)
    assert len(listeners) == 1, "uvicorn.Server.servers changed: shutdown accepts while it drains"
    assert listeners[0].is_serving()
    running.call(lambda: uvicorn_private.stop_accepting(running.server))
    assert not listeners[0].is_serving()

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", running.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(refused, "the listener still accepts")


def test_listeners_take_a_burst_of_connects_at_once(running: Running) -> None:
    """BatchAcceptor builds uvicorn's protocols as uvicorn.Server.startup does (the same
    arguments), and takes every connection waiting in the accept queue: here 300 queued
    while the loop is held, all answered once it runs."""
    source = inspect.getsource(uvicorn.Server.startup)
    for part in ("config.http_protocol_class(", "config=config,", "server_state=self.server_state,",
                 "app_state=self.lifespan.state,", "self.servers: list[asyncio.base_events.Server] = []"):
        assert part in source, f"uvicorn.Server.startup changed ({part!r}): see BatchAcceptor"
    (listener,) = uvicorn_private.listeners(running.server)
    assert isinstance(listener, uvicorn_private.BatchAcceptor)
    release = threading.Event()
    listener.get_loop().call_soon_threadsafe(release.wait, 10)  # the loop is held
    clients = []
    try:
        for _ in range(300):
            client = socket.create_connection(("127.0.0.1", running.port), timeout=10)
            clients.append(client)
        release.set()
        for client in clients:
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for client in clients:
            assert client.recv(12) == b"HTTP/1.1 200"
    finally:
        release.set()
        for client in clients:
            client.close()
