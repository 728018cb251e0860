"""Prometheus metrics: one scrape of any worker answers for the whole host.

Counters on the fan-out path are plain integers kept by the hub and each outbox, so the
hot path never takes a metrics lock. `sync` copies them into prometheus-client metrics:
at every scrape, and with WORKERS > 1 also every second, because then the values live in
prometheus-client's multiprocess files (PROMETHEUS_MULTIPROC_DIR, set up by the
supervisor) and a scrape of one worker reads every worker's files. A worker that dies
leaves its counters there (totals never go backwards; up to a second of its last counts
is lost) while the supervisor removes its gauges (connections and the like are summed
over live workers only).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter as Tally
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from quote_core.quote import Quote, now_ms

from .hub import Figures

if TYPE_CHECKING:
    from .engine import Engine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_INTERVAL_S = 1.0

# name -> (help, how workers combine in multiprocess mode)
_GAUGES = {
    "connections": ("Open websocket connections and SSE streams.", "livesum"),
    "subscriptions": ("Symbols subscribed, summed over connections ('*' counts once).", "livesum"),
    "groups": ("Groups (a subscription at a rate, large rated ones in phases); members of one "
               "share every frame.", "livesum"),
    "symbols": ("Symbols on the board (the most any worker holds).", "livemax"),
    "feed_live": ("1 while the feed is live on every worker, 0 while stale on any.", "livemin"),
    "workers": ("Worker processes serving.", "livesum"),
    "every_subscribers": ("Connections subscribed in every mode (every quote, none conflated).",
                          "livesum"),
}

# name -> help: per worker process ("liveall": with WORKERS > 1 each live worker's value
# under its `pid` label), so that a soak (bench/soak.py) can tell one worker's leak from
# the host's sums.
_WORKER_GAUGES = {
    "worker_connections": "Open websockets and SSE streams of this worker.",
    "worker_members": "Hub members of this worker, every tier (a live client is one).",
    "worker_groups": "Hub groups of this worker, every tier.",
    "worker_tasks": "asyncio tasks of this worker, counted once a second by its sweeper.",
}

# name -> help; each is read from the hub's stats or the outboxes (`_counter_values`)
_COUNTERS = {
    "quotes_received": "Quotes taken from the feed and fanned out.",
    "quotes_stale_dropped": "Quotes dropped: seq not newer than held.",
    "feed_junk_dropped": "Unparseable or invalid payloads dropped from Redis.",
    "redis_reconnects": "Times the Redis subscription was lost and retried.",
    "slow_client_disconnects": "Clients closed (4008) for not reading.",
    "frames_sent": "Websocket frames sent to clients.",
    "quotes_sent": "Quote entries sent to clients in `quotes` frames.",
    "quotes_conflated": "Updates replaced by a newer one before they were sent.",
    "every_recovered_quotes": "Quotes read from the tape to answer a subscribe's `since`.",
    "every_filled_quotes": "Quotes read from the tape to fill what pub/sub missed, in every mode.",
}
# Connections turned away, by reason (label) -> the hub's stats key.
_REFUSED = {"capacity": "connections_refused", "origin": "refused_origin",
            "per_address": "refused_per_address", "address_rate": "refused_address_rate"}
_STATS = {"quotes_received": "quotes_in", "quotes_stale_dropped": "quotes_stale_dropped",
          "feed_junk_dropped": "junk_dropped", "redis_reconnects": "redis_reconnects",
          "slow_client_disconnects": "slow_consumer_closed",
          "every_recovered_quotes": "every_recovered_quotes",
          "every_filled_quotes": "every_filled_quotes"}


class Metrics:
    def __init__(self, service: Engine) -> None:
        self.service = service
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.gauges = {name: Gauge(f"quote_service_{name}", help_text, registry=registry,
                                   multiprocess_mode=mode)  # type: ignore[arg-type]
                       for name, (help_text, mode) in _GAUGES.items()}
        self.gauges.update({name: Gauge(f"quote_service_{name}", help_text, registry=registry,
                                        multiprocess_mode="liveall")
                            for name, help_text in _WORKER_GAUGES.items()})
        self.counters = {name: Counter(f"quote_service_{name}", help_text, registry=registry)
                         for name, help_text in _COUNTERS.items()}
        self.refused = Counter(
            "quote_service_connections_refused",
            "Websockets and SSE streams turned away, by reason: capacity (MAX_CONNECTIONS or "
            "MAX_CONNECTS_PER_S: close 1013, SSE 503), origin (ALLOWED_ORIGINS: HTTP 403), "
            "per_address (MAX_CONNECTIONS_PER_IP: close 1008, SSE 429), address_rate "
            "(MAX_CONNECTS_PER_IP_PER_S: close 1013, SSE 503).",
            ["reason"], registry=registry)
        for reason in _REFUSED:
            self.refused.labels(reason)
        self.client_errors = Counter("quote_service_client_errors", "Error frames sent, by code.",
                                     ["code"], registry=registry)
        self.feed_lag = Histogram(
            "quote_service_feed_lag_seconds", "Age of a quote when the service fans it out (now - ts).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.fanout = Histogram(
            "quote_service_fanout_seconds", "Time to fan one batch out to every subscriber's outbox.",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
            registry=registry,
        )
        # What each counter was last advanced to: counters only take increments.
        self._pushed: dict[str, float] = {}
        self._last_sync = 0.0
        # Counted by the sweeper (`tick`), not by a scrape, whose own task would count.
        self._tasks = 0
        service.hub.observer = self.observe

    def observe(self, quotes: Sequence[Quote], seconds: float) -> None:
        self.fanout.observe(seconds)
        now = now_ms()
        for quote in quotes:
            self.feed_lag.observe(max(0, now - quote.ts) / 1000)

    def _counter_values(self, figures: list[Figures]) -> dict[str, float]:
        # What clients were sent counts in every tier; what came from the feed, once.
        stats: Tally[str] = Tally()
        for tier in self.service.tiers.values():
            stats.update({k: v for k, v in tier.hub.stats.items()
                          if tier.from_feed or k != "quotes_in"})
        values: dict[str, float] = {name: stats[key] for name, key in _STATS.items()}
        for reason, key in _REFUSED.items():
            values[f"refused:{reason}"] = stats[key]
        values["frames_sent"] = sum(f.frames_sent for f in figures)
        values["quotes_sent"] = sum(f.quotes_sent for f in figures)
        values["quotes_conflated"] = sum(f.quotes_conflated for f in figures)
        for key, value in stats.items():
            if key.startswith("error_"):
                values[key] = value
        return values

    def sync(self) -> None:
        service = self.service
        hub = service.hub
        gauges = self.gauges
        figures = [tier.hub.figures() for tier in service.tiers.values()]
        gauges["connections"].set(len(service.registry.sessions))
        gauges["subscriptions"].set(sum(f.subscriptions for f in figures))
        gauges["groups"].set(sum(f.groups for f in figures))
        gauges["symbols"].set(len(hub.board))
        gauges["feed_live"].set(1 if hub.feed == "live" else 0)
        gauges["workers"].set(1)
        gauges["every_subscribers"].set(sum(f.every_subscribers for f in figures))
        gauges["worker_connections"].set(len(service.registry.sessions))
        gauges["worker_members"].set(sum(len(t.hub.members) for t in service.tiers.values()))
        gauges["worker_groups"].set(sum(f.groups for f in figures))
        gauges["worker_tasks"].set(self._tasks)
        pushed = self._pushed
        for name, value in self._counter_values(figures).items():
            delta = value - pushed.get(name, 0)
            if delta <= 0:
                continue
            pushed[name] = value
            if name.startswith("error_"):
                self.client_errors.labels(name.removeprefix("error_")).inc(delta)
            elif name.startswith("refused:"):
                self.refused.labels(name.removeprefix("refused:")).inc(delta)
            else:
                self.counters[name].inc(delta)

    def tick(self, now: float) -> None:
        """Called by the service's sweeper: count the worker's tasks, and keep the shared
        files current for the scrapes other workers answer."""
        if now - self._last_sync >= SYNC_INTERVAL_S:
            self._last_sync = now
            self._tasks = len(asyncio.all_tasks())
            if self.multiprocess:
                self.sync()

    def render(self) -> bytes:
        self.sync()
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
