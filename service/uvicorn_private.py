"""Every use of uvicorn's private internals, in one place (uvicorn 0.55).

ASGI hands an app a `send` to await and nothing more. The service needs two things it
cannot give: speed (a group's shared frame is the same bytes for every client, so it is
written once to each caught-up transport instead of being framed per client through
`send`: bench/viewers.py) and an abort (a peer that stopped reading must be dropped, not
left holding its buffers; ASGI can only close politely, which such a peer never takes).
Both reach uvicorn's protocol objects behind the server's own `send` callable, which
WebApp (app.py) keeps in the scope before any middleware wraps it. Stopping the
listeners first on shutdown (server.py) reads `uvicorn.Server.servers`. Shared
permessage-deflate (deflate.py) needs its extension offered by the protocol's websockets
connection (`conn`), which uvicorn builds with its own deflate or none: `SharedDeflateProtocol`
replaces the offer before any handshake is read. And the handshake's request and response,
which the protocol keeps for the connection's life, are let go after the upgrade
(`forget_handshake`: about 2 KB per idle client). And the listening sockets are served by
`BatchAcceptor`, which builds uvicorn's protocols itself: uvloop's server accepts one
connection per turn of the loop, too few in a reconnect storm.

None of this is uvicorn's public API. With another server, or an upgrade that changed a
part, everything here answers None and the service takes the plain ASGI path (slower; a
stalled peer then ends by the kernel's TCP_USER_TIMEOUT). tests/test_uvicorn_internals.py
fails loudly when any part used here changes, on both event loops.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .deflate import SharedDeflate, SharedDeflateFactory
from .outbox import Writer

log = logging.getLogger("service")

# Scope key under which WebApp leaves the server's own `send`, for websockets and HTTP.
SERVER_SEND = "quotes.server_send"


class _SansIOProtocol(Protocol):
    """The parts of uvicorn's websockets-sansio protocol
    (uvicorn/protocols/websockets/websockets_sansio_impl.py) this module reads."""

    transport: asyncio.Transport
    writable: asyncio.Event
    close_sent: bool


class SharedDeflateProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, offering permessage-deflate as deflate.py does
    it (uvicorn's own `ws_per_message_deflate` keeps a compressor per connection, and its
    frames could not be shared). server.py gives uvicorn this class as its `ws`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.available_extensions = [SharedDeflateFactory()]


def forget_handshake(send: Any) -> None:
    """Drop the handshake's request and response uvicorn's protocol keeps for the life of
    the connection though it reads them only until the upgrade: their headers (more with
    permessage-deflate's) are memory per idle client."""
    protocol = raw_protocol(send)
    if protocol is not None and getattr(protocol, "handshake_complete", False):
        for name in ("request", "response"):
            if hasattr(protocol, name):
                setattr(protocol, name, None)


def keep_server_send(scope: MutableMapping[str, Any], send: Any) -> None:
    """Called by the app with the server's `send`, before middleware wraps it."""
    scope[SERVER_SEND] = send


def server_send(scope: MutableMapping[str, Any]) -> Any:
    """The server's own `send` kept by `keep_server_send`, or None."""
    return scope.get(SERVER_SEND)


def raw_protocol(send: Any) -> _SansIOProtocol | None:
    """uvicorn's websocket protocol behind its `send` (a bound method of it), when shared
    frames may be written to its transport as prepared wire bytes.

    Only uvicorn's websockets-sansio protocol (server.py asks for it) with no extension
    negotiated but deflate.py's qualifies; anything else takes the ASGI path."""
    protocol = getattr(send, "__self__", None)
    conn = getattr(protocol, "conn", None)
    extensions = getattr(conn, "extensions", None)
    if (
        protocol is None
        or not isinstance(extensions, list)
        or not all(isinstance(extension, SharedDeflate) for extension in extensions)
        or not all(hasattr(protocol, a) for a in ("transport", "writable", "close_sent"))
    ):
        return None
    return cast(_SansIOProtocol, protocol)


def deflate_negotiated(send: Any) -> bool:
    """Whether the websocket behind `send` negotiated deflate.py's permessage-deflate, so
    its shared frames may be written compressed (only where they are written directly)."""
    protocol = raw_protocol(send)
    extensions = getattr(getattr(protocol, "conn", None), "extensions", None) or []
    return protocol is not None and any(isinstance(e, SharedDeflate) for e in extensions)


def direct_writes(send: Any) -> tuple[Writer, Callable[[], bool]] | None:
    """For a websocket's `send`: what the group's lane writes through (the transport's own
    write, is_closing, get_write_buffer_size: outbox.py), and a check of whether the
    transport takes a write now (not paused, no close sent, not closing). Looked up once
    per connection; None off uvicorn's sansio protocol.

    A whole frame is written at once, so it never interleaves with uvicorn's own frames."""
    protocol = raw_protocol(send)
    if protocol is None:
        return None
    transport = protocol.transport
    # Paused (not writable) as soon as bytes wait in the transport, not past asyncio's
    # 64 KB: what waits there is no longer conflated, and on a 256 kbit/s line 64 KB is
    # 16 s of stale quotes (tests/test_networks.py). Paused, the member is served merged
    # frames by its sender once the kernel took everything (server.py's NOTSENT_LOWAT).
    transport.set_write_buffer_limits(high=0)

    def takes_writes() -> bool:
        return (not protocol.close_sent and protocol.writable.is_set()
                and not protocol.transport.is_closing())

    return (transport.write, transport.is_closing, transport.get_write_buffer_size), takes_writes


def transport_of(send: Any) -> asyncio.Transport | None:
    """uvicorn's transport behind its `send`: the websocket protocol's, or the HTTP request
    cycle's (httptools or h11), whose `send` is a bound method beside it. None when there
    is none that can be aborted (another server)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        return None
    return cast(asyncio.Transport, transport)


def abort(send: Any) -> bool:
    """Drop the connection behind the server's `send` at once (ASGI has no abort);
    whether there was a transport to abort."""
    transport = transport_of(send)
    if transport is None:
        return False
    transport.abort()
    return True


def listeners(server: Any) -> list[asyncio.Server]:
    """The listening servers a started `uvicorn.Server` made (its `servers`)."""
    return list(getattr(server, "servers", []))


# Connections taken per wake-up of a listener: what waits in its accept queue, at most this.
# Each becomes a handshake in the same loop turn as the fan-out's writes: in the 20,000-viewer
# storm, 64 against 512 brought everyone back in 25.9 s instead of 32.9 and the survivors'
# longest silence to 8.4 s from 15.5 (one run each, bench/storm.py).
ACCEPT_BATCH = 64
# An accept that fails for want of descriptors or memory: wait this long before the next
# (asyncio's server does the same), rather than spin on a queue that cannot be taken.
ACCEPT_RETRY_S = 1.0


class BatchAcceptor:
    """A listening socket that takes the connections waiting in its accept queue, up to
    ACCEPT_BATCH per wake-up (it wakes again while more wait), each handed to uvicorn's
    protocol as `loop.create_server` would. uvloop's
    server takes one connection per turn of the event loop: with thousands of clients to
    write to a turn is long, and in a reconnect storm the queue filled faster than it
    emptied while nginx gave up on the waiting connects after 2 s (bench/storm.py: 20,000
    viewers did not come back in 3 minutes). It answers what uvicorn and server.py ask of
    an `asyncio.Server`: close, wait_closed, is_serving, get_loop, sockets."""

    def __init__(self, server: Any, sock: socket.socket) -> None:
        config = server.config
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self._serving = True
        self._pending: set[asyncio.Task[Any]] = set()

        def create_protocol() -> asyncio.Protocol:  # as uvicorn.Server.startup builds them
            return cast(asyncio.Protocol, config.http_protocol_class(
                config=config, server_state=server.server_state, app_state=server.lifespan.state))

        self.create_protocol = create_protocol
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self.sock,) if self._serving else ()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.error("cannot accept a connection: %s; again in %gs", exc, ACCEPT_RETRY_S,
                          extra={"event": "accept_failed", "reason": str(exc)})
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(ACCEPT_RETRY_S, self._resume)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self.loop.create_task(self._connect(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.create_protocol, conn)
        except OSError:  # the peer left before its transport was made
            conn.close()

    def _resume(self) -> None:
        if self._serving:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def is_serving(self) -> bool:
        return self._serving

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.loop

    def close(self) -> None:
        if self._serving:
            self._serving = False
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    async def wait_closed(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending)


def accept_in_batches(server: Any, sockets: list[socket.socket]) -> None:
    """Serve a started `uvicorn.Server`, started with no sockets of its own (an empty
    list), on `sockets` through BatchAcceptors, as its `servers`."""
    server.servers = [BatchAcceptor(server, sock) for sock in sockets]


def stop_accepting(server: Any) -> None:
    """Close a started `uvicorn.Server`'s listeners before it drains: uvicorn only closes
    them in its own shutdown, after the drain, and new clients must go elsewhere first."""
    for listener in listeners(server):
        listener.close()
