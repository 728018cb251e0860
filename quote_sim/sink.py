"""Where published quotes go: Redis for real, or the service's embedded broker for the demo.

Both assign each quote its per-symbol `seq`, so the simulation and replay loops run
unchanged against either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from quote_core.quote import Quote


class SinkRefused(Exception):
    """A failure retrying cannot fix (Redis refusing the publisher): the simulation stops
    on it instead of retrying, and its caller decides what to do."""


class QuoteSink(Protocol):
    async def publish(self, quotes: Sequence[Quote]) -> list[Quote]:
        """Publish in order; return the same quotes with `seq` set. Raises on failure
        (nothing of a failed call may be assumed published); SinkRefused if retrying
        cannot fix it."""
        ...
