"""The soak with churn (issue 25): does the service come back to where it was after an
hour's worth of clients came and went, a Redis restart and a worker killed under it?

    python -m bench.soak                  # 30 minutes (bench/results/soak.{json,md,png})
    python -m bench.soak --minutes 5      # the same, shorter
    python -m bench.soak --quick          # about 90 s, as tests/test_bench_soak.py runs it

One service (`python -m service`, WORKERS=2, REDIS_URL, TOKEN_SECRET: tokens work and
anonymous clients stay realtime) on a redis-server of its own (append-only, fsync always,
so that a SIGKILL loses no quote of the tape), the per-quote publisher (bench/publisher.py)
at 200 quotes/s, and all at once:

- steady viewers: the native load generator (bench/viewers_load.c), 2,000 connections to
  `/ws?symbols=*&max_hz=4`, with --reconnect when the generator has it (a viewer of the
  killed worker comes back, with the SDKs' jittered back-off);
- the churn (bench/soak_clients.py, its own process): 50 new clients a second, websockets
  and SSE streams, with and without tokens (realtime, delayed tier, short-lived ones
  refreshed by `auth` or left to expire), subscribing, changing symbols, pausing, and
  leaving by close, by abort (RST) or by vanishing;
- every-mode consumers (same process) that leave and come back with `since`;
- events in the middle of the churn: the redis-server killed (SIGKILL) and started again
  on its port, then one worker SIGKILLed (its supervisor starts another).

Phases: warm-up (steady viewers only) -> a first churn, without events -> its clients gone
-> BEFORE -> the churn, with the events -> its clients gone (the service holds the steady
viewers only) -> AFTER. The first churn is there so that BEFORE is a process whose
allocator and pools already grew to what a churn needs (CPython keeps the arenas of its
peak): AFTER shows what a churn leaves behind, not that the process once saw one.
Sampled every --sample-s: per worker RSS and open fds (/proc/PID), asyncio tasks, hub
groups and members and connections (the service's per-worker gauges on /metrics,
`quote_service_worker_*{pid}`); Redis used_memory and connected_clients; the steady
viewers' ages over the period (p99). Verdicts (exit 1 if one fails): see `verdicts`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis as redis_sync

from bench import native, report
from bench.output import write_results
from bench.procs import (
    Child,
    busy_pct,
    cpu_times,
    port_open,
    raise_nofile,
    read_proc,
    tree_pids,
)
from bench.viewers import LAYOUT, final_seqs, service_env
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SECRET = "soak-secret-of-at-least-32-bytes!"
FANOUT_INTERVAL_MS = 20  # the service's default, which the soak keeps
AGE_SLACK_MS = 100  # scheduling on a shared 2-core machine, the generator's 1 ms batching
RSS_MARGIN_MB = 5.0
# Gauges read per worker from /metrics (service/metrics.py, multiprocess mode "liveall").
WORKER_GAUGES = ("connections", "members", "groups", "tasks")
PHASE_MEMBERS = 1000  # service/hub.py: a rated group grows a phase past this many members


@dataclass
class Plan:
    steady: int = 2000
    max_hz: float = 4.0
    rate: float = 200.0
    churn_rate: float = 50.0
    warmup_s: float = 90.0
    # A churn without events before BEFORE, so that the workers' allocators and pools
    # have grown to what the churn needs: what AFTER is compared with is that, not a
    # process that never saw a churn (`compare`).
    prechurn_s: float = 144.0
    churn_s: float = 1398.0
    vanish_s: float = 54.0
    sample_s: float = 10.0
    every: int = 4
    # When, as a fraction of the churn, the redis-server restarts and a worker is killed.
    redis_restart_at: float = 0.35
    worker_kill_at: float = 0.6
    boards: int = 8
    settle_samples: int = 3

    @classmethod
    def for_minutes(cls, minutes: float) -> Plan:
        """A run of about `minutes`: warm-up, the churn before BEFORE, the churn, and after
        each churn its tail (the vanished clients' hold, the settling)."""
        total = minutes * 60
        warmup = min(90.0, max(30.0, total * 0.05))
        prechurn = min(150.0, max(30.0, total * 0.08))
        vanish = min(60.0, max(10.0, total * 0.03))
        tail = 2 * (vanish + 30)
        return cls(warmup_s=warmup, prechurn_s=prechurn, vanish_s=vanish,
                   churn_s=max(60.0, total - warmup - prechurn - tail))

    @classmethod
    def quick(cls) -> Plan:
        return cls(steady=200, churn_rate=20.0, warmup_s=6.0, prechurn_s=12.0, churn_s=30.0,
                   vanish_s=6.0, sample_s=2.0, every=2, boards=4)

    @property
    def age_limit_ms(self) -> float:
        return 1000 / self.max_hz + FANOUT_INTERVAL_MS + AGE_SLACK_MS


# ---- what is sampled ------------------------------------------------------------------------

TCP_STATES = {1: "established", 2: "syn-sent", 4: "fin-wait-1", 5: "fin-wait-2",
              7: "close", 8: "close-wait", 9: "last-ack", 10: "listen", 11: "closing"}


def tcp_sockets() -> dict[int, tuple[int, int, int]]:
    """Inode -> (local port, remote port, state) of every TCP socket (/proc/net/tcp and
    tcp6); a unix socket's inode -> (0, 0, 0)."""
    out: dict[int, tuple[int, int, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                out[int(fields[9])] = (int(fields[1].rsplit(":", 1)[1], 16),
                                       int(fields[2].rsplit(":", 1)[1], 16), int(fields[3], 16))
    with contextlib.suppress(OSError), open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            out[int(fields[6])] = (0, 0, 0)
    return out


def fd_kinds(pid: int, tcp: dict[int, tuple[int, int, int]], port: int, redis_port: int
             ) -> dict[str, int]:
    """A worker's fds by kind: its clients' sockets, its Redis connections, other sockets,
    pipes, epoll and other anonymous inodes, files: which one it is, when a count moves."""
    kinds: dict[str, int] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            # Not in the tables: a TCP socket the kernel has unhashed (closed, by an RST
            # or after its FIN exchange) that the process still holds.
            ports = tcp.get(int(link[8:-1]))
            kind = ("socket: closed, still held" if ports is None else "socket: unix"
                    if ports == (0, 0, 0) else "socket: client" if ports[0] == port
                    else "socket: redis" if ports[1] == redis_port else "socket: tcp")
            if ports is not None and ports[2] not in (0, 1):
                kind += f" ({TCP_STATES.get(ports[2], ports[2])})"
        elif link.startswith(("pipe:", "anon_inode:")):
            kind = link.split("[")[0]
        else:
            kind = "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def scrape(port: int) -> dict[int, dict[str, float]]:
    """pid -> {gauge: value} of every live worker, from one scrape of /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith("quote_service_worker_"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        pid = next((int(part.split("=")[1].strip('"}')) for part in labels.split(",")
                    if part.startswith("pid=")), None)
        if pid is not None:
            out.setdefault(pid, {})[name.removeprefix("quote_service_worker_")] = float(value)
    return out


def redis_info(url: str) -> dict[str, Any]:
    """used_memory, connected_clients (this sampler's own connection included), and the
    clients by their last command (which connection is which, when a count differs)."""
    try:
        client = redis_sync.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            info = client.info()
            listed = client.client_list()
        finally:
            client.close()
        by_cmd: dict[str, int] = {}
        for c in listed:
            by_cmd[c.get("cmd", "?")] = by_cmd.get(c.get("cmd", "?"), 0) + 1
        return {"used_memory": int(info["used_memory"]),
                "connected_clients": int(info["connected_clients"]), "by_cmd": by_cmd}
    except (redis_sync.RedisError, OSError):
        return {"used_memory": None, "connected_clients": None}


@dataclass
class Soak:
    plan: Plan
    logs: Path
    say: Callable[[str], None] = print
    t0: float = field(default_factory=time.monotonic)
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    phase: str = "start"
    # Per window (between samples) the steady viewers' stats from the generator.
    windows: list[dict[str, Any]] = field(default_factory=list)
    # pid -> (monotonic time, CPU seconds) at the last sample; the machine's CPU times.
    cpu_last: dict[int, tuple[float, float]] = field(default_factory=dict)
    machine_last: dict[int, tuple[int, int]] = field(default_factory=dict)
    # The load's processes (generator, churn), whose CPU is sampled too.
    load: dict[str, Child] = field(default_factory=dict)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def event(self, what: str, **details: Any) -> None:
        self.events.append({"t": self.now(), "event": what, **details})
        self.say(f"  [{self.now():7.1f} s] {what} {details if details else ''}")

    def sample(self, service: Child, port: int, redis_url: str, viewers: Child | None) -> None:
        redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        workers = tree_pids(service.pid)[1:]
        tcp = tcp_sockets()
        per: dict[str, dict[str, Any]] = {}
        for pid in workers:
            try:
                cpu_s, rss_kb = read_proc(pid)
                kinds = fd_kinds(pid, tcp, port, redis_port)
            except (OSError, ValueError):
                continue
            now = time.monotonic()
            last = self.cpu_last.get(pid)
            self.cpu_last[pid] = (now, cpu_s)
            per[str(pid)] = {"rss_mb": round(rss_kb / 1024, 2), "fds": sum(kinds.values()),
                             # % of one core since the last sample (a worker's own CPU).
                             "cpu_pct": round(100 * (cpu_s - last[1]) / (now - last[0]), 1)
                             if last and now > last[0] else None,
                             "redis_conns": kinds.get("socket: redis", 0), "fd_kinds": kinds,
                             **{k: -1 for k in WORKER_GAUGES}}
        # /metrics after /proc: the scrape's own socket is not one of a worker's fds.
        try:
            gauges = scrape(port)
        except OSError as exc:
            gauges = {}
            self.say(f"  /metrics: {exc}")
        for pid_text, figures in per.items():
            figures.update({k: int(v) for k, v in gauges.get(int(pid_text), {}).items()
                            if k in WORKER_GAUGES})
        # The load's own CPU (% of a core): the generator that measures the ages, and the
        # churn, which share the machine with the service.
        load: dict[str, float | None] = {}
        for name, child in self.load.items():
            load[name] = None
            with contextlib.suppress(OSError, ValueError):
                cpu_s, _ = read_proc(child.pid)
                now = time.monotonic()
                last = self.cpu_last.get(child.pid)
                self.cpu_last[child.pid] = (now, cpu_s)
                if last and now > last[0]:
                    load[name] = round(100 * (cpu_s - last[1]) / (now - last[0]), 1)
        times = cpu_times()
        entry: dict[str, Any] = {"load_cpu_pct": load, "t": self.now(), "phase": self.phase, "workers": per,
                                 "redis": redis_info(redis_url),
                                 # Everything that ran on the machine, ours and anyone's.
                                 "machine_busy_pct": busy_pct(self.machine_last, times, None)
                                 if self.machine_last else None}
        self.machine_last = times
        if viewers is not None:
            viewers.send({"cmd": "stop"})
            stats = viewers.recv(timeout=60)
            viewers.send({"cmd": "start"})
            ages = report.merge_hist(stats["ages"])
            entry["steady"] = {"open": stats["open"], "p99_ms": report.percentile(ages, 99),
                               "aged": stats["aged"], "closes": stats["closes"]}
            self.windows.append({"t": entry["t"], "phase": self.phase, "ages": stats["ages"]})
        self.samples.append(entry)

    def run_for(self, seconds: float, take: Callable[[], None],
                at: list[tuple[float, Callable[[], None]]] | None = None) -> None:
        """Sample every sample_s for `seconds`, running each of `at` (seconds from now,
        action) when due."""
        start = time.monotonic()
        todo = sorted(at or [], key=lambda x: x[0])
        next_sample = start + self.plan.sample_s
        end = start + seconds
        while True:
            now = time.monotonic()
            while todo and now - start >= todo[0][0]:
                todo.pop(0)[1]()
                now = time.monotonic()
            if now >= next_sample:
                take()
                next_sample += self.plan.sample_s
            if now >= end:
                return
            wake = min([next_sample, end] + [start + t for t, _ in todo])
            time.sleep(max(0.0, min(0.5, wake - time.monotonic())))


def baseline(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per worker, the median of each figure over these samples (a worker in all of them)."""
    pids = set.intersection(*(set(s["workers"]) for s in samples))
    keys = ("rss_mb", "fds", "redis_conns", *WORKER_GAUGES)
    return {pid: {k: statistics.median(s["workers"][pid][k] for s in samples) for k in keys}
            for pid in sorted(pids)}


def steady_groups(connections: float) -> int:
    """The groups the steady viewers alone make on a worker: all of them subscribe "*" at
    one max_hz, one phase per PHASE_MEMBERS."""
    return math.ceil(connections / PHASE_MEMBERS) if connections > 0 else 0


def normalized(figures: dict[str, float]) -> dict[str, float]:
    """What a worker holds beyond its connections: each websocket is one fd, one task and
    one hub member; each Redis connection one fd; its groups beyond the steady viewers'
    phases."""
    c = figures["connections"]
    return {"fds_beyond_conns": figures["fds"] - c - figures["redis_conns"],
            "tasks_beyond_conns": figures["tasks"] - c,
            "members_beyond_conns": figures["members"] - c,
            "groups_beyond_steady": figures["groups"] - steady_groups(c)}


def fit_mb_per_h(points: list[tuple[float, float]]) -> float | None:
    """The slope of a least-squares line through (seconds, MB), in MB per hour."""
    if len(points) < 3:
        return None
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return round(3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx, 1)


# ---- the run --------------------------------------------------------------------------------

def generator_reconnects() -> bool:
    """Whether bench/viewers_load.c has --reconnect (added for issue 25)."""
    return '"--reconnect"' in native.GENERATOR_SRC.read_text()


def run(plan: Plan, logs: Path, say: Callable[[str], None] = print) -> dict[str, Any]:
    raise_nofile()
    soak = Soak(plan, logs, say)
    reconnect = generator_reconnects()
    with tempfile.TemporaryDirectory(prefix="bench-soak-redis-") as workdir:
        redis = RedisServer(Path(workdir), args=["--appendonly", "yes", "--appendfsync", "always"])
        if not redis.start():
            raise SystemExit(f"redis-server did not start: {redis.log()}")
        children: list[Child] = []
        try:
            return run_with(soak, redis, children, reconnect)
        finally:
            for child in reversed(children):
                with contextlib.suppress(Exception):
                    if child.proc.stdin is not None:
                        child.send({"cmd": "quit"})
                child.stop(timeout=15)
            redis.stop()


def run_with(soak: Soak, redis: RedisServer, children: list[Child], reconnect: bool
             ) -> dict[str, Any]:
    plan, logs = soak.plan, soak.logs
    r = redis_sync.Redis.from_url(redis.url)
    port = free_port()
    env = {**service_env(redis.url, port, plan.steady * 4), "WORKERS": "2",
           "TOKEN_SECRET": SECRET, "ANONYMOUS": "realtime", "TOKEN_GRACE_S": "3",
           "DELAY_S": "5"}
    service = Child("soak-service", [PY, "-m", "service"], env=env, cwd=ROOT, log_dir=logs)
    children.append(service)
    deadline = time.monotonic() + 60
    while not (port_open(port) and r.pubsub_numsub(LAYOUT.channel(0))[0][1] >= 2):
        if not service.alive() or time.monotonic() > deadline:
            raise SystemExit(f"the service did not start: {service.log_tail(800)}")
        time.sleep(0.2)
    soak.event("service up", workers=tree_pids(service.pid)[1:])
    publisher = Child("soak-publisher", [PY, "-m", "bench.publisher", "--rate", f"{plan.rate:g}",
                                         "--seed", "1", "--redis", redis.url],
                      cwd=ROOT, log_dir=logs)
    children.append(publisher)
    deadline = time.monotonic() + 30
    while not (symbols := sorted(final_seqs(r))):
        if time.monotonic() > deadline:
            raise SystemExit(f"the publisher published nothing: {publisher.log_tail(800)}")
        time.sleep(0.2)
    # Not kept open: a connection of the soak's own is not one Redis counts for the service.
    r.close()
    soak.phase = "empty"
    time.sleep(2)
    soak.sample(service, port, redis.url, None)
    url = f"ws://127.0.0.1:{port}/ws"
    argv = native.generator_argv(url, plan.steady, plan.max_hz, 20, plan.boards)
    if reconnect:
        argv.append("--reconnect")
    viewers = Child("soak-viewers", argv, cwd=ROOT, log_dir=logs, pipe=True)
    children.append(viewers)
    connected = viewers.recv(timeout=120 + plan.steady / 100)
    soak.event("steady viewers connected", ok=connected["ok"], failed=connected["failed"],
               reconnect=reconnect)
    clients = Child("soak-clients", [PY, "-m", "bench.soak_clients", "--port", str(port),
                                     "--symbols", ",".join(symbols), "--secret", SECRET,
                                     "--every", str(plan.every)],
                    cwd=ROOT, log_dir=logs, pipe=True)
    children.append(clients)
    clients.recv(timeout=30)
    soak.load = {"generator": viewers, "churn": clients}
    viewers.send({"cmd": "start"})

    def take() -> None:
        soak.sample(service, port, redis.url, viewers)

    soak.phase = "warm-up"
    soak.run_for(plan.warmup_s, take)

    def churn(seconds: float, at: list[tuple[float, Callable[[], None]]]) -> dict[str, int]:
        """Churn and every-mode consumers for `seconds` (with `at`'s events), then until
        every churn client and consumer is gone, and the settling samples."""
        clients.send({"cmd": "every", "on": True})
        clients.recv(timeout=30)
        clients.send({"cmd": "churn", "rate": plan.churn_rate, "vanish_s": plan.vanish_s})
        soak.event(f"{soak.phase} started", rate=plan.churn_rate)
        soak.run_for(seconds, take, at)
        soak.phase = f"{soak.phase}: drain"
        clients.send({"cmd": "stop_churn"})
        stopped: dict[str, int] = clients.recv(timeout=plan.vanish_s + 120)["counts"]
        clients.send({"cmd": "every", "on": False})
        clients.recv(timeout=30)
        soak.event("churn stopped, its clients gone",
                   clients=sum(v for k, v in stopped.items() if ":" in k))
        # The service holds the steady viewers only: wait on that (a client the service
        # has not noticed leaving still counts), sampling meanwhile.
        deadline = time.monotonic() + 90
        while True:
            take()
            last = soak.samples[-1]
            held = sum(w["connections"] for w in last["workers"].values())
            if held == last["steady"]["open"] and len(last["workers"]) == 2:
                soak.event("the service holds the steady viewers only", held=held)
                break
            if time.monotonic() > deadline:
                soak.event("the service still holds more than the steady viewers", held=held,
                           steady=last["steady"]["open"])
                break
            time.sleep(plan.sample_s)
        soak.phase = "settle"
        soak.run_for(plan.sample_s * (plan.settle_samples + 1), take)
        return stopped

    soak.phase = "pre-churn"
    prechurn = churn(plan.prechurn_s, [])
    before = baseline(soak.samples[-plan.settle_samples:])
    before_redis = statistics.median(
        s["redis"]["connected_clients"] or 0 for s in soak.samples[-plan.settle_samples:])
    killed: dict[str, Any] = {}

    def restart_redis() -> None:
        soak.event("redis-server SIGKILL")
        redis.kill()
        time.sleep(1.0)
        if not redis.start():
            raise SystemExit(f"redis-server did not start again: {redis.log()}")
        soak.event("redis-server started again", port=redis.port)

    def kill_worker() -> None:
        pid = min(tree_pids(service.pid)[1:])
        killed["pid"] = pid
        os.kill(pid, signal.SIGKILL)
        soak.event("worker SIGKILL", pid=pid)

    soak.phase = "churn"
    stopped = churn(plan.churn_s, [(plan.churn_s * plan.redis_restart_at, restart_redis),
                                   (plan.churn_s * plan.worker_kill_at, kill_worker)])
    after = baseline(soak.samples[-plan.settle_samples:])
    after_redis = statistics.median(
        s["redis"]["connected_clients"] or 0 for s in soak.samples[-plan.settle_samples:])
    # The end: the publisher stops; every board and every every-mode consumer must hold
    # the last seq of every symbol; the every-mode consumers' quotes against the tape.
    viewers.send({"cmd": "stop"})
    last_window = viewers.recv(timeout=60)
    publisher.stop()
    t_stop = time.time()
    with contextlib.closing(redis_sync.Redis.from_url(redis.url)) as client:
        seqs = final_seqs(client)
    viewers.send({"cmd": "final", "seqs": seqs, "t_stop": t_stop, "deadline_s": 5.0})
    converged = viewers.recv(timeout=60)
    clients.send({"cmd": "every", "on": True})
    clients.recv(timeout=30)
    clients.send({"cmd": "final", "seqs": seqs, "deadline_s": 30})
    every = clients.recv(timeout=90)
    r = redis_sync.Redis.from_url(redis.url)
    tape = tape_check(r, every["consumers"])
    r.close()
    alive = service.alive()
    return {
        "plan": asdict(plan),
        "age_limit_ms": plan.age_limit_ms,
        "generator_reconnect": reconnect,
        "steady_connected": connected,
        "samples": soak.samples,
        "events": soak.events,
        "windows": soak.windows,
        "killed_worker": killed.get("pid"),
        "before": before,
        "after": after,
        "redis_clients": {"before": before_redis, "after": after_redis},
        "churn": stopped,
        "prechurn": prechurn,
        "last_window": {k: last_window[k] for k in ("open", "closes", "conns")},
        "converged": converged,
        "every": {"held_final": every["held_final"], "consumers": len(every["consumers"]),
                  "sessions": sum(c["sessions"] for c in every["consumers"]),
                  "unrecovered": sum(c["unrecovered"] for c in every["consumers"]),
                  **tape},
        "service_alive": alive,
    }


def tape_check(r: redis_sync.Redis, consumers: list[dict[str, Any]]) -> dict[str, Any]:
    """Each consumer's quotes of each symbol against the symbol's tape: every seq the tape
    holds from the first one the consumer got to the last is one it got (lost otherwise),
    and it got none twice (repeated)."""
    lost = repeated = checked = extra = 0
    tapes: dict[str, list[int]] = {}
    for c in consumers:
        for symbol, got in c["got"].items():
            if symbol not in tapes:
                entries: Any = r.xrange(LAYOUT.tape(symbol))
                tapes[symbol] = sorted(orjson_seq(fields) for _, fields in entries)
            runs = got["runs"]
            if not runs:
                continue
            first, last = runs[0][0], runs[-1][1]
            have: set[int] = set()
            for a, b in runs:
                have.update(range(a, b + 1))
            want = {s for s in tapes[symbol] if first <= s <= last}
            lost += len(want - have)
            extra += len(have - want)
            repeated += got["repeats"]
            checked += len(have)
    return {"checked": checked, "lost": lost, "repeated": repeated, "not_on_tape": extra}


def orjson_seq(fields: dict[bytes, bytes]) -> int:
    return int(orjson.loads(fields[b"q"])["seq"])


# ---- verdicts and the report ----------------------------------------------------------------

def compare(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the before/after table: per worker, each figure, the margin and whether it
    holds. A worker killed in the middle is compared, in what it holds beyond its
    connections, with the one its supervisor started in its place; its RSS is not
    comparable (another process) and reported on its own."""
    before, after = data["before"], data["after"]
    killed = str(data["killed_worker"]) if data["killed_worker"] else None
    survivors = [p for p in before if p in after]
    new = [p for p in after if p not in before]
    pairs = [(p, p) for p in survivors] + ([(killed, new[0])] if killed and new else [])
    kb_per_conn = idle_kb_per_conn(data)
    rows = []
    for old, cur in pairs:
        b, a = before[old], after[cur]
        label = old if old == cur else f"{old} -> {cur} (restarted)"
        moved = a["connections"] - b["connections"]
        rows.append({"worker": label, "figure": "connections", "before": b["connections"],
                     "after": a["connections"], "margin": "reported", "ok": True})
        rows.append({"worker": label, "figure": "Redis connections", "before": b["redis_conns"],
                     "after": a["redis_conns"], "margin": "reported (pools: their peak)",
                     "ok": True})
        if old == cur:
            margin = RSS_MARGIN_MB + abs(moved) * kb_per_conn / 1024
            diff = a["rss_mb"] - b["rss_mb"]
            rows.append({"worker": label, "figure": "RSS MB", "before": b["rss_mb"],
                         "after": a["rss_mb"], "margin": f"±{margin:.1f}"
                         + (f" (5 + {moved:+g} conns × {kb_per_conn:.0f} KB)" if moved else ""),
                         "ok": abs(diff) <= margin})
        else:
            rows.append({"worker": label, "figure": "RSS MB", "before": b["rss_mb"],
                         "after": a["rss_mb"], "margin": "n/a: another process", "ok": True})
        nb, na = normalized(b), normalized(a)
        for key in nb:
            # Viewers that moved in (a worker killed) join the least full phase of their
            # group and open a new one only when every phase is full, so the phases they
            # fill are not always the fewest possible: up to one more per 1,000 moved.
            slack = math.ceil(abs(moved) / PHASE_MEMBERS) if key == "groups_beyond_steady" else 0
            rows.append({"worker": label, "figure": key, "before": nb[key], "after": na[key],
                         "margin": f"+{slack} ({moved:+g} viewers moved)" if slack else "exact",
                         "ok": 0 <= na[key] - nb[key] <= slack})
    rc = data["redis_clients"]
    others = [rc[k] - sum(w["redis_conns"] for w in data[k].values()) for k in ("before", "after")]
    rows.append({"worker": "redis", "figure": "connected_clients", "before": rc["before"],
                 "after": rc["after"], "margin": "reported", "ok": True})
    rows.append({"worker": "redis", "figure": "clients not a worker's", "before": others[0],
                 "after": others[1], "margin": "exact", "ok": others[0] == others[1]})
    return rows


def idle_kb_per_conn(data: dict[str, Any]) -> float:
    """The RSS a steady viewer costs a worker: the warm-up's rise over the empty sample."""
    empty = next(s for s in data["samples"] if s["phase"] == "empty")
    warm = [s for s in data["samples"] if s["phase"] == "warm-up"][-1]
    rises = []
    for pid, fig in warm["workers"].items():
        if pid in empty["workers"] and fig["connections"] > 0:
            rises.append(1024 * (fig["rss_mb"] - empty["workers"][pid]["rss_mb"])
                         / fig["connections"])
    return max(0.0, statistics.fmean(rises)) if rises else 0.0


def growth(data: dict[str, Any]) -> dict[str, float | None]:
    """Per worker, RSS MB/hour over the steady part: the churn, from the first sample after
    the later event's settling (a restarted worker: from its first sample), by least
    squares; and over the whole churn for a worker that ran through it."""
    events = [e["t"] for e in data["events"] if e["event"] in ("worker SIGKILL",
                                                                "redis-server started again")]
    settle = (max(events) if events else 0) + 3 * data["plan"]["sample_s"]
    out: dict[str, float | None] = {}
    churn = [s for s in data["samples"] if s["phase"] == "churn"]
    for pid in {p for s in churn for p in s["workers"]}:
        whole = [(s["t"], s["workers"][pid]["rss_mb"]) for s in churn if pid in s["workers"]]
        late = [(t, v) for t, v in whole if t >= settle]
        out[f"{pid} (whole churn)"] = fit_mb_per_h(whole)
        out[f"{pid} (after the events)"] = fit_mb_per_h(late)
    return out


def age_verdict(data: dict[str, Any]) -> dict[str, Any]:
    """The steady viewers' p99 age per window, against the bound; a window within two
    sample periods after an event is reported apart (quotes the feed held back while Redis
    was away, viewers reconnecting after the kill) and not held to it."""
    limit = data["age_limit_ms"]
    span = 2 * data["plan"]["sample_s"]
    marks = [e["t"] for e in data["events"]
             if e["event"] in ("redis-server SIGKILL", "worker SIGKILL")]
    calm: list[dict[str, int]] = []
    stormy: list[dict[str, int]] = []
    worst_calm = 0
    for w in data["windows"]:
        if w["phase"] == "empty" or not w["ages"]:
            continue
        near = any(m <= w["t"] <= m + span + data["plan"]["sample_s"] for m in marks)
        (stormy if near else calm).append(w["ages"])
        if not near:
            worst_calm = max(worst_calm, report.percentile(report.merge_hist(w["ages"]), 99) or 0)
    p99_calm = report.percentile(report.merge_hist(*calm), 99) if calm else None
    p99_storm = report.percentile(report.merge_hist(*stormy), 99) if stormy else None
    return {"limit_ms": limit, "p99_ms": p99_calm, "worst_window_p99_ms": worst_calm,
            "p99_near_events_ms": p99_storm, "windows": len(calm), "windows_near_events": len(stormy),
            "ok": p99_calm is not None and p99_calm <= limit}


def cpu_by_phase(samples: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean worker CPU (% of one core, per worker) and machine busy % per phase: whether
    late quotes came with a worker at its limit, or with a machine busy with others."""
    out: dict[str, dict[str, float | None]] = {}
    for phase in dict.fromkeys(s["phase"] for s in samples):
        these = [s for s in samples if s["phase"] == phase]
        workers = [w["cpu_pct"] for s in these for w in s["workers"].values()
                   if w.get("cpu_pct") is not None]
        machine = [s["machine_busy_pct"] for s in these if s.get("machine_busy_pct") is not None]
        out[phase] = {"workers": round(statistics.fmean(workers), 1) if workers else None,
                      "machine": round(statistics.fmean(machine), 1) if machine else None}
        for name in ("generator", "churn"):
            values = [s["load_cpu_pct"].get(name) for s in these if s.get("load_cpu_pct")]
            known = [v for v in values if v is not None]
            out[phase][name] = round(statistics.fmean(known), 1) if known else None
    return out


def verdicts(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = data["table"]
    conv = data["converged"]
    every = data["every"]
    steady_ok = data["last_window"]["open"] == data["plan"]["steady"]
    return {
        "back to baseline": {"ok": all(r["ok"] for r in rows),
                             "failed": [f"{r['worker']} {r['figure']}" for r in rows if not r["ok"]]},
        "steady p99 age": data["ages"],
        "boards converged": {"ok": conv["boards"] > 0 and conv["converged"] == conv["boards"],
                             "converged": conv["converged"], "boards": conv["boards"]},
        "every mode: none lost, none repeated": {
            "ok": every["lost"] == 0 and every["repeated"] == 0 and every["checked"] > 0
            and every["held_final"] == every["consumers"],
            "checked": every["checked"], "lost": every["lost"], "repeated": every["repeated"],
            "held_final": f"{every['held_final']}/{every['consumers']}"},
        "steady viewers all back": {"ok": steady_ok or not data["generator_reconnect"],
                                    "open": data["last_window"]["open"],
                                    "of": data["plan"]["steady"],
                                    "note": "" if data["generator_reconnect"] else
                                    "the generator has no --reconnect: the killed worker's "
                                    "viewers are not expected back"},
        "service alive": {"ok": data["service_alive"]},
    }


def markdown(data: dict[str, Any]) -> str:
    plan = data["plan"]
    lines = [
        f"Soak run {data['started']}, {data['duration_s']} s (mode {data['mode']}): WORKERS=2 on "
        f"Redis, publisher {plan['rate']:g} quotes/s; {plan['steady']:,} steady viewers at "
        f"max_hz {plan['max_hz']:g}; churn {plan['churn_rate']:g} clients/s for "
        f"{plan['churn_s']:g} s ({sum(v for k, v in data['churn'].items() if ':' in k):,} "
        f"clients, vanished ones held {plan['vanish_s']:g} s); {plan['every']} every-mode "
        f"consumers; sampled every {plan['sample_s']:g} s.",
        "",
        "Events: " + "; ".join(f"{e['event']} at {e['t']:g} s" for e in data["events"]) + ".",
        "",
        f"Before (after a first churn of {plan['prechurn_s']:g} s without events, its clients "
        "gone) and after (the churn with the events stopped, its clients gone), medians of "
        f"{plan['settle_samples']} samples; per worker, what it holds beyond its connections "
        "(each steady websocket is one fd, one task and one hub member; the steady viewers' "
        "groups are one per 1,000 members):",
        "",
        "| worker | figure | before | after | margin | holds |",
        "|---|---|---|---|---|---|",
    ]
    for row in data["table"]:
        lines.append(f"| {row['worker']} | {row['figure']} | {row['before']:g} | "
                     f"{row['after']:g} | {row['margin']} | {'yes' if row['ok'] else '**no**'} |")
    ages = data["ages"]
    every = data["every"]
    lines += ["", "CPU, mean per phase (the ages are the generator's, on the same 2 cores as "
              "the churn and anything else running): " + "; ".join(
        f"{phase}: workers {cpu['workers']}% of a core each, generator {cpu.get('generator')}%, "
        f"churn {cpu.get('churn')}%, machine {cpu['machine']}% busy"
        for phase, cpu in data["cpu"].items()) + "."]
    lines += [
        "",
        "RSS growth, MB/hour (least squares over the churn's samples): "
        + ", ".join(f"worker {k}: {v if v is not None else '–'}" for k, v in
                    sorted(data["growth"].items())) + ".",
        "",
        f"Steady viewers' p99 age: {ages['p99_ms']} ms over {ages['windows']} windows (worst "
        f"window {ages['worst_window_p99_ms']} ms), limit {ages['limit_ms']:g} ms = 1000/max_hz "
        f"+ FANOUT_INTERVAL_MS {FANOUT_INTERVAL_MS} + {AGE_SLACK_MS} ms slack; within two "
        f"samples after an event ({ages['windows_near_events']} windows): p99 "
        f"{ages['p99_near_events_ms']} ms, reported, not held to the limit.",
        f"Boards: {data['converged']['converged']}/{data['converged']['boards']} converged. "
        f"Every mode: {every['checked']:,} quotes checked against the tape over "
        f"{every['sessions']} sessions: {every['lost']} lost, {every['repeated']} repeated, "
        f"{every['not_on_tape']} not on the tape, {every['unrecovered']} symbols unrecovered; "
        f"{every['held_final']}/{every['consumers']} held the final seqs.",
        "",
        "Verdicts:",
        "",
    ]
    for name, v in data["verdicts"].items():
        detail = {k: x for k, x in v.items() if k != "ok" and x not in ("", [])}
        lines.append(f"- {name}: {'pass' if v['ok'] else '**FAIL**'}"
                     + (f" ({detail})" if detail and not v["ok"] else ""))
    lines += ["", "![soak](soak.png)" if data.get("chart") else "", ""]
    return "\n".join(lines)


def chart(data: dict[str, Any], path: Path) -> bool:
    if not report.HAVE_MPL:
        return False
    import matplotlib.pyplot as plt
    samples = data["samples"]
    pids = sorted({p for s in samples for p in s["workers"]}, key=int)
    panels = [("rss_mb", "RSS, MB"), ("fds", "open fds"), ("tasks", "asyncio tasks"),
              ("groups", "hub groups"), ("members", "hub members")]
    fig, axes = plt.subplots(5, 2, figsize=(13, 15), sharex=True)
    flat = list(axes.flat)
    for ax, (key, title) in zip(flat, panels, strict=False):
        for pid in pids:
            pts = [(s["t"], s["workers"][pid][key]) for s in samples if pid in s["workers"]
                   and s["workers"][pid][key] >= 0]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=f"worker {pid}")
        ax.set_title(title)
    ax = flat[5]
    pts = [(s["t"], s["redis"]["used_memory"] / 2**20) for s in samples
           if s["redis"]["used_memory"] is not None]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color="tab:red")
    ax.set_title("Redis used_memory, MB")
    ax = flat[6]
    pts = [(s["t"], s["redis"]["connected_clients"]) for s in samples
           if s["redis"]["connected_clients"] is not None]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color="tab:red")
    ax.set_title("Redis connected_clients")
    ax = flat[7]
    pts = [(s["t"], s["steady"]["p99_ms"]) for s in samples
           if "steady" in s and s["steady"]["p99_ms"] is not None]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color="tab:green")
    ax.axhline(data["age_limit_ms"], color="grey", linestyle="--", linewidth=1)
    ax.set_title("steady viewers' p99 age per window, ms (limit dashed)")
    ax = flat[8]
    for pid in pids:
        pts = [(s["t"], s["workers"][pid]["cpu_pct"]) for s in samples
               if pid in s["workers"] and s["workers"][pid].get("cpu_pct") is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=f"worker {pid}")
    ax.set_title("worker CPU, % of one core")
    ax = flat[9]
    pts = [(s["t"], s["machine_busy_pct"]) for s in samples if s.get("machine_busy_pct") is not None]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color="black")
    ax.set_ylim(0, 105)
    ax.set_title("machine busy, % of all CPUs (anyone's processes)")
    churn = [s["t"] for s in samples if s["phase"] == "churn"]
    for ax in flat:
        ax.grid(True, alpha=0.3)
        if churn:
            ax.axvspan(min(churn), max(churn), color="orange", alpha=0.08)
        for e in data["events"]:
            if e["event"] in ("redis-server SIGKILL", "worker SIGKILL"):
                ax.axvline(e["t"], color="red" if "redis" in e["event"] else "purple",
                           linewidth=0.8, linestyle=":")
    flat[0].legend(fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("seconds (churn shaded; dotted: Redis restart red, worker kill purple)")
    fig.suptitle(f"Soak with churn ({data['mode']}, {data['started']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="about how long (default 30)")
    parser.add_argument("--quick", action="store_true",
                        help="about 90 s: 200 steady viewers, churn 20/s, samples every 2 s")
    parser.add_argument("--sample-s", type=float, help="seconds between samples")
    parser.add_argument("--steady", type=int, help="steady viewers")
    parser.add_argument("--churn-rate", type=float, help="new churn clients a second")
    parser.add_argument("--out", type=Path, help="default bench/results (quick: bench/results/tmp)")
    args = parser.parse_args(argv)
    if args.minutes < 3 and not args.quick:
        parser.error("--minutes: at least 3 (or --quick)")
    plan = Plan.quick() if args.quick else Plan.for_minutes(args.minutes)
    for name in ("sample_s", "steady", "churn_rate"):
        value = getattr(args, name)
        if value is not None:
            if value <= 0:
                parser.error(f"--{name.replace('_', '-')}: must be positive")
            setattr(plan, name, value)
    out: Path = args.out or ROOT / "bench" / "results" / ("tmp/soak-quick" if args.quick else "")
    logs = out / "logs-soak" if args.quick else ROOT / "bench" / "results" / "tmp" / "logs-soak"
    started = time.time()
    print(f"soak: {asdict(plan)}", flush=True)
    data = run(plan, logs, lambda line: print(line, flush=True))
    data["mode"] = "quick" if args.quick else f"{args.minutes:g} minutes"
    data["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started))
    data["duration_s"] = round(time.time() - started)
    data["table"] = compare(data)
    data["growth"] = growth(data)
    data["ages"] = age_verdict(data)
    data["cpu"] = cpu_by_phase(data["samples"])
    data["verdicts"] = verdicts(data)
    out.mkdir(parents=True, exist_ok=True)
    data["chart"] = chart(data, out / "soak.png")
    write_results(out, "soak", data, markdown(data))
    failed = [name for name, v in data["verdicts"].items() if not v["ok"]]
    if failed:
        print("soak FAILED: " + "; ".join(failed))
        return 1
    print("soak passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
