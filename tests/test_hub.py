"""Fan-out, subscriptions and conflation in the hub and the outbox, without sockets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from quote_core.quote import Quote
from service import hub as hub_module
from service.hub import Hub
from service.outbox import KEEP, PROTOCOL_1, Group, Outbox, spread
from service.protocol import ALL, ProtocolError
from service.wire import wire_of


class Recorder:
    """A subscriber that only keeps what it was given."""

    def __init__(self, max_control: int = 64) -> None:
        self.outbox = Outbox(max_control)
        self.wakes = 0
        self.overflowed: str | None = None

    def wake(self) -> None:
        self.wakes += 1

    def overflow(self, reason: str) -> None:
        self.overflowed = reason

    def frames(self) -> list[dict[str, Any]]:
        return [orjson.loads(f if isinstance(f, str) else f.text) for f in self.outbox.take()]


def q(symbol: str, price: float, seq: int, prev: float = 100.0) -> Quote:
    return Quote.make(symbol, price, prev, ts=1_700_000_000_000).with_seq(seq)


def hub_with(*quotes: Quote) -> Hub:
    hub = Hub(max_symbols=3)
    hub.publish(quotes)
    return hub


def test_subscribe_acks_the_whole_set_then_snapshots_what_was_added() -> None:
    hub = hub_with(q("OGDC", 137.75, 1), q("PPL", 125.05, 1))
    sub = Recorder()
    hub.add(sub)
    hub.subscribe(sub, 1, frozenset({"OGDC", "NEW"}))
    ack, snapshot = sub.frames()
    assert ack == {"type": "ack", "id": 1, "op": "subscribe", "symbols": ["NEW", "OGDC"],
                   "unknown": ["NEW"]}
    assert snapshot["type"] == "snapshot"
    assert [x["symbol"] for x in snapshot["quotes"]] == ["OGDC"]
    hub.subscribe(sub, 2, frozenset({"PPL"}))
    ack, snapshot = sub.frames()
    assert ack["symbols"] == ["NEW", "OGDC", "PPL"]
    assert [x["symbol"] for x in snapshot["quotes"]] == ["PPL"]


def test_resubscribing_held_symbols_sends_no_snapshot() -> None:
    hub = hub_with(q("OGDC", 137.75, 1))
    sub = Recorder()
    hub.add(sub)
    hub.subscribe(sub, 1, frozenset({"OGDC"}))
    sub.frames()
    hub.subscribe(sub, 2, frozenset({"OGDC"}))
    assert [f["type"] for f in sub.frames()] == ["ack"]


def test_updates_reach_only_subscribers_and_stale_seqs_are_dropped() -> None:
    hub = hub_with(q("OGDC", 137.75, 1))
    a, b = Recorder(), Recorder()
    for sub, symbols in ((a, {"OGDC"}), (b, {"PPL"})):
        hub.add(sub)
        hub.subscribe(sub, None, frozenset(symbols))
        sub.frames()
    hub.publish([q("OGDC", 138.0, 2), q("OGDC", 137.0, 2), q("PPL", 125.0, 1)])
    (fa,) = a.frames()
    assert fa["type"] == "quotes"
    assert [(x["symbol"], x["seq"], x["price"]) for x in fa["quotes"]] == [("OGDC", 2, 138.0)]
    (fb,) = b.frames()
    assert [x["symbol"] for x in fb["quotes"]] == ["PPL"]
    assert hub.stats["quotes_stale_dropped"] == 1


def test_a_slow_reader_gets_the_latest_per_symbol_not_a_queue() -> None:
    hub = hub_with()
    sub = Recorder()
    hub.add(sub)
    hub.subscribe(sub, None, ALL)
    sub.frames()
    for seq in range(1, 1001):
        hub.publish([q("OGDC", 100 + seq / 100, seq), q("PPL", 50 + seq / 100, seq)])
    (frame,) = sub.frames()
    assert [(x["symbol"], x["seq"]) for x in frame["quotes"]] == [("OGDC", 1000), ("PPL", 1000)]
    assert len(hub.groups[ALL, None, 0, PROTOCOL_1].generations) <= KEEP, (
        "bounded however far it falls behind")


def test_members_of_a_group_share_one_frame_and_a_laggard_gets_a_merge() -> None:
    hub = hub_with()
    fast, slow = Recorder(), Recorder()
    for sub in (fast, slow):
        hub.add(sub)
        hub.subscribe(sub, None, frozenset({"OGDC", "PPL"}))
        sub.frames()
    hub.publish([q("OGDC", 101.0, 1), q("OGDC", 102.0, 2)])
    (a,) = fast.outbox.take()
    hub.publish([q("PPL", 50.0, 1)])
    (_second,) = fast.outbox.take()
    (merged,) = slow.frames()
    group = hub.groups[frozenset({"OGDC", "PPL"}), None, 0, PROTOCOL_1]
    assert a is group.generations[0][1], "the frame is shared"
    assert [(x["symbol"], x["seq"]) for x in merged["quotes"]] == [("OGDC", 2), ("PPL", 1)]
    assert len(hub.groups) == 1


def test_wildcard_gets_new_symbols_and_unsubscribing_one_keeps_the_rest() -> None:
    hub = hub_with(q("OGDC", 137.75, 1), q("PPL", 125.05, 1))
    sub = Recorder()
    hub.add(sub)
    hub.subscribe(sub, "w", ALL)
    ack, snapshot = sub.frames()
    assert ack["all"] is True and ack["symbols"] == ["OGDC", "PPL"]
    assert len(snapshot["quotes"]) == 2
    hub.publish([q("HBL", 112.4, 1)])
    (frame,) = sub.frames()
    assert frame["quotes"][0]["symbol"] == "HBL"
    hub.unsubscribe(sub, 3, frozenset({"PPL"}))
    (ack,) = sub.frames()
    assert ack["symbols"] == ["HBL", "OGDC"] and "all" not in ack
    hub.publish([q("PPL", 126.0, 2), q("OGDC", 138.0, 2)])
    (frame,) = sub.frames()
    assert [x["symbol"] for x in frame["quotes"]] == ["OGDC"]


def test_unsubscribe_drops_pending_updates_of_those_symbols() -> None:
    hub = hub_with()
    sub = Recorder()
    hub.add(sub)
    hub.subscribe(sub, None, frozenset({"OGDC", "PPL"}))
    sub.frames()
    hub.publish([q("OGDC", 138.0, 1), q("PPL", 126.0, 1)])
    hub.unsubscribe(sub, 9, frozenset({"PPL"}))
    update, ack = sub.frames()
    assert ack["symbols"] == ["OGDC"]
    assert [x["symbol"] for x in update["quotes"]] == ["OGDC"]
    hub.unsubscribe(sub, 10, ALL)
    hub.publish([q("OGDC", 139.0, 2)])
    assert [f["type"] for f in sub.frames()] == ["ack"]


def test_too_many_symbols_changes_nothing() -> None:
    hub = hub_with()
    sub = Recorder()
    hub.add(sub)
    hub.subscribe(sub, None, frozenset({"A", "B"}))
    sub.frames()
    with pytest.raises(ProtocolError) as info:
        hub.subscribe(sub, 5, frozenset({"C", "D"}))
    assert info.value.code == "too_many_symbols" and info.value.id == 5
    assert hub.subscriptions(sub) == {"A", "B"}


def test_feed_status_reaches_everyone_with_a_snapshot_on_recovery() -> None:
    hub = hub_with(q("OGDC", 137.75, 1))
    hub.set_feed("live")
    sub = Recorder()
    hub.add(sub)
    hub.subscribe(sub, None, frozenset({"OGDC"}))
    sub.frames()
    hub.set_feed("stale")
    (status,) = sub.frames()
    assert status["type"] == "status" and status["feed"] == "stale"
    hub.set_feed("live")
    status, snapshot = sub.frames()
    assert status["feed"] == "live" and snapshot["type"] == "snapshot"


def test_a_client_that_lets_control_frames_pile_up_overflows() -> None:
    hub = hub_with()
    sub = Recorder(max_control=4)
    hub.add(sub)
    for i in range(5):
        hub.subscribe(sub, i, frozenset({"A"}))
    assert sub.overflowed is not None
    assert len(sub.outbox.control) == 4


def test_removed_subscribers_get_nothing_and_leave_no_index() -> None:
    hub = hub_with()
    sub = Recorder()
    hub.add(sub)
    hub.subscribe(sub, None, frozenset({"OGDC"}))
    hub.remove(sub)
    hub.publish([q("OGDC", 1.0, 1)])
    assert hub.by_symbol == {} and hub.members == {} and hub.groups == {}


def test_a_laggard_after_a_reload_gets_the_reloaded_board() -> None:
    hub = hub_with(q("OGDC", 101.0, 1))
    slow = Recorder()
    hub.add(slow)
    hub.subscribe(slow, None, ALL)
    slow.frames()
    for seq in range(2, KEEP + 4):
        hub.publish([q("OGDC", 100 + seq, seq)])
    hub.load([q("OGDC", 99.0, 500)])
    (frame,) = slow.frames()
    assert [(x["symbol"], x["seq"]) for x in frame["quotes"]] == [("OGDC", 500)]


def test_a_reload_never_takes_a_symbol_backwards() -> None:
    """A replica promoted by Sentinel may lack the last writes: what it holds is older
    than what clients were sent, and the board keeps the newer until a newer comes."""
    hub = hub_with(q("OGDC", 101.0, 7), q("PPL", 50.0, 3))
    hub.load([q("OGDC", 100.0, 5), q("PPL", 51.0, 4), q("HBL", 9.0, 1)])
    assert {s: entry[0] for s, entry in hub.board.items()} == {"OGDC": 7, "PPL": 4, "HBL": 1}
    assert hub.publish([q("OGDC", 102.0, 6)]) == 0
    assert hub.publish([q("OGDC", 103.0, 8)]) == 1


# Rated groups (max_hz)


class FakeTimers:
    """A clock and call_later the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.due: list[tuple[float, Any, list[bool]]] = []

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Any) -> Any:
        cancelled = [False]
        self.due.append((self.now + delay, callback, cancelled))

        class Handle:
            def cancel(self) -> None:
                cancelled[0] = True

        return Handle()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        ready = [d for d in self.due if d[0] <= self.now]
        self.due = [d for d in self.due if d[0] > self.now]
        for _, callback, cancelled in ready:
            if not cancelled[0]:
                callback()


def rated_hub(timers: FakeTimers, default_hz: float | None = 50.0) -> Hub:
    return Hub(max_symbols=3, default_hz=default_hz, clock=timers.clock,
               call_later=timers.call_later)


def quotes_of(frames: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(x["symbol"], x["seq"]) for f in frames if f["type"] == "quotes" for x in f["quotes"]]


def test_a_rated_group_seals_at_most_once_per_interval_and_never_later() -> None:
    timers = FakeTimers()
    hub = rated_hub(timers)
    slow, fast = Recorder(), Recorder()
    for sub, hz in ((slow, 2.0), (fast, None)):
        hub.add(sub)
        hub.subscribe(sub, 1, frozenset({"OGDC"}), hz)
    assert orjson.loads(slow.outbox.take()[0])["max_hz"] == 2
    assert orjson.loads(fast.outbox.take()[0])["max_hz"] == 50
    hub.publish([q("OGDC", 101.0, 1)])  # after a quiet spell: at once
    assert quotes_of(slow.frames()) == [("OGDC", 1)]
    assert quotes_of(fast.frames()) == [("OGDC", 1)]
    for seq in range(2, 6):  # within the 0.5 s: conflated, held back
        timers.advance(0.1)
        hub.publish([q("OGDC", 100.0 + seq, seq)])
        assert quotes_of(fast.frames()) == [("OGDC", seq)], "the default is not held back"
        assert slow.frames() == []
    timers.advance(0.1)  # 0.5 s since the last seal: the timer seals the latest
    assert quotes_of(slow.frames()) == [("OGDC", 5)]
    assert timers.due == []
    timers.advance(0.3)
    hub.publish([q("OGDC", 106.0, 6)])
    assert slow.frames() == []
    timers.advance(0.2)
    assert quotes_of(slow.frames()) == [("OGDC", 6)]


def test_members_of_a_rated_group_share_its_frame_and_other_frames_are_not_held() -> None:
    timers = FakeTimers()
    hub = rated_hub(timers)
    a, b = Recorder(), Recorder()
    for sub in (a, b):
        hub.add(sub)
        hub.subscribe(sub, None, ALL, 4.0)
        sub.frames()
    assert len(hub.groups) == 1
    hub.publish([q("OGDC", 101.0, 1)])
    (fa,) = a.outbox.take()
    (fb,) = b.outbox.take()
    assert fa is fb, "one prepared frame for every member"
    hub.publish([q("OGDC", 102.0, 2)])  # held for 250 ms
    hub.subscribe(a, 5, frozenset({"PPL"}))  # under "*": an ack, never held back
    assert [f["type"] for f in a.frames()] == ["ack"]
    hub.set_feed("live")
    assert [f["type"] for f in b.frames()] == ["status", "snapshot"]
    timers.advance(0.25)
    assert quotes_of(a.frames()) == [("OGDC", 2)]


def test_a_rate_alone_moves_the_member_and_loses_nothing_held() -> None:
    timers = FakeTimers()
    hub = rated_hub(timers)
    sub = Recorder()
    hub.add(sub)
    hub.subscribe(sub, 1, frozenset({"OGDC", "PPL"}), 1.0)
    sub.frames()
    hub.publish([q("OGDC", 101.0, 1)])
    hub.publish([q("OGDC", 102.0, 2), q("PPL", 50.0, 1)])  # held in the 1 Hz group
    assert quotes_of(sub.frames()) == [("OGDC", 1)]
    hub.subscribe(sub, 2, frozenset(), 10.0)  # only a new rate
    held, ack = sub.frames()
    assert ack["type"] == "ack" and ack["max_hz"] == 10 and ack["symbols"] == ["OGDC", "PPL"]
    assert quotes_of([held]) == [("OGDC", 2), ("PPL", 1)], "what was held goes first"
    assert [key for key in hub.groups] == [(frozenset({"OGDC", "PPL"}), 10.0, 0, PROTOCOL_1)]
    assert timers.due and all(c[2][0] for c in timers.due), "the old group's timer is cancelled"
    hub.subscribe(sub, 3, frozenset({"OGDC"}))  # no max_hz: the rate stays
    assert sub.frames()[0]["max_hz"] == 10
    hub.subscribe(sub, 4, frozenset(), 50.0)  # the default's rate: back in the default group
    assert sub.frames()[0]["max_hz"] == 50
    assert [key for key in hub.groups] == [(frozenset({"OGDC", "PPL"}), None, 0, PROTOCOL_1)]
    hub.remove(sub)
    assert hub.groups == {} and hub.rates == {} and hub.everyone == []


def test_leaving_a_rated_star_keeps_what_it_held_for_the_rest() -> None:
    timers = FakeTimers()
    hub = rated_hub(timers)
    sub = Recorder()
    hub.add(sub)
    hub.publish([q("OGDC", 101.0, 1), q("PPL", 50.0, 1)])
    hub.subscribe(sub, 1, ALL, 2.0)
    sub.frames()
    hub.publish([q("OGDC", 102.0, 2), q("PPL", 51.0, 2)])
    assert quotes_of(sub.frames()) == [("OGDC", 2), ("PPL", 2)]
    hub.publish([q("OGDC", 103.0, 3), q("PPL", 52.0, 3)])  # held
    hub.unsubscribe(sub, 2, frozenset({"PPL"}))
    assert quotes_of(sub.frames()) == [("OGDC", 3)]
    timers.advance(1)
    assert sub.frames() == []


def test_without_a_cap_every_rate_is_its_own_group() -> None:
    timers = FakeTimers()
    hub = rated_hub(timers, default_hz=None)
    sub = Recorder()
    hub.add(sub)
    hub.subscribe(sub, 1, frozenset({"OGDC"}))
    assert "max_hz" not in sub.frames()[0]
    hub.subscribe(sub, 2, frozenset(), 50.0)
    assert sub.frames()[0]["max_hz"] == 50
    assert list(hub.groups) == [(frozenset({"OGDC"}), 50.0, 0, PROTOCOL_1)]


def test_phase_offsets_stay_evenly_spread_however_many_there_are() -> None:
    assert [spread(n) for n in range(8)] == [0, 0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]
    for count in (2, 3, 5, 8, 13):
        offsets = sorted(spread(n) for n in range(count))
        gaps = [b - a for a, b in zip(offsets, [*offsets[1:], 1.0], strict=True)]
        assert max(gaps) <= 2 * min(gaps) + 1e-9, (count, offsets)


def test_a_rated_group_seals_on_its_slots_one_interval_apart() -> None:
    group = Group(ALL, {}, 4.0, phase=1)  # slots at 0.125 s past each quarter second
    assert group.next_slot(100.0) == pytest.approx(100.125)
    assert group.next_slot(100.125) == pytest.approx(100.125)
    group.last_seal = 100.125
    assert group.next_slot(100.13) == pytest.approx(100.375), "one interval after the last"
    assert group.next_slot(101.0) == pytest.approx(101.125), "after a quiet spell: its next slot"


def test_a_large_rated_group_grows_phases_that_seal_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "PHASE_MEMBERS", 2)
    timers = FakeTimers()
    hub = rated_hub(timers)
    subs = [Recorder() for _ in range(5)]
    for sub in subs:
        hub.add(sub)
        hub.subscribe(sub, None, ALL, 4.0)
        sub.frames()
    phases = {key[2]: len(g.members) for key, g in hub.groups.items()}
    assert phases == {0: 2, 1: 2, 2: 1}, "a new phase only when every phase is full"
    hub.subscribe(subs[0], 9, ALL, 4.0)  # the same subscription and rate: it stays put
    assert subs[0] in hub.groups[ALL, 4.0, 0, PROTOCOL_1].members
    subs[0].frames()
    hub.publish([q("OGDC", 101.0, 1)])  # at 1000.0: phase 0's slot, the others later
    got = {i for i, sub in enumerate(subs) if sub.frames()}
    assert got == {i for i, sub in enumerate(subs) if sub in hub.groups[ALL, 4.0, 0, PROTOCOL_1].members}
    timers.advance(0.0625)  # phase 2's slot (a quarter of the interval)
    timers.advance(0.0625)  # phase 1's (half of it)
    assert all(quotes_of(sub.frames()) == [("OGDC", 1)] for i, sub in enumerate(subs)
               if i not in got), "every phase carries the same quotes"
    for sub in subs:
        hub.remove(sub)
    assert hub.groups == {} and hub.everyone == []


class LaneMember(Recorder):
    """A subscriber with a transport of its own: what is written, what stays buffered."""

    def __init__(self) -> None:
        super().__init__()
        self.wire: list[bytes] = []
        self.buffered = 0
        self.closing = False
        self.writer = (self.wire.append, lambda: self.closing, lambda: self.buffered)

    def wake(self) -> None:  # as Connection.wake does when the transport takes it all
        super().wake()
        for frame in self.outbox.take():
            self.wire.append(wire_of(frame))
        if not self.buffered:
            self.outbox.enter_lane(self, self.writer)

    def texts(self) -> list[dict[str, Any]]:
        out = [orjson.loads(w[w.index(b"{"):]) for w in self.wire]
        self.wire.clear()
        return out


def test_a_member_that_keeps_up_is_written_by_the_group_and_counted() -> None:
    hub = hub_with(q("OGDC", 100.0, 1))
    sub = LaneMember()
    hub.add(sub)
    hub.subscribe(sub, 1, ALL)
    sub.wake()
    assert [f["type"] for f in sub.texts()] == ["ack", "snapshot"]
    group = hub.groups[ALL, None, 0, PROTOCOL_1]
    assert sub in group.lane
    wakes = sub.wakes
    for seq in (2, 3, 4):
        hub.publish([q("OGDC", 100.0 + seq, seq), q("PPL", 50.0, seq)])
    assert sub.wakes == wakes, "the lane is written without waking the member"
    assert quotes_of(sub.texts()) == [("OGDC", 2), ("PPL", 2), ("OGDC", 3), ("PPL", 3),
                                      ("OGDC", 4), ("PPL", 4)]
    assert (sub.outbox.frames_taken, sub.outbox.quotes_taken) == (2 + 3, 6)  # snapshots: control
    assert not sub.outbox, "nothing waits while in the lane"
    sub.outbox.put_control('{"type":"pong"}')  # a control frame: out of the lane first
    assert sub not in group.lane and sub.outbox
    hub.publish([q("OGDC", 105.0, 5)])  # so the group wakes it instead of writing past it
    assert [f["type"] for f in sub.texts()] == ["pong", "quotes"]
    assert sub in group.lane, "back in once it has written everything"
    hub.remove(sub)
    assert hub.stats["retired_frames_sent"] == 7 and hub.stats["retired_quotes_sent"] == 7


def test_a_member_whose_transport_still_buffers_falls_out_and_loses_nothing() -> None:
    hub = hub_with(q("OGDC", 100.0, 1))
    sub, other = LaneMember(), LaneMember()
    for s in (sub, other):
        hub.add(s)
        hub.subscribe(s, None, ALL)
        s.wake()
        s.texts()
    group = hub.groups[ALL, None, 0, PROTOCOL_1]
    sub.buffered = 4096  # the peer stopped reading: bytes of the last frame still wait
    sub.wake = lambda: Recorder.wake(sub)  # type: ignore[method-assign]  # and so it is woken
    hub.publish([q("OGDC", 101.0, 2)])
    assert sub not in group.lane and other in group.lane
    assert sub.wire == [] and sub.wakes >= 1
    assert quotes_of(other.texts()) == [("OGDC", 2)]
    hub.publish([q("OGDC", 102.0, 3)])
    (frame,) = sub.frames()  # what it missed, merged: latest per symbol, nothing lost
    assert quotes_of([frame]) == [("OGDC", 3)]
    assert (sub.outbox.frames_taken, sub.outbox.quotes_taken) == (3, 1)  # ack, snapshot, merged


def test_a_closing_transport_leaves_the_lane() -> None:
    hub = hub_with(q("OGDC", 100.0, 1))
    sub = LaneMember()
    hub.add(sub)
    hub.subscribe(sub, None, ALL)
    sub.wake()
    sub.texts()
    sub.closing = True
    sub.wake = lambda: Recorder.wake(sub)  # type: ignore[method-assign]
    hub.publish([q("OGDC", 101.0, 2)])
    assert sub.wire == [] and sub not in hub.groups[ALL, None, 0, PROTOCOL_1].lane
