"""Two versions of the service side by side, in one command: viewers per core and firehose cost.

    python -m bench.compare 9fcb21a                    # commit 9fcb21a against the working tree
    python -m bench.compare 9fcb21a --new service@HEAD # against a commit instead
    python -m bench.compare 9fcb21a --quick            # seconds: proves the path, measures nothing

Runs, one after another on this machine with the same settings for both:

1. the firehose scenario (`python -m bench --peers OLD,NEW --scenarios firehose`) `--rounds`
   times, the order of the two alternating from round to round: the server CPU µs per
   delivered frame of each, its median over the rounds, and the spread;
2. the viewers-per-core search (`python -m bench.viewers --peers OLD,NEW --rates ...`),
   rate by rate, the two searches taking turns point by point.

OLD is `service@REV` (bench/revs.py: the commit's tree, exported once, run with this venv);
NEW is the working tree's `service` unless --new names another `service@REV`. The publisher,
the load generators and Redis are this tree's for both. Writes compare.md and compare.json
(--out, default bench/results/compare/; every sub-run's own results under
bench/results/tmp/compare-runs/): each figure for both, NEW over OLD, and whether that is
within --tolerance of 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import revs
from bench.output import write_results

ROOT = revs.ROOT
PY = sys.executable
RUNS = ROOT / "bench" / "results" / "tmp" / "compare-runs"  # each sub-run's own results


def key_of(spec: str) -> str:
    """The results key a peer spec gets: `service`, or `service@<short sha>`."""
    base, rev = revs.split(spec)
    return f"{base}@{revs.commit_sha(rev)[:7]}" if rev else spec


def run(argv: list[str], log: list[dict[str, Any]]) -> None:
    """One sub-run, its output passed through; its command line and wall time logged."""
    shown = " ".join(["python", *(a.replace(f"{ROOT}/", "") for a in argv[1:])])
    print(f"$ {shown}", flush=True)
    t0 = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, check=False)
    log.append({"command": shown, "wall_s": round(time.monotonic() - t0), "exit": done.returncode})
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {shown}")


def firehose(old: str, new: str, rounds: int, quick: bool, runs: Path,
             log: list[dict[str, Any]]) -> dict[str, Any]:
    """Server CPU µs per delivered frame of both, per round (OLD first in even rounds)."""
    per_round: list[dict[str, float | None]] = []
    peers: dict[str, Any] = {}
    for i in range(rounds):
        pair = [old, new] if i % 2 == 0 else [new, old]
        out = runs / f"firehose-{i + 1}"
        run([PY, "-m", "bench", "--peers", ",".join(pair), "--scenarios", "firehose",
             "--no-profile", "--out", str(out), *(["--quick"] if quick else [])], log)
        data = json.loads((out / "latest.json").read_text())
        if data["failed"]:
            raise SystemExit(f"firehose round {i + 1}: could not run {data['failed']}")
        peers = data["peers"]
        per_round.append({k: data["results"][k]["firehose"].get("server_us_per_frame")
                          for k in (key_of(old), key_of(new))})
    return {"rounds": per_round, "peers": peers}


def viewers(old: str, new: str, rates: str, start: int, budget: float, resolution: float,
            quick: bool, runs: Path, log: list[dict[str, Any]]) -> dict[str, Any]:
    out = runs / "viewers"
    run([PY, "-m", "bench.viewers", "--peers", f"{old},{new}", "--rates", rates,
         "--start", str(start), "--budget", f"{budget:g}", "--resolution", f"{resolution:g}",
         "--out", str(out), *(["--quick"] if quick else [])], log)
    data: dict[str, Any] = json.loads((out / "viewers.json").read_text())
    return data


def figure(name: str, a: float | None, b: float | None, tolerance: float,
           lower_is_better: bool) -> dict[str, Any]:
    ratio = b / a if a and b else None
    return {"figure": name, "old": a, "new": b, "ratio": round(ratio, 3) if ratio else None,
            "within": abs(ratio - 1) <= tolerance if ratio else None,
            "lower_is_better": lower_is_better}


def paired(view: dict[str, Any], old: str, new: str) -> list[dict[str, Any]]:
    """Per rate: the service's CPU µs per frame at each N both versions ran, new over old,
    and the median of those ratios: the cost per frame, without the search's pass/fail
    near the limit (which moves the viewers figure a whole step of the grid)."""
    out = []
    for hz in dict.fromkeys(r["max_hz"] for r in view["rates"]):
        us = {r["peer"]: {p["viewers"]: p["server_us_per_frame"] for p in r["points"]}
              for r in view["rates"] if r["max_hz"] == hz}
        common = sorted(set(us.get(old, {})) & set(us.get(new, {})))
        ratios = {n: round(us[new][n] / us[old][n], 3) for n in common
                  if us[old][n] and us[new][n]}
        out.append({"max_hz": hz, "ratios": ratios,
                    "median": round(statistics.median(ratios.values()), 3) if ratios else None})
    return out


def markdown(result: dict[str, Any]) -> str:
    old, new = result["old"], result["new"]
    tol = result["tolerance"]
    lines = [
        f"# `{new['key']}` against `{old['key']}`",
        "",
        f"Run {result['started']}, {result['wall_s']} s in all ({result['mode']} mode); "
        f"working tree: HEAD {result['head']}; load average before/after "
        f"{result['loadavg_before']} / {result['loadavg_after']} (2 cores). Viewers: "
        + ("one point of 100 viewers per rate and version" if result["mode"] == "quick" else
           f"search from N={result['start']}, {result['budget_s']:g} s per rate and version, "
           f"resolution {result['resolution']}")
        + f". Firehose: {result['rounds']} rounds, the order alternating; the median is the "
        "figure.",
        "",
        f"- old `{old['key']}`: `service` imported from `{old['imports'].get('service')}`",
        f"- new `{new['key']}`: `service` imported from `{new['imports'].get('service')}`",
        "",
        f"| figure | {old['key']} | {new['key']} | new / old | within {tol:.0%} |",
        "|---|---|---|---|---|",
    ]
    for f in result["figures"]:
        ok = "–" if f["within"] is None else ("yes" if f["within"] else "**no**")
        ratio = f"{f['ratio']:.3f}×" if f["ratio"] else "–"
        lines.append(f"| {f['figure']} | {f['old'] if f['old'] is not None else '–'} | "
                     f"{f['new'] if f['new'] is not None else '–'} | {ratio} | {ok} |")
    lines += ["", "Server CPU µs per frame at the same number of viewers, new / old (the points "
              "both searches ran):", ""]
    lines += [f"- max_hz {x['max_hz']:g}: median **{x['median']}×** over "
              + ", ".join(f"{n:,}: {v}×" for n, v in x["ratios"].items())
              for x in result["same_n"]]
    rounds = result["firehose_rounds"]
    lines += ["", "Firehose server CPU µs per delivered frame, each round: "
              + "; ".join(f"{i + 1}: {r[old['key']]} / {r[new['key']]}"
                          for i, r in enumerate(rounds)) + " (old / new).", ""]
    for rate in result["viewer_points"]:
        lines.append(f"- max_hz {rate['max_hz']:g}, points tried (viewers: pass): "
                     + "; ".join(f"`{k}` " + ", ".join(f"{n:,}{'✓' if ok else '✗'}" for n, ok in pts)
                                 for k, pts in rate["points"].items()))
    lines += ["", "Viewers per core is the most viewers one pinned service core held at that "
              "max_hz with every viewer served, p99 age within 100 ms + 1000/max_hz ms and every "
              "sampled board converged (bench/viewers.py); new / old above 1 is more viewers. "
              "Firehose µs/frame is server CPU over frames delivered to 200 clients at 1,000 "
              "quotes/s (bench/harness.py); new / old above 1 costs more. The search's "
              "resolution bounds what a viewers ratio can resolve: two versions that pass and "
              "fail the same points get the same figure.", "", "Commands:", ""]
    lines += [f"- `{c['command']}` ({c['wall_s']} s)" for c in result["commands"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the git revision to compare against (e.g. 9fcb21a)")
    parser.add_argument("--new", default="service",
                        help="service (the working tree, default) or service@REV")
    parser.add_argument("--rates", default="4,10", help="max_hz of the viewers search")
    parser.add_argument("--start", type=int, default=2000, help="first N of each search")
    parser.add_argument("--budget", type=float, default=240,
                        help="seconds of viewers search per rate and version")
    parser.add_argument("--resolution", type=float, default=0.1,
                        help="the viewers search's bisection stop (fraction)")
    parser.add_argument("--rounds", type=int, default=3, help="firehose rounds")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, help="default bench/results/compare "
                        "(quick: bench/results/tmp/compare-quick)")
    args = parser.parse_args(argv)
    if revs.split(args.new)[0] != "service":
        parser.error("--new is service or service@REV")
    try:
        # Revisions as short shas from here on: the commands logged name what ran.
        old, new = key_of(f"service@{args.old}"), key_of(args.new)
    except revs.RevError as exc:
        parser.error(str(exc))
    out = args.out or ROOT / "bench" / "results" / ("tmp/compare-quick" if args.quick else "compare")
    started = time.time()
    load_before = os.getloadavg()
    log: list[dict[str, Any]] = []
    runs = RUNS / ("quick" if args.quick else "full")
    fire = firehose(old, new, max(1, args.rounds), args.quick, runs, log)
    view = viewers(old, new, args.rates, args.start, args.budget, args.resolution,
                   args.quick, runs, log)
    figures = []
    best = {(r["max_hz"], r["peer"]): (r["best"] or {}).get("viewers") for r in view["rates"]}
    rates = list(dict.fromkeys(r["max_hz"] for r in view["rates"]))
    for hz in rates:
        figures.append(figure(f"viewers per core, max_hz {hz:g}", best.get((hz, old)),
                              best.get((hz, new)), args.tolerance, False))

    def median(key: str) -> float | None:
        values = [r[key] for r in fire["rounds"] if r[key] is not None]
        return round(statistics.median(values), 2) if values else None

    figures.append(figure("firehose server CPU µs per frame (median)", median(old),
                          median(new), args.tolerance, True))
    result = {
        "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "wall_s": round(time.time() - started),
        "head": revs.head(),
        # Other work on the machine moves the figures: the 1/5/15-min load around the run.
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "tolerance": args.tolerance,
        "start": args.start, "budget_s": args.budget, "resolution": args.resolution,
        "rounds": max(1, args.rounds),
        "old": {"key": old, "spec": f"service@{args.old}", **view["peers"][old]},
        "new": {"key": new, "spec": args.new, **view["peers"][new]},
        "figures": figures,
        "firehose_rounds": fire["rounds"],
        "same_n": paired(view, old, new),
        "viewer_points": [{"max_hz": hz, "points": {
            r["peer"]: [(p["viewers"], p["pass"]) for p in r["points"]]
            for r in view["rates"] if r["max_hz"] == hz}} for hz in rates],
        "commands": log,
    }
    write_results(out, "compare", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
