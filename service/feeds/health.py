"""Is the feed live? Decided from what the Redis edge observed (sans I/O).

Two things can fail separately: the broker (connection lost, or frozen: TCP open, nothing
flows, which only a probe that travels through pub/sub reveals) and the publisher (Redis
fine, nobody publishing). Either makes the feed stale.
"""

from __future__ import annotations

from typing import Any, Literal


class FeedHealth:
    def __init__(self, silence_s: float, probe_timeout_s: float) -> None:
        self.silence_s = silence_s
        self.probe_timeout_s = probe_timeout_s
        self.connected = False
        self.last_heard = 0.0
        self.last_probe_back = 0.0
        self.probe_rtt_s: float | None = None

    def connected_at(self, now: float) -> None:
        """A fresh subscription: give the publisher and the probe their full allowance."""
        self.connected = True
        self.last_heard = self.last_probe_back = now

    def lost(self) -> None:
        self.connected = False
        self.probe_rtt_s = None

    def heard(self, now: float) -> None:
        """A quote or a publisher heartbeat arrived."""
        self.last_heard = now

    def probe_returned(self, sent_at: float, now: float) -> None:
        self.last_probe_back = now
        self.probe_rtt_s = now - sent_at

    def watcher_late(self, late_s: float) -> None:
        """The watcher woke `late_s` after it meant to: the event loop was held up (a
        reconnect storm's handshakes, a stopped process), and the listener that reads the
        probe back had no more turns than the watcher. That time is not the broker's, so the
        probe's allowance moves on by it: otherwise a busy process calls a healthy Redis
        lost, sends every client stale, live and a fresh snapshot, and is busier still."""
        if late_s > 0:
            self.last_probe_back += late_s

    def probe_overdue(self, now: float) -> bool:
        return self.connected and now - self.last_probe_back > self.probe_timeout_s

    def silent(self, now: float) -> bool:
        return self.silence_s > 0 and now - self.last_heard > self.silence_s

    def state(self, now: float) -> Literal["live", "stale"]:
        return "live" if self.connected and not self.silent(now) else "stale"

    def report(self, now: float) -> dict[str, Any]:
        return {
            "redis": "connected" if self.connected else "lost",
            "probe_rtt_ms": None if self.probe_rtt_s is None else round(self.probe_rtt_s * 1000, 2),
            "last_heard_s_ago": round(now - self.last_heard, 3) if self.connected else None,
            "publisher": "silent" if self.silent(now) else "heard",
        }
