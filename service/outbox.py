"""Shared pending quotes and per-client outbound state, bounded whatever clients do (sans I/O).

Clients with the same subscription (most often `*`) form a `Group`. A batch of quotes is
conflated into the group once (latest per symbol) and sealed as one *generation* whose
frame text is built once; every member then sends that same string. A member that fell
behind merges the generations it missed, latest per symbol, or past `KEEP` generations
gets its symbols' latest state: a slow reader costs at most one entry per symbol, never a
growing queue (measured under uvicorn: a plain send loop stalled all 99 other clients about 2 s
after one stopped reading), and a fast one costs no work per quote at all.

A group may have a rate (`max_hz`, the members' most `quotes` frames a second): it then
seals at most once per `interval`, on slots `interval` apart. Quotes keep conflating in
`dirty` meanwhile, and the hub seals the group at its next slot, so no quote waits longer
than the interval. All the sharing above is kept: the members of a 4 Hz group get one
shared frame per 250 ms. A large rated group is split into phases (hub.py), whose slots are
spread over the interval so that their seals, each a burst of writes, do not coincide.

A member that keeps up joins its group's *lane*: it gave the group its writer (write,
is-closing and bytes-buffered callables of its transport), and each seal writes the frame to
every writer in the lane in one tight loop, touching nothing else of the member. At ten
thousand viewers touching each member's Python objects cost as much as the write itself
(bench/viewers.py). A member leaves the lane the moment anything else is due (a control
frame, a move, a close) or its transport still holds bytes of an earlier frame, and is then
served through `take` as before; its counters and position are settled on leaving.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .compact import Entry, Reference
from .protocol import ALL, Symbols
from .wire import DEFLATE_MIN_BYTES, Frame, Prepared

KEEP = 32

# How a client's frames of quotes are written: (compact, deflate). Compact: the encoding
# of service/compact.py, not protocol 1's; deflate: it negotiated permessage-deflate, and
# shared frames may go compressed. Clients of one form share groups, and their frames.
Form = tuple[bool, bool]
PROTOCOL_1: Form = (False, False)

# A member's transport as the lane uses it: write(bytes), is_closing(), and the bytes it
# still buffers (get_write_buffer_size).
Writer = tuple[Callable[[bytes], Any], Callable[[], bool], Callable[[], int]]


class Group:
    __slots__ = ("board", "compact", "conflated", "deflate_from", "dirty", "form", "gen",
                 "generations", "hz", "interval", "key", "lane", "last_seal", "members",
                 "offset", "phase", "reference", "sealed_quotes", "timer")

    def __init__(self, key: Symbols, board: Mapping[str, Entry],
                 hz: float | None = None, phase: int = 0, form: Form = PROTOCOL_1,
                 deflate_min_bytes: int = DEFLATE_MIN_BYTES) -> None:
        self.key = key
        self.board = board
        self.form = form
        self.compact = form[0]
        # Its frames from this many bytes go compressed (0: none).
        self.deflate_from = deflate_min_bytes if form[1] else 0
        # What the members hold, that compact frames are deltas against.
        self.reference = Reference() if self.compact else None
        # None: seal with every batch (the fan-out's own pace, FANOUT_INTERVAL_MS).
        self.hz = hz
        self.interval = 0.0 if hz is None else 1.0 / hz
        self.phase = phase
        self.offset = spread(phase) * self.interval
        self.last_seal = -math.inf
        # The hub's pending seal of a rated group (a timer handle), if one is due.
        self.timer: Any = None
        self.members: set[Any] = set()
        # Members that keep up -> their writer (see Outbox.enter_lane).
        self.lane: dict[Any, Writer] = {}
        self.sealed_quotes = 0  # quotes in all generations sealed so far
        # symbol -> the board's entry of its latest quote not sealed yet.
        self.dirty: dict[str, Entry] = {}
        self.generations: deque[tuple[dict[str, Entry], Prepared]] = deque(maxlen=KEEP)
        self.gen = 0
        self.conflated = 0

    def next_slot(self, now: float) -> float:
        """When a rated group may seal next: its first slot at or after `now` and at least
        one interval after the last seal (slots are `offset` plus whole intervals)."""
        earliest = max(now, self.last_seal + self.interval)
        # The tolerance keeps a slot computed from a slot on the same slot.
        slots = math.ceil((earliest - self.offset) / self.interval - 1e-6)
        return self.offset + slots * self.interval

    def put(self, symbol: str, entry: Entry) -> None:
        """A quote as the board holds it, the same tuple, so nothing is built per quote
        here."""
        dirty = self.dirty
        if symbol in dirty:
            self.conflated += 1
            del dirty[symbol]  # re-inserted: the frame lists symbols in the order they changed
        dirty[symbol] = entry

    def seal(self) -> bool:
        """Close the batch as a generation; False if it held nothing."""
        if not self.dirty:
            return False
        reference = self.reference
        text = None if reference is None else reference.encode(self.dirty)
        frame = Prepared("quotes", self.dirty, text, self.compact, self.deflate_from)
        self.generations.append((self.dirty, frame))
        self.sealed_quotes += len(self.dirty)
        self.dirty = {}
        self.gen += 1
        return True

    def write_lane(self) -> None:
        """Write the newest frame to every member in the lane. One whose transport still
        buffers an earlier frame (or is closing, or fails) leaves the lane without it, and
        is then woken with the members outside."""
        wire = self.generations[-1][1].wire
        fell: list[Any] = []
        for sub, (write, closing, buffered) in self.lane.items():
            try:
                if buffered() or closing():
                    fell.append(sub)
                else:
                    write(wire)
            except (RuntimeError, OSError):  # a transport gone under us
                fell.append(sub)
        for sub in fell:
            sub.outbox.leave_lane(seen=self.gen - 1)

    def since(self, pos: int, within: Iterable[str] | None = None, merge: bool = False
              ) -> tuple[Frame | None, int]:
        """The frame for a member that has seen generations up to `pos`, and how many
        quotes it holds. `within` limits it to those symbols (a member leaving), and then
        also gives what the group holds unsealed: the member will not see that seal.
        `merge`: a frame of its own even when the newest generation's would do."""
        behind = self.gen - pos
        held = self.dirty if within is not None else None
        if behind <= 0 and not held:
            return None, 0
        if behind == 1 and within is None and not merge:
            quotes, frame = self.generations[-1]
            return frame, len(quotes)
        merged = self._missed(behind) if behind > 0 else {}
        if held:
            merged.update(held)
        if within is not None:
            keep = set(within)
            merged = {s: q for s, q in merged.items() if s in keep}
        if not merged:
            return None, 0
        return Frame("quotes", merged, compact=self.compact), len(merged)

    def joined(self) -> None:
        """A member now holds the board's latest of every symbol (it joined, or got a
        snapshot): compact frames may no longer be deltas against an older state of
        those pending."""
        if self.reference is not None:
            self.reference.joined(self.dirty)

    def forget(self) -> None:
        """The board was replaced under the group: nothing is a delta against it now."""
        if self.reference is not None:
            self.reference.forget()

    def _missed(self, behind: int) -> dict[str, Entry]:
        """The latest of each symbol in the last `behind` generations."""
        if behind <= len(self.generations):
            missed = list(self.generations)[-behind:]
            merged: dict[str, Entry] = {}
            for quotes, _ in missed:
                merged.update(quotes)
            self.conflated += sum(len(quotes) for quotes, _ in missed) - len(merged)
            return merged
        # Too far behind to merge: the latest state of every symbol is what it needs. That
        # is newer than the group's last seal for the symbols pending: no deltas on those.
        self.joined()
        symbols = self.board.keys() if self.key == ALL else self.key
        return {s: self.board[s] for s in symbols if s in self.board}


def spread(phase: int) -> float:
    """Phase n's offset as a fraction of the interval: 0, 1/2, 1/4, 3/4, 1/8... (bits of n
    reversed), so however many phases there are, their slots stay evenly spread."""
    fraction, scale = 0.0, 0.5
    while phase:
        if phase & 1:
            fraction += scale
        phase >>= 1
        scale /= 2
    return fraction


class OutboxFull(Exception):
    """The client let too many control frames pile up: it is not reading."""


# The most quotes in one every-mode frame: a recovery of thousands goes out as several
# frames, each well under a client library's default message limit (1 MiB in websockets).
EVERY_FRAME_QUOTES = 256


class EveryQueue:
    """An every-mode client's quotes not yet written, in order, bounded in bytes.

    Nothing is conflated here, so the bound is what protects the process: past `limit`
    bytes the client is not keeping up and is closed (4008). A recovery's backlog is
    bounded by MAX_RECOVERY instead and raises the allowance by its own size, so the
    client is judged on what piles up after it."""

    __slots__ = ("allowance", "compact", "limit", "quotes", "size")

    def __init__(self, limit: int, compact: bool = False) -> None:
        self.limit = limit
        self.compact = compact
        # (symbol, seq, JSON) in order: the frames built from them carry the seqs (wire.py).
        self.quotes: list[tuple[str, int, str]] = []
        self.size = 0
        self.allowance = 0

    def put(self, symbol: str, seq: int, quote_json: str, *, backlog: bool = False) -> None:
        self.quotes.append((symbol, seq, quote_json))
        self.size += len(quote_json)
        if backlog:
            self.allowance += len(quote_json)
        elif self.size > self.limit + self.allowance:
            raise OutboxFull(f"{self.size} bytes of quotes unsent (EVERY_QUEUE_BYTES="
                             f"{self.limit})")

    def take(self) -> list[Frame]:
        quotes, self.quotes = self.quotes, []
        self.size = self.allowance = 0
        return [Frame("quotes", quotes[i : i + EVERY_FRAME_QUOTES], compact=self.compact)
                for i in range(0, len(quotes), EVERY_FRAME_QUOTES)]


class Outbox:
    """One client's unsent frames: control frames in order (a snapshot among them), then
    its group's generations or its every-mode quotes."""

    __slots__ = ("_frames", "_quotes", "control", "every", "form", "group", "lane_quotes",
                 "max_control", "merge", "owner", "pos")

    def __init__(self, max_control: int = 64, form: Form = PROTOCOL_1) -> None:
        self.form = form
        # The next generations come merged, in full (merge_next).
        self.merge = False
        self.control: list[str | Frame] = []
        self.max_control = max_control
        self.group: Group | None = None
        self.pos = 0
        # Every mode: the quotes due, in order (the client is then in no group).
        self.every: EveryQueue | None = None
        # In the group's lane: the group's sealed_quotes when it joined (else None), and
        # the subscriber it is the outbox of (the lane's key).
        self.lane_quotes: int | None = None
        self.owner: Any = None
        # Plain counters, read by /metrics at scrape time: nothing on the hot path locks.
        self._frames = 0
        self._quotes = 0

    @property
    def frames_taken(self) -> int:
        group = self.group
        if self.lane_quotes is not None and group is not None:
            return self._frames + group.gen - self.pos
        return self._frames

    @property
    def quotes_taken(self) -> int:
        group = self.group
        if self.lane_quotes is not None and group is not None:
            return self._quotes + group.sealed_quotes - self.lane_quotes
        return self._quotes

    def __bool__(self) -> bool:
        if self.lane_quotes is not None:
            return False  # in the lane, nothing waits: anything due takes it out
        return (bool(self.control) or (self.group is not None and self.pos < self.group.gen)
                or (self.every is not None and bool(self.every.quotes)))

    def enter_lane(self, owner: Any, writer: Writer) -> None:
        """Have the group write its frames to `writer` from now on; only when caught up
        with nothing due (the caller has just written everything, and it all left)."""
        group = self.group
        if (group is None or self.lane_quotes is not None or self.control
                or self.pos != group.gen):
            return
        group.lane[owner] = writer
        self.owner = owner
        self.lane_quotes = group.sealed_quotes

    def leave_lane(self, seen: int | None = None) -> None:
        """Out of the lane, having been written every generation up to `seen` (None: all
        sealed so far); what comes after is taken as usual."""
        group = self.group
        if self.lane_quotes is None or group is None:
            return
        del group.lane[self.owner]
        missed = 0
        if seen is None or seen >= group.gen:
            seen = group.gen
        else:  # seen == gen - 1: the newest was not written
            missed = len(group.generations[-1][0])
        self._frames += seen - self.pos
        self._quotes += group.sealed_quotes - missed - self.lane_quotes
        self.pos = seen
        self.lane_quotes = None
        self.owner = None

    def merge_next(self) -> None:
        """Take the generations not taken yet as one frame of full quotes, not as the
        group's own: a compact member got a snapshot, newer than what the group's deltas
        are against (service/compact.py)."""
        self.leave_lane()
        self.merge = True

    def put_control(self, frame: str | Frame) -> None:
        self.leave_lane()  # the group must not write past it
        if len(self.control) >= self.max_control:
            raise OutboxFull(f"{len(self.control)} control frames unsent")
        self.control.append(frame)

    def join(self, group: Group | None, keep: Iterable[str] = ()) -> None:
        """Move to another group. Updates still unsent for symbols in `keep` go out first,
        as a control frame, so nothing the client still wants is lost in the move."""
        self.leave_lane()
        old = self.group
        if old is not None and keep:
            frame, count = old.since(self.pos, within=keep)
            if frame is not None:
                self.put_control(frame)
                self._quotes += count
        self.group = group
        self.pos = group.gen if group is not None else 0

    def take_shared(self) -> Prepared | None:
        """The group's newest frame when it is all that is due, as it is for a member that
        keeps up: the fan-out's common case, without the list `take` builds."""
        group = self.group
        if (self.lane_quotes is not None or self.control or group is None
                or self.pos != group.gen - 1):
            return None
        quotes, frame = group.generations[-1]
        self.pos = group.gen
        self._frames += 1
        self._quotes += len(quotes)
        return frame

    def take(self) -> list[str | Frame]:
        """Everything due, in order: control frames first, then one frame of quotes."""
        self.leave_lane()
        frames = self.control
        self.control = []
        group = self.group
        if group is not None and self.pos < group.gen:
            frame, count = group.since(self.pos, merge=self.merge)
            self.pos = group.gen
            if frame is not None:
                frames.append(frame)
                self._quotes += count
        every = self.every
        if every is not None and every.quotes:
            self._quotes += len(every.quotes)
            frames += every.take()
        self.merge = False
        self._frames += len(frames)
        return frames
