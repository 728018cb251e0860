"""`python -m publisher` as a real process against a private redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from publisher.settings import Settings
from quote_bus.payload import decode_payload
from quote_core.quote import Quote
from quote_core.text import format_line
from tests.redis_server import CHANNELS, latest_in_redis, redis_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "quote_sim" / "data" / "psx_ticker.txt"


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any setting a developer may have exported."""
    names = {f.name.upper() for f in fields(Settings)}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


async def start(*args: str, env: dict[str, str], stdin: int | None = None
                ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "publisher", *args, cwd=ROOT, env=env,
        stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


@pytest.fixture
async def subscriber(redis_url: str) -> AsyncIterator[aioredis.client.PubSub]:  # noqa: F811
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(*CHANNELS)
    yield pubsub
    await pubsub.aclose()
    await client.aclose()


async def drain(pubsub: aioredis.client.PubSub, seconds: float) -> list[tuple[float, list[Quote]]]:
    """Every message for `seconds`: (arrival time, decoded quotes), all of them valid."""
    out: list[tuple[float, list[Quote]]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(left, 0.5))
        if msg is not None:
            good, bad = decode_payload(msg["data"])
            assert bad == []
            out.append((time.monotonic(), good))
    return out


MIXED = """\
# a replay file mixing the three formats, with bad lines between good ones
OGDC 137.75 Increased By ▲ 4.88 (3.67%)
KSE100 71,902 Increased By 1235.2 (1.75%)
PPL,125.05,116.3
symbol,price,prev_close,kind,ts
PPL,125.05,116.3,stock,1624435200123
HBL,NaN,112.76,stock,1624435200123
OGDC,138.5,132.87,stock,1624435200124
{"symbol": "<img src=x>", "price": 1, "prev_close": 1}
{"symbol": "hubc", "price": 136.5, "prev_close": 133.04, "ts": 1624435200125, "seq": 77}
OGDC 139.00 Decreased By ▲ 6.13 (4.61%)
OGDC,0,132.87,stock,1624435200126
"""
EXPECTED = [("OGDC", 137.75, 132.87, 1), ("KSE100", 71902, 70666.8, 1), ("PPL", 125.05, 116.3, 1),
            ("OGDC", 138.5, 132.87, 2), ("HUBC", 136.5, 133.04, 1)]


async def test_replay_file_publishes_good_lines_and_reports_bad_ones(
    tmp_path: Path, redis_url: str, subscriber: aioredis.client.PubSub,  # noqa: F811
) -> None:
    path = tmp_path / "mixed.txt"
    path.write_text(MIXED, encoding="utf-8")
    proc = await start("replay", str(path), env=clean_env(REDIS_URL=redis_url))
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    stderr = err.decode()
    assert proc.returncode == 1, stderr
    received = [quote for _, quotes in await drain(subscriber, 0.5) for quote in quotes]
    # Partitions are separate channels: the order holds per symbol, not across them.
    assert per_symbol([(x.symbol, x.price, x.prev_close, x.seq) for x in received]) == \
        per_symbol(EXPECTED)
    (index,) = [x for x in received if x.symbol == "KSE100"]
    assert index.kind == "index" and index.change == 1235.2
    for reason in ("line 4: CSV row before a header", "line 7: price must be a finite number",
                   "line 9: invalid symbol '<img src=x>'", "line 11: ", "contradicts",
                   "line 12: price must be positive, not 0"):
        assert reason in stderr, stderr
    assert "published 5, rejected 5" in stderr
    assert "Traceback" not in stderr
    latest = latest_in_redis(redis_url).get("OGDC")
    assert latest is not None and orjson.loads(latest)["price"] == 138.5


async def test_replay_from_stdin_exits_zero_when_all_lines_are_good(
    redis_url: str, subscriber: aioredis.client.PubSub,  # noqa: F811
) -> None:
    proc = await start("replay", "-", env=clean_env(REDIS_URL=redis_url),
                       stdin=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(SEED.read_bytes()), 20)
    assert proc.returncode == 0, err.decode()
    assert "published 34, rejected 0" in err.decode()
    received = [quote for _, quotes in await drain(subscriber, 0.5) for quote in quotes]
    assert len(received) == 34 and all(x.seq == 1 for x in received)
    assert {x.symbol for x in received} == {line.split()[0] for line in
                                            SEED.read_text(encoding="utf-8").splitlines()}


@pytest.mark.parametrize("command", [["simulate"], ["replay", "-"]])
async def test_missing_redis_url_exits_2_with_advice(command: list[str]) -> None:
    proc = await start(*command, env=clean_env())
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    stderr = err.decode()
    assert "REDIS_URL" in stderr and "redis://127.0.0.1:6379/0" in stderr
    assert "python -m service" in stderr and "Traceback" not in stderr


async def test_config_errors_exit_2_without_traceback() -> None:
    proc = await start("simulate", env=clean_env(REDIS_URL="redis://127.0.0.1:1/0",
                                                  SIM_RATE="fast"))
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert "SIM_RATE must be a number" in err.decode() and "Traceback" not in err.decode()


async def test_unreadable_replay_file_exits_2(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    proc = await start("replay", str(tmp_path / "absent.txt"), env=clean_env(REDIS_URL=redis_url))
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2 and "cannot read" in err.decode()


async def test_simulate_sends_the_board_then_keeps_the_rate(
    redis_url: str, subscriber: aioredis.client.PubSub,  # noqa: F811
) -> None:
    proc = await start("simulate", "--rate", "200", "--seed", "1",
                       env=clean_env(REDIS_URL=redis_url))
    try:
        messages = await drain(subscriber, 5.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert messages, err.decode()
    # The board goes out first, each partition's part on its channel.
    first_at = messages[0][0]
    board: dict[str, Quote] = {}
    seed_lines = SEED.read_text(encoding="utf-8").splitlines()
    for _, quotes in messages:
        for x in quotes:
            board.setdefault(x.symbol, x)
    assert len(board) == 34
    assert all(x.seq == 1 for x in board.values())
    # The opening board is the seed's, line for line.
    assert [format_line(board[line.split()[0]]) for line in seed_lines] == seed_lines
    # Measure the steady rate over a window that starts after the process has settled.
    window = [quotes for at, quotes in messages if first_at + 1.0 <= at < first_at + 3.5]
    rate = sum(len(quotes) for quotes in window) / 2.5
    assert 140 <= rate <= 260, rate
    for _, quotes in messages[1:]:
        for x in quotes:
            assert round(x.price * 100) == pytest.approx(x.price * 100) or x.kind == "index"


async def piped_replay(redis_url: str) -> asyncio.subprocess.Process:  # noqa: F811
    """`publisher replay -` with a pipe the test writes to, as a live feed would."""
    return await start("replay", "-", env=clean_env(REDIS_URL=redis_url),
                       stdin=asyncio.subprocess.PIPE)


async def test_sigterm_stops_a_replay_blocked_on_stdin(
    redis_url: str, subscriber: aioredis.client.PubSub,  # noqa: F811
) -> None:
    proc = await piped_replay(redis_url)
    assert proc.stdin is not None
    # 510 lines: all published while stdin stays open (what waits goes out, in chunks of
    # at most 500), proving the process is running; then it blocks reading stdin.
    proc.stdin.write(SEED.read_bytes() * 15)
    await proc.stdin.drain()
    published = await drain_until(subscriber, 510)
    assert sum(len(quotes) for _, quotes in published) == 510
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by signal 15" in err.decode() and "Traceback" not in err.decode()


async def test_replay_from_a_pipe_publishes_each_line_as_it_arrives(
    redis_url: str, subscriber: aioredis.client.PubSub,  # noqa: F811
) -> None:
    proc = await piped_replay(redis_url)
    assert proc.stdin is not None
    lines = SEED.read_text(encoding="utf-8").splitlines()[:3]
    try:
        for line in lines:  # a live feed: the next line only once this one is out
            proc.stdin.write(line.encode() + b"\n")
            await proc.stdin.drain()
            (_, quotes), = await drain_until(subscriber, 1, timeout=10)
            assert [q.symbol for q in quotes] == [line.split()[0]]
    finally:
        proc.stdin.close()
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0 and "published 3, rejected 0" in err.decode(), err.decode()


async def drain_until(pubsub: aioredis.client.PubSub, quotes: int, timeout: float = 15.0
                      ) -> list[tuple[float, list[Quote]]]:
    """Messages until they carry at least `quotes` quotes, then 0.2 s more."""
    out: list[tuple[float, list[Quote]]] = []
    async with asyncio.timeout(timeout):
        while sum(len(q) for _, q in out) < quotes:
            out += await drain(pubsub, 0.2)
    return out + await drain(pubsub, 0.2)


def per_symbol(rows: list[tuple[str, float, float, int | None]]
               ) -> dict[str, list[tuple[str, float, float, int | None]]]:
    out: dict[str, list[tuple[str, float, float, int | None]]] = {}
    for row in rows:
        out.setdefault(row[0], []).append(row)
    return out
