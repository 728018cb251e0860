"""QuoteClient(mode="every") against the real thing: a redis-server started here (with
persistence where it restarts), `python -m publisher` writing the tape, and the service as
a subprocess. The promise checked is the issue's: a consumer reading every quote loses
none and repeats none across a service restart and a Redis restart, counted against the
tape itself (each symbol's Redis Stream, read with XRANGE once the publisher stopped); and
a gap the tape cannot cover says `recovered: false` and continues from a snapshot.

Every wait is a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import redis

from quote_bus.layout import Layout
from quote_client.client import Ack, Feed, QuoteClient
from quote_core.quote import Quote
from tests.redis_server import RedisServer, redis_server
from tests.service_proc import ROOT, PublisherProcess, ServiceProcess
from tests.test_faults import until

LAYOUT = Layout()
# Fast fault detection, and no drain: a restart is over in about a second.
SERVICE_ENV = {"PROBE_INTERVAL_S": "0.5", "PROBE_TIMEOUT_S": "2", "REDIS_RETRY_MAX_S": "1",
               "FEED_SILENCE_S": "3", "DRAIN_S": "0", "HEARTBEAT_S": "2"}
RATE = 200  # quotes a second over the market's 34 symbols
SYMBOLS = ["OGDC", "PPL", "KSE100"]


@contextmanager
def persistent_redis() -> Iterator[RedisServer]:
    """A redis-server whose every write is in its append-only file before it answers, so
    that a restart on the same port and directory comes back with the whole tape."""
    with redis_server(args=["--appendonly", "yes", "--appendfsync", "always"]) as server:
        yield server


@contextmanager
def stack(workdir: Path) -> Iterator[tuple[RedisServer, ServiceProcess, PublisherProcess]]:
    """Redis, the service and `publisher simulate` (retrying fast through an outage)."""
    with persistent_redis() as server:
        service = ServiceProcess({"REDIS_URL": server.url, **SERVICE_ENV})
        publisher = PublisherProcess(server.url, rate=RATE, env={"REDIS_RETRY_MAX_S": "0.5"})
        try:
            service.start("/healthz")
            publisher.start()
            yield server, service, publisher
        finally:
            publisher.stop()
            service.stop()


def tape(url: str, symbols: list[str] | None = None) -> dict[str, list[int]]:
    """Each symbol's tape as seqs, oldest first (symbols: all that have one)."""
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        if symbols is None:
            symbols = sorted({key.decode().rpartition(":tape:")[2]
                              for key in client.scan_iter(match=f"{LAYOUT.prefix}:*:tape:*")})
        out: dict[str, list[int]] = {}
        for symbol in symbols:
            entries = client.xrange(LAYOUT.tape(symbol))
            out[symbol] = [orjson.loads(fields[b"q"])["seq"] for _, fields in entries]
        return out
    finally:
        client.close()


class Recorder:
    """The consumer: every quote `quotes()` yields, as (symbol, seq), in arrival order."""

    def __init__(self, client: QuoteClient) -> None:
        self.client = client
        self.got: list[tuple[str, int]] = []
        self.last: dict[str, int] = {}
        self.ts: list[int] = []  # the publisher's time of each, in the same order
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for quote in self.client.quotes():
            assert quote.seq is not None
            self.got.append((quote.symbol, quote.seq))
            self.last[quote.symbol] = quote.seq
            self.ts.append(quote.ts)

    def by_symbol(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for symbol, seq in self.got:
            out.setdefault(symbol, []).append(seq)
        return out

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def settle_against_tape(recorder: Recorder, publisher: PublisherProcess, url: str,
                              symbols: list[str] | None) -> dict[str, list[int]]:
    """Stop the publisher, read the tape, and wait until the consumer has its last quote of
    every symbol; the tape, for the caller to compare with."""
    await asyncio.to_thread(publisher.stop)
    tapes = await asyncio.to_thread(tape, url, symbols)
    assert tapes and all(tapes.values()), "the publisher wrote a tape"
    for symbol, seqs in tapes.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{symbol}'s tape has a hole"
    await until(lambda: all(recorder.last.get(s) == seqs[-1] for s, seqs in tapes.items()), 15,
                "the consumer caught up with the tape")
    return tapes


def assert_same_as_tape(recorder: Recorder, tapes: dict[str, list[int]]) -> None:
    """Per symbol, what the consumer got is exactly the tape from the consumer's first quote
    on (a snapshot at the start): nothing missing, nothing twice, nothing out of order."""
    got = recorder.by_symbol()
    assert set(got) == set(tapes)
    for symbol, seqs in got.items():
        expected = [seq for seq in tapes[symbol] if seq >= seqs[0]]
        if seqs != expected:
            missing = sorted(set(expected) - set(seqs))
            extra = [s for s in seqs if s not in set(expected)] + sorted(
                {s for s in seqs if seqs.count(s) > 1})
            pytest.fail(f"{symbol}: {len(seqs)} quotes, the tape has {len(expected)}; "
                        f"missing {missing[:20]}, extra or repeated {extra[:20]}")


# --- the options, checked before anything connects ----------------------------------------

def test_every_mode_options_are_checked() -> None:
    url = "ws://127.0.0.1:1/ws"
    with pytest.raises(ValueError, match="mode must be"):
        QuoteClient(url, mode="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_hz"):
        QuoteClient(url, mode="every", max_hz=4)
    with pytest.raises(ValueError, match="since needs mode"):
        QuoteClient(url, since={"OGDC": 1})
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="integer"):
            QuoteClient(url, mode="every", since={"OGDC": bad})  # type: ignore[dict-item]
    client = QuoteClient(url, mode="every", since={"ogdc": 7})
    assert client.positions == {"OGDC": 7}, "normalised, and where the next since starts"
    assert client.last_recovery is None and client.recovery_failures == 0


# --- nothing lost, nothing repeated ---------------------------------------------------------

async def test_every_quote_once_across_a_service_restart(tmp_path: Path) -> None:
    """`"*"` in every mode; the service is stopped and a new one started on the same port
    while the publisher goes on. The client reconnects by itself and resubscribes with
    `since` = its positions (over max_frame_bytes here, so in parts), and the consumer's
    quotes are the tape's exactly."""
    env = {"MAX_FRAME_BYTES": "300"}
    with persistent_redis() as server:
        service = ServiceProcess({"REDIS_URL": server.url, **SERVICE_ENV, **env})
        publisher = PublisherProcess(server.url, rate=RATE, env={"REDIS_RETRY_MAX_S": "0.5"})
        recoveries: list[Ack] = []
        statuses: list[Feed] = []
        try:
            service.start("/healthz")
            publisher.start()
            async with QuoteClient(service.ws_url, symbols="*", mode="every", max_backoff_s=0.5,
                                   on_recovery=recoveries.append,
                                   on_status=statuses.append) as client:
                recorder = Recorder(client)
                await until(lambda: len(recorder.last) == 34 and len(recorder.got) > 150, 15,
                            "every symbol and some updates")
                assert client.last_recovery is None, "no since on the first connection"
                await asyncio.to_thread(service.stop)
                down_from = time.time() * 1000
                await until(lambda: client.feed == "reconnecting", 10, "the client noticed")
                before = len(recorder.got)
                await asyncio.sleep(0.5)  # quotes published while no service runs
                assert len(recorder.got) == before
                await asyncio.to_thread(service.start, "/healthz")
                down_to = time.time() * 1000
                await until(lambda: client.reconnects >= 1 and client.feed == "live", 15,
                            "the client came back")
                await until(lambda: len(recorder.got) > before + 300, 15, "quotes after it")
                assert recoveries and all(a.recovered is True for a in recoveries), recoveries
                assert recoveries[-1].mode == "every" and recoveries[-1].all
                assert client.recovery_failures == 0
                # The since of the resubscription did not fit one frame: it went in parts.
                assert len(orjson.dumps({"since": dict(client.positions)})) > 300
                tapes = await settle_against_tape(recorder, publisher, server.url, None)
                await recorder.stop()
            assert_same_as_tape(recorder, tapes)
            # The point: those published while no service ran came (from the tape).
            assert sum(down_from < ts < down_to for ts in recorder.ts) > 50
        finally:
            publisher.stop()
            service.stop()


async def test_every_quote_once_across_a_redis_restart(tmp_path: Path) -> None:
    """Redis (append-only, fsync always) is stopped and started again on the same port and
    directory; the publisher retries through the outage and the service reconnects. The
    client's connection stays up: the service fills what pub/sub missed from the tape."""
    with stack(tmp_path) as (server, service, publisher):
        statuses: list[Feed] = []
        async with QuoteClient(service.ws_url, symbols=SYMBOLS, mode="every",
                               on_status=statuses.append) as client:
            recorder = Recorder(client)
            await until(lambda: len(recorder.got) > 40, 15, "some quotes")
            await asyncio.to_thread(server.stop)
            await until(lambda: "stale" in statuses, 15, "the service saw Redis go")
            await asyncio.sleep(0.5)
            assert server.start(), server.log()
            await until(lambda: statuses[-1] == "live", 20, "live again")
            mark = len(recorder.got)
            await until(lambda: len(recorder.got) > mark + 40, 15, "quotes after the outage")
            tapes = await settle_against_tape(recorder, publisher, server.url, SYMBOLS)
            await recorder.stop()
            assert client.reconnects == 0, "the websocket itself stayed up"
        assert_same_as_tape(recorder, tapes)


# --- a gap the tape cannot cover -------------------------------------------------------------

def publish_lines(redis_url: str, lines: list[str], env: dict[str, str], path: Path) -> None:
    """`python -m publisher replay FILE` into that Redis with `env` (TAPE_MAX_LEN)."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    inherited = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = subprocess.run([sys.executable, "-m", "publisher", "replay", str(path)], cwd=ROOT,
                            env={**inherited, **env, "REDIS_URL": redis_url},
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


def quote_line(symbol: str, price: float) -> str:
    return orjson.dumps({"symbol": symbol, "price": price, "prev_close": 100}).decode()


async def test_since_older_than_the_tape_or_over_max_recovery_is_not_recovered(
        tmp_path: Path) -> None:
    """OGDC's tape is trimmed (TAPE_MAX_LEN=20 over 300 quotes), PPL's whole: since 0 for
    OGDC cannot be recovered and continues from a snapshot; since 5 for PPL gets 6..10.
    A second service with MAX_RECOVERY=3 refuses the same PPL gap of 5: unrecovered too."""
    ogdc = [quote_line("OGDC", 100 + i / 100) for i in range(300)]
    ppl = [quote_line("PPL", 50 + i / 100) for i in range(10)]
    with persistent_redis() as server:
        publish_lines(server.url, ogdc + ppl, {"TAPE_MAX_LEN": "20"}, tmp_path / "day.txt")
        tapes = tape(server.url, ["OGDC", "PPL"])
        assert tapes["OGDC"][0] > 1 and tapes["OGDC"][-1] == 300, "OGDC's tape was trimmed"
        assert tapes["PPL"] == list(range(1, 11))
        env = {"REDIS_URL": server.url, "FEED_SILENCE_S": "0"}
        service = ServiceProcess(env)
        strict = ServiceProcess({**env, "MAX_RECOVERY": "3"})
        try:
            service.start("/healthz")
            strict.start("/healthz")
            heard: list[Ack] = []
            async with QuoteClient(service.ws_url, symbols=["OGDC", "PPL"], mode="every",
                                   since={"OGDC": 0, "PPL": 5}, on_recovery=heard.append) as client:
                assert client.welcome is not None
                assert client.welcome.limits["max_recovery"] == 10000
                ack = client.last_recovery
                assert ack is not None and heard == [ack]
                assert ack.recovered is False and ack.unrecovered == ("OGDC",)
                assert client.recovery_failures == 1
                got = await take(client, 6)
                # OGDC from its snapshot (its latest state), PPL every quote after 5.
                assert [q.seq for q in got if q.symbol == "OGDC"] == [300]
                assert [q.seq for q in got if q.symbol == "PPL"] == [6, 7, 8, 9, 10]
                assert client.positions == {"OGDC": 300, "PPL": 10}
            async with QuoteClient(strict.ws_url, symbols=["PPL"], mode="every",
                                   since={"PPL": 5}) as client:
                ack = client.last_recovery
                assert ack is not None and ack.recovered is False and ack.unrecovered == ("PPL",)
                assert [q.seq for q in await take(client, 1)] == [10], "the snapshot"
            # A position the tape covers, on the strict service too: recovered.
            async with QuoteClient(strict.ws_url, symbols=["PPL"], mode="every",
                                   since={"PPL": 8}) as client:
                ack = client.last_recovery
                assert ack is not None and ack.recovered is True and ack.unrecovered == ()
                assert [q.seq for q in await take(client, 2)] == [9, 10]
                assert client.recovery_failures == 0
        finally:
            strict.stop()
            service.stop()


async def take(client: QuoteClient, count: int, timeout: float = 10.0) -> list[Quote]:
    got: list[Quote] = []
    async with asyncio.timeout(timeout), contextlib.aclosing(client.quotes()) as quotes:
        while len(got) < count:
            got.append(await anext(quotes))
    return got


async def test_quotes_continue_across_iterators_and_subscribes(tmp_path: Path) -> None:
    """One iterator at a time; a later one goes on where the earlier stopped, and a symbol
    subscribed later starts from its snapshot, then every quote (the live market)."""
    with stack(tmp_path) as (_, service, _):
        async with QuoteClient(service.ws_url, symbols=["OGDC"], mode="every") as client:
            first = await take(client, 5)
            iterator = client.quotes()
            async with contextlib.aclosing(iterator):
                one = await anext(iterator)
                with pytest.raises(RuntimeError, match="one quotes"):
                    await anext(client.quotes())
            assert one.seq == (first[-1].seq or 0) + 1
            ack = await client.subscribe("PPL")
            assert ack.mode == "every" and ack.recovered is None and set(ack.symbols) == {"OGDC", "PPL"}
            got = await take(client, 40)
            seqs = {s: [q.seq or 0 for q in got if q.symbol == s] for s in ("OGDC", "PPL")}
            assert seqs["OGDC"][0] == (one.seq or 0) + 1
            for symbol, run in seqs.items():
                assert run == list(range(run[0], run[0] + len(run))), symbol
            assert "PPL" in client.positions
            await client.unsubscribe("PPL")
            assert "PPL" not in client.positions, "forgotten with the board"
            with pytest.raises(ValueError, match="max_hz"):
                await client.set_max_hz(4)


async def test_a_since_answered_before_the_service_has_its_board_is_still_recovered(
        tmp_path: Path) -> None:
    """The race behind an occasional loss across a service restart, provoked on purpose:
    the service is up (/healthz) but has not read Redis yet (here Redis is down), so it
    knows no symbol. A subscribe with since {PPL: 5} must not be answered as if nothing
    were missing: the answer waits for the feed, and then PPL 6..10 come from the tape,
    then 11 live (or, were the tape short, `recovered: false` and a snapshot)."""
    with persistent_redis() as server:
        publish_lines(server.url, [quote_line("PPL", 50 + i) for i in range(10)], {},
                      tmp_path / "day.txt")
        server.stop()
        service = ServiceProcess({"REDIS_URL": server.url, "FEED_SILENCE_S": "0",
                                  "REDIS_RETRY_MAX_S": "0.5"})
        try:
            service.start("/healthz")
            # Redis comes back while the client connects: its since reaches a service
            # that has no board yet, and the ack (which the client waits for) comes once
            # the feed is live.
            restarted = asyncio.create_task(asyncio.to_thread(server.start))
            async with QuoteClient(service.ws_url, symbols=["PPL"], mode="every",
                                   since={"PPL": 5}) as client:
                recorder = Recorder(client)
                assert await restarted, server.log()
                await until(lambda: client.feed == "live", 10, "the service read Redis")
                await asyncio.to_thread(publish_lines, server.url, [quote_line("PPL", 70)], {},
                                        tmp_path / "more.txt")
                await until(lambda: recorder.last.get("PPL") == 11, 10, "PPL 11")
                await recorder.stop()
                ack = client.last_recovery
            assert ack is not None
            if ack.recovered:
                assert [seq for _, seq in recorder.got] == [6, 7, 8, 9, 10, 11]
            else:
                assert recorder.got[0] == ("PPL", 10), "a snapshot instead"
        finally:
            service.stop()
