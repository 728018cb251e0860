"""Replaying a file of quotes: publish the good lines in file order, report the bad ones.

Lines are read and parsed in a thread as they arrive and published from the event loop,
each publish taking what is already waiting (up to a chunk): a line piped in from a live
feed goes out at once, a file goes in chunks, neither sits in memory whole (the reader
stays at most two chunks ahead), and one bad line never holds back the good lines
around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from quote_core.quote import Quote
from quote_sim.sink import QuoteSink

from .lines import LineError, parse_stream

log = logging.getLogger("publisher.replay")

CHUNK = 500


@dataclass(frozen=True, slots=True)
class ReplayResult:
    published: int
    rejected: int


class _Failed:
    """Reading failed in the thread: re-raised where the caller awaits."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


async def replay(sink: QuoteSink, lines: Iterable[str], *, chunk: int = CHUNK) -> ReplayResult:
    """A sink failure propagates (after what was already published stays published):
    a replay is a one-shot job and its caller decides what a partial run means."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[object] = asyncio.Queue()
    room = threading.Semaphore(2 * chunk)

    def hand(item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the replay was stopped
            loop.call_soon_threadsafe(ready.put_nowait, item)

    def read() -> None:
        try:
            for _, item in parse_stream(lines):
                room.acquire()
                hand(item)
        except Exception as exc:  # an unreadable input: the replay's error, not the thread's
            hand(_Failed(exc))
        else:
            hand(_DONE)

    # A daemon: a replay stopped by a signal must not wait for a read of an open pipe.
    threading.Thread(target=read, name="replay-reader", daemon=True).start()
    published = rejected = 0
    done = False
    while not done:
        batch: list[Quote] = []
        item = await ready.get()
        while True:
            if item is _DONE:
                done = True
                break
            if isinstance(item, _Failed):
                raise item.exc
            room.release()
            if isinstance(item, LineError):
                rejected += 1
                log.warning("rejected %s", item)
            else:
                assert isinstance(item, Quote)
                batch.append(item)
            if len(batch) >= chunk or ready.empty():
                break
            item = ready.get_nowait()
        if batch:
            published += len(await sink.publish(batch))
    return ReplayResult(published, rejected)
