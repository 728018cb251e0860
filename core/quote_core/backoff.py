"""Reconnect delays, shared by everything that retries (service, publisher, clients)."""

from __future__ import annotations

import random


def backoff(attempt: int, cap: float, base: float = 0.2) -> float:
    """Exponential back-off with full jitter: many processes that lost the same peer do
    not come back in lockstep."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 32)))
