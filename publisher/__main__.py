"""Command line: `python -m publisher simulate|replay` (console script `quote-publisher`).

Exit codes: 0 success; 1 replay rejected lines or could not publish; 2 configuration or
usage error; 3 Redis refused REDIS_URL in a way retrying cannot fix (a wrong password or
user, a database that does not exist, a command the ACL does not allow: the service's
code for the same); 128+N when stopped by signal N during a replay. The simulation
treats SIGINT/SIGTERM as a normal stop and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import io
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import FrameType
from typing import TextIO

from redis.exceptions import RedisClusterException, RedisError

from quote_bus.topology import shown
from quote_runtime import logs
from quote_runtime.exits import EXIT_CONFIG, EXIT_SETTINGS
from quote_runtime.logs import LOG_LEVELS
from quote_runtime.settings import ConfigError
from quote_sim.simulate import market_from_settings, run_simulation

from .redis_sink import RedisRefused, RedisSink, connect
from .replay import replay
from .settings import Settings

log = logging.getLogger("publisher")

NO_REDIS_URL = (
    "REDIS_URL is not set: the publisher writes to Redis. Set it, e.g. "
    "REDIS_URL=redis://127.0.0.1:6379/0, or run `python -m service` alone for the "
    "embedded demo market."
)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="publisher",
        description="Publish market quotes to Redis (REDIS_URL) for the quote service.",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="default: LOG_LEVEL, INFO")
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="publish a simulated PSX market")
    sim.add_argument("--rate", type=_positive_float, default=None,
                     help="quotes per second (default: SIM_RATE, 20)")
    sim.add_argument("--seed", type=int, default=None,
                     help="random seed for a repeatable day (default: SIM_SEED, random)")
    rep = commands.add_parser(
        "replay", help="publish the quotes of a file once, in order",
        description="Lines may be the ticker text form, CSV after a "
                    "'symbol,price,prev_close[,...]' header, or JSON objects; blank lines "
                    "and '#' comments are skipped. Exit 1 if any line was rejected.",
    )
    rep.add_argument("file", help="UTF-8 file to read, or - for stdin")
    return parser


def _open_lines(path: str) -> TextIO:
    """Undecodable bytes become U+FFFD, so such a line is rejected by validation rather
    than aborting the whole replay."""
    return open(path, encoding="utf-8-sig", errors="replace")


def _stdin_lines(read: Callable[[], bytes] = lambda: os.read(0, 65536)) -> Iterator[str]:
    """stdin's lines as they arrive (U+FFFD for undecodable bytes, as `_open_lines`), read
    with os.read: the replay's reader thread blocks in it holding no lock of sys.stdin's,
    which a signal's shutdown would otherwise wait on and abort."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    pending = ""
    while chunk := read():
        *full, pending = (pending + decoder.decode(chunk)).split("\n")
        yield from full
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


async def _simulate(settings: Settings, rate: float, seed: int | None) -> int:
    assert settings.redis_url is not None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    redis = connect(settings.redis_url, backoff_cap_s=settings.redis_retry_max_s)
    sink = RedisSink(redis, settings)
    heartbeats = asyncio.create_task(_heartbeats(sink, settings.publisher_heartbeat_s, stop))
    try:
        market = market_from_settings(settings, seed=seed)
        try:
            resumed = market.resume(await sink.resume())
            if resumed:
                log.info("resumed %d stocks from the state in Redis", resumed)
        except (RedisError, RedisClusterException) as exc:
            log.warning("could not read the earlier state from Redis (%s); starting afresh", exc)
        log.info("simulating %d instruments at %g quotes/s into %s (%d partitions, %s:{P})",
                 len(market.symbols), rate, shown(settings.redis_url),
                 settings.redis_partitions, settings.redis_prefix)
        await run_simulation(sink, market, rate, stop=stop,
                             retry_max_s=settings.redis_retry_max_s)
    except RedisRefused as exc:
        log.error("cannot use REDIS_URL (%s): redis refused the publisher: %s; stopping",
                  shown(settings.redis_url), exc, extra={"event": "fatal", "reason": str(exc)})
        return EXIT_CONFIG
    finally:
        stop.set()
        await heartbeats
        await redis.aclose()
    return 0


async def _heartbeats(sink: RedisSink, interval: float, stop: asyncio.Event) -> None:
    """Liveness for the services' silence check; Redis errors are the loop's to report."""
    while not stop.is_set():
        with contextlib.suppress(RedisError, RedisClusterException):
            await sink.heartbeat()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def _replay(settings: Settings, lines: Iterable[str]) -> int:
    assert settings.redis_url is not None
    redis = connect(settings.redis_url, backoff_cap_s=settings.redis_retry_max_s)
    try:
        result = await replay(RedisSink(redis, settings), lines)
    except RedisRefused as exc:
        print(f"publisher: cannot use REDIS_URL ({shown(settings.redis_url)}): redis refused "
              f"the publisher: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RedisError as exc:
        print(f"publisher: cannot publish to {shown(settings.redis_url)}: {exc}",
              file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    print(f"published {result.published}, rejected {result.rejected}", file=sys.stderr)
    return 0 if result.rejected == 0 else 1


class _Stopped(BaseException):
    """BaseException, like KeyboardInterrupt, so no library's `except Exception` eats it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
         ) -> tuple[argparse.Namespace, Settings]:
    """The arguments and every setting, checked before anything starts: a bad one ends the
    process here with one line naming it, exit 2 (as `python -m service` does)."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"publisher: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_SETTINGS) from None
    if settings.redis_url is None:
        print(f"publisher: {NO_REDIS_URL}", file=sys.stderr)
        raise SystemExit(EXIT_SETTINGS)
    return args, settings


def main(argv: Sequence[str] | None = None) -> int:
    args, settings = load(argv)
    logs.configure(args.log_level or settings.log_level, settings.log_format)

    if args.command == "simulate":
        rate = settings.sim_rate if args.rate is None else args.rate
        return asyncio.run(_simulate(settings, rate, args.seed))

    try:
        lines: Iterable[str] = _stdin_lines() if args.file == "-" else _open_lines(args.file)
    except OSError as exc:
        print(f"publisher: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_SETTINGS
    # A plain handler that raises stops the replay wherever it is, the loop or a publish.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_stopped)
    try:
        return asyncio.run(_replay(settings, lines))
    except _Stopped as exc:
        print(f"publisher: stopped by signal {exc.signum}", file=sys.stderr)
        return 128 + exc.signum
    finally:
        if isinstance(lines, io.TextIOBase):
            lines.close()


if __name__ == "__main__":
    sys.exit(main())
