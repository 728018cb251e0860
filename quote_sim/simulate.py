"""The simulation loop: a steady stream of market quotes into any QuoteSink.

Quotes go out in small batches every `tick_s`; the count per batch comes from the time
that really passed plus a fractional carry, so the long-run rate is exact even when the
event loop wakes late. A failing sink (Redis down) is logged and retried with back-off;
the loop itself never dies of it, except of a refusal that retrying cannot fix
(SinkRefused: a wrong password, a command the ACL does not allow).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from quote_core.backoff import backoff

from .market import Market
from .seed import load_instruments
from .settings import SimulationSettings
from .sink import QuoteSink, SinkRefused

log = logging.getLogger("quote_sim.simulate")

TICK_S = 0.05
# After a stall, catch up at most this much time's worth of quotes in one batch.
MAX_CATCH_UP_S = 1.0


def market_from_settings(settings: SimulationSettings, *, seed: int | None = None) -> Market:
    """The seed's 34 instruments with the band and seed from the settings (SIM_*)."""
    seed = settings.sim_seed if seed is None else seed
    return Market(
        load_instruments(),
        random.Random(seed),
        band_pct=settings.sim_band_pct,
        band_min=settings.sim_band_min,
    )


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def run_simulation(
    sink: QuoteSink,
    market: Market,
    rate: float,
    *,
    stop: asyncio.Event | None = None,
    tick_s: float = TICK_S,
    retry_max_s: float = 5.0,
) -> None:
    """Publish the full board (at the market's current prices: a resumed market goes on
    where it was), then `rate` quotes per second until `stop` is set.

    After a sink failure the full board is sent again once the sink recovers, so a broker
    that lost its memory is whole again at once instead of symbol by symbol."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    stop = stop or asyncio.Event()
    failures = 0
    loop = asyncio.get_running_loop()
    board_due = True
    last = loop.time()
    owed = 0.0
    while not stop.is_set():
        if board_due:
            batch = market.board_quotes()
        else:
            await _wait(stop, tick_s)
            if stop.is_set():
                break
            now = loop.time()
            owed = min(owed + rate * (now - last), rate * MAX_CATCH_UP_S + 1)
            last = now
            count = int(owed)
            if count == 0:
                continue
            owed -= count
            batch = market.next_quotes(count)
        try:
            await sink.publish(batch)
        except SinkRefused:
            raise  # retrying cannot fix it: the caller stops
        except Exception as exc:
            delay = backoff(failures, retry_max_s)
            failures += 1
            log.warning("publish failed (%s: %s); retrying in %.1fs",
                        type(exc).__name__, exc, delay)
            await _wait(stop, delay)
            board_due = True
            continue
        if failures:
            log.info("publishing again after %d failed attempts", failures)
            failures = 0
        if board_due:
            board_due = False
            last, owed = loop.time(), 0.0
    log.info("simulation stopped")
