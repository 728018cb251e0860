"""Reconnect storm (issue 25): a crowd loses its server at once and comes back.

    python -m bench.storm [--viewers 20000] [--quick] [--scenarios kill,redis]
                          [--max-hz 1] [--rate 20] [--per-address 50] [--set NAME=VALUE ...]

The stack, started afresh for each scenario, all on 127.0.0.1: one redis-server of the
run's own; the project's publisher (`python -m publisher simulate`, RATE quotes/s); two
service instances, each a supervisor with as many SO_REUSEPORT workers as the open-file
limit makes a survivor need for the whole crowd; Debian's nginx running deploy/nginx.conf
(tests/nginx_server.py), rewritten only for the test machine and for the crowd: worker
processes, worker_connections and worker_rlimit_nofile for ~2 descriptors per viewer, and
`reuseport` so the kernel spreads the viewers over its workers. The viewers are the native
generator (bench/viewers_load.c) with --reconnect, i.e. the SDKs' jittered back-off,
spread over as many processes as the open-file limit needs, each viewer from one of many
127.x source addresses (PER_ADDRESS viewers each, as a public crowd comes from many
addresses; one address per process would be a NAT'd crowd, see docs/operations.md).

Scenarios (each after every viewer is in, with its board, and a baseline):

- **kill**: SIGKILL one whole instance (its supervisor and every worker at once). Its
  viewers see their sockets end, reconnect through nginx (which skips the dead instance)
  and land on the survivor, whose admission (MAX_CONNECTS_PER_S per worker, the per-address
  rates) turns the excess away with 1013 until the back-off spreads them.
- **redis**: restart redis-server (SIGTERM, then again on its port, empty, as
  tests/redis_server.py restarts it). Every viewer should get a `stale` then a `live`
  status, and nobody should be disconnected.

Measured, from the generators' per-second counts (`stats.reconnect`, bench/viewers_load.c)
and the instances' /metrics sampled every second: the time from the fault until every
viewer is back with its board (its snapshot after it reconnected; for `redis`, its `live`
status), the peak connects per second the survivors admitted and refused, the refusals per
viewer (a refusal loop: a viewer refused more than REFUSAL_LOOP times), and for the viewers
never disconnected since the baseline began (the survivors), their quotes' ages (p50, p99)
and their longest silence (a stall: longer than --stall-s). At the end the publisher
stops and the sampled boards must reach its final seqs. Nothing here is pinned: the whole
machine (2 cores where this was written) serves, proxies and generates at once, so the
figures are the stack's, not the service's alone.

Writes storm.json and storm.md to bench/results/ (quick: bench/results/tmp/storm-quick).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_sync

from bench import native
from bench.harness import machine, source_state, versions
from bench.output import write_results
from bench.peers import ROOT
from bench.procs import Child, busy_pct, cpu_times, raise_nofile, tree_pids
from bench.report import merge_hist, percentile
from bench.viewers import final_seqs
from quote_bus.layout import Layout
from service.settings import Settings
from tests.nginx_server import Nginx
from tests.redis_server import RedisServer, free_port

PY = sys.executable
RESULTS = ROOT / "bench" / "results"
SCENARIOS = ("kill", "redis")
# Descriptors a process keeps for itself beside its sockets.
FD_MARGIN = 500
# A generator process holds at most this many viewers: one epoll loop each, fewer wake-ups.
PER_GENERATOR = 10_000
# A viewer refused more often than this during one storm is in a refusal loop.
REFUSAL_LOOP = 8
# The service's admission settings, as the run used them (defaults unless --set).
ADMISSION = ("MAX_CONNECTIONS", "MAX_CONNECTS_PER_S", "MAX_CONNECTIONS_PER_IP",
             "MAX_CONNECTS_PER_IP_PER_S", "MAX_CONNECTS_PER_IP_BURST")


@dataclass(frozen=True)
class Plan:
    viewers: int
    max_hz: float = 1.0
    rate: float = 20.0
    per_address: int = 50
    boards: int = 8  # per generator: the sampled boards `final` checks
    decode_every: int = 10
    baseline_s: float = 3.0
    after_s: float = 3.0  # survivors watched on after everyone is back
    connect_timeout_s: float = 180.0
    recover_timeout_s: float = 180.0
    stall_s: float = 5.0
    service_env: Mapping[str, str] = field(default_factory=dict)
    quick: bool = False


def fd_limit() -> int:
    """What one process may open: the hard limit (not raisable in a container)."""
    return raise_nofile()


def layout(plan: Plan) -> dict[str, int]:
    """Processes the crowd needs: a survivor's workers hold every viewer, nginx's workers
    two descriptors per viewer, the generators one."""
    usable = fd_limit() - FD_MARGIN
    return {"workers": max(1, math.ceil(plan.viewers / usable)),
            "nginx_workers": max(2, math.ceil(2 * plan.viewers / usable) + 1),
            "generators": max(1, math.ceil(plan.viewers / min(usable, PER_GENERATOR)))}


def nginx_rewrites(nginx_workers: int) -> list[tuple[str, str]]:
    limit = fd_limit()
    return [(r"^worker_processes auto;$", f"worker_processes {nginx_workers};"),
            (r"^worker_rlimit_nofile \d+;$", f"worker_rlimit_nofile {limit};"),
            (r"^(\s*)worker_connections \d+;$", rf"\1worker_connections {limit - 100};"),
            (r"^(\s*listen 127\.0\.0\.1:\d+);$", r"\1 reuseport backlog=4096;")]


def service_env(plan: Plan, redis_url: str, port: int, workers: int, metrics_dir: Path) -> dict[str, str]:
    """An instance's environment: its workers share /metrics through `metrics_dir` (in the
    run's own directory, so a SIGKILLed supervisor leaves nothing behind)."""
    env = {"REDIS_URL": redis_url, "HOST": "127.0.0.1", "PORT": str(port),
           "WORKERS": str(workers), "LOG_LEVEL": "WARNING", "ALLOWED_ORIGINS": "*",
           "ANONYMOUS": "realtime", **plan.service_env}
    if workers > 1:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


def admission(plan: Plan) -> dict[str, int]:
    """The admission settings in force: the service's defaults, or what --set gave."""
    defaults = Settings()
    return {name: int(plan.service_env.get(name, getattr(defaults, name.lower())))
            for name in ADMISSION}


# ---- the instances' /metrics -----------------------------------------------------------

METRIC = re.compile(r'^(quote_service_[a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+)$', re.MULTILINE)


def scrape(port: int, timeout: float = 2.0) -> dict[str, float] | None:
    """`name` or `name{labels}` -> value, of one instance's /metrics (None: no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except (OSError, ValueError):
        return None
    return {f"{m[1]}{{{m[2]}}}" if m[2] else m[1]: float(m[3]) for m in METRIC.finditer(text)}


def refused_capacity(sample: Mapping[str, float]) -> float:
    return sum(v for k, v in sample.items() if k.startswith("quote_service_connections_refused_total")
               and 'reason="capacity"' in k)


def refused_rate(sample: Mapping[str, float]) -> float:
    return sum(v for k, v in sample.items() if k.startswith("quote_service_connections_refused_total")
               and 'reason="address_rate"' in k)


class MetricsSampler:
    """Every instance's /metrics once a second, in a thread, so a scrape slowed by the storm
    never holds up the generators' polling: (time, port, sample)."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self.samples: list[tuple[float, int, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.time()
            for port in self.ports:
                sample = scrape(port)
                if sample is not None:
                    self.samples.append((time.time(), port, sample))
            self._stop.wait(max(0.0, 1.0 - (time.time() - t0)))

    def __enter__(self) -> MetricsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def per_second(self, port: int, since: float) -> dict[str, Any]:
        """One instance's refusals per second (capacity: MAX_CONNECTIONS or
        MAX_CONNECTS_PER_S; address_rate: MAX_CONNECTS_PER_IP_PER_S) and open connections,
        from `since` on."""
        rows = [(t, s) for t, p, s in self.samples if p == port and t >= since - 1.0]
        out: dict[str, Any] = {"capacity_per_s": [], "address_rate_per_s": [], "connections": []}
        for (t0, a), (t1, b) in itertools.pairwise(rows):
            dt = max(t1 - t0, 1e-3)
            out["capacity_per_s"].append(round((refused_capacity(b) - refused_capacity(a)) / dt, 1))
            out["address_rate_per_s"].append(round((refused_rate(b) - refused_rate(a)) / dt, 1))
            out["connections"].append(int(b.get("quote_service_connections", 0)))
        if rows:
            out["capacity_total"] = refused_capacity(rows[-1][1]) - refused_capacity(rows[0][1])
            out["address_rate_total"] = refused_rate(rows[-1][1]) - refused_rate(rows[0][1])
        return out


# ---- the stack ---------------------------------------------------------------------------

class Stack:
    """Redis, the publisher, two instances, nginx and the generators of one scenario."""

    def __init__(self, plan: Plan, workdir: Path, logs: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.logs = logs
        self.layout = layout(plan)
        self.redis = RedisServer(workdir)
        self.instances: list[Child] = []
        self.ports = [free_port(), free_port()]
        self.publisher: Child | None = None
        self.nginx: Nginx | None = None
        self.generators: list[Child] = []
        self.sizes: list[int] = []

    def start_instance(self, i: int) -> Child:
        metrics_dir = self.workdir / f"metrics-{i}"
        metrics_dir.mkdir(exist_ok=True)
        env = service_env(self.plan, self.redis.url, self.ports[i], self.layout["workers"], metrics_dir)
        return Child(f"service-{i}", [PY, "-m", "service"], env=env, cwd=ROOT, log_dir=self.logs)

    def wait_ready(self, i: int, timeout: float = 30.0) -> None:
        """Until every worker of instance i serves (its /metrics counts them)."""
        child = self.instances[i]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise RuntimeError(f"service {i} exited:\n{child.log_tail()}")
            sample = scrape(self.ports[i], timeout=1.0)
            if sample and sample.get("quote_service_workers", 0) >= self.layout["workers"]:
                return
            time.sleep(0.1)
        raise RuntimeError(f"service {i} not ready in {timeout:g} s:\n{child.log_tail()}")

    def start(self) -> None:
        if not self.redis.start():
            raise RuntimeError(f"redis-server did not start:\n{self.redis.log()}")
        self.publisher = Child("publisher", [PY, "-m", "publisher", "--log-level", "WARNING", "simulate",
                                             "--rate", f"{self.plan.rate:g}", "--seed", "1"],
                               env={"REDIS_URL": self.redis.url}, cwd=ROOT, log_dir=self.logs)
        self.instances = [self.start_instance(i) for i in range(2)]
        for i in range(2):
            self.wait_ready(i)
        self.nginx = Nginx(self.ports, self.workdir, nginx_rewrites(self.layout["nginx_workers"]))
        self.nginx.start()
        n, k = self.plan.viewers, self.layout["generators"]
        self.sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
        for i, size in enumerate(self.sizes):
            argv = native.generator_argv(self.nginx.ws_url, size, self.plan.max_hz, self.plan.decode_every,
                                         self.plan.boards, reconnect=True, bind=f"127.{i + 1}.0.1",
                                         bind_count=max(1, math.ceil(size / self.plan.per_address)))
            argv += ["--connect-timeout", f"{self.plan.connect_timeout_s:g}"]
            self.generators.append(Child(f"viewers-{i}", argv, cwd=ROOT, log_dir=self.logs, pipe=True))

    def nginx_errors(self) -> dict[str, int]:
        """nginx's error log, its lines counted by what they say (addresses and numbers
        taken out): why a viewer got a 502, say."""
        if self.nginx is None:
            return {}
        kinds: Counter[str] = Counter()
        with contextlib.suppress(OSError), open(self.nginx.error_log, errors="replace") as f:
            for line in f:
                text = line.split("] ", 1)[-1].split(", client:", 1)[0]
                kinds[re.sub(r"\d+", "N", text).strip()] += 1
        return dict(kinds.most_common(12))

    def stop(self) -> None:
        for g in self.generators:
            with contextlib.suppress(OSError, ValueError):
                g.send({"cmd": "quit"})
            g.stop(timeout=5)
        if self.nginx is not None:
            self.nginx.stop()
        for child in self.instances:
            child.stop(timeout=15)
        if self.publisher is not None:
            self.publisher.stop(timeout=10)
        self.redis.stop()

    def kill_instance(self, i: int) -> None:
        """SIGKILL the supervisor and every worker at once: no drain, no close frame."""
        child = self.instances[i]
        for pid in tree_pids(child.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        child.proc.wait(10)

    def poll(self) -> list[dict[str, Any]]:
        """Every generator's `stats` now (its window goes on)."""
        for g in self.generators:
            g.send({"cmd": "stop"})
        return [g.recv(timeout=30) for g in self.generators]

    def start_window(self) -> None:
        for g in self.generators:
            g.send({"cmd": "start"})

    def converge(self) -> dict[str, Any]:
        """Stop the publisher; every sampled board must reach its final seqs."""
        assert self.publisher is not None
        self.publisher.stop(timeout=10)
        t_stop = time.time()
        client = redis_sync.Redis.from_url(self.redis.url)
        try:
            seqs = final_seqs(client, Layout())  # the publisher's default partitions
        finally:
            client.close()
        for g in self.generators:
            g.send({"cmd": "final", "seqs": seqs, "t_stop": t_stop, "deadline_s": 10.0})
        answers = [g.recv(timeout=30) for g in self.generators]
        return {"symbols": len(seqs), "boards": sum(a["boards"] for a in answers),
                "converged": sum(a["converged"] for a in answers),
                "max_s": max((a["max_s"] for a in answers if a["max_s"] is not None), default=None)}


@contextlib.contextmanager
def stack(plan: Plan, logs: Path) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as workdir:
        s = Stack(plan, Path(workdir), logs)
        try:
            s.start()
            yield s
        finally:
            s.stop()


def all_in(stats: Sequence[dict[str, Any]], sizes: Sequence[int]) -> bool:
    """Every viewer open with its board."""
    return all(s["reconnect"]["synced"] == n for s, n in zip(stats, sizes, strict=True))


def wait_all_in(s: Stack, timeout: float) -> list[dict[str, Any]]:
    connected = [g.recv(timeout=timeout) for g in s.generators]
    for c in connected:
        if c.get("event") != "connected":
            raise RuntimeError(f"a generator said {c}")
    deadline = time.monotonic() + timeout
    while True:
        stats = s.poll()
        if all_in(stats, s.sizes):
            return stats
        if time.monotonic() > deadline:
            synced = sum(st["reconnect"]["synced"] for st in stats)
            raise RuntimeError(f"only {synced} of {s.plan.viewers} viewers in after {timeout:.0f} s")
        time.sleep(0.5)


# ---- one scenario ------------------------------------------------------------------------

def merged(stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The generators' `stats.reconnect` summed: per-second counts aligned on their `start`
    (sent to all within a few ms), histograms merged."""
    rcs = [s["reconnect"] for s in stats]
    seconds = max(len(rc["per_s"]["attempted"]) for rc in rcs)
    per_s = {kind: [sum(rc["per_s"][kind][i] for rc in rcs if i < len(rc["per_s"][kind]))
                    for i in range(seconds)] for kind in rcs[0]["per_s"]}
    refusals: Counter[int] = Counter()
    gaps: Counter[int] = Counter()
    refused_by: Counter[str] = Counter()
    closes: Counter[str] = Counter()
    for s, rc in zip(stats, rcs, strict=True):
        refusals.update({int(k): v for k, v in rc["refusals"].items()})
        gaps.update({int(k): v for k, v in rc["steady_gaps"].items()})
        refused_by.update(rc["refused_by"])
        closes.update(s["closes"])
    steady_ages = merge_hist(*(rc["steady_ages"] for rc in rcs))
    ages = merge_hist(*(s["ages"] for s in stats))
    syncs = [rc["last_sync"] for rc in rcs if rc["last_sync"] is not None]
    lives = [rc["last_live"] for rc in rcs if rc["last_live"] is not None]
    return {
        "per_s": per_s,
        "totals": {kind: sum(v) for kind, v in per_s.items()},
        "refused_by": dict(refused_by), "closes": dict(closes),
        "refusals": dict(sorted(refusals.items())),
        "max_refusals": max(rc["max_refusals"] for rc in rcs),
        "open": sum(s["open"] for s in stats),
        "synced": sum(rc["synced"] for rc in rcs),
        "waiting": sum(rc["waiting"] for rc in rcs), "connecting": sum(rc["connecting"] for rc in rcs),
        "stale": sum(rc["stale"] for rc in rcs), "live": sum(rc["live"] for rc in rcs),
        "last_sync": max(syncs, default=None), "last_live": max(lives, default=None),
        "steady": sum(rc["steady"] for rc in rcs),
        "steady_gaps_ms": dict(sorted(gaps.items())),
        "steady_max_gap_ms": max(rc["steady_max_gap_ms"] for rc in rcs),
        "steady_age_ms": {"p50": percentile(steady_ages, 50), "p99": percentile(steady_ages, 99),
                          "max": max((a for a, _ in steady_ages), default=None)},
        "age_ms": {"p50": percentile(ages, 50), "p99": percentile(ages, 99),
                   "max": max((a for a, _ in ages), default=None)},
    }


def peaks(per_s: Mapping[str, list[int]], first: int) -> dict[str, int]:
    return {kind: max(per_s[kind][first:], default=0) for kind in ("attempted", "admitted", "refused")}


def run_scenario(plan: Plan, name: str, logs: Path, say: Any = print) -> dict[str, Any]:
    with stack(plan, logs / name) as s:
        t0 = time.monotonic()
        wait_all_in(s, plan.connect_timeout_s)
        fill_s = round(time.monotonic() - t0, 1)
        say(f"  {name}: {plan.viewers} viewers in ({fill_s} s); baseline {plan.baseline_s:g} s")
        time.sleep(1.0)  # the fill's last snapshots and refusals are not the storm's
        with MetricsSampler(s.ports) as metrics:
            s.start_window()
            window_at = time.time()
            time.sleep(plan.baseline_s)
            cpu0 = cpu_times()
            fault_at = time.time()
            if name == "kill":
                s.kill_instance(0)
            else:
                s.redis.stop()
                if not s.redis.start():
                    raise RuntimeError(f"redis-server did not come back:\n{s.redis.log()}")
            say(f"  {name}: fault at +{fault_at - window_at:.1f} s")
            deadline = time.monotonic() + plan.recover_timeout_s
            back_at: float | None = None
            while True:
                time.sleep(0.5)
                stats = s.poll()
                m = merged(stats)
                if name == "kill":
                    done = all_in(stats, s.sizes) and m["totals"]["lost"] > 0
                else:
                    done = m["live"] == plan.viewers
                if done and back_at is None:
                    back_at = time.time()
                    cpu1 = cpu_times()
                    deadline = time.monotonic() + plan.after_s
                if back_at is not None and time.monotonic() >= deadline:
                    break
                if back_at is None and time.monotonic() >= deadline:
                    cpu1 = cpu_times()
                    break
        stats = s.poll()
        conv = s.converge()
        nginx_said = s.nginx_errors()
    m = merged(stats)
    first = int(fault_at - window_at)  # the per-second index of the fault
    end = m["last_sync"] if name == "kill" else m["last_live"]
    recovery_s = round(end - fault_at, 2) if back_at is not None and end is not None else None
    survivor = s.ports[1] if name == "kill" else None
    service = {str(i): metrics.per_second(port, fault_at) for i, port in enumerate(s.ports)}
    loops = sum(n for k, n in m["refusals"].items() if k > REFUSAL_LOOP)
    stalled = sum(n for k, n in m["steady_gaps_ms"].items() if k >= plan.stall_s * 1000)
    result: dict[str, Any] = {
        "scenario": name, "fill_s": fill_s, "fault_at_s": round(fault_at - window_at, 2),
        "recovered": back_at is not None, "recovery_s": recovery_s,
        "busy_pct": busy_pct(cpu0, cpu1, None),
        "lost": m["totals"]["lost"], "steady": m["steady"],
        "peak_per_s": peaks(m["per_s"], first),
        "service_peak_refused_per_s": max(
            (max(v["capacity_per_s"] + v["address_rate_per_s"], default=0.0)
             for p, v in service.items() if survivor is None or s.ports[int(p)] == survivor), default=0.0),
        "refusal_loops": loops, "stalled": stalled,
        "converged": conv,
        **{k: m[k] for k in ("refused_by", "closes", "refusals", "max_refusals", "open", "synced",
                             "stale", "live", "steady_max_gap_ms", "steady_age_ms", "age_ms",
                             "steady_gaps_ms", "totals")},
        "timeline": {"first_s": first, **{k: v[first:] for k, v in m["per_s"].items()}},
        "service": service, "nginx_errors": nginx_said,
    }
    result["fail_reasons"] = verdict(plan, result)
    result["pass"] = not result["fail_reasons"]
    say(f"  {name}: {one_line(result)}")
    return result


def verdict(plan: Plan, r: dict[str, Any]) -> list[str]:
    why = []
    if not r["recovered"]:
        why.append(f"not every viewer back in {plan.recover_timeout_s:g} s ({r['synced']} synced, "
                   f"{r['live']} live)")
    if r["open"] != plan.viewers:
        why.append(f"{plan.viewers - r['open']} viewers not open at the end")
    if r["refusal_loops"]:
        why.append(f"{r['refusal_loops']} viewers refused more than {REFUSAL_LOOP} times")
    if r["stalled"]:
        why.append(f"{r['stalled']} survivors silent for {plan.stall_s:g} s or more")
    if r["scenario"] == "redis":
        if r["lost"]:
            why.append(f"{r['lost']} viewers disconnected by a Redis restart")
        if r["stale"] != plan.viewers:
            why.append(f"{plan.viewers - r['stale']} viewers never saw the feed go stale")
    elif r["steady"] == 0:
        why.append("no survivor: every viewer was on the killed instance")
    conv = r["converged"]
    if conv["converged"] != conv["boards"]:
        why.append(f"{conv['boards'] - conv['converged']} of {conv['boards']} boards not converged")
    return why


def one_line(r: dict[str, Any]) -> str:
    p = r["peak_per_s"]
    return (f"{'PASS' if r['pass'] else 'FAIL'}: back in {r['recovery_s']} s; lost {r['lost']}; "
            f"peak {p['admitted']}/s admitted, {p['refused']}/s refused; max refusals "
            f"{r['max_refusals']}; {r['steady']} survivors: p99 age {r['steady_age_ms']['p99']} ms, "
            f"longest silence {r['steady_max_gap_ms']:.0f} ms; boards {r['converged']['converged']}/"
            f"{r['converged']['boards']}" + ("" if r["pass"] else f"; {'; '.join(r['fail_reasons'])}"))


# ---- the report ----------------------------------------------------------------------------

def markdown(data: dict[str, Any]) -> str:
    plan = data["plan"]
    lay = data["layout"]
    out = [
        "# Reconnect storm (issue 25)", "",
        f"{plan['viewers']:,} viewers (`?symbols=*&max_hz={plan['max_hz']:g}`, the SDKs' back-off) "
        f"through nginx ({lay['nginx_workers']} workers) to two instances of {lay['workers']} "
        f"worker(s) each, on one redis-server; the publisher at {plan['rate']:g} quotes/s; "
        f"{lay['generators']} generator process(es), {plan['per_address']} viewers per source "
        f"address. Admission: " + ", ".join(f"{k}={v}" for k, v in data["admission"].items()) + ".",
        f"Machine: {data['machine']['nproc']} CPUs, {data['machine']['cpu']}; nothing pinned. "
        f"Source: {data['source']}.", "",
        "| scenario | verdict | back in | lost | peak admitted/s | peak refused/s | refused by "
        "| service refused/s | max refusals | survivors | survivors' p50 / p99 age | longest silence "
        "| boards | busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["scenarios"].values():
        p = r["peak_per_s"]
        a = r["steady_age_ms"]
        out.append(
            f"| {r['scenario']} | {'pass' if r['pass'] else 'FAIL'} | {r['recovery_s']} s | {r['lost']:,} "
            f"| {p['admitted']:,} | {p['refused']:,} "
            f"| {', '.join(f'{k}: {v:,}' for k, v in sorted(r['refused_by'].items())) or '-'} "
            f"| {r['service_peak_refused_per_s']:,.0f} "
            f"| {r['max_refusals']} | {r['steady']:,} | {a['p50']} / {a['p99']} ms "
            f"| {r['steady_max_gap_ms'] / 1000:.1f} s "
            f"| {r['converged']['converged']}/{r['converged']['boards']} | {r['busy_pct']}% |")
    out += ["", "Per second from the fault (all generators): attempted / admitted / refused.", ""]
    for r in data["scenarios"].values():
        t = r["timeline"]
        rows = [f"{a}/{b}/{c}" for a, b, c in zip(t["attempted"], t["admitted"], t["refused"], strict=True)]
        out.append(f"- {r['scenario']}: " + " ".join(rows[:60]))
    fails = [f"- {r['scenario']}: " + "; ".join(r["fail_reasons"])
             for r in data["scenarios"].values() if r["fail_reasons"]]
    if fails:
        out += ["", "Failures:", "", *fails]
    out += ["", "Refused: closed before the welcome (a close code: the service's 1013) or an HTTP "
            "status instead of the upgrade (nginx: 502 when no instance took the connect, 504 when "
            "the connect timed out in a full accept queue); service refused/s: from the survivors' "
            "/metrics (`quote_service_connections_refused_total`).",
            "", "Back in: from the fault to the last viewer's board (kill: its snapshot after it "
            "reconnected; redis: its `live` status). Survivors: viewers open with their board when the "
            "baseline began and never disconnected since; their ages are of the quotes they got "
            "(publisher clock to receipt) over baseline, storm and after; longest silence: the longest "
            "time one of them went without any message. Busy: the whole machine's CPU from the fault "
            "until everyone was back.", ""]
    return "\n".join(out)


def parse_set(items: Sequence[str]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isupper():
            raise SystemExit(f"--set takes NAME=VALUE (a service setting), got {item!r}")
        env[name] = value
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=None, help="the crowd (default 20000; quick: 1000)")
    parser.add_argument("--quick", action="store_true", help="1,000 viewers, short baseline, results in tmp/")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="kill, redis or both")
    parser.add_argument("--max-hz", type=float, default=1.0, help="each viewer's max_hz (default 1)")
    parser.add_argument("--rate", type=float, default=20.0, help="quotes/s published (default 20)")
    parser.add_argument("--per-address", type=int, default=50, help="viewers per source address")
    parser.add_argument("--stall-s", type=float, default=5.0, help="a survivor silent this long stalled")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a service setting for both instances (e.g. MAX_CONNECTS_PER_S=500)")
    parser.add_argument("--out", type=Path, default=None, help="where storm.json/storm.md go")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    if not scenarios or any(s not in SCENARIOS for s in scenarios):
        parser.error(f"--scenarios: of {', '.join(SCENARIOS)}")
    viewers = args.viewers or (1000 if args.quick else 20000)
    if viewers < 10 or args.per_address < 1 or args.max_hz <= 0 or args.rate <= 0:
        parser.error("--viewers >= 10, --per-address >= 1, --max-hz and --rate > 0")
    plan = Plan(viewers=viewers, max_hz=args.max_hz, rate=args.rate, per_address=args.per_address,
                stall_s=args.stall_s, service_env=parse_set(args.set), quick=args.quick,
                baseline_s=2.0 if args.quick else 3.0, after_s=2.0 if args.quick else 3.0,
                recover_timeout_s=90.0 if args.quick else 180.0)
    out = args.out or (RESULTS / "tmp" / "storm-quick" if args.quick else RESULTS)
    logs = out / "storm-logs" if args.quick else RESULTS / "tmp" / "storm-logs"
    print(f"reconnect storm: {viewers} viewers, {layout(plan)}, scenarios {', '.join(scenarios)}")
    results = {name: run_scenario(plan, name, logs) for name in scenarios}
    data = {"plan": {k: v for k, v in asdict(plan).items() if k != "service_env"},
            "set": dict(plan.service_env), "layout": layout(plan), "admission": admission(plan),
            "scenarios": results, "machine": machine(), "versions": versions(),
            "source": source_state(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    write_results(out, "storm", data, markdown(data))
    return 0 if all(r["pass"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
