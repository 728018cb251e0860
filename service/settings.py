"""The service's settings, from environment variables, checked at start.

Its own knobs are here with their defaults and checks; the groups it shares are composed
in: the Redis names with the publisher (quote_bus/settings.py), the simulated market it
runs without REDIS_URL (quote_sim/settings.py) and the logs (quote_runtime/logs.py).
docs/configuration.md lists them all; a bad value stops the process with a message that
names the variable.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from quote_bus.settings import RedisSettings
from quote_runtime.logs import LogSettings
from quote_runtime.settings import POSITIVE, ConfigError, non_negative, refused, setting, within
from quote_sim.settings import SimulationSettings


@dataclass(frozen=True)
class Settings(RedisSettings, SimulationSettings, LogSettings):
    host: str = "127.0.0.1"
    port: int = setting(8000, within(1, 65535, "1-65535"))
    # Worker processes sharing the port through SO_REUSEPORT (service/supervisor.py);
    # each holds its own Redis subscription and its own clients.
    workers: int = setting(1, POSITIVE)
    # On SIGTERM a worker stops accepting, then closes its clients with 1001 spread over
    # this many seconds, so a rolling restart does not send them all back at once.
    drain_s: float = setting(3.0, non_negative("close at once"))
    # Peers whose X-Forwarded-For / X-Real-IP name the real client (uvicorn's option):
    # comma-separated addresses or networks, or "*".
    forwarded_allow_ips: str = "127.0.0.1,::1"
    # The event loop: auto (uvloop when installed), uvloop or asyncio.
    loop: str = "auto"
    # Every-update subscriptions: the bytes of quotes waiting for one client before it is
    # closed with 4008, and the most quotes one subscribe's `since` may recover.
    every_queue_bytes: int = setting(1 << 20, POSITIVE)
    max_recovery: int = setting(10000, POSITIVE)
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
    token_grace_s: float = setting(30.0, non_negative("close at once"))
    anonymous: str = "realtime"
    # The delayed tier (service/delayed.py): its clients see the board as of now - DELAY_S.
    delay_s: float = setting(900.0, POSITIVE)
    # Limits announced in `welcome`.
    heartbeat_s: float = setting(15.0, POSITIVE)
    max_symbols: int = setting(500, POSITIVE)
    max_client_msgs_per_s: int = setting(20, POSITIVE)
    max_frame_bytes: int = setting(4096, POSITIVE)
    # Frames above this are refused by the websocket layer itself with close 1009;
    # between max_frame_bytes and this, the client gets a `frame_too_large` error.
    ws_max_size: int = setting(65536, POSITIVE)
    # Shared frames of quotes of at least this many bytes go compressed to clients that
    # offered permessage-deflate (once per frame, service/deflate.py); 0: not offered, for
    # a deployment that would rather keep the ~0.8 KB it costs per idle connection.
    ws_deflate_min_bytes: int = setting(64, non_negative("permessage-deflate not offered"))
    # At most one fan-out per this many ms while quotes stream in (0: one per message burst).
    fanout_interval_ms: float = setting(20.0, non_negative("one fan-out per burst"))
    # A send that does not finish in this time means a dead or stalled peer. At most what
    # the kernel takes as a C int: TCP_USER_TIMEOUT is SEND_TIMEOUT_S * 2 s.
    send_timeout_s: float = setting(5.0, POSITIVE, within(0, 1_000_000, "at most 1000000"))
    # Kernel send buffer per client socket in bytes (0: the kernel's autotuning). Smaller
    # bounds memory per connection and finds a stalled reader sooner. SO_SNDBUF takes a C int.
    tcp_send_buffer: int = setting(0, non_negative("kernel autotuning"),
                                   within(0, 2**31 - 1, "at most 2147483647"))
    # A probe published through Redis every PROBE_INTERVAL_S must come back through the
    # subscription within PROBE_TIMEOUT_S, or Redis is taken as lost (a frozen server
    # keeps its TCP connections open and says nothing).
    probe_interval_s: float = setting(1.0, POSITIVE)
    probe_timeout_s: float = setting(3.0, POSITIVE)
    # No quote and no publisher heartbeat for this long: the feed is stale. 0: never.
    feed_silence_s: float = setting(10.0, non_negative("never stale"))
    # Admission: open connections per process, and new connections per second (burst
    # of one second's worth); past either a client is closed with 1013 (try again later).
    max_connections: int = setting(20000, POSITIVE)
    max_connects_per_s: int = setting(1000, POSITIVE)
    # Security (service/security.py). Origins whose pages may open a websocket or an SSE
    # stream ("*": any; a request without Origin is not refused for it); open connections
    # from one client address per process (0, the default: no cap, since an office NAT or a
    # carrier's CGNAT puts thousands of readers behind one address); new connections from
    # one address per second per process, with a burst (past it: close 1013, SSE 503; 0: no
    # per-address rate); who may frame the page (the CSP's frame-ancestors); the bearer
    # token /metrics wants (None: open).
    allowed_origins: str = "*"
    max_connections_per_ip: int = setting(0, non_negative("no cap"))
    max_connects_per_ip_per_s: int = setting(50, non_negative("no per-address rate"))
    max_connects_per_ip_burst: int = setting(500, POSITIVE)
    frame_ancestors: str = "'self'"
    metrics_token: str | None = None
    # prometheus-client's multiprocess directory (service/metrics.py), read by that library
    # itself: with WORKERS > 1 the supervisor empties it (or makes a temporary one).
    prometheus_multiproc_dir: str | None = None

    def check(self) -> None:
        """Every value, alone and together, before anything starts: a bad one raises
        ConfigError naming it, what it got and what it accepts (one line)."""
        super().check()
        if not _is_host(self.host):
            raise refused("host", "an IP address or a host name", self.host)
        if self.loop not in ("auto", "uvloop", "asyncio"):
            raise refused("loop", "auto, uvloop or asyncio", self.loop)
        if self.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ConfigError("LOOP=uvloop needs the uvloop package, which is not installed: "
                              "install it, or set LOOP=auto or asyncio")
        if self.workers > 1 and not self.redis_url:
            raise ConfigError(
                f"WORKERS={self.workers} needs REDIS_URL: without Redis every worker would "
                "simulate a market of its own and clients would see different prices on "
                "each. Set REDIS_URL (and run `python -m publisher simulate`), or WORKERS=1.")
        if self.ws_max_size < self.max_frame_bytes:
            raise refused("ws_max_size", f"at least MAX_FRAME_BYTES ({self.max_frame_bytes})",
                          self.ws_max_size)
        self._check_forwarded()
        self._check_security()
        self._check_tokens()
        self._check_metrics_dir()

    def _check_forwarded(self) -> None:
        from .forwarded import check_trusted

        try:
            check_trusted(self.forwarded_allow_ips)
        except ValueError as exc:
            raise ConfigError(f"FORWARDED_ALLOW_IPS {exc}: got {self.forwarded_allow_ips!r}") from None

    def _check_tokens(self) -> None:
        if self.anonymous not in ("realtime", "delayed", "deny"):
            raise refused("anonymous", "realtime, delayed or deny", self.anonymous)
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
            raise refused("token_algorithm", "HS256, RS256 or ES256", algorithm)
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
                raise refused(name, "text without spaces at either end or control "
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
            raise refused("prometheus_multiproc_dir", accepts, path, "it does not exist")
        if not target.is_dir():
            raise refused("prometheus_multiproc_dir", accepts, path, f"{target} is not a directory")
        if not os.access(target, os.W_OK | os.X_OK):
            raise refused("prometheus_multiproc_dir", accepts, path, f"{target} is not writable")

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
