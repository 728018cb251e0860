"""Every-mode subscriptions, recovery with `since`, and gap fills, in the hub without
sockets: the tape is the embedded one (service/tape/memory.py), the same contract as the
Redis streams (tests/test_tape_redis.py checks those)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from quote_core.quote import Quote
from service.hub import Hub
from service.outbox import EVERY_FRAME_QUOTES
from service.protocol import ALL, ProtocolError
from service.tape import Entry
from service.tape.memory import MemoryTape

from .test_hub import Recorder, q


class GatedTape(MemoryTape):
    """The embedded tape, answering only once `gate` is set: lets a test publish while a
    recovery or a fill is waiting for it, as live quotes do while Redis answers."""

    def __init__(self) -> None:
        super().__init__(100_000, 86_400)
        self.gate = asyncio.Event()
        self.gate.set()
        self.reads = 0

    async def back(self, symbol: str, end: str, count: int) -> list[Entry]:
        self.reads += 1
        await self.gate.wait()
        return await super().back(symbol, end, count)


class Market:
    """Publishes through the hub and onto the tape, as the publisher's script does."""

    def __init__(self, hub: Hub, tape: MemoryTape) -> None:
        self.hub, self.tape = hub, tape
        self.seq: dict[str, int] = {}

    def quotes(self, symbol: str, n: int) -> list[Quote]:
        out = []
        for _ in range(n):
            seq = self.seq[symbol] = self.seq.get(symbol, 0) + 1
            quote = q(symbol, 100 + seq / 100, seq)
            self.tape.append(quote)
            out.append(quote)
        return out

    def publish(self, symbol: str, n: int = 1) -> None:
        self.hub.publish(self.quotes(symbol, n))


def setup(max_recovery: int = 10_000, queue_bytes: int = 1 << 20
          ) -> tuple[Hub, GatedTape, Market, Recorder]:
    tape = GatedTape()
    hub = Hub(max_symbols=10, tape=tape, max_recovery=max_recovery,
              every_queue_bytes=queue_bytes)
    hub.set_feed("live")
    market = Market(hub, tape)
    sub = Recorder()
    hub.add(sub)
    return hub, tape, market, sub


def received(frames: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(x["symbol"], x["seq"]) for f in frames if f["type"] == "quotes" for x in f["quotes"]]


def seqs(symbol: str, first: int, last: int) -> list[tuple[str, int]]:
    return [(symbol, s) for s in range(first, last + 1)]


async def test_every_mode_gets_every_quote_unconflated() -> None:
    hub, _, market, sub = setup()
    market.publish("OGDC", 3)
    assert hub.subscribe(sub, 1, frozenset({"OGDC"}), mode="every") is None
    ack, snapshot = sub.frames()
    assert ack == {"type": "ack", "id": 1, "op": "subscribe", "symbols": ["OGDC"],
                   "unknown": [], "mode": "every"}
    assert [x["seq"] for x in snapshot["quotes"]] == [3]
    market.publish("OGDC", 5)  # one batch: a conflated client would get seq 8 alone
    market.publish("OGDC", 2)
    assert received(sub.frames()) == seqs("OGDC", 4, 10)


async def test_since_recovers_from_the_tape_then_goes_live_without_gap_or_repeat() -> None:
    hub, tape, market, sub = setup()
    market.publish("OGDC", 40)
    market.publish("PPL", 10)
    tape.gate.clear()  # the tape answers late: live quotes come meanwhile
    task = hub.subscribe(sub, 2, frozenset({"OGDC", "PPL", "HBL"}), mode="every",
                         since={"OGDC": 25, "PPL": 10})
    assert task is not None
    market.publish("OGDC", 3)
    market.publish("HBL", 1)
    assert sub.frames() == []  # nothing before the ack
    tape.gate.set()
    await task
    frames = sub.frames()
    assert frames[0] == {"type": "ack", "id": 2, "op": "subscribe",
                         "symbols": ["HBL", "OGDC", "PPL"], "unknown": [], "mode": "every",
                         "recovered": True}
    got = received(frames)
    assert [x for x in got if x[0] == "OGDC"] == seqs("OGDC", 26, 43)
    # HBL had no quote when asked for; its first came meanwhile (so the ack, as of its
    # sending, knows it), and is in the snapshot that follows the ack, not repeated after.
    assert [(x["symbol"], x["seq"]) for x in frames[1]["quotes"]] == [("HBL", 1)]
    assert [x for x in got if x[0] == "HBL"] == []
    assert [x for x in got if x[0] == "PPL"] == []  # it was up to date
    market.publish("OGDC")
    assert received(sub.frames()) == [("OGDC", 44)]


async def test_a_gap_older_than_the_tape_is_not_recovered_and_gets_a_snapshot() -> None:
    hub, tape, market, sub = setup()
    tape.max_len = 20
    market.publish("OGDC", 50)  # the tape keeps the last 20: 31..50
    task = hub.subscribe(sub, 3, frozenset({"OGDC"}), mode="every", since={"OGDC": 5})
    assert task is not None
    await task
    ack, snapshot = sub.frames()
    assert ack["recovered"] is False and ack["unrecovered"] == ["OGDC"]
    assert [x["seq"] for x in snapshot["quotes"]] == [50]
    market.publish("OGDC")
    assert received(sub.frames()) == [("OGDC", 51)]


async def test_more_than_max_recovery_is_not_read_at_all() -> None:
    hub, tape, market, sub = setup(max_recovery=30)
    market.publish("OGDC", 20)
    market.publish("PPL", 20)
    reads = tape.reads
    # 15 + 16 missed: over 30 together, so neither is recovered.
    assert hub.subscribe(sub, 4, frozenset({"OGDC", "PPL"}), mode="every",
                         since={"OGDC": 5, "PPL": 4}) is None
    ack, snapshot = sub.frames()
    assert ack["recovered"] is False and ack["unrecovered"] == ["OGDC", "PPL"]
    assert sorted(x["symbol"] for x in snapshot["quotes"]) == ["OGDC", "PPL"]
    assert tape.reads == reads


async def test_a_large_recovery_goes_out_in_bounded_frames() -> None:
    hub, _, market, sub = setup(queue_bytes=10_000)  # far below the recovery's own size
    market.publish("OGDC", 1000)
    task = hub.subscribe(sub, 5, ALL, mode="every", since={"OGDC": 0})
    assert task is not None
    await task
    frames = sub.frames()
    assert frames[0]["recovered"] is True and sub.overflowed is None
    assert all(len(f["quotes"]) <= EVERY_FRAME_QUOTES for f in frames[1:])
    assert received(frames) == seqs("OGDC", 1, 1000)


async def test_quotes_pub_sub_missed_are_filled_from_the_tape_in_order() -> None:
    hub, tape, market, sub = setup()
    market.publish("OGDC", 5)
    hub.subscribe(sub, 1, frozenset({"OGDC"}), mode="every")
    sub.frames()
    market.quotes("OGDC", 7)  # published while the feed was away: on the tape only
    tape.gate.clear()
    market.publish("OGDC")  # seq 13 arrives: 6..12 are missing before it
    market.publish("OGDC")
    assert received(sub.frames()) == []  # held behind the fill
    tape.gate.set()
    await until_idle(hub)
    assert received(sub.frames()) == seqs("OGDC", 6, 14)


async def test_a_reload_that_jumps_the_board_is_filled_too() -> None:
    hub, _, market, sub = setup()
    market.publish("OGDC", 5)
    hub.subscribe(sub, 1, ALL, mode="every")
    sub.frames()
    hub.set_feed("stale")
    sub.frames()
    missed = market.quotes("OGDC", 4)  # the feed reconnects and reloads the board
    hub.load([missed[-1]])
    hub.set_feed("live")
    await until_idle(hub)
    frames = sub.frames()
    assert [f["type"] for f in frames] == ["status", "quotes"]  # no snapshot: the quotes
    assert received(frames) == seqs("OGDC", 6, 9)


async def test_a_client_that_does_not_read_is_closed_past_every_queue_bytes() -> None:
    hub, _, market, sub = setup(queue_bytes=2000)
    hub.subscribe(sub, 1, ALL, mode="every")
    for _ in range(30):
        market.publish("OGDC")
    assert sub.overflowed is not None and "EVERY_QUEUE_BYTES" in sub.overflowed
    assert sub not in hub.every.subs  # nothing more is queued for it


async def test_modes_do_not_mix_on_one_connection() -> None:
    hub, _, market, sub = setup()
    market.publish("OGDC")
    hub.subscribe(sub, 1, frozenset({"OGDC"}))
    with pytest.raises(ProtocolError) as conflated:
        hub.subscribe(sub, 2, frozenset({"PPL"}), mode="every")
    assert conflated.value.code == "bad_request" and "conflated" in conflated.value.message
    hub.unsubscribe(sub, 3, ALL)
    hub.subscribe(sub, 4, frozenset({"PPL"}), mode="every")
    with pytest.raises(ProtocolError):
        hub.subscribe(sub, 5, frozenset({"OGDC"}))
    hub.unsubscribe(sub, 6, frozenset({"PPL"}))
    assert sub not in hub.every.subs
    hub.remove(sub)


async def until_idle(hub: Hub) -> None:
    async with asyncio.timeout(5):
        while hub.every._tasks:
            await asyncio.gather(*hub.every._tasks)


async def test_a_since_before_the_board_is_loaded_waits_for_it() -> None:
    """A service just started (or with Redis away) does not know where a symbol stands:
    the answer waits for the feed, then recovers from the tape."""
    hub, _, market, sub = setup()
    hub.set_feed("stale")
    market.quotes("PPL", 10)  # on the tape; the board has not been read yet
    hub.board.clear()
    task = hub.subscribe(sub, 1, frozenset({"PPL"}), mode="every", since={"PPL": 5})
    assert task is not None
    await asyncio.sleep(0)
    assert [f for f in sub.frames() if f["type"] == "ack"] == []
    market.hub.load(market.quotes("PPL", 1))  # the board as the feed reads it: seq 11
    hub.set_feed("live")
    market.publish("PPL")  # 12, live, while the tape is read
    await task
    frames = sub.frames()
    ack = next(f for f in frames if f["type"] == "ack")
    assert ack["recovered"] is True
    assert received(frames) == seqs("PPL", 6, 12)
