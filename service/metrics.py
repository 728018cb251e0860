"""Prometheus metrics, one /metrics per process (run one scrape target per worker).

Counters on the fan-out path are plain integers kept by the hub and each outbox; they
are read only when Prometheus scrapes, so the hot path never takes a metrics lock. Only
the two histograms are observed as things happen, once per batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .protocol import ALL
from .quote import Quote, now_ms

if TYPE_CHECKING:
    from .app import QuoteService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# hub.stats key -> (metric name, help)
_COUNTERS = {
    "quotes_in": ("quotes_received", "Quotes taken from the feed and fanned out."),
    "quotes_stale_dropped": ("quotes_stale_dropped", "Quotes dropped: seq not newer than held."),
    "junk_dropped": ("feed_junk_dropped", "Unparseable or invalid payloads dropped from Redis."),
    "redis_reconnects": ("redis_reconnects", "Times the Redis subscription was lost and retried."),
    "slow_consumer_closed": ("slow_client_disconnects", "Clients closed (4008) for not reading."),
    "connections_refused": ("connections_refused", "Connections turned away with 1013."),
}


class ServiceCollector(Collector):
    def __init__(self, service: QuoteService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        hub = service.hub
        stats = hub.stats
        outboxes = [c.outbox for c in service.connections]

        yield GaugeMetricFamily("quote_service_connections", "Open websocket connections.",
                                value=len(outboxes))
        subscriptions = sum(len(g.members) * (1 if g.key == ALL else len(g.key))
                            for g in hub.groups.values())
        yield GaugeMetricFamily("quote_service_subscriptions",
                                "Symbols subscribed, summed over connections ('*' counts once).",
                                value=subscriptions)
        yield GaugeMetricFamily("quote_service_groups",
                                "Distinct subscriptions; members of one share every frame.",
                                value=len(hub.groups))
        yield GaugeMetricFamily("quote_service_symbols", "Symbols on the board.", value=len(hub.board))
        yield GaugeMetricFamily("quote_service_feed_live", "1 while the feed is live, 0 while stale.",
                                value=1 if hub.feed == "live" else 0)

        for name, attr, help_text in (
            ("frames_sent", "frames_taken", "Websocket frames sent to clients."),
            ("quotes_sent", "quotes_taken", "Quote entries sent to clients in `quotes` frames."),
        ):
            total = stats[f"retired_{name}"] + sum(getattr(o, attr) for o in outboxes)
            yield CounterMetricFamily(f"quote_service_{name}", help_text, value=total)
        conflated = stats["retired_quotes_conflated"] + sum(g.conflated for g in hub.groups.values())
        yield CounterMetricFamily("quote_service_quotes_conflated",
                                  "Updates replaced by a newer one before they were sent.",
                                  value=conflated)

        for key, (name, help_text) in _COUNTERS.items():
            yield CounterMetricFamily(f"quote_service_{name}", help_text, value=stats[key])

        errors = CounterMetricFamily("quote_service_client_errors", "Error frames sent, by code.",
                                     labels=["code"])
        for key, value in sorted(stats.items()):
            if key.startswith("error_"):
                errors.add_metric([key.removeprefix("error_")], value)
        yield errors


class Metrics:
    def __init__(self, service: QuoteService) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ServiceCollector(service))
        self.feed_lag = Histogram(
            "quote_service_feed_lag_seconds", "Age of a quote when the service fans it out (now - ts).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.fanout = Histogram(
            "quote_service_fanout_seconds", "Time to fan one batch out to every subscriber's outbox.",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
            registry=self.registry,
        )
        service.hub.observer = self.observe

    def observe(self, quotes: Sequence[Quote], seconds: float) -> None:
        self.fanout.observe(seconds)
        now = now_ms()
        for quote in quotes:
            self.feed_lag.observe(max(0, now - quote.ts) / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
