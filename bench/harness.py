"""Run every server through every scenario, one after another, on this machine.

Each (server, scenario) run gets a fresh server process, an emptied private Redis (the
same redis-server for the whole benchmark, on a free port, never 6379), the project's own
publisher (`python -m publisher simulate --rate N --seed 1`) and the same load client
(bench/loadclient.py). Everything talks to 127.0.0.1 and every step has a time bound.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import redis as redis_sync

from bench import report, revs
from bench.peers import BENCH_LAYOUT, PEERS, PYTHON_PEERS, ROOT, Peer, resolve
from bench.procs import (
    Child,
    PubSubTap,
    Sampler,
    cpu_plan,
    port_open,
    raise_nofile,
    server_sockets,
    tree_rss_kb,
)
from tests.redis_server import RedisServer, free_port

PY = sys.executable
# Where a run with a `service@REV` writes unless --out says otherwise.
COMMITS_OUT = ROOT / "bench" / "results" / "tmp" / "commits"
CHANNEL = BENCH_LAYOUT.channel(0)
SEQ_KEY = BENCH_LAYOUT.seq(0)


class PeerFailed(Exception):
    """The server under test failed during a run: the reason, with its log's tail."""


class StartFailed(PeerFailed):
    """The server under test did not start (or not listen and subscribe) in time."""


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    clients: int
    rate: float
    warmup_s: float
    measure_s: float
    stall: int = 0
    converge: bool = False
    idle: bool = False
    sweep: bool = False  # a point of the offered-load chart only
    # "per-quote": bench/publisher.py, one PUBLISH per quote (the fan-out stress);
    # "batched": the project's `python -m publisher simulate` (an array every 50 ms).
    publisher: str = "per-quote"
    # The load client decodes every Nth frame of a connection (ages, updates) and only
    # counts the others (their `{"type":"quotes"` prefix checked): a cheap client, for a
    # server's CPU per delivered frame when the server has no core to itself.
    parse_every: int = 1


def full_scenarios() -> list[Scenario]:
    return [
        Scenario("firehose", "Firehose", 200, 1000, 3, 15),
        Scenario("firehose-batched", "Firehose, batched publisher", 200, 1000, 3, 15,
                 publisher="batched"),
        Scenario("ticker", "Ticker", 1000, 1000, 3, 15, converge=True),
        Scenario("idle", "Idle crowd", 10_000, 1, 2, 5, idle=True),
        Scenario("stalled", "Stalled readers", 200, 1000, 3, 15, stall=10),
        *(Scenario(f"load-{r}", f"Offered load {r}/s", 200, r, 2, 6, sweep=True)
          for r in (250, 500, 2000)),
        Scenario("workers", "Workers", 800, 1000, 3, 15, parse_every=10),
    ]


def quick_scenarios() -> list[Scenario]:
    """Seconds in all: proves the whole path works, measures nothing worth quoting."""
    return [
        Scenario("firehose", "Firehose", 10, 200, 0.5, 1.0),
        Scenario("ticker", "Ticker", 20, 200, 0.5, 0.8, converge=True),
        # 5 quotes/s, not the full run's 1: a peer without snapshots (websockets) gets a
        # quote in a 0.8 s window only if one is published in it, which at 1/s missed
        # about one run in five.
        Scenario("idle", "Idle crowd", 100, 5, 0.3, 0.8, idle=True),
        Scenario("stalled", "Stalled readers", 20, 200, 0.5, 1.0, stall=1),
        Scenario("workers", "Workers", 40, 200, 0.5, 1.0, parse_every=10),
    ]


@dataclass
class Context:
    redis_url: str
    redis: redis_sync.Redis
    logs: Path
    server_cpus: set[int] | None
    other_cpus: set[int] | None
    quick: bool
    verbose: bool = True
    deflate: bool = True  # the load client offers permessage-deflate, as browsers do
    all_cpus: set[int] | None = None  # an unpinned server (several workers) runs on these

    def say(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)


# ---- processes ----------------------------------------------------------------------------

def start_server(ctx: Context, peer: Peer, tag: str, timeout: float = 30.0) -> tuple[Child, int]:
    port = free_port()
    argv, env = peer.command(port, ctx.redis_url)
    # The harness itself runs on the load CPUs and a child inherits that: an unpinned
    # server is given every CPU explicitly (its workers inherit it from the supervisor).
    cpus = ctx.server_cpus if peer.pinned else ctx.all_cpus
    child = Child(f"{peer.key}-{tag}", argv, env=env, cwd=peer.cwd, log_dir=ctx.logs, cpus=cpus)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise StartFailed(f"exited with code {child.proc.returncode}: "
                             f"{child.log_tail(600).strip()}")
        subscribed = ctx.redis.pubsub_numsub(CHANNEL)[0][1] >= peer.subscribers
        if subscribed and port_open(port):
            return child, port
        time.sleep(0.1)
    child.stop()
    raise StartFailed(f"not listening and subscribed to {CHANNEL!r} ({peer.subscribers} "
                     f"subscriber(s)) within {timeout:.0f}s: {child.log_tail(600).strip()}")


def start_publisher(ctx: Context, sc: Scenario, tag: str) -> Child:
    if sc.publisher == "batched":
        argv = [PY, "-m", "publisher", "--log-level", "WARNING", "simulate",
                "--rate", str(sc.rate), "--seed", "1"]
    else:
        argv = [PY, "-m", "bench.publisher", "--rate", str(sc.rate), "--seed", "1",
                "--redis", ctx.redis_url]
    return Child(f"publisher-{tag}", argv,
                 env={"REDIS_URL": ctx.redis_url, "REDIS_PARTITIONS": "1"}, cwd=ROOT,
                 log_dir=ctx.logs, cpus=ctx.other_cpus)


def start_client(ctx: Context, peer: Peer, port: int, sc: Scenario, tag: str) -> Child:
    argv = [PY, "-m", "bench.loadclient", "--url", f"ws://127.0.0.1:{port}{peer.url_path}",
            "--conns", str(sc.clients), "--stall", str(sc.stall)]
    if sc.parse_every > 1:
        argv += ["--parse-every", str(sc.parse_every)]
    if peer.sio:
        argv.append("--sio")
    if not ctx.deflate:
        argv.append("--no-deflate")
    return Child(f"client-{tag}", argv, cwd=ROOT, log_dir=ctx.logs, cpus=ctx.other_cpus,
                 pipe=True)


def redis_subscribers(ctx: Context) -> int:
    """Subscriptions to the quotes channel (the harness's own tap taken off)."""
    return int(ctx.redis.pubsub_numsub(CHANNEL)[0][1]) - 1


def pubsub_tap(ctx: Context) -> PubSubTap:
    kwargs = ctx.redis.connection_pool.connection_kwargs
    return PubSubTap(kwargs.get("host", "127.0.0.1"), int(kwargs.get("port", 6379)), CHANNEL)


def published_total(ctx: Context) -> int:
    return sum(int(v) for v in ctx.redis.hvals(SEQ_KEY))


def final_seqs(ctx: Context) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in ctx.redis.hgetall(SEQ_KEY).items()}


@contextlib.contextmanager
def stopping(*children: Child | None) -> Iterator[None]:
    try:
        yield
    finally:
        for child in children:
            if child is not None:
                child.stop()


# ---- one run ----------------------------------------------------------------------------

def run_stream(ctx: Context, peer: Peer, sc: Scenario, server: Child, port: int,
               tag: str) -> dict[str, Any]:
    connect_timeout = 90 + sc.clients / 100
    client = start_client(ctx, peer, port, sc, tag)
    publisher = None
    tap = pubsub_tap(ctx)
    try:
        info = client.recv(timeout=connect_timeout)
        if info["ok"] == 0:
            raise PeerFailed(f"no client could connect: {info['errors']}")
        publisher = start_publisher(ctx, sc, tag)
        time.sleep(sc.warmup_s)
        if not server.alive():
            raise PeerFailed(f"died during warm-up: {server.log_tail(600)}")
        seq0 = published_total(ctx)
        sampler = Sampler(server.pid, cpus=(ctx.server_cpus, ctx.other_cpus))
        tap.start()
        client.send({"cmd": "start"})
        time.sleep(sc.measure_s)
        client.send({"cmd": "stop"})
        seq1 = published_total(ctx)
        srv = sampler.stop()
        srv.update(tap.stop())
        srv["redis_subscribers"] = redis_subscribers(ctx)
        stats = client.recv(timeout=60)
        if sc.stall:
            # A stalled client cannot see its own end (it reads nothing, and a kernel
            # TCP_USER_TIMEOUT abort sends no RST): look at the server's side.
            sockets = server_sockets(port)
            held = [sockets.get(p) for p in stats["stalled_ports"]]
            stats["stalled_open"] = sum(1 for h in held if h and h[0] == 1)
            srv["stalled_sendq_mb"] = round(sum(h[1] for h in held if h) / 1e6, 2)
        conv = None
        if sc.converge:
            publisher.stop()
            t_stop = time.time()
            client.send({"cmd": "final", "seqs": final_seqs(ctx), "t_stop": t_stop,
                         "deadline_s": 5.0})
            conv = client.recv(timeout=30)
        return summarize_stream(sc, info, stats, srv, (seq1 - seq0) / sampler.wall_s, conv)
    finally:
        tap.close()
        with contextlib.suppress(Exception):
            client.send({"cmd": "quit"})
        client.stop(timeout=15)
        if publisher is not None:
            publisher.stop()


def run_idle(ctx: Context, peer: Peer, sc: Scenario, server: Child, port: int,
             tag: str) -> dict[str, Any]:
    publisher = start_publisher(ctx, sc, tag)
    client = None
    try:
        time.sleep(sc.warmup_s)
        rss_before = tree_rss_kb(server.pid)
        client = start_client(ctx, peer, port, sc, tag)
        info = client.recv(timeout=120 + sc.clients / 100)
        client.send({"cmd": "start"})
        time.sleep(sc.measure_s)
        client.send({"cmd": "stop"})
        stats = client.recv(timeout=60)
        rss_after = tree_rss_kb(server.pid)
        subscribers = redis_subscribers(ctx) + 1  # no tap in this scenario
        ok = info["ok"]
        return {
            "clients": sc.clients,
            "connected": ok,
            "connect_errors": info["errors"],
            "connect_s": info["connect_s"],
            "rss_before_mb": round(rss_before / 1024, 1),
            "rss_after_mb": round(rss_after / 1024, 1),
            "kb_per_conn": round((rss_after - rss_before) / ok, 1) if ok else None,
            "redis_subscribers": subscribers,
            "still_open": stats["healthy_open"],
            "receiving": stats["healthy_with_quotes"],
            "closes": stats["closes"],
            "client_library": info["library"],
            "deflate_conns": info.get("deflate", 0),
        }
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.send({"cmd": "quit"})
            client.stop(timeout=20)
        publisher.stop()


def summarize_stream(sc: Scenario, info: dict[str, Any], stats: dict[str, Any],
                     srv: dict[str, Any], published_per_s: float,
                     conv: dict[str, Any] | None) -> dict[str, Any]:
    wall = stats["wall_s"] or 1.0
    healthy = stats["healthy"]
    ages = report.merge_hist(stats["ages"])
    held = report.merge_hist(stats["held"])
    offered = published_per_s * healthy
    frames = stats["frames"]
    # CPU per delivered frame: the server's CPU rate (its whole process tree, over the
    # sampler's window) over the frame rate every load client received (over the
    # client's window; the two windows are the same within a few ms).
    srv_cpu_per_s = srv["cpu_s"] / srv["wall_s"] if srv.get("wall_s") else 0.0
    frames_per_s = frames / wall
    updates_per_s = stats["updates"] / wall
    out = {
        "clients": sc.clients,
        "connected": info["ok"],
        "connect_errors": info["errors"],
        "stalled": stats["stalled"],
        "healthy": healthy,
        "rate": sc.rate,
        "published_per_s": round(published_per_s, 1),
        "offered_per_s": round(offered),
        # With parse_every > 1 only the decoded frames' quotes are counted: scaled up.
        "quotes_per_s": round(stats["quotes"] / wall * frames / stats.get("parsed_frames", frames))
        if stats.get("parsed_frames") else round(stats["quotes"] / wall),
        # Decoding one frame in N misses the seq rises of symbols seen only in the others
        # at the window's edges: no updates then (frames/s is the delivered figure).
        "updates_per_s": round(stats["updates"] / wall) if sc.parse_every == 1 else None,
        "delivered_share": round(stats["updates"] / wall / offered, 3)
        if offered and sc.parse_every == 1 else None,
        "frames_per_s": round(stats["frames"] / wall),
        "mbytes_per_s": round(stats["bytes"] / wall / 1e6, 2),
        "age_p50_ms": report.percentile(ages, 50),
        "age_p99_ms": report.percentile(ages, 99),
        "age_max_ms": stats["max_age_ms"] if stats["quotes"] else None,
        "held_p50_ms": report.percentile(held, 50),
        "held_p99_ms": report.percentile(held, 99),
        "server_cpu_pct": srv["cpu_pct"],
        "server_cpu_s": srv.get("cpu_s"),
        "server_us_per_frame": round(1e6 * srv_cpu_per_s / frames_per_s, 2) if frames else None,
        "server_us_per_update": round(1e6 * srv_cpu_per_s / updates_per_s, 3)
        if stats["updates"] and sc.parse_every == 1 else None,
        "client_us_per_frame": round(1e4 * stats["cpu_pct"] / frames_per_s, 2) if frames else None,
        # frames/s a whole core of server CPU delivers at this rate of use
        "frames_per_core_s": round(frames_per_s / srv_cpu_per_s) if srv_cpu_per_s else None,
        "server_procs": srv.get("procs"),
        "server_cpu_pct_per_proc": srv.get("cpu_pct_per_proc"),
        "server_rss_mb_per_proc": srv.get("rss_mb_per_proc"),
        "redis_subscribers": srv.get("redis_subscribers"),
        "pubsub_bytes_per_s": srv.get("pubsub_bytes_per_s"),
        "pubsub_msgs_per_s": srv.get("pubsub_msgs_per_s"),
        "pubsub_bytes_per_msg": srv.get("pubsub_bytes_per_msg"),
        "parse_every": sc.parse_every,
        "parsed_frames": stats.get("parsed_frames", frames),
        "server_rss_mb": srv["rss_max_mb"],
        "server_rss_start_mb": srv["rss_start_mb"],
        "client_cpu_pct": stats["cpu_pct"],
        "load_core_busy_pct": srv["load_core_busy_pct"],
        "server_core_busy_pct": srv["server_core_busy_pct"],
        "machine_busy_pct": srv["machine_busy_pct"],
        "client_library": info["library"],
        "client_loop": info.get("loop"),
        "deflate_conns": info.get("deflate", 0),
        "healthy_open_at_end": stats["healthy_open"],
        "stalled_open_at_end": stats["stalled_open"],
        "stalled_sendq_mb": srv.get("stalled_sendq_mb"),
        "closes": stats["closes"],
    }
    if conv is not None:
        out["converged"] = conv
    return out


def run_one(ctx: Context, peer: Peer, sc: Scenario) -> dict[str, Any]:
    ctx.redis.flushall()
    tag = sc.key
    server, port = start_server(ctx, peer, tag)
    try:
        if sc.idle:
            result = run_idle(ctx, peer, sc, server, port, tag)
        else:
            result = run_stream(ctx, peer, sc, server, port, tag)
        if not server.alive():
            result["server_died"] = f"exit {server.proc.returncode}"
    finally:
        t_stop = time.monotonic()
        # A worker hung on SIGTERM costs at most this twice (service/ bug, see README).
        server.stop(timeout=5 if ctx.quick else 10)
        stop_s = time.monotonic() - t_stop
    # How the server stopped on SIGTERM: seconds, and processes of its tree that were
    # still there afterwards and had to be signalled by the harness (a hung worker).
    result["server_stop_s"] = round(stop_s, 2)
    result["server_stop_exit"] = server.proc.returncode
    if server.leftovers:
        result["server_stop_leftovers"] = server.leftovers
    return result


# ---- profile ----------------------------------------------------------------------------

def profile_service(ctx: Context, sc: Scenario, out_dir: Path, seconds: int = 10) -> dict[str, Any]:
    """py-spy on the service during a firehose (a separate run, not the measured one):
    a flame graph SVG and the collapsed stacks, summarised into the hottest frames."""
    pyspy = Path(PY).parent / "py-spy"
    exe = str(pyspy) if pyspy.exists() else "py-spy"
    peer = PEERS["service"]
    ctx.redis.flushall()
    server, port = start_server(ctx, peer, "profile")
    client = publisher = None
    try:
        client = start_client(ctx, peer, port, sc, "profile")
        client.recv(timeout=120)
        publisher = start_publisher(ctx, sc, "profile")
        time.sleep(sc.warmup_s)
        svg = out_dir / "service-firehose-profile.svg"
        raw = out_dir / "service-firehose-profile.txt"
        results: dict[str, Any] = {}
        for fmt, path in (("flamegraph", svg), ("raw", raw)):
            argv = [exe, "record", "--pid", str(server.pid), "--duration", str(seconds),
                    "--rate", "200", "--format", fmt, "--output", str(path)]
            done = subprocess.run(argv, capture_output=True, timeout=seconds + 60,
                                  preexec_fn=(lambda: os.sched_setaffinity(0, ctx.other_cpus))
                                  if ctx.other_cpus else None)
            if done.returncode != 0:
                return {"error": done.stderr.decode(errors="replace")[-800:]}
        results["svg"] = svg.name
        results["collapsed"] = raw.name
        results.update(report.hot_frames(raw.read_text()))
        return results
    except (OSError, subprocess.SubprocessError, TimeoutError, ConnectionError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.send({"cmd": "quit"})
            client.stop()
        if publisher is not None:
            publisher.stop()
        server.stop()


# ---- the whole benchmark ----------------------------------------------------------------

def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    from importlib.metadata import PackageNotFoundError, version
    for name in ("starlette", "uvicorn", "websockets", "redis", "hiredis", "orjson",
                 "broadcaster", "picows"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    lock = ROOT / "bench" / "peers" / "node" / "package-lock.json"
    if lock.exists():
        import json
        packages = json.loads(lock.read_text()).get("packages", {})
        for name in ("ws", "socket.io", "@socket.io/redis-adapter", "redis",
                     "@trufflesuite/uws-js-unofficial"):
            meta = packages.get(f"node_modules/{name}")
            if meta:
                out[f"npm:{name}"] = meta["version"]
    return out


def source_state() -> str:
    """The commit measured, and whether the working tree had uncommitted changes."""
    return revs.head()


def peer_entries(peers: list[Peer], compared: bool) -> dict[str, dict[str, Any]]:
    """data["peers"]: label and what runs, and for the service where it ran from
    (revs.provenance)."""
    return {p.key: {"label": p.label, "how": p.how,
                    **(revs.provenance(p.tree, p.label, compared)
                       if p.key.startswith("service") else {})}
            for p in peers}


def machine() -> dict[str, Any]:
    def first(path: str, key: str) -> str:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        return "?"

    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "not found"

    mem_kb = first("/proc/meminfo", "MemTotal").split()[0]
    return {
        "nproc": os.cpu_count(),
        "cpu": first("/proc/cpuinfo", "model name"),
        "memory_gib": round(int(mem_kb) / 1024 / 1024, 1) if mem_kb.isdigit() else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": run("node", "--version"),
        "redis": run("redis-server", "--version").split(" v=")[-1].split()[0]
        if "v=" in run("redis-server", "--version") else "?",
    }


def run_benchmark(peer_keys: list[str], scenarios: list[Scenario], out_dir: Path, *,
                  quick: bool, pin: bool = True, profile: bool = True,
                  verbose: bool = True, deflate: bool = True) -> dict[str, Any]:
    """`peer_keys`: keys of PEERS, or `service@REV` (bench/revs.py)."""
    nofile = raise_nofile()
    peers = [resolve(k) for k in peer_keys]
    compared = any(p.tree.sha for p in peers)
    entries = peer_entries(peers, compared)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_cpus = set(os.sched_getaffinity(0))
    server_cpus, other_cpus = cpu_plan(pin)
    started = time.time()
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    profile_result: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        redis_server = None
        for _ in range(3):
            candidate = RedisServer(Path(workdir))
            if candidate.start():
                redis_server = candidate
                break
        if redis_server is None:
            raise SystemExit("redis-server did not start")
        try:
            if other_cpus and redis_server.proc is not None:
                os.sched_setaffinity(redis_server.proc.pid, other_cpus)
            if other_cpus:
                os.sched_setaffinity(0, other_cpus)
            logs = out_dir / "logs" if quick else ROOT / "bench" / "results" / "tmp" / "logs"
            ctx = Context(redis_server.url, redis_sync.Redis.from_url(redis_server.url),
                          logs, server_cpus, other_cpus, quick, verbose, deflate,
                          all_cpus=all_cpus if pin else None)
            ctx.say(f"redis on {redis_server.url}; server CPUs {server_cpus or 'any'}, "
                    f"load CPUs {other_cpus or 'any'}; open files {nofile}")
            for peer in peers:
                key = peer.key
                reason = peer.unavailable() or entries[key].get("imports", {}).get("error")
                if reason:
                    failed[key] = reason
                    ctx.say(f"[{key}] cannot start: {reason}")
                    continue
                results[key] = {}
                for i, sc in enumerate(scenarios):
                    t0 = time.monotonic()
                    try:
                        results[key][sc.key] = run_one(ctx, peer, sc)
                    except StartFailed as exc:
                        if i == 0:
                            failed[key] = str(exc)
                            del results[key]
                            ctx.say(f"[{key}] failed to start: {exc}")
                            break
                        results[key][sc.key] = {"error": str(exc)}
                    except (PeerFailed, TimeoutError, ConnectionError) as exc:
                        results[key][sc.key] = {"error": f"{type(exc).__name__}: {exc}"}
                    ctx.say(f"[{key}] {sc.key}: {report.one_line(results[key][sc.key])} "
                            f"({time.monotonic() - t0:.0f}s)")
            # A comparison of commits (service@REV) measures, it does not profile.
            if profile and not quick and "service" in results and not compared:
                ctx.say("[service] profiling a firehose with py-spy ...")
                profile_result = profile_service(ctx, scenarios[0], out_dir)
                ctx.say(f"[service] profile: {profile_result.get('error') or 'ok'}")
            ctx.redis.close()
        finally:
            redis_server.stop()
    data = {
        "mode": "quick" if quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "duration_s": round(time.time() - started),
        # Other work on the machine skews a run: the 1/5/15-min load averages around it.
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
        "source": source_state(),
        "versions": versions(),
        "pinning": {"server": sorted(server_cpus) if server_cpus else "any",
                    "redis_publisher_client": sorted(other_cpus) if other_cpus else "any",
                    "unpinned_servers": {p.key: sorted(all_cpus) if pin else "any"
                                         for p in peers if not p.pinned}},
        "client_offers_deflate": deflate,
        "scenarios": [asdict(sc) for sc in scenarios],
        "peers": entries,
        "results": results,
        "failed": failed,
        "profile": profile_result,
    }
    report.write_all(data, out_dir)
    # The README's tables are the peers' run, not a comparison of commits.
    if not quick and not compared and out_dir.resolve() == (ROOT / "bench" / "results").resolve():
        report.update_readme(data, ROOT / "bench" / "README.md")
    return data


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="seconds, a few clients, Python peers only (what `make test` runs)")
    parser.add_argument("--peers", help=f"comma-separated subset of {','.join(PEERS)}; "
                        "service@REV: the service as of git revision REV, beside the others")
    parser.add_argument("--scenarios", help="comma-separated subset of scenario keys")
    parser.add_argument("--out", type=Path, help="output directory (default bench/results, "
                        "or bench/results/tmp/quick with --quick)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--no-deflate", action="store_true",
                        help="the load client does not offer permessage-deflate (browsers do)")
    args = parser.parse_args(argv)
    if args.quick:
        peers = list(dict.fromkeys([*PYTHON_PEERS, "service-2w"]))
        scenarios = quick_scenarios()
        out = args.out or ROOT / "bench" / "results" / "tmp" / "quick"
    else:
        peers = list(PEERS)
        scenarios = full_scenarios()
        out = args.out or ROOT / "bench" / "results"
    if args.peers and "@" in args.peers and not args.out:
        out = COMMITS_OUT  # not over the committed results of the peers' run
    if args.peers:
        peers = [p.strip() for p in args.peers.split(",") if p.strip()]
        for p in peers:
            try:
                resolve(p)
            except (KeyError, revs.RevError) as exc:
                parser.error(f"peer {p!r}: {exc}; known: {list(PEERS)}, and "
                             "service@REV for a git revision REV (bench/README.md)")
    if args.scenarios:
        wanted = {s.strip() for s in args.scenarios.split(",")}
        scenarios = [s for s in scenarios if s.key in wanted]
        if not scenarios:
            parser.error("no scenario left")
    data = run_benchmark(peers, scenarios, out, quick=args.quick, pin=not args.no_pin,
                         profile=not args.no_profile, deflate=not args.no_deflate)
    print(f"wrote {out}/latest.md, latest.json" + (", latest.png" if report.HAVE_MPL else
          " (no PNG: matplotlib is not installed)"))
    if data["failed"]:
        print("could not run: " + "; ".join(f"{k}: {v}" for k, v in data["failed"].items()))
    return 0


__all__ = ["Scenario", "main", "replace", "run_benchmark"]
