"""One serving process: uvicorn set up for a fan-out, with draining and a supervisor link.

`python -m service` runs this directly (WORKERS=1) or, under service/supervisor.py, once
per worker. uvicorn is started from here rather than from its CLI because the service
needs what the CLI cannot give: a listening socket with TCP_USER_TIMEOUT (and
SO_REUSEPORT for workers), close 1001 spread over DRAIN_S on shutdown, and an exit code
that tells the supervisor whether restarting can help.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
from typing import Any

import uvicorn

from quote_runtime.exits import EXIT_CONFIG
from quote_runtime.node import NODE_ID

from .app import create_app
from .engine import Engine
from .forwarded import behind_proxies
from .settings import Settings
from .uvicorn_private import SharedDeflateProtocol, accept_in_batches, stop_accepting

log = logging.getLogger("service")

# Unsent bytes the kernel may hold for one client (TCP_NOTSENT_LOWAT): past them the socket
# takes no more, the transport keeps the frames, and the client is served conflated frames
# (outbox.py) instead of a queue of stale ones. Without it the kernel's autotuned send
# buffer held 114 KB not yet sent to a reader on a 256 kbit/s line (tests/test_networks.py):
# its board was 10 s old, and older the longer it stayed. Bytes in flight are not counted,
# so a fast path keeps its throughput.
NOTSENT_LOWAT = 16384


class Worker(uvicorn.Server):
    """uvicorn closes open websockets with 1012 at once on shutdown; the protocol promises
    1001, and a rolling restart wants the clients sent away gradually. So on shutdown this
    stops accepting first, then drains, then lets uvicorn finish."""

    def __init__(self, config: uvicorn.Config, engine: Engine,
                 lifeline: socket.socket | None = None) -> None:
        super().__init__(config)
        self.engine = engine
        self.lifeline = lifeline

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn listens on none of them (an empty list): BatchAcceptor does, taking every
        # connection waiting at each wake-up where uvloop's server takes one per loop turn.
        await super().startup([] if sockets is not None else None)
        if not self.started:
            return
        if sockets is not None:
            accept_in_batches(self, sockets)
        self.engine.on_fatal = self._fatal
        if self.lifeline is not None:
            # Tell the supervisor we serve; its end closing means it died: stop too.
            self.lifeline.setblocking(False)
            try:
                self.lifeline.send(f"ready {NODE_ID}\n".encode())
            except OSError:
                self.should_exit = True  # it died while we started
                return
            asyncio.get_running_loop().add_reader(self.lifeline.fileno(), self._lifeline_event)

    def _fatal(self) -> None:
        self.should_exit = True

    def _lifeline_event(self) -> None:
        assert self.lifeline is not None
        try:
            data = self.lifeline.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.lifeline.fileno())
            log.warning("the supervisor is gone; stopping", extra={"event": "orphaned"})
            self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        engine = self.engine
        watchdog = _watchdog(engine.settings.drain_s + (self.config.timeout_graceful_shutdown or 5) + 10)
        try:
            # Stop accepting: with SO_REUSEPORT the kernel sends new connections to the
            # other workers; without, a load balancer sees a refusal and tries elsewhere.
            stop_accepting(self)
            for sock in sockets or []:
                sock.close()
            await engine.registry.drain(engine.settings.drain_s)
            await super().shutdown(sockets)
        finally:
            # Done: a process that goes on after its server (the tests run one in-process)
            # must not be ended by the watchdog later.
            watchdog.cancel()
        log.info("stopped", extra={"event": "stop", "pid": os.getpid()})


def _watchdog(seconds: float) -> threading.Timer:
    """A stop that hangs must not leave a worker behind, holding its clients' sockets and
    a Redis subscription with nobody to stop it (its supervisor may be gone already):
    past `seconds`, end the process from a thread the event loop cannot block."""

    def expire() -> None:
        log.error("shutdown did not finish in %gs; exiting now", seconds,
                  extra={"event": "stop_timeout"})
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def listening_socket(host: str, port: int, user_timeout_ms: int, send_buffer: int = 0,
                     reuse_port: bool = False) -> socket.socket:
    """A listening socket whose accepted connections inherit TCP_USER_TIMEOUT, so the
    kernel aborts a peer that stops acknowledging data (tcp(7)), TCP_NOTSENT_LOWAT and
    SO_SNDBUF.
    With `reuse_port`, every worker binds its own and the kernel spreads connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
    if hasattr(socket, "TCP_NOTSENT_LOWAT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
    if send_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def uvicorn_config(settings: Settings, app: Any) -> uvicorn.Config:
    return uvicorn.Config(
        behind_proxies(app, settings.forwarded_allow_ips),
        host=settings.host,
        port=settings.port,
        # uvicorn's per-message deflate keeps a compressor per connection and compresses
        # every frame once per client: about 2.5x the CPU and 3x the memory per connection
        # of a fan-out (measured on 2 cores, 100 clients, 100-byte frames: 45k frames/s
        # off vs 18k on, 24 vs 68 KB per connection). Off: SharedDeflateProtocol offers
        # the extension instead, compressed once per shared frame (service/deflate.py).
        ws_per_message_deflate=False,
        # connection.py writes shared frames straight to this protocol's transport
        # (uvicorn_private.py), compressed once per frame for clients that negotiated
        # permessage-deflate (service/deflate.py).
        ws=SharedDeflateProtocol if settings.ws_deflate_min_bytes else "websockets-sansio",
        ws_max_size=settings.ws_max_size,
        loop=settings.loop,
        lifespan="on",
        log_config=None,
        access_log=False,
        # behind_proxies applies FORWARDED_ALLOW_IPS already (and reads X-Real-IP too).
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )


def serve(settings: Settings, lifeline: socket.socket | None = None) -> int:
    """Serve until told to stop; the process's exit code."""
    app = create_app(settings)
    engine: Engine = app.state.engine
    config = uvicorn_config(settings, app)
    server = Worker(config, engine, lifeline)
    try:
        sock = listening_socket(settings.host, settings.port, int(settings.send_timeout_s * 2000),
                                settings.tcp_send_buffer, reuse_port=lifeline is not None)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc,
                  extra={"event": "fatal", "reason": str(exc)})
        return EXIT_CONFIG if lifeline is not None else 1
    feed = "redis" if settings.redis_url else "embedded simulation"
    loop = event_loop_name(settings.loop)
    log.info("serving on http://%s:%d (feed: %s, loop: %s, node %s)", settings.host, settings.port,
             feed, loop, NODE_ID, extra={"event": "start", "pid": os.getpid(), "feed": feed, "loop": loop})
    server.run(sockets=[sock])
    if engine.exit_code is not None:
        return engine.exit_code
    return 0 if server.started else EXIT_CONFIG


def event_loop_name(loop: str) -> str:
    """What uvicorn's `auto` resolves to here, for the logs and the benchmark."""
    if loop != "auto":
        return loop
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop" if sys.platform != "win32" else "asyncio"
