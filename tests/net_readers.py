"""Readers for the network tests, run inside a test host (tests/netns.py) as a process.

`python -m tests.net_readers URL --count N [--symbols A,B | --symbols '*'] [--max-hz H]`
opens N QuoteClients (the Python SDK, as a reader would) and prints one JSON line every
`--report-s`: how many hold a board, how many are live, the age of each one's newest
quote (now - its ts, the publisher's clock, which is this machine's), reconnects and
close codes. It never gives up (open_timeout None: the SDK retries with its back-off)
and runs until SIGTERM.

`--flood` instead opens raw websockets from this address as fast as it can, one at a
time, and reports how many were admitted (a `welcome`) and how many refused (close 1013).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
import sys
import time

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from quote_client import QuoteClient
from quote_core.protocol import ENCODING_COMPACT, ENCODINGS
from quote_core.quote import now_ms


def _percentile(values: list[int], q: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def snapshot(clients: list[QuoteClient], started: float) -> dict[str, object]:
    now = now_ms()
    ages = [now - max(q.ts for q in c.board.values()) for c in clients if c.board]
    codes = collections.Counter(str(c.last_close_code) for c in clients if c.last_close_code)
    return {
        "t": round(time.monotonic() - started, 3),
        "count": len(clients),
        "served": sum(1 for c in clients if c.board),
        "live": sum(1 for c in clients if c.feed == "live"),
        "feeds": dict(collections.Counter(c.feed for c in clients)),
        "age_ms_p50": _percentile(ages, 0.5),
        "age_ms_p99": _percentile(ages, 0.99),
        "age_ms_max": max(ages, default=None),
        "reconnects": sum(c.reconnects for c in clients),
        "close_codes": dict(codes),
    }


def emit(line: dict[str, object]) -> None:
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()


async def readers(args: argparse.Namespace, stop: asyncio.Event) -> None:
    symbols = "*" if args.symbols == "*" else args.symbols.split(",")
    clients = [QuoteClient(args.url, symbols=symbols, max_hz=args.max_hz, open_timeout=None,
                           encoding=args.encoding, compression=not args.no_compression)
               for _ in range(args.count)]
    started = time.monotonic()
    tasks = [asyncio.create_task(c.start()) for c in clients]
    try:
        while not stop.is_set():
            emit(snapshot(clients, started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.report_s)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


async def flood(args: argparse.Namespace, stop: asyncio.Event) -> None:
    admitted = refused = failed = 0
    held = []  # admitted connections stay open: a flood that also hoards
    started = last = time.monotonic()
    while not stop.is_set():
        try:
            ws = await connect(args.url, open_timeout=5, close_timeout=1)
            try:
                async with asyncio.timeout(5):
                    frame = orjson.loads(await ws.recv())
                if isinstance(frame, dict) and frame.get("type") == "welcome":
                    admitted += 1
                    held.append(ws)
                else:
                    await ws.close()
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == 1013:
                    refused += 1
                else:
                    failed += 1
        except (OSError, TimeoutError, InvalidHandshake):
            failed += 1
        now = time.monotonic()
        if now - last >= args.report_s:
            last = now
            emit({"t": round(now - started, 3), "admitted": admitted, "refused": refused,
                  "failed": failed, "open": sum(1 for ws in held if ws.close_code is None)})
    await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.net_readers")
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--symbols", default="*")
    parser.add_argument("--max-hz", type=float, default=None)
    parser.add_argument("--encoding", choices=ENCODINGS, default=ENCODING_COMPACT)
    parser.add_argument("--no-compression", action="store_true")
    parser.add_argument("--report-s", type=float, default=0.5)
    parser.add_argument("--flood", action="store_true")
    args = parser.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await (flood(args, stop) if args.flood else readers(args, stop))


if __name__ == "__main__":
    asyncio.run(main())
