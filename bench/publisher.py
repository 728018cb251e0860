"""The benchmark's per-quote publisher: the project's simulation, one PUBLISH per quote.

The project's own publisher (`python -m publisher simulate`) sends a JSON array of about
rate/20 quotes every 50 ms: at 1,000 quotes/s that is 20 messages a second, so a relay
sends 20 frames a second per client and every server tested keeps up with ease (the
benchmark still runs one Firehose that way, `firehose-batched`). The fan-out load the
issue's scenarios mean (200k deliveries/s) is one message per quote, which is also what
a publisher that forwards a market's tick stream does. This publisher is the same
simulated market (quote_sim.simulate.run_simulation, same seed) through the project's
own Redis Lua script (publisher.redis_sink.PUBLISH_SCRIPT: seq, latest hash, PUBLISH),
called once per quote, so each quote is its own `[quote]` message on the channel. The
calls of one 10 ms tick go out in one pipeline.

    python -m bench.publisher --rate 1000 --redis redis://127.0.0.1:PORT/0
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import redis.asyncio as aioredis

from publisher.redis_sink import PUBLISH_SCRIPT, script_call, wire_body
from quote_core.quote import Quote
from quote_sim.simulate import market_from_settings, run_simulation
from service.settings import Settings

TICK_S = 0.01


class PerQuoteSink:
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        assert settings.layout.partitions == 1, "one channel for every server benchmarked"
        self.settings = settings
        self.script = client.register_script(PUBLISH_SCRIPT)

    async def publish(self, quotes: Sequence[Quote]) -> list[Quote]:
        pipe = self.client.pipeline(transaction=False)
        for quote in quotes:
            keys, args = script_call(self.settings, 0, "PUBLISH",
                                     [(quote.symbol, 0, wire_body(quote))])
            await self.script(keys=keys, args=args, client=pipe)
        replies = await pipe.execute()
        return [q.with_seq(int(r[1])) for q, r in zip(quotes, replies, strict=True)]


async def main(rate: float, redis_url: str, seed: int) -> None:
    settings = Settings(redis_url=redis_url, redis_partitions=1)
    client = aioredis.Redis.from_url(redis_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sink = PerQuoteSink(client, settings)
    # redis-py's Script runs EVALSHA and loads the script on NOSCRIPT, but not inside a
    # pipeline: load it first.
    await client.script_load(PUBLISH_SCRIPT)
    try:
        await run_simulation(sink, market_from_settings(settings, seed=seed), rate, stop=stop,
                             tick_s=TICK_S, retry_max_s=1.0)
    finally:
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one PUBLISH per simulated quote")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.rate, args.redis, args.seed))
