"""The simulation and replay loops against an in-memory sink: rate, resilience, order."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence

import pytest

from publisher.replay import ReplayResult, replay
from quote_core.quote import Quote
from quote_core.text import format_line
from quote_sim.market import Market
from quote_sim.seed import load_instruments, seed_text
from quote_sim.settings import SimulationSettings
from quote_sim.simulate import market_from_settings, run_simulation
from quote_sim.sink import QuoteSink


class MemorySink:
    """Assigns seq like the real sinks; can be told to fail the next few calls."""

    def __init__(self, fail_next: int = 0) -> None:
        self.batches: list[list[Quote]] = []
        self.fail_next = fail_next
        self.calls = 0
        self._seq: dict[str, int] = {}

    async def publish(self, quotes: Sequence[Quote]) -> list[Quote]:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("broker down")
        out = []
        for q in quotes:
            self._seq[q.symbol] = self._seq.get(q.symbol, 0) + 1
            out.append(q.with_seq(self._seq[q.symbol]))
        self.batches.append(out)
        return out

    @property
    def quotes(self) -> list[Quote]:
        return [q for batch in self.batches for q in batch]


def market(seed: int = 1) -> Market:
    return Market(load_instruments(), random.Random(seed))


def test_memory_sink_satisfies_the_protocol() -> None:
    sink: QuoteSink = MemorySink()
    assert sink is not None


async def run_for(sink: MemorySink, rate: float, seconds: float, **kwargs: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(run_simulation(sink, market(), rate, stop=stop, **kwargs))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_simulation_starts_with_the_full_board_then_keeps_the_rate() -> None:
    sink = MemorySink()
    await run_for(sink, 200, 1.0)
    first = sink.batches[0]
    assert [format_line(q) for q in first] == seed_text().splitlines()  # the seed's board
    ticked = len(sink.quotes) - 34
    assert 170 <= ticked <= 210, ticked
    # Batched per ~50 ms tick, not one call per quote.
    assert len(sink.batches) <= 30


async def test_fractional_rates_are_honoured() -> None:
    sink = MemorySink()
    await run_for(sink, 7.5, 1.2)
    assert 7 <= len(sink.quotes) - 34 <= 10


async def test_simulation_survives_sink_failures_and_resends_the_board(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = MemorySink(fail_next=3)
    with caplog.at_level(logging.WARNING, logger="publisher"):
        await run_for(sink, 100, 1.0, retry_max_s=0.1)
    assert sink.calls > 3 and sink.batches
    assert len(sink.batches[0]) == 34  # the first success is a full board
    assert sum(1 for r in caplog.records if "publish failed (ConnectionError: broker down)"
               in r.getMessage()) == 3


async def test_failure_mid_run_resends_the_current_board() -> None:
    sink = MemorySink()
    stop = asyncio.Event()
    task = asyncio.create_task(run_simulation(sink, market(), 100, stop=stop, retry_max_s=0.05))
    await asyncio.sleep(0.3)
    sink.fail_next = 1
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(task, 2)
    boards = [b for b in sink.batches if len({q.symbol for q in b}) == 34 and len(b) == 34]
    assert len(boards) >= 2
    opening = [q.price for q in boards[0]]
    assert [q.price for q in boards[-1]] != opening  # current prices, not the opening board


async def test_stop_ends_the_simulation_promptly() -> None:
    sink = MemorySink(fail_next=10**6)
    stop = asyncio.Event()
    task = asyncio.create_task(run_simulation(sink, market(), 10, stop=stop, retry_max_s=30))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, 1)


async def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        await run_simulation(MemorySink(), market(), 0)


def test_market_from_settings_uses_the_sim_settings() -> None:
    settings = SimulationSettings(sim_seed=9, sim_band_pct=2.0, sim_band_min=0.5)
    m = market_from_settings(settings)
    assert len(m.symbols) == 34
    assert m.limits("OGDC") == (130.22, 135.52)  # 2% of 132.87 = 2.6574 -> 2.65 whole paisa
    a = m.next_quotes(50)
    b = market_from_settings(settings).next_quotes(50)
    assert [(q.symbol, q.price) for q in a] == [(q.symbol, q.price) for q in b]


async def test_replay_publishes_good_lines_in_order_in_chunks_at_most(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines = [f"S{i},{1 + i / 100:.2f},1" for i in range(1200)]
    lines.insert(0, "symbol,price,prev_close")
    lines.insert(600, "BAD,-1,1")
    sink = MemorySink()
    with caplog.at_level(logging.WARNING, logger="publisher.replay"):
        result = await replay(sink, lines, chunk=500)
    assert result == ReplayResult(published=1200, rejected=1)
    assert all(0 < len(b) <= 500 for b in sink.batches), "what is waiting, up to a chunk"
    assert [q.symbol for q in sink.quotes] == [f"S{i}" for i in range(1200)]
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "line 601: price must be positive, not -1" in record.getMessage()


async def test_replay_of_nothing_publishes_nothing() -> None:
    sink = MemorySink()
    assert await replay(sink, ["", "# only a comment"]) == ReplayResult(0, 0)
    assert sink.calls == 0


def test_stdin_lines_split_across_reads_and_characters() -> None:
    from publisher.__main__ import _stdin_lines

    data = "\ufeffOGDC 137.75 ▲ 1.25\r\n".encode() + b"PPL,1\n\xff" + "tail ▼".encode()
    chunks = iter([data[i:i + 1] for i in range(len(data))] + [b""])  # every boundary
    got = list(_stdin_lines(lambda: next(chunks)))
    assert got == ["OGDC 137.75 ▲ 1.25\r", "PPL,1", "\ufffdtail ▼"]
