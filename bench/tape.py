"""What the tape costs and how fast it gives back: Redis memory per million quotes, and the
time from a `since` subscribe to the last of 10,000 missed quotes.

    python -m bench.tape [--quotes 1000000] [--missed 10000] [--runs 5]

A private redis-server (never 6379) gets the simulated PSX market through the publisher's
own sink (publisher/redis_sink.py), so the tape is exactly what production writes. Then
the real service starts on that Redis, and a websocket client asks for the quotes after
a seq 10,000 behind, once for one symbol holding all of them and once with them spread
over every symbol; each run is timed from the subscribe's send to the frame holding the
last recovered quote (the client only counts quotes; it parses nothing it need not).
Writes bench/results/tape.md and tape.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from bench.output import write_results
from publisher.redis_sink import RedisSink
from quote_sim.simulate import market_from_settings
from service.settings import Settings
from tests.redis_server import RedisServer
from tests.service_proc import ServiceProcess

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 500


async def fill(settings: Settings, quotes: int) -> dict[str, Any]:
    """Publish `quotes` simulated quotes; the tape's bytes, per quote and per million."""
    client = aioredis.Redis.from_url(settings.redis_url or "")
    sink = RedisSink(client, settings)
    market = market_from_settings(settings, seed=1)
    await sink.resume()
    before = (await client.info("memory"))["used_memory"]
    started = time.perf_counter()
    sent = 0
    while sent < quotes:
        batch = market.next_quotes(min(BATCH, quotes - sent))
        await sink.publish(batch)
        sent += len(batch)
    publish_s = time.perf_counter() - started
    after = (await client.info("memory"))["used_memory"]
    layout = settings.layout
    tape_bytes = 0
    lengths = {}
    for symbol in market.symbols:
        key = layout.tape(symbol)
        tape_bytes += await client.memory_usage(key, samples=0) or 0
        lengths[symbol] = await client.xlen(key)
    newest: Any = await client.xrevrange(layout.tape(market.symbols[0]), count=1)
    quote_json = newest[0][1][b"q"]
    await client.aclose()
    return {
        "quotes": sent, "symbols": len(market.symbols), "publish_s": round(publish_s, 2),
        "quotes_per_s": round(sent / publish_s), "tape_bytes": tape_bytes,
        "bytes_per_quote": round(tape_bytes / sent, 1),
        "mb_per_million": round(tape_bytes / sent * 1e6 / 2**20, 1),
        "used_memory_delta_mb_per_million": round((after - before) / sent * 1e6 / 2**20, 1),
        "quote_json_bytes": len(quote_json), "on_tape": sum(lengths.values()),
    }


async def latest_seqs(settings: Settings) -> dict[str, int]:
    client = aioredis.Redis.from_url(settings.redis_url or "")
    layout = settings.layout
    out: dict[str, int] = {}
    for p in range(layout.partitions):
        for symbol, seq in (await client.hgetall(layout.seq(p))).items():
            out[symbol.decode() if isinstance(symbol, bytes) else symbol] = int(seq)
    await client.aclose()
    return out


async def recover_once(ws_url: str, since: dict[str, int], want: int) -> tuple[float, int]:
    """Seconds from the subscribe to the last recovered quote, and how many came."""
    async with connect(ws_url, max_size=None) as ws:
        await ws.recv()  # welcome
        started = time.perf_counter()
        await ws.send(orjson.dumps({"op": "subscribe", "id": 1, "symbols": sorted(since),
                                    "mode": "every", "since": since}).decode())
        got = 0
        recovered = None
        async with asyncio.timeout(60):
            while got < want:
                frame = orjson.loads(await ws.recv())
                if frame["type"] == "error":
                    raise SystemExit(f"the service refused the subscribe: {frame}")
                if frame["type"] == "ack":
                    recovered = frame.get("recovered")
                    if recovered is not True:
                        raise SystemExit(f"not recovered: {frame}")
                elif frame["type"] == "quotes":
                    got += len(frame["quotes"])
        return time.perf_counter() - started, got


async def recovery(ws_url: str, settings: Settings, missed: int, runs: int) -> dict[str, Any]:
    latest = await latest_seqs(settings)
    symbols = sorted(latest)
    one = max(symbols, key=lambda s: latest[s])
    if latest[one] < missed or sum(latest.values()) < missed:
        raise SystemExit(f"--missed {missed} is more than the tape holds: publish more")
    share, extra = divmod(missed, len(symbols))
    cases = {
        f"one symbol ({one})": {one: latest[one] - missed},
        f"{len(symbols)} symbols": {s: latest[s] - share - (i < extra)
                                    for i, s in enumerate(symbols)},
    }
    out: dict[str, Any] = {}
    for name, since in cases.items():
        times = []
        for _ in range(runs):
            seconds, got = await recover_once(ws_url, since, missed)
            assert got == missed, (got, missed)
            times.append(seconds * 1000)
        out[name] = {"median_ms": round(statistics.median(times), 1),
                     "min_ms": round(min(times), 1), "max_ms": round(max(times), 1)}
    return out


def report(result: dict[str, Any]) -> str:
    t = result["tape"]
    lines = [
        "# The tape: memory and recovery (`python -m bench.tape`)",
        "",
        f"{result['date']}, redis-server {result['redis']}, {t['symbols']} symbols (the PSX "
        f"seed), quotes of {t['quote_json_bytes']} bytes of JSON.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| quotes published (through the publisher's sink, {BATCH} a batch) | {t['quotes']:,} |",
        f"| publish rate, tape included | {t['quotes_per_s']:,} quotes/s |",
        f"| tape memory (MEMORY USAGE of every tape stream) | {t['tape_bytes'] / 2**20:.1f} MiB |",
        f"| **per million quotes** | **{t['mb_per_million']} MiB** ({t['bytes_per_quote']} B a quote) |",
        f"| Redis used_memory growth per million | {t['used_memory_delta_mb_per_million']} MiB |",
    ]
    for name, r in result["recovery"].items():
        lines.append(f"| recovery of {result['missed']:,} missed quotes, {name}: subscribe to "
                     f"the last one, median of {result['runs']} | **{r['median_ms']} ms** "
                     f"({r['min_ms']}–{r['max_ms']}) |")
    return "\n".join(lines) + "\n"


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return out.split(" v=")[-1].split()[0] if " v=" in out else "?"


async def main(quotes: int, missed: int, runs: int, out: Path = RESULTS) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-tape-") as workdir:
        server = RedisServer(Path(workdir))
        if not server.start():
            raise SystemExit("redis-server did not start")
        service = None
        try:
            settings = Settings(redis_url=server.url)
            tape = await fill(settings, quotes)
            print(json.dumps(tape))
            service = ServiceProcess({"REDIS_URL": server.url, "FEED_SILENCE_S": "0",
                                      "MAX_RECOVERY": str(missed)})
            service.start("/healthz")
            ws_url = f"ws://127.0.0.1:{service.port}/ws"
            result = {
                "date": time.strftime("%Y-%m-%d"), "redis": redis_version(),
                "tape": tape, "missed": missed, "runs": runs,
                "recovery": await recovery(ws_url, settings, missed, runs),
            }
        finally:
            if service is not None:
                service.stop()
            server.stop()
    write(out, result)


def write(out: Path, result: dict[str, Any]) -> None:
    write_results(out, "tape", result, report(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quotes", type=int, default=1_000_000)
    parser.add_argument("--missed", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where tape.md/json go")
    args = parser.parse_args()
    asyncio.run(main(args.quotes, args.missed, args.runs, args.out))
