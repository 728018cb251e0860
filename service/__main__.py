"""`python -m service`: serve the websocket, the page and health on HOST:PORT.

With WORKERS=1 (the default) this process serves; with more, it supervises that many
worker processes on the same port (service/supervisor.py).
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Mapping
from dataclasses import replace

from quote_runtime import logs
from quote_runtime.exits import EXIT_SETTINGS
from quote_runtime.settings import ConfigError

from .settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve live quotes over websockets at /ws, the ticker page at /, and "
        "/healthz and /readyz. With REDIS_URL unset, an embedded simulated market feeds it.",
        epilog="Every setting is an environment variable (docs/configuration.md); flags override.",
    )
    parser.add_argument("--host", help="interface to listen on (env HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env PORT, default 8000)")
    parser.add_argument("--workers", type=int,
                        help="worker processes on the same port (env WORKERS, default 1)")
    # Internal: the supervisor's end of a worker's lifeline (service/supervisor.py).
    parser.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    return parser


def load(argv: list[str] | None = None, env: Mapping[str, str] | None = None
         ) -> tuple[argparse.Namespace, Settings]:
    """The flags and every setting, checked before anything starts: a bad one ends the
    process here with one line naming it, exit 2 (EXIT_SETTINGS)."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(env)
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                       ("workers", args.workers)) if v is not None}
        if overrides:
            settings = replace(settings, **overrides)
            settings.check()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_SETTINGS) from None
    return args, settings


def main(argv: list[str] | None = None) -> None:
    args, settings = load(argv)
    logs.configure(settings.log_level, settings.log_format)

    if args.worker_fd is not None:
        from .server import serve

        raise SystemExit(serve(settings, socket.socket(fileno=args.worker_fd)))
    if settings.workers > 1:
        from .supervisor import Supervisor

        passed = [f"--{k}={v}" for k, v in (("host", args.host), ("port", args.port))
                  if v is not None]
        raise SystemExit(Supervisor(settings, passed).run())
    from .server import serve

    raise SystemExit(serve(settings))


if __name__ == "__main__":
    main()
