"""Slow links, measured (issue 25): what readers on bad lines cost the service and the
readers beside them.

`.venv/bin/python -m bench.netlinks` (as root: test hosts are network namespaces,
tests/netns.py) runs the service on a Redis feed (`publisher simulate` at --rate), local
readers in the root namespace all along, and in alternating phases a slow group (a
300 ms / 2% / 256 kbit/s line: readers of every symbol, the SDK's defaults, together
offered more than the line carries) and a medium one (80 ms / 0.5%), present or not. It reports:

- the local readers' newest-quote age, p50 and p99, with and without the slow groups (same
  run, alternated, so drift in the machine's load falls on both);
- the slow and medium readers' board age (p50/p99/max of their newest quote's age);
- service memory per slow client: RSS with the slow groups minus without, over their
  count, and the kernel's bytes queued for them (ss: Send-Q and unsent);
- quotes conflated in each phase.

Results: bench/results/netlinks.{json,md}. Each phase starts once every reader of it
holds a board; ages are sampled every 0.5 s by tests/net_readers.py.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.output import write_results
from tests.netns import JsonLines, NetHost, Shape, hosts_on_links, netns_missing
from tests.redis_server import RedisServer
from tests.service_proc import PublisherProcess, ServiceProcess, http_get

RESULTS = Path(__file__).resolve().parent / "results"
SLOW = Shape(rtt_ms=300, loss=0.02, rate_kbit=256)
MEDIUM = Shape(rtt_ms=80, loss=0.005)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def metric(service: ServiceProcess, name: str) -> float:
    _, body = http_get(service.url + "/metrics")
    found = re.search(rf"^{name} (\S+)$", body.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def queued(service: ServiceProcess, prefix: str) -> tuple[int, int]:
    """Send-Q and unsent bytes the kernel holds for connections to peers in `prefix`."""
    out = subprocess.run(["ss", "-tni", "state", "established", f"( sport = :{service.port} )"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    send_q = unsent = 0
    for block in re.split(r"\n(?=\S)", out):
        peer = re.search(rf"^\s*(\d+)\s+(\d+)\s+\S+\s+{re.escape(prefix)}", block)
        if peer:
            send_q += int(peer.group(2))
            found = re.search(r"notsent:(\d+)", block)
            unsent += int(found.group(1)) if found else 0
    return send_q, unsent


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def ages(child: JsonLines, since: float, key: str = "age_ms_max") -> list[float]:
    return [float(s[key]) for s in child.lines if s.get("at", 0) >= since and s.get(key) is not None]


def served(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda line: line.get("served") == n


def readers(where: NetHost | None, url: str, log: Path, *args: str) -> JsonLines:
    argv = [sys.executable, "-m", "tests.net_readers", url, "--report-s", "0.5", *args]
    return JsonLines(where.command(argv) if where else argv, log)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netlinks", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=2000, help="quotes/s published (2000)")
    parser.add_argument("--local", type=int, default=20, help="local readers (20)")
    parser.add_argument("--slow", type=int, default=10, help="readers on the slow line (10)")
    parser.add_argument("--medium", type=int, default=5, help="readers on the medium line (5)")
    parser.add_argument("--phase-s", type=float, default=15, help="seconds a phase (15)")
    parser.add_argument("--rounds", type=int, default=2, help="without/with rounds (2)")
    args = parser.parse_args()
    missing = netns_missing()
    if missing:
        raise SystemExit(f"bench.netlinks: {missing}")
    logs = Path(tempfile.mkdtemp(prefix="bench-netlinks-"))
    phases: list[dict[str, Any]] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-redis-")))
        redis = RedisServer(workdir)
        if not redis.start():
            raise SystemExit("redis-server did not start")
        stack.callback(redis.stop)
        service = ServiceProcess({"HOST": "0.0.0.0", "REDIS_URL": redis.url})
        service.start(ready="/healthz")
        stack.callback(service.stop)
        publisher = PublisherProcess(redis.url, rate=args.rate)
        publisher.start()
        stack.callback(publisher.stop)
        slow, medium = stack.enter_context(hosts_on_links(SLOW, MEDIUM))
        local = readers(None, service.ws_url, logs / "local.log", "--count", str(args.local))
        stack.callback(local.stop)
        local.wait_for(lambda s: s.get("served") == args.local, 30, "local boards")
        for round_no in range(args.rounds):
            for present in (False, True):
                groups: list[JsonLines] = []
                if present:
                    groups = [
                        readers(slow, f"ws://{slow.gateway}:{service.port}/ws", logs / "slow.log",
                                "--count", str(args.slow)),
                        readers(medium, f"ws://{medium.gateway}:{service.port}/ws",
                                logs / "medium.log", "--count", str(args.medium)),
                    ]
                    for group, n in zip(groups, (args.slow, args.medium), strict=True):
                        group.wait_for(served(n), 60, "slow boards")
                time.sleep(2)  # settle
                start = time.monotonic()
                conflated = metric(service, "quote_service_quotes_conflated_total")
                rss, send_q, unsent = [], [], []
                while time.monotonic() - start < args.phase_s:
                    time.sleep(1)
                    rss.append(rss_kb(service.pid))
                    q = queued(service, slow.address.rpartition(".")[0] + ".")
                    send_q.append(q[0])
                    unsent.append(q[1])
                phase: dict[str, Any] = {
                    "round": round_no, "slow_groups": present,
                    "local_age_ms_p50": pct(ages(local, start, "age_ms_p50"), 0.5),
                    "local_age_ms_p99": pct(ages(local, start, "age_ms_p99"), 0.99),
                    "rss_kb": round(statistics.median(rss)),
                    "quotes_conflated": metric(service, "quote_service_quotes_conflated_total") - conflated,
                }
                if present:
                    phase.update({
                        "slow_age_ms": [pct(ages(groups[0], start), q) for q in (0.5, 0.99, 1.0)],
                        "medium_age_ms": [pct(ages(groups[1], start), q) for q in (0.5, 0.99, 1.0)],
                        "slow_reconnects": groups[0].latest.get("reconnects"),
                        "slow_send_q_bytes_max": max(send_q), "slow_unsent_bytes_max": max(unsent),
                    })
                for group in groups:
                    group.stop()
                phases.append(phase)
                print(phase, flush=True)
    without = [p for p in phases if not p["slow_groups"]]
    with_ = [p for p in phases if p["slow_groups"]]
    per_client_kb = (statistics.median(p["rss_kb"] for p in with_)
                     - statistics.median(p["rss_kb"] for p in without)) / (args.slow + args.medium)
    data = {"args": vars(args), "link": {"slow": vars(SLOW), "medium": vars(MEDIUM), "via": slow.via},
            "phases": phases, "rss_kb_per_slow_client": round(per_client_kb, 1)}
    write_results(RESULTS, "netlinks", data, report(data))
    return 0


def report(data: dict[str, Any]) -> str:
    a = data["args"]
    lines = [
        "# Slow links (bench/netlinks.py)", "",
        f"Feed: Redis, `publisher simulate --rate {a['rate']:g}`. {a['local']} local readers all "
        f"along; with the slow groups: {a['slow']} readers of every symbol (the SDK's default, "
        f"compact + deflate) on a 300 ms / 2% / 256 kbit/s line, more than it carries, and "
        f"{a['medium']} on 80 ms / 0.5%, link via {data['link']['via']}. "
        f"Phases of {a['phase_s']:g} s, alternated.", "",
        "| round | slow groups | local age p50 / p99 ms | slow age p50 / p99 / max ms | "
        "medium age p50 / p99 / max ms | service RSS KB | kernel Send-Q / unsent max (slow) | "
        "quotes conflated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in data["phases"]:
        def trio(key: str, p: dict[str, Any] = p) -> str:
            return " / ".join(str(v) for v in p[key]) if key in p else "-"
        queue = (f"{p['slow_send_q_bytes_max']} / {p['slow_unsent_bytes_max']}"
                 if "slow_send_q_bytes_max" in p else "-")
        lines.append(f"| {p['round']} | {'yes' if p['slow_groups'] else 'no'} | "
                     f"{p['local_age_ms_p50']} / {p['local_age_ms_p99']} | {trio('slow_age_ms')} | "
                     f"{trio('medium_age_ms')} | {p['rss_kb']} | {queue} | {p['quotes_conflated']:.0f} |")
    lines += ["", f"Service memory per slow or medium client (RSS with minus without, over "
              f"{a['slow'] + a['medium']}): {data['rss_kb_per_slow_client']} KB.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
