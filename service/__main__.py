"""`python -m service`: serve the websocket, the page and health on HOST:PORT."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from dataclasses import replace

import uvicorn

from . import logs
from .app import create_app
from .settings import ConfigError, Settings

log = logging.getLogger("service")


class QuoteServer(uvicorn.Server):
    """uvicorn closes open websockets with 1012 on shutdown; the protocol promises 1001,
    so the clients are closed first, while their sockets still take a close frame."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        quote_service = getattr(getattr(app, "state", None), "service", None)
        if quote_service is not None:
            log.info("stopping: closing %d clients with 1001", len(quote_service.connections),
                     extra={"event": "stopping", "connections": len(quote_service.connections)})
            await quote_service.close_all()
        await super().shutdown(sockets)
        log.info("stopped", extra={"event": "stop", "pid": os.getpid()})


def listening_socket(host: str, port: int, user_timeout_ms: int, send_buffer: int = 0
                     ) -> socket.socket:
    """A listening socket whose accepted connections inherit TCP_USER_TIMEOUT, so the
    kernel aborts a peer that stops acknowledging data (FIELD-NOTES), and SO_SNDBUF."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
    if send_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve live quotes over websockets at /ws, the ticker page at /, and "
        "/healthz and /readyz. With REDIS_URL unset, an embedded simulated market feeds it.",
        epilog="Every setting is an environment variable (see the README); flags override.",
    )
    parser.add_argument("--host", help="interface to listen on (env HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env PORT, default 8000)")
    args = parser.parse_args(argv)
    logs.configure(os.environ.get("LOG_LEVEL", "INFO").upper())
    try:
        settings = Settings.from_env()
        if args.host or args.port:
            settings = replace(settings, host=args.host or settings.host,
                               port=args.port or settings.port)
            settings.check()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # Per-message deflate is on by default and costs a fan-out about 2.5x in throughput
        # and 3x in memory per connection, paid once per client per frame (FIELD-NOTES);
        # quote frames are small, so compression buys little. Off on purpose.
        ws_per_message_deflate=False,
        ws="websockets-sansio",
        ws_max_size=settings.ws_max_size,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = QuoteServer(config)
    try:
        sock = listening_socket(settings.host, settings.port,
                                int(settings.send_timeout_s * 2000), settings.tcp_send_buffer)
    except OSError as exc:
        print(f"cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    feed = "redis" if settings.redis_url else "embedded simulation"
    log.info("serving on http://%s:%d (feed: %s)", settings.host, settings.port, feed,
             extra={"event": "start", "pid": os.getpid(), "feed": feed})
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
