"""Configuration, in one place, from environment variables, checked at start.

Every knob the service and the publisher read is here with its default, so the table of
docs/configuration.md and the code cannot drift apart; a bad value stops the process with a
message that names the variable.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
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
    # from one client address per process (0, the default: no cap, since an office NAT or a
    # carrier's CGNAT puts thousands of readers behind one address); new connections from
    # one address per second per process, with a burst (past it: close 1013, SSE 503; 0: no
    # per-address rate); who may frame the page (the CSP's frame-ancestors); the bearer
    # token /metrics wants (None: open).
    allowed_origins: str = "*"
    max_connections_per_ip: int = 0
    max_connects_per_ip_per_s: int = 50
    max_connects_per_ip_burst: int = 500
    frame_ancestors: str = "'self'"
    metrics_token: str | None = None
    # Simulated market.
    sim_rate: float = 20.0
    sim_band_pct: float = 10.0
    sim_band_min: float = 1.0
    sim_seed: int | None = None
    # Logs (service/logs.py): the level, and json, text or auto (JSON unless stderr is a
    # terminal).
    log_level: str = "INFO"
    log_format: str = "auto"
    # prometheus-client's multiprocess directory (service/metrics.py), read by that library
    # itself: with WORKERS > 1 the supervisor empties it (or makes a temporary one).
    prometheus_multiproc_dir: str | None = None

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
        """Every value, alone and together, before anything starts: a bad one raises
        ConfigError naming it, what it got and what it accepts (one line)."""
        self._check_numbers()
        if not _is_host(self.host):
            raise _refused("host", "an IP address or a host name", self.host)
        if self.loop not in ("auto", "uvloop", "asyncio"):
            raise _refused("loop", "auto, uvloop or asyncio", self.loop)
        if self.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ConfigError("LOOP=uvloop needs the uvloop package, which is not installed: "
                              "install it, or set LOOP=auto or asyncio")
        if self.workers > 1 and not self.redis_url:
            raise ConfigError(
                f"WORKERS={self.workers} needs REDIS_URL: without Redis every worker would "
                "simulate a market of its own and clients would see different prices on "
                "each. Set REDIS_URL (and run `python -m publisher simulate`), or WORKERS=1.")
        if self.ws_max_size < self.max_frame_bytes:
            raise _refused("ws_max_size", f"at least MAX_FRAME_BYTES ({self.max_frame_bytes})",
                           self.ws_max_size)
        if self.log_level.upper() not in LOG_LEVELS:
            raise _refused("log_level", _one_of(LOG_LEVELS), self.log_level)
        if self.log_format.lower() not in LOG_FORMATS:
            raise _refused("log_format", _one_of(LOG_FORMATS) + " (auto: JSON unless stderr is "
                           "a terminal)", self.log_format)
        self._check_forwarded()
        self._check_security()
        if not self.redis_prefix or any(c in self.redis_prefix for c in "{} "):
            raise _refused("redis_prefix", "a non-empty name without braces or spaces",
                           self.redis_prefix)
        self._check_tokens()
        self._check_metrics_dir()
        self._check_redis_url()

    def _check_numbers(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise _refused(f.name, "a finite number", value)
        for name in POSITIVE:
            if getattr(self, name) <= 0:
                raise _refused(name, "positive", getattr(self, name))
        for name, meaning in NON_NEGATIVE.items():
            if getattr(self, name) < 0:
                raise _refused(name, f"0 {meaning}or positive", getattr(self, name))
        for name, (low, high, accepts) in RANGES.items():
            if not low <= getattr(self, name) <= high:
                raise _refused(name, accepts, getattr(self, name))

    def _check_forwarded(self) -> None:
        from .forwarded import check_trusted

        try:
            check_trusted(self.forwarded_allow_ips)
        except ValueError as exc:
            raise ConfigError(f"FORWARDED_ALLOW_IPS {exc}: got {self.forwarded_allow_ips!r}") from None

    def _check_tokens(self) -> None:
        if self.anonymous not in ("realtime", "delayed", "deny"):
            raise _refused("anonymous", "realtime, delayed or deny", self.anonymous)
        if self.token_secret is not None and self.token_public_key_file is not None:
            raise ConfigError("set TOKEN_SECRET (HS256) or TOKEN_PUBLIC_KEY_FILE (RS256/ES256), "
                              "not both: one algorithm is accepted")
        if self.token_secret is not None and len(self.token_secret.encode()) < 32:
            # A secret is never echoed: its length says enough.
            raise ConfigError("TOKEN_SECRET must be at least 32 bytes (HS256 needs a key as "
                              "long as its hash, RFC 7518 3.2), got "
                              f"{len(self.token_secret.encode())} bytes")
        algorithm = self.token_algorithm
        if algorithm is not None and algorithm not in ("HS256", "RS256", "ES256"):
            raise _refused("token_algorithm", "HS256, RS256 or ES256", algorithm)
        if algorithm is not None and (algorithm == "HS256") != (self.token_secret is not None):
            raise ConfigError(f"TOKEN_ALGORITHM={algorithm} does not fit the key given: HS256 "
                              "goes with TOKEN_SECRET, RS256/ES256 with TOKEN_PUBLIC_KEY_FILE")
        if self.anonymous == "deny" and self.token_secret is None and self.token_public_key_file is None:
            raise ConfigError("ANONYMOUS=deny needs TOKEN_SECRET or TOKEN_PUBLIC_KEY_FILE: "
                              "otherwise no client could ever connect")
        for name in ("token_issuer", "token_audience"):
            value = getattr(self, name)
            if value is not None and (value != value.strip() or not value.isprintable()):
                # A stray space or newline would make every token fail the comparison.
                raise _refused(name, "text without spaces at either end or control "
                               "characters (a token's iss/aud must equal it)", value)
        if self.token_public_key_file is not None:
            from .auth import load_key

            load_key(self.token_public_key_file, algorithm)

    def _check_metrics_dir(self) -> None:
        path = self.prometheus_multiproc_dir
        if path is None:
            return
        accepts = ("a writable directory" if self.workers == 1 else
                   "a writable directory, or one that can be made (WORKERS > 1 makes it)")
        target = Path(path)
        if not target.exists() and self.workers > 1:
            # The supervisor makes it with its parents: the nearest existing one decides.
            target = next(p for p in target.absolute().parents if p.exists())
        if not target.exists():
            raise _refused("prometheus_multiproc_dir", accepts, path, "it does not exist")
        if not target.is_dir():
            raise _refused("prometheus_multiproc_dir", accepts, path, f"{target} is not a directory")
        if not os.access(target, os.W_OK | os.X_OK):
            raise _refused("prometheus_multiproc_dir", accepts, path, f"{target} is not writable")

    def _check_redis_url(self) -> None:
        if self.redis_url is None:
            return
        from .topology import check

        try:
            check(self.redis_url)
        except ValueError as exc:
            raise ConfigError(f"REDIS_URL {exc}: got {_without_password(self.redis_url)!r}") from None

    def _check_security(self) -> None:
        from . import security

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
                # A token is never echoed: its length says enough.
                shown = (f", got {len(value)} characters" if name == "metrics_token"
                         else f": got {value!r}")
                raise ConfigError(f"{name.upper()} {exc}{shown}") from None

    @property
    def layout(self) -> Layout:
        return Layout(self.redis_prefix, self.redis_partitions)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("auto", "json", "text")
POSITIVE = ("heartbeat_s", "max_symbols", "max_client_msgs_per_s", "max_frame_bytes",
            "ws_max_size", "send_timeout_s", "redis_retry_max_s", "sim_rate",
            "publisher_heartbeat_s", "probe_interval_s", "probe_timeout_s",
            "max_connections", "max_connects_per_s", "workers", "tape_retention_s",
            "tape_max_len", "every_queue_bytes", "max_recovery", "delay_s",
            "max_connects_per_ip_burst")
# name -> what 0 means, for the message.
NON_NEGATIVE = {"drain_s": "(close at once) ", "fanout_interval_ms": "(one fan-out per burst) ",
                "tcp_send_buffer": "(kernel autotuning) ", "feed_silence_s": "(never stale) ",
                "token_grace_s": "(close at once) ", "max_connections_per_ip": "(no cap) ",
                "max_connects_per_ip_per_s": "(no per-address rate) ",
                "sim_band_pct": "", "sim_band_min": ""}
# Values the kernel takes as a C int: SO_SNDBUF, and TCP_USER_TIMEOUT (SEND_TIMEOUT_S * 2 s).
RANGES = {"port": (1, 65535, "1-65535"), "redis_partitions": (1, 1024, "1-1024"),
          "tcp_send_buffer": (0, 2**31 - 1, "at most 2147483647"),
          "send_timeout_s": (0, 1_000_000, "at most 1000000")}

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.removesuffix(".").split(".")
        # An all-digit last label is a mistyped address, not a name (RFC 3696 2).
        return (len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)
                and not labels[-1].isdigit())
    return True


def _one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def _refused(name: str, accepts: str, got: object, why: str | None = None) -> ConfigError:
    """`NAME must be ACCEPTS, got VALUE[ (WHY)]`: the one line a bad setting gets."""
    because = f" ({why})" if why else ""
    return ConfigError(f"{name.upper()} must be {accepts}, got {_shown(got)}{because}")


def _without_password(url: str) -> str:
    """REDIS_URL as given, its passwords masked: an error may go to a shared log."""
    scheme, sep, rest = url.partition("://")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    tail = re.sub(r"([?&][^=&]*password=)[^&]*", r"\1***", rest[end:])
    return f"{scheme}{sep}{userinfo}{at}{hosts}{tail}"


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
