"""Configuration, in one place, from environment variables, checked at start.

Every knob the service and the publisher read is here with its default, so the README's
table and the code cannot drift apart; a bad value stops the process with a message that
names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .partitions import Layout


class ConfigError(ValueError):
    """A bad environment variable; the message names it and says what is allowed."""


@dataclass(frozen=True, slots=True)
class Settings:
    # Where the feed comes from: redis://, rediss://, unix://,
    # redis+sentinel://H:P[,H:P...]/MASTER[/DB] or redis+cluster://H:P[,H:P...]
    # (service/topology). None: the embedded broker with the simulated market.
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # Worker processes sharing the port through SO_REUSEPORT (service/supervisor.py);
    # each holds its own Redis subscription and its own clients.
    workers: int = 1
    # On SIGTERM a worker stops accepting, then closes its clients with 1001 spread over
    # this many seconds, so a rolling restart does not send them all back at once.
    drain_s: float = 3.0
    # Peers whose X-Forwarded-For / X-Real-IP name the real client (uvicorn's option):
    # comma-separated addresses or networks, or "*".
    forwarded_allow_ips: str = "127.0.0.1,::1"
    # The event loop: auto (uvloop when installed), uvloop or asyncio.
    loop: str = "auto"
    # Redis names shared by the publisher and the service (service/partitions.py): symbols
    # are spread over REDIS_PARTITIONS partitions, each with its own channel, latest-state
    # hash and seq hash named {REDIS_PREFIX}:{P}..., so a Redis Cluster spreads them over
    # its nodes. Publisher and service must agree on both.
    redis_prefix: str = "quotes"
    redis_partitions: int = 16
    # The publisher says it is alive (`[]` on every partition's channel) this often, even
    # when no quote moves.
    publisher_heartbeat_s: float = 1.0
    # The tape (service/tape): the publisher appends every quote to its symbol's Redis
    # Stream, trimmed to this many seconds (a trading day and more) and this many quotes
    # per symbol; every-update clients recover what they missed from it.
    tape_retention_s: float = 86400.0
    tape_max_len: int = 100000
    # Every-update subscriptions: the bytes of quotes waiting for one client before it is
    # closed with 4008, and the most quotes one subscribe's `since` may recover.
    every_queue_bytes: int = 1 << 20
    max_recovery: int = 10000
    # Signed tokens (service/auth.py): HS256 with TOKEN_SECRET, or RS256/ES256 with the
    # PEM public key in TOKEN_PUBLIC_KEY_FILE (TOKEN_ALGORITHM may name it); optional
    # issuer and audience. A token that expires while connected is closed this long after
    # its `token_expired` error unless a fresh one comes. ANONYMOUS: what a client without
    # a token gets, realtime, delayed or deny.
    token_secret: str | None = None
    token_public_key_file: str | None = None
    token_algorithm: str | None = None
    token_issuer: str | None = None
    token_audience: str | None = None
    token_grace_s: float = 30.0
    anonymous: str = "realtime"
    # The delayed tier (service/delayed.py): its clients see the board as of now - DELAY_S.
    delay_s: float = 900.0
    # Limits announced in `welcome`.
    heartbeat_s: float = 15.0
    max_symbols: int = 500
    max_client_msgs_per_s: int = 20
    max_frame_bytes: int = 4096
    # Frames above this are refused by the websocket layer itself with close 1009;
    # between max_frame_bytes and this, the client gets a `frame_too_large` error.
    ws_max_size: int = 65536
    # At most one fan-out per this many ms while quotes stream in (0: one per message burst).
    fanout_interval_ms: float = 20.0
    # A send that does not finish in this time means a dead or stalled peer.
    send_timeout_s: float = 5.0
    # Kernel send buffer per client socket in bytes (0: the kernel's autotuning). Smaller
    # bounds memory per connection and finds a stalled reader sooner.
    tcp_send_buffer: int = 0
    # Back-off between Redis reconnect attempts.
    redis_retry_max_s: float = 5.0
    # A probe published through Redis every PROBE_INTERVAL_S must come back through the
    # subscription within PROBE_TIMEOUT_S, or Redis is taken as lost (a frozen server
    # keeps its TCP connections open and says nothing).
    probe_interval_s: float = 1.0
    probe_timeout_s: float = 3.0
    # No quote and no publisher heartbeat for this long: the feed is stale. 0: never.
    feed_silence_s: float = 10.0
    # Admission: open connections per process, and new connections per second (burst
    # of one second's worth); past either a client is closed with 1013 (try again later).
    max_connections: int = 20000
    max_connects_per_s: int = 1000
    # Security (service/security.py). Origins whose pages may open a websocket or an SSE
    # stream ("*": any; a request without Origin is not refused for it); open connections
    # from one client address per process (0: no cap); who may frame the page (the CSP's
    # frame-ancestors); the bearer token /metrics wants (None: open).
    allowed_origins: str = "*"
    max_connections_per_ip: int = 100
    frame_ancestors: str = "'self'"
    metrics_token: str | None = None
    # Simulated market.
    sim_rate: float = 20.0
    sim_band_pct: float = 10.0
    sim_band_min: float = 1.0
    sim_seed: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, f.default, raw)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        positive = ("heartbeat_s", "max_symbols", "max_client_msgs_per_s", "max_frame_bytes",
                    "ws_max_size", "send_timeout_s", "redis_retry_max_s", "sim_rate",
                    "publisher_heartbeat_s", "probe_interval_s", "probe_timeout_s",
                    "max_connections", "max_connects_per_s", "workers", "tape_retention_s",
                    "tape_max_len", "every_queue_bytes", "max_recovery")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.upper()} must be positive, got {getattr(self, name)}")
        if self.fanout_interval_ms < 0:
            raise ConfigError(f"FANOUT_INTERVAL_MS must be 0 or positive, got {self.fanout_interval_ms}")
        if self.tcp_send_buffer < 0:
            raise ConfigError(f"TCP_SEND_BUFFER must be 0 (kernel default) or positive, "
                              f"got {self.tcp_send_buffer}")
        if self.drain_s < 0:
            raise ConfigError(f"DRAIN_S must be 0 (close at once) or positive, got {self.drain_s}")
        if self.loop not in ("auto", "uvloop", "asyncio"):
            raise ConfigError(f"LOOP must be auto, uvloop or asyncio, got {self.loop!r}")
        if self.workers > 1 and not self.redis_url:
            raise ConfigError(
                f"WORKERS={self.workers} needs REDIS_URL: without Redis every worker would "
                "simulate a market of its own and clients would see different prices on "
                "each. Set REDIS_URL (and run `python -m publisher simulate`), or WORKERS=1.")
        if self.feed_silence_s < 0:
            raise ConfigError(f"FEED_SILENCE_S must be 0 (off) or positive, got {self.feed_silence_s}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"PORT must be 1-65535, got {self.port}")
        if self.ws_max_size < self.max_frame_bytes:
            raise ConfigError("WS_MAX_SIZE must be at least MAX_FRAME_BYTES")
        self._check_security()
        if not 1 <= self.redis_partitions <= 1024:
            raise ConfigError(f"REDIS_PARTITIONS must be 1-1024, got {self.redis_partitions}")
        if not self.redis_prefix or any(c in self.redis_prefix for c in "{} "):
            raise ConfigError(f"REDIS_PREFIX must be a non-empty name without braces or "
                              f"spaces, got {self.redis_prefix!r}")
        self._check_tokens()
        if self.redis_url is not None:
            from .topology import check

            try:
                check(self.redis_url)
            except ValueError as exc:
                raise ConfigError(f"REDIS_URL {exc}: got {self.redis_url!r}") from None

    def _check_tokens(self) -> None:
        if self.anonymous not in ("realtime", "delayed", "deny"):
            raise ConfigError(f"ANONYMOUS must be realtime, delayed or deny, got {self.anonymous!r}")
        if self.delay_s <= 0:
            raise ConfigError(f"DELAY_S must be positive, got {self.delay_s}")
        if self.token_secret is not None and self.token_public_key_file is not None:
            raise ConfigError("set TOKEN_SECRET (HS256) or TOKEN_PUBLIC_KEY_FILE (RS256/ES256), "
                              "not both: one algorithm is accepted")
        if self.token_secret is not None and len(self.token_secret.encode()) < 32:
            raise ConfigError("TOKEN_SECRET must be at least 32 bytes: HS256 needs a key as "
                              "long as its hash (RFC 7518 3.2)")
        algorithm = self.token_algorithm
        if algorithm is not None and algorithm not in ("HS256", "RS256", "ES256"):
            raise ConfigError(f"TOKEN_ALGORITHM must be HS256, RS256 or ES256, got {algorithm!r}")
        if algorithm is not None and (algorithm == "HS256") != (self.token_secret is not None):
            raise ConfigError(f"TOKEN_ALGORITHM={algorithm} does not fit the key given: HS256 "
                              "goes with TOKEN_SECRET, RS256/ES256 with TOKEN_PUBLIC_KEY_FILE")
        if self.anonymous == "deny" and self.token_secret is None and self.token_public_key_file is None:
            raise ConfigError("ANONYMOUS=deny needs TOKEN_SECRET or TOKEN_PUBLIC_KEY_FILE: "
                              "otherwise no client could ever connect")
        if self.token_grace_s < 0:
            raise ConfigError(f"TOKEN_GRACE_S must be 0 or positive, got {self.token_grace_s}")

    def _check_security(self) -> None:
        from . import security

        if self.max_connections_per_ip < 0:
            raise ConfigError(f"MAX_CONNECTIONS_PER_IP must be 0 (no cap) or positive, "
                              f"got {self.max_connections_per_ip}")
        checks = (("allowed_origins", security.parse_origins),
                  ("frame_ancestors", security.parse_frame_ancestors),
                  ("metrics_token", security.check_metrics_token))
        for name, check in checks:
            value = getattr(self, name)
            if value is None:
                continue
            try:
                check(value)
            except ValueError as exc:
                shown = "" if name == "metrics_token" else f": got {value!r}"
                raise ConfigError(f"{name.upper()} {exc}{shown}") from None

    @property
    def layout(self) -> Layout:
        return Layout(self.redis_prefix, self.redis_partitions)


def _convert(name: str, default: Any, raw: str) -> Any:
    kind = type(default)
    try:
        if kind is int or (default is None and name.endswith("seed")):
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        expected = "an integer" if kind is int or default is None else "a number"
        raise ConfigError(f"{name.upper()} must be {expected}, got {raw!r}") from None
    return raw
