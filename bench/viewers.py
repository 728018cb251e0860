"""Viewers per core: the most viewers one service core holds at a given max_hz, against the floor.

    python -m bench.viewers              # max_hz 50, 10, 4: a step search each (bounded)
    python -m bench.viewers --quick      # seconds: one small point per rate
    python -m bench.viewers --peers service,uws      # the same search against uWebSockets.js
    python -m bench.viewers --floor-only --conns 1000 --bytes 3000   # the floor alone

The service runs pinned to the first CPU (`python -m service`, one process, uvloop,
REDIS_PARTITIONS=1); Redis, the per-quote publisher (bench/publisher.py, 1,000 quotes/s
on all symbols), and the load generator (bench/fastclient.py, spread over `--procs`
processes) share the other CPU. Each point N: connect N viewers to
`/ws?symbols=*&max_hz=H` (RSS before and after: idle KB per connection), start the
publisher, warm up, measure a window (service CPU from /proc, frames and bytes from the
generator, ages from its decoded sample), stop the publisher and check that every
sampled board holds the final seq of every symbol (Redis `quotes:{P}:seq`). A point
passes when the generator connected every viewer, none was closed (a refusal after the
upgrade: 1008, 1013) or left without a frame in the window, p99 age <= 100 ms + 1000/H ms,
and every board converged within 2 s; a point that fails says why, with the counts. The
service is started with every limit it could meet set (`service_env`): no per-address cap
or rate (all viewers come from 127.0.0.1), caps above N. The search doubles N from
`--start` while points pass, then bisects between the last pass and the first failure.

`--peers service,uws` runs the same search, point for point, against
bench/peers/node/uws_viewers_peer.js too: uWebSockets.js serving the viewers the way the
service does (a board, a snapshot on open, per max_hz one topic and one timer publishing
the changed symbols' latest quotes as one shared frame), started with `node`, pinned and
measured exactly as the service is. A peer that cannot start (no node, its npm packages
missing, the native binary not loading) is reported as not run, with the reason; the
other peers' rows are unaffected.

`--peers service@9fcb21a,service` searches the service as of commit 9fcb21a (bench/revs.py:
that commit's tree, exported once, with this venv) and the working tree's, rate by rate
with the same publisher, generator and settings, the two searches taking turns point by
point (so both meet the machine's changing load alike): the before and after of a change,
in one run.

`--encodings json,compact+deflate` searches the service once per encoding (issue 24), the
searches taking turns point by point as commits do: every viewer of a search asks for the
same encoding (`compact`: `&encoding=compact`; `deflate`: the generator offers
permessage-deflate and takes the server's compressed frames; `compact+deflate`: both, as
the JS widget does). A deflate point fails unless every viewer negotiated it. Other
peers are searched with protocol 1 only.

The floor is bench/floor.c (built with `cc -O2`, as `make bench` does), run in the same
run after each point: the same number of loopback connections, frames of the mean size
the generator received, at the per-connection frame rate measured, the writer pinned to
the service's CPU and the sink to the other. *Ratio to floor* = service CPU µs per
client frame / the floor's CPU µs per write.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as redis_sync

from bench import native, report, revs
from bench.harness import COMMITS_OUT, StartFailed
from bench.output import write_results
from bench.peers import NODE_DIR
from bench.procs import Child, Sampler, cpu_plan, port_open, raise_nofile, tree_rss_kb
from quote_bus.layout import Layout
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
FLOOR_SRC = ROOT / "bench" / "floor.c"
FLOOR_BIN = ROOT / "bench" / "results" / "tmp" / "floor"
LAYOUT = Layout(partitions=1)  # bench/publisher.py publishes on one partition
MAX_PORTS_N = 26_000  # ephemeral ports 32768-60999 to one server address, with a margin
START_TIMEOUT_S = 30.0
FD_MARGIN = 200


# ---- the floor ------------------------------------------------------------------------------

def build_floor(out: Path = FLOOR_BIN) -> Path:
    """bench/floor.c, compiled with the system compiler when the binary is missing or older."""
    return native.build(FLOOR_SRC, out)


def run_floor(conns: int, frame_bytes: int, *, writes: int = 0, seconds: float = 5.0,
              hz: float = 0.0, writer_cpu: int | None = None, sink_cpu: int | None = None,
              binary: Path | None = None) -> dict[str, Any]:
    """One run of the floor program: its JSON line, parsed."""
    exe = binary or build_floor()
    argv = [str(exe), "--conns", str(conns), "--bytes", str(frame_bytes),
            "--writes", str(writes), "--seconds", str(seconds), "--hz", str(hz)]
    if writer_cpu is not None:
        argv += ["--writer-cpu", str(writer_cpu)]
    if sink_cpu is not None:
        argv += ["--sink-cpu", str(sink_cpu)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120,
                          preexec_fn=raise_nofile)
    if done.returncode != 0:
        raise RuntimeError(f"floor failed ({done.returncode}): {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def ws_frame_bytes(payload: float) -> int:
    """A server frame's size on the wire: the payload and its header (2, 4 or 10 bytes)."""
    n = round(payload)
    return n + (2 if n < 126 else 4 if n < 65536 else 10)


# ---- the servers searched -------------------------------------------------------------------

def fds_per_process() -> int:
    """Connections one process may hold: the hard open-file limit (20,000 on the machine
    this was written on, and not raisable there) less a margin for its other files."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1] - FD_MARGIN


def service_env(redis_url: str, port: int, conns: int) -> dict[str, str]:
    """One process, or as many as the open-file limit makes it need (SO_REUSEPORT workers,
    all pinned to the same core: still one core's viewers). Every limit a viewer could meet
    is set here, whatever the defaults or the caller's environment say: the generator opens
    all of them from one address (127.0.0.1) at once and does not retry a refusal."""
    workers = -(-conns // fds_per_process())
    return {"REDIS_URL": redis_url, "PORT": str(port), "HOST": "127.0.0.1",
            "REDIS_PARTITIONS": "1", "LOOP": "auto", "WORKERS": str(max(1, workers)),
            # Admission (per worker): the whole crowd at once, from one address.
            "MAX_CONNECTIONS": str(max(20000, conns + 1000)), "MAX_CONNECTS_PER_S": "100000",
            "MAX_CONNECTIONS_PER_IP": "0", "MAX_CONNECTS_PER_IP_PER_S": "0",
            # Anyone may watch: no Origin check, no token.
            "ALLOWED_ORIGINS": "*", "ANONYMOUS": "realtime"}


def uws_env(redis_url: str, port: int, conns: int) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "PORT": str(port), "REDIS_CHANNEL": LAYOUT.channel(0)}


UWS_PACKAGES = ("@trufflesuite/uws-js-unofficial", "redis")


def node_unavailable() -> str | None:
    """Why a Node peer cannot start here, or None (the native binary is checked by the
    peer itself when it starts: it exits naming what did not load)."""
    if shutil.which("node") is None:
        return "node is not on PATH (Node.js 20+; bash .ci/system-packages installs it)"
    for package in UWS_PACKAGES:
        if not (NODE_DIR / "node_modules" / package / "package.json").exists():
            return (f"bench/peers/node/node_modules/{package} is missing "
                    "(cd bench/peers/node && npm ci)")
    return None


@dataclass(frozen=True)
class Server:
    """A server the search runs against: how it is started, and what it needs."""
    key: str
    label: str
    argv: tuple[str, ...]
    env: Callable[[str, int, int], dict[str, str]]  # (redis URL, port, viewers) -> environment
    unavailable: Callable[[], str | None] = lambda: None
    # The source a Python service runs from (its cwd and PYTHONPATH): the working tree, or
    # a commit's (`service@REV`); None for a server that is not this project's.
    tree: revs.Tree | None = None


SERVERS: dict[str, Server] = {s.key: s for s in [
    Server("service", "this service (python -m service, one process, uvloop)",
           (PY, "-m", "service"), service_env, tree=revs.WORKING),
    Server("uws", "uWebSockets.js (bench/peers/node/uws_viewers_peer.js: a board, per max_hz "
           "one topic and timer, app.publish)",
           ("node", str(NODE_DIR / "uws_viewers_peer.js")), uws_env, node_unavailable),
]}


def start_server(peer: Server, redis_url: str, r: redis_sync.Redis, n: int, tag: str,
                 logs: Path, cpus: set[int] | None) -> tuple[Child, int]:
    """The server pinned to `cpus`, once it listens and holds its Redis subscription;
    StartFailed (with its log's tail) otherwise."""
    port = free_port()
    env = {**peer.env(redis_url, port, n), **(peer.tree.env() if peer.tree else {})}
    child = Child(f"{peer.key}-{tag}", peer.argv, env=env,
                  cwd=peer.tree.root if peer.tree else ROOT, log_dir=logs, cpus=cpus)
    channel = LAYOUT.channel(0)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (port_open(port) and r.pubsub_numsub(channel)[0][1] >= 1):
        if not child.alive():
            child.stop()
            raise StartFailed(f"{peer.key} exited with code {child.proc.returncode}: "
                              f"{child.log_tail(600).strip()}")
        if time.monotonic() > deadline:
            child.stop()
            raise StartFailed(f"{peer.key} not listening and subscribed to {channel!r} within "
                              f"{START_TIMEOUT_S:.0f} s: {child.log_tail(600).strip()}")
        time.sleep(0.1)
    return child, port


# ---- one point ------------------------------------------------------------------------------

@dataclass
class Plan:
    warmup_s: float
    measure_s: float
    procs: int
    boards: int  # per generator process
    decode_every: int
    rate: float = 1000.0
    # bench/viewers_load.c ("native", ~2 µs a frame) or bench/fastclient.py ("picows", ~8).
    generator: str = "native"
    # What every viewer of the point asks for: json (protocol 1), compact, deflate,
    # compact+deflate (bench/viewers_load.c --encoding; the native generator only).
    encoding: str = "json"


ENCODINGS = ("json", "compact", "deflate", "compact+deflate")


def final_seqs(r: redis_sync.Redis, layout: Layout = LAYOUT) -> dict[str, int]:
    """The publisher's final seq of every symbol, over every partition's seq hash."""
    out: dict[str, int] = {}
    for p in range(layout.partitions):
        for k, v in r.hgetall(layout.seq(p)).items():
            out[k.decode() if isinstance(k, bytes) else str(k)] = int(v)
    return out


def run_point(peer: Server, redis_url: str, r: redis_sync.Redis, n: int, max_hz: float,
              plan: Plan, logs: Path, cpus: tuple[set[int] | None, set[int] | None],
              say: Any = print) -> dict[str, Any]:
    server_cpus, other_cpus = cpus
    r.flushall()
    tag = f"{max_hz:g}hz-{n}" + ("" if plan.encoding == "json" else f"-{plan.encoding}")
    if plan.encoding != "json" and plan.generator != "native":
        raise ValueError(f"--encodings {plan.encoding}: the native generator only")
    server, port = start_server(peer, redis_url, r, n, tag, logs, server_cpus)
    clients: list[Child] = []
    publisher: Child | None = None
    try:
        time.sleep(0.5)
        rss0 = tree_rss_kb(server.pid)
        per = [n // plan.procs + (i < n % plan.procs) for i in range(plan.procs)]
        for i, k in enumerate(per):
            if k == 0:
                continue
            url = f"ws://127.0.0.1:{port}/ws"
            if plan.generator == "native":
                argv = native.generator_argv(url, k, max_hz, plan.decode_every, plan.boards,
                                             encoding=plan.encoding)
            else:
                argv = [PY, "-m", "bench.fastclient", "--url", url, "--conns", str(k),
                        "--max-hz", f"{max_hz:g}", "--decode-every", str(plan.decode_every),
                        "--boards", str(plan.boards)]
            clients.append(Child(f"viewers-{tag}-{i}", argv, cwd=ROOT, log_dir=logs,
                                 cpus=other_cpus, pipe=True))
        infos = [c.recv(timeout=180 + n / 100) for c in clients]
        connected = sum(info["ok"] for info in infos)
        errors: dict[str, int] = {}
        for info in infos:
            for kind, count in info["errors"].items():
                errors[kind] = errors.get(kind, 0) + count
        time.sleep(1.0)
        rss1 = tree_rss_kb(server.pid)
        # Who the server closed after the upgrade (a cap's 1008, a rate's 1013), before the
        # window's `start` resets the counts: `stop` answers without resetting.
        for c in clients:
            c.send({"cmd": "stop"})
        before = [c.recv(timeout=60) for c in clients]
        published = final_seqs(r)
        publisher = Child(f"publisher-{tag}", [PY, "-m", "bench.publisher", "--rate",
                                               str(plan.rate), "--seed", "1", "--redis", redis_url],
                          env={"REDIS_URL": redis_url, "REDIS_PARTITIONS": "1"}, cwd=ROOT,
                          log_dir=logs, cpus=other_cpus)
        # The warm-up counts from the publisher's first quote, not its start: on a loaded
        # machine its start alone can outlast a short warm-up and leave the window empty.
        deadline = time.monotonic() + 60
        while final_seqs(r) == published and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(plan.warmup_s)
        sampler = Sampler(server.pid, cpus=cpus)
        for c in clients:
            c.send({"cmd": "start"})
        time.sleep(plan.measure_s)
        for c in clients:
            c.send({"cmd": "stop"})
        srv = sampler.stop()
        stats = [c.recv(timeout=60) for c in clients]
        publisher.stop()
        t_stop = time.time()
        seqs = final_seqs(r)
        for c in clients:
            c.send({"cmd": "final", "seqs": seqs, "t_stop": t_stop, "deadline_s": 2.0})
        conv = [c.recv(timeout=30) for c in clients]
        alive = server.alive()
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                c.send({"cmd": "quit"})
        for c in clients:
            c.stop(timeout=15)
        if publisher is not None:
            publisher.stop()
        server.stop()
    wall = max(s["wall_s"] for s in stats) or 1.0
    frames = sum(s["frames"] for s in stats)
    nbytes = sum(s["bytes"] for s in stats)
    ages = report.merge_hist(*(s["ages"] for s in stats))
    gen_cpu = sum(s["cpu_s"] for s in stats)
    srv_cpu_per_s = srv["cpu_s"] / srv["wall_s"] if srv["wall_s"] else 0.0
    frames_per_s = frames / wall
    boards = sum(c["boards"] for c in conv)
    converged = sum(c["converged"] for c in conv)
    p99 = report.percentile(ages, 99)
    limit = 100 + 1000 / max_hz
    refused = sum_counts(b["closes"] for b in before)
    closes = sum_counts(s["closes"] for s in stats)
    served = sum(s["open"] - s.get("silent", 0) for s in stats)
    unserved = {"not connected": n - connected, "closed before the window": sum(refused.values()),
                "closed in the window": sum(closes.values()),
                "open, no frame in the window": sum(s.get("silent", 0) for s in stats)}
    reasons = fail_reasons(n, unserved, refused, closes, errors, p99, limit, converged, boards,
                           alive)
    negotiated = sum(info.get("deflate", 0) for info in infos)
    if "deflate" in plan.encoding and negotiated < connected:
        reasons.append(f"{connected - negotiated} of {connected} viewers did not negotiate "
                       "permessage-deflate")
    ok = not reasons
    out = {
        "peer": peer.key,
        "encoding": plan.encoding,
        "viewers": n,
        "max_hz": max_hz,
        "connected": connected,
        "deflate_negotiated": negotiated,
        "compressed_frames": sum(s.get("compressed", 0) for s in stats),
        "served": served,
        "unserved": unserved,
        "refused_closes": refused,
        "connect_errors": errors,
        "connect_s": max(i["connect_s"] for i in infos),
        "frames_per_s": round(frames_per_s),
        "frames_per_viewer_s": round(frames_per_s / connected, 2) if connected else None,
        "mean_frame_bytes": round(nbytes / frames, 1) if frames else None,
        "age_p50_ms": report.percentile(ages, 50),
        "age_p99_ms": p99,
        "age_max_ms": max(s["max_age_ms"] for s in stats),
        "age_limit_ms": round(limit, 1),
        "aged_quotes": sum(s["aged"] for s in stats),
        "boards": boards,
        "boards_converged": converged,
        "server_cpu_pct": srv["cpu_pct"],
        "server_us_per_frame": round(1e6 * srv_cpu_per_s / frames_per_s, 2) if frames else None,
        "generator_us_per_frame": round(1e6 * gen_cpu / frames, 2) if frames else None,
        "generator_cpu_pct": round(100 * gen_cpu / wall, 1),
        "generator_sys_share": round(sum(s["sys_s"] for s in stats) / gen_cpu, 2) if gen_cpu else None,
        "load_core_busy_pct": srv["load_core_busy_pct"],
        "server_core_busy_pct": srv["server_core_busy_pct"],
        "idle_kb_per_conn": round((rss1 - rss0) / connected, 1) if connected else None,
        "server_rss_mb": srv["rss_max_mb"],
        "closes": closes,
        "server_alive": alive,
        "pass": ok,
        "fail_reasons": reasons,
    }
    say(f"  {peer.key}{'' if plan.encoding == 'json' else ' ' + plan.encoding} N={n} "
        f"max_hz={max_hz:g}: {served}/{n} viewers served, "
        f"{out['frames_per_viewer_s']} frames/s/viewer, "
        f"p99 {p99} ms (limit {limit:.0f}), boards {converged}/{boards}, "
        f"server {out['server_cpu_pct']}% = {out['server_us_per_frame']} µs/frame, "
        f"generator {out['generator_us_per_frame']} µs/frame -> "
        + ("pass" if ok else "FAIL: " + "; ".join(reasons)))
    return out


def sum_counts(counts: Any) -> dict[str, int]:
    """Counters (close code -> count) summed over the generator processes."""
    out: dict[str, int] = {}
    for count in counts:
        for k, v in count.items():
            out[k] = out.get(k, 0) + v
    return out


def fail_reasons(n: int, unserved: dict[str, int], refused: dict[str, int],
                 closes: dict[str, int], errors: dict[str, int], p99: float | None,
                 limit: float, converged: int, boards: int, alive: bool) -> list[str]:
    """Why a point failed, each with its count (none: it passed)."""
    reasons = []
    codes = {1008: "1008: a per-address cap", 1013: "1013: a connection cap or rate",
             4008: "4008: slow consumer"}

    def by_code(counts: dict[str, int]) -> str:
        return ", ".join(f"{v} with {codes.get(int(k), k) if k.isdigit() else k}"
                         for k, v in sorted(counts.items()))

    if unserved["not connected"]:
        reasons.append(f"{unserved['not connected']} of {n} viewers not connected "
                       f"({by_code(errors) or 'no error named'})")
    if refused:
        reasons.append(f"{sum(refused.values())} of {n} viewers refused after the upgrade "
                       f"({by_code(refused)})")
    if closes:
        reasons.append(f"{sum(closes.values())} of {n} viewers closed in the window "
                       f"({by_code(closes)})")
    if unserved["open, no frame in the window"]:
        reasons.append(f"{unserved['open, no frame in the window']} of {n} viewers open but "
                       "never served (no frame in the window)")
    if not alive:
        reasons.append("the server died")
    if p99 is None:
        reasons.append("no age sampled")
    elif p99 > limit:
        reasons.append(f"p99 age {p99} ms over the limit of {limit:.0f} ms")
    if boards == 0:
        reasons.append("no board to check")
    elif converged < boards:
        reasons.append(f"{boards - converged} of {boards} boards did not converge in 2 s")
    return reasons


def floor_for(point: dict[str, Any], cpus: tuple[set[int] | None, set[int] | None],
              seconds: float) -> dict[str, Any] | None:
    """The floor at a point's shape: its connections (at most what one process may hold:
    the floor is one writer process), mean frame size and frame rate."""
    if not point.get("mean_frame_bytes") or not point.get("connected"):
        return None
    server_cpus, other_cpus = cpus
    hz = point["frames_per_viewer_s"] or 0.0
    conns = min(point["connected"], fds_per_process())
    point["floor_conns"] = conns
    result = run_floor(conns, ws_frame_bytes(point["mean_frame_bytes"]),
                       seconds=seconds, hz=hz,
                       writer_cpu=min(server_cpus) if server_cpus else None,
                       sink_cpu=min(other_cpus) if other_cpus else None)
    us = result["cpu_us_per_write"]["total"]
    point["floor_us_per_write"] = us
    point["floor"] = result
    if point.get("server_us_per_frame") and us > 0:
        point["ratio_to_floor"] = round(point["server_us_per_frame"] / us, 2)
    return result


# ---- the search -----------------------------------------------------------------------------

def search_steps(peer: Server, redis_url: str, r: redis_sync.Redis, max_hz: float, plan: Plan,
                 logs: Path, cpus: tuple[set[int] | None, set[int] | None], start: int,
                 cap: int, budget_s: float, floor_s: float, max_points: int = 0,
                 say: Any = print,
                 resolution: float = 0.1) -> Generator[None, None, dict[str, Any]]:
    """Double N from `start` while points pass (up to `cap`), then bisect until the first
    failure is within `resolution` (a fraction of it, at least 100 viewers) of the last
    pass; stops when `budget_s` of its own points is spent, or after `max_points` points (0:
    no limit). The floor is measured at the best passing point. A server that does not
    start ends the search: the reason is its `error`. Yields after each point (so that
    searches can take turns, `in_turn`) and returns the result."""
    spent = 0.0
    points: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    error: str | None = None
    lo, hi = 0, 0  # last pass, first failure
    n = start
    while spent < budget_s and not (max_points and len(points) >= max_points):
        t0 = time.monotonic()
        try:
            p = run_point(peer, redis_url, r, n, max_hz, plan, logs, cpus, say)
        except StartFailed as exc:
            error = str(exc)
            say(f"  {peer.key} N={n} max_hz={max_hz:g}: did not start: {error}")
            break
        spent += time.monotonic() - t0
        points.append(p)
        if p["pass"]:
            lo, best = n, p
        else:
            hi = n
        if hi == 0:
            if n >= cap:
                break
            n = min(cap, n * 2)
        else:
            if hi - lo <= max(100, int(hi * resolution)):
                break
            n = (lo + hi) // 2 if lo else hi // 2
            if n < 10:
                break
        yield
    if best is not None:
        floor_for(best, cpus, floor_s)
    return {"peer": peer.key, "encoding": plan.encoding, "max_hz": max_hz, "best": best,
            "points": points,
            "searched_s": round(spent), "capped": hi == 0 and lo >= cap, "error": error}


def in_turn(searches: list[Generator[None, None, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Searches run a point each in turn until all are done (their results in order): two
    versions of the service compared meet the machine's changing load alike."""
    results: dict[int, dict[str, Any]] = {}
    while len(results) < len(searches):
        for i, steps in enumerate(searches):
            if i in results:
                continue
            try:
                next(steps)
            except StopIteration as done:
                results[i] = done.value
    return [results[i] for i in range(len(searches))]


def not_run(peer: Server, max_hz: float, reason: str, encoding: str = "json") -> dict[str, Any]:
    """The result of a rate a peer could not be run at."""
    return {"peer": peer.key, "encoding": encoding, "max_hz": max_hz, "best": None,
            "points": [], "searched_s": 0, "capped": False, "error": reason}


def who(res: dict[str, Any]) -> str:
    """A result's peer, with its encoding when it is not protocol 1."""
    encoding = res.get("encoding", "json")
    return res["peer"] if encoding == "json" else f"{res['peer']} ({encoding})"


def service_first(keys: list[str]) -> list[str]:
    """The service (and the service as of other commits, in the order given) first."""
    return sorted(keys, key=lambda k: revs.split(k)[0] != "service")


def cell(text: str) -> str:
    """Text (a log's tail) as one Markdown table cell: one line, no column breaks."""
    return " ".join(text.split()).replace("|", "\\|")


def in_table_order(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Results by rate (as given), then by peer: the service first; then by encoding."""
    rates = list(dict.fromkeys(res["max_hz"] for res in data["rates"]))
    peers = service_first(list(data["peers"]))
    encodings = data.get("encodings") or ["json"]
    order = {(hz, k, e): i for i, (hz, k, e) in enumerate(
        (hz, k, e) for hz in rates for k in peers for e in encodings)}
    return sorted(data["rates"], key=lambda res: order[(res["max_hz"], res["peer"],
                                                        res.get("encoding", "json"))])


def markdown(data: dict[str, Any]) -> str:
    results = in_table_order(data)
    lines = [
        f"Run {data['started']}, {data['duration_s']} s, mode {data['mode']}; the server under "
        f"test pinned to CPU {data['server_cpus']}, Redis/publisher/generator ({data['procs']} "
        f"processes) to {data['other_cpus']}; publisher {data['rate']:g} quotes/s on all symbols.",
        "",
        *(f"- `{k}`: {data['peers'][k]['label']}"
          + (f"; **not run**: {cell(reason)}" if (reason := data["peers"][k].get("skipped")) else "")
          for k in service_first(list(data["peers"]))),
        "",
        "| max_hz | peer | most viewers passing | frames/s per viewer | mean frame B | p50 / p99 age "
        "ms (limit) | boards | server CPU | server µs/frame | floor µs/write | ratio to floor "
        "| generator µs/frame | idle KB/conn |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        b = res["best"]
        head = f"| {res['max_hz']:g} | {who(res)} |"
        error = cell(res.get("error") or "")
        stopped = f" (stopped: {error})" if error and res["points"] else ""
        if b is None:
            if not res["points"]:
                lines.append(f"{head} not run: {error or 'no point in the budget'} "
                             "| | | | | | | | | | |")
                continue
            first = res["points"][0]
            why = cell("; ".join(first.get("fail_reasons") or [f"p99 {first.get('age_p99_ms')} ms"]))
            lines.append(f"{head} none passed (first point N={first.get('viewers')}: "
                         f"{why}){stopped} | | | | | | | | | | |")
            continue
        cap = " (cap)" if res["capped"] else ""
        lines.append(
            f"{head} **{b['viewers']:,}**{cap}{stopped} | {b['frames_per_viewer_s']} | "
            f"{b['mean_frame_bytes']:,.0f} | {b['age_p50_ms']} / {b['age_p99_ms']} "
            f"({b['age_limit_ms']:g}) | {b['boards_converged']}/{b['boards']} | "
            f"{b['server_cpu_pct']}% | {b['server_us_per_frame']} | "
            f"{b.get('floor_us_per_write', '–')} | {b.get('ratio_to_floor', '–')}× | "
            f"{b['generator_us_per_frame']} | {b['idle_kb_per_conn']} |")
    lines += side_by_side(data, results)
    lines += ["", "Every point tried:", "",
              "| max_hz | peer | viewers | connected | served | frames/s | p99 ms | boards | "
              "server CPU | server µs/frame | generator µs/frame | load core busy | pass |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for p in res["points"]:
            lines.append(
                f"| {p['max_hz']:g} | {who(p)} | {p['viewers']:,} | {p['connected']:,} | "
                f"{p.get('served', '–')} | "
                f"{p['frames_per_s']:,} | {p['age_p99_ms']} | {p['boards_converged']}/{p['boards']} "
                f"| {p['server_cpu_pct']}% | {p['server_us_per_frame']} | "
                f"{p['generator_us_per_frame']} | {p['load_core_busy_pct']}% | "
                + ("yes |" if p["pass"] else
                   f"no: {cell('; '.join(p.get('fail_reasons') or []))} |"))
    return "\n".join(lines) + "\n"


def at_commit(rev: str) -> Server:
    """The service as of git revision `rev` (bench/revs.py), keyed `service@<short sha>`."""
    tree = revs.export(rev)
    here = SERVERS["service"]
    return Server(f"service@{tree.short}", f"{here.label} @ {tree.short}", here.argv, here.env,
                  tree=tree)


def side_by_side(data: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    """With `service@REV` in the run: per rate, the working tree's most viewers passing
    over each commit's (1.00×: the same on the search's grid; the search's resolution is
    the step between a pass and a failure it stops at)."""
    best = {(res["max_hz"], res["peer"], res.get("encoding", "json")):
            (res["best"] or {}).get("viewers") for res in results}
    lines = []
    for (hz, key, encoding), old in best.items():
        new = best.get((hz, "service", encoding))
        if "@" in key and old and new:
            lines.append(f"- max_hz {hz:g}: working tree {new:,} over `{key}` {old:,} viewers = "
                         f"**{new / old:.2f}×**")
    res = data.get("search", {}).get("resolution")
    if lines:
        lines = ["", f"Commits side by side (search resolution {res}):", "", *lines]
    encoded = []
    for (hz, key, encoding), new in best.items():
        old = best.get((hz, key, "json"))
        if encoding != "json" and old and new:
            encoded.append(f"- max_hz {hz:g}, `{key}`: {encoding} viewers {new:,} over protocol-1 "
                           f"viewers {old:,} = **{new / old:.2f}×**")
    if encoded:
        lines += ["", f"Encodings side by side (search resolution {res}):", "", *encoded]
    return lines


def parse_peers(text: str) -> list[Server]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    servers = []
    for key in dict.fromkeys(keys):
        base, rev = revs.split(key)
        try:
            servers.append(at_commit(rev) if base == "service" and rev else SERVERS[key])
        except (KeyError, revs.RevError) as exc:
            raise argparse.ArgumentTypeError(
                f"peers are {', '.join(SERVERS)}, or service@REV for a git revision REV; "
                f"got {key!r} ({exc})") from None
    if not servers:
        raise argparse.ArgumentTypeError(f"no peer in {text!r}")
    return servers


def parse_encodings(text: str) -> list[str]:
    encodings = list(dict.fromkeys(e.strip() for e in text.split(",") if e.strip()))
    wrong = [e for e in encodings if e not in ENCODINGS]
    if wrong or not encodings:
        raise argparse.ArgumentTypeError(f"encodings are {', '.join(ENCODINGS)}; got {text!r}")
    return encodings


def peer_entry(peer: Server, compared: bool) -> dict[str, Any]:
    """data["peers"][key]: label and argv, and for the service where it ran from
    (revs.provenance)."""
    entry: dict[str, Any] = {"label": peer.label, "argv": list(peer.argv)}
    if peer.tree is not None:
        entry.update(revs.provenance(peer.tree, peer.label, compared))
    return entry


@contextlib.contextmanager
def redis_beside(cpus: tuple[set[int] | None, set[int] | None]
                 ) -> Iterator[tuple[str, redis_sync.Redis]]:
    """A redis-server of the run's own and a client of it, the server and this process
    pinned to the CPUs beside the server under test (cpus[1]), as long as the block runs."""
    own = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        server = RedisServer(Path(workdir))
        if not server.start():
            raise SystemExit("redis-server did not start")
        try:
            if cpus[1] and server.proc is not None:
                os.sched_setaffinity(server.proc.pid, cpus[1])
            if cpus[1]:
                os.sched_setaffinity(0, cpus[1])
            client = redis_sync.Redis.from_url(server.url)
            try:
                yield server.url, client
            finally:
                client.close()
        finally:
            server.stop()
            os.sched_setaffinity(0, own)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.viewers",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds: one small point per rate")
    parser.add_argument("--rates", default="50,10,4", help="max_hz values, comma-separated")
    parser.add_argument("--peers", type=parse_peers, default=[SERVERS["service"]],
                        help=f"servers searched, comma-separated, of {','.join(SERVERS)} "
                             "(default service); service@REV: the service as of git revision REV")
    parser.add_argument("--start", type=int, default=1000, help="first N of each search")
    parser.add_argument("--cap", type=int, default=MAX_PORTS_N, help="largest N tried")
    parser.add_argument("--budget", type=float, default=600,
                        help="seconds of search per rate and peer")
    parser.add_argument("--resolution", type=float, default=0.1,
                        help="bisect until the first failure is within this fraction of the "
                             "last pass (default 0.1)")
    parser.add_argument("--procs", type=int, default=2, help="generator processes")
    parser.add_argument("--generator", choices=("native", "picows"), default="native",
                        help="bench/viewers_load.c (default) or bench/fastclient.py")
    parser.add_argument("--encodings", type=parse_encodings, default=["json"],
                        help=f"what the service's viewers ask for, comma-separated, of "
                             f"{','.join(ENCODINGS)} (default json): a search per encoding, "
                             "taking turns point by point")
    parser.add_argument("--out", type=Path, help="default bench/results (quick: bench/results/tmp)")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--floor-only", action="store_true",
                        help="only run the floor program (--conns, --bytes, --hz)")
    parser.add_argument("--conns", type=int, default=1000)
    parser.add_argument("--bytes", type=int, default=3000)
    parser.add_argument("--hz", type=float, default=0.0)
    args = parser.parse_args(argv)
    raise_nofile()
    cpus = cpu_plan(not args.no_pin)
    if args.floor_only:
        s, o = cpus
        print(json.dumps(run_floor(args.conns, args.bytes, hz=args.hz,
                                   writer_cpu=min(s) if s else None,
                                   sink_cpu=min(o) if o else None)))
        return 0
    build_floor()
    peers: list[Server] = args.peers
    # A comparison of commits: the working tree's service is labelled with HEAD's sha, and
    # the results do not go over the committed viewers.md.
    compared = any(peer.tree is not None and peer.tree.sha for peer in peers)
    encodings: list[str] = args.encodings
    if encodings != ["json"] and args.generator != "native":
        parser.error("--encodings: the native generator only")
    if args.quick:
        plan = Plan(warmup_s=0.5, measure_s=1.5, procs=2, boards=2, decode_every=5,
                    generator=args.generator)
        out = args.out or ROOT / "bench" / "results" / "tmp" / "viewers-quick"
    else:
        plan = Plan(warmup_s=3, measure_s=10, procs=args.procs, boards=4, decode_every=20,
                    generator=args.generator)
        # With encodings: a directory per run (bench/bytes.py reads them all).
        out = args.out or (COMMITS_OUT if compared else ROOT / "bench" / "results" / (
            "viewers-encodings/" + time.strftime("%Y%m%d-%H%M", time.gmtime())
            if encodings != ["json"] else ""))
    rates = [float(x) for x in args.rates.split(",") if x.strip()]
    entries = {peer.key: peer_entry(peer, compared) for peer in peers}
    # Why a peer is not run: missing here, its imports not its tree's, or it did not start
    # at its first point.
    skipped = {peer.key: peer.unavailable() or entries[peer.key].get("imports", {}).get("error")
               for peer in peers}
    started = time.time()
    results = []
    logs = out / "logs" if args.quick else ROOT / "bench" / "results" / "tmp" / "logs"
    with redis_beside(cpus) as (redis_url, r):
        for hz in rates:
            runnable: list[tuple[Server, str]] = []
            for peer in peers:
                reason = skipped[peer.key]
                for encoding in encodings:
                    why = reason or (None if peer.tree is not None or encoding == "json"
                                     else "speaks protocol 1 only")
                    if why is not None:
                        print(f"max_hz {hz:g}, {peer.key} {encoding}: not run: {why}",
                              flush=True)
                        results.append(not_run(peer, hz, why, encoding))
                    else:
                        runnable.append((peer, encoding))
            searches = [
                search_steps(peer, redis_url, r, hz,
                             dataclasses.replace(plan, encoding=encoding), logs, cpus, 100,
                             args.cap, float("inf"), 1.0, max_points=1) if args.quick else
                search_steps(peer, redis_url, r, hz,
                             dataclasses.replace(plan, encoding=encoding), logs, cpus,
                             args.start, args.cap, args.budget, 5.0,
                             resolution=args.resolution)
                for peer, encoding in runnable]
            # Commits or encodings compared take turns point by point; otherwise one
            # after the other.
            turns = compared or len(encodings) > 1
            names = ", ".join(p.key + ("" if e == "json" else f" {e}") for p, e in runnable)
            print(f"max_hz {hz:g}, {names}" + (" (a point each in turn)" if turns else "")
                  + ":", flush=True)
            done = in_turn(searches) if turns else [in_turn([s])[0] for s in searches]
            for (peer, _), res in zip(runnable, done, strict=True):
                ran = any(x["points"] for x in results if x["peer"] == peer.key)
                if res["error"] and not res["points"] and not ran:
                    skipped[peer.key] = res["error"]  # never started: not again
                results.append(res)
    data = {
        "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "duration_s": round(time.time() - started),
        "server_cpus": sorted(cpus[0]) if cpus[0] else "any",
        "other_cpus": sorted(cpus[1]) if cpus[1] else "any",
        "procs": plan.procs,
        "rate": plan.rate,
        "plan": plan.__dict__,
        "search": {"start": args.start, "cap": args.cap, "budget_s": args.budget,
                   "resolution": args.resolution},
        "peers": {k: {**entry, "skipped": skipped[k]} for k, entry in entries.items()},
        "encodings": encodings,
        "rates": results,
    }
    write_results(out, "viewers", data, markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
