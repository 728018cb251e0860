"""Replaying a file of quotes: publish the good lines in file order, report the bad ones.

Lines are parsed lazily and published in chunks, so a large file or an endless stdin
never sits in memory whole, and one bad line never holds back the good lines around it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from quote_client.quote import Quote

from .lines import LineError, parse_stream
from .sink import QuoteSink

log = logging.getLogger("publisher.replay")

CHUNK = 500


@dataclass(frozen=True, slots=True)
class ReplayResult:
    published: int
    rejected: int


async def replay(sink: QuoteSink, lines: Iterable[str], *, chunk: int = CHUNK) -> ReplayResult:
    """A sink failure propagates (after what was already published stays published):
    a replay is a one-shot job and its caller decides what a partial run means."""
    published = rejected = 0
    batch: list[Quote] = []
    for _, item in parse_stream(lines):
        if isinstance(item, LineError):
            rejected += 1
            log.warning("rejected %s", item)
            continue
        batch.append(item)
        if len(batch) >= chunk:
            published += len(await sink.publish(batch))
            batch = []
    if batch:
        published += len(await sink.publish(batch))
    return ReplayResult(published, rejected)
