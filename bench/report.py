"""Results: bench/results/latest.json, latest.md and latest.png (if matplotlib imports)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    HAVE_MPL = True
except ImportError:  # pragma: no cover - the PNG is optional
    HAVE_MPL = False

Hist = list[tuple[int, int]]

# The targets the issue sets for the service (one process).
FIREHOSE_VS_BROADCASTER = 4.0
FIREHOSE_P99_MS = 100
TICKER_P99_MS = 50
IDLE_CONNS = 10_000
IDLE_KB = 30
STALLED_RATIO = 1.5
# "At least equal to uWebSockets.js": when both deliver everything offered, what is left
# is the edges of the window; a ratio within this of 1 counts as equal.
EQUAL_TOLERANCE = 0.01
# The load client shares one core with Redis and the publisher: above this it may be the
# bottleneck, and the server's figures are then a lower bound (marked †).
CLIENT_BOUND_PCT = 85


LOAD_CORE_FULL_PCT = 95


def _cb(r: dict[str, Any]) -> str:
    bound = ((r.get("client_cpu_pct") or 0) >= CLIENT_BOUND_PCT
             or (r.get("load_core_busy_pct") or 0) >= LOAD_CORE_FULL_PCT)
    return " †" if bound else ""


def merge_hist(*sparse: dict[str, int]) -> Hist:
    total: Counter[int] = Counter()
    for h in sparse:
        for k, v in h.items():
            total[int(k)] += v
    return sorted(total.items())


def percentile(hist: Hist, p: float) -> int | None:
    n = sum(c for _, c in hist)
    if n == 0:
        return None
    rank = max(1, math.ceil(n * p / 100))
    seen = 0
    for value, count in hist:
        seen += count
        if seen >= rank:
            return value
    return hist[-1][0]


def one_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return "ERROR " + r["error"][:300]
    if "kb_per_conn" in r:
        return (f"{r['connected']}/{r['clients']} connected in {r['connect_s']}s, "
                f"{r['kb_per_conn']} KB/conn, {r['receiving']} receiving")
    text = (f"{r['healthy']} clients, {r['frames_per_s']:,} frames/s "
            f"({r.get('server_us_per_frame')} µs CPU each), "
            f"{_n(r['updates_per_s'])} upd/s ({r['quotes_per_s']:,} quotes/s) "
            f"of {r['offered_per_s']:,} offered, age p50 {r['age_p50_ms']} p99 {r['age_p99_ms']} "
            f"max {r['age_max_ms']} ms, server CPU {r['server_cpu_pct']}% RSS {r['server_rss_mb']} MB, "
            f"client CPU {r['client_cpu_pct']}%")
    if "converged" in r:
        c = r["converged"]
        text += f", converged {c['within_1s']}/{c['clients']} within 1 s (last {c['max_s']} s)"
    return text


# Frames every stack passes through (the interpreter, the event loop, uvicorn's runner):
# left out of the inclusive list, which is about where the time goes below them.
PLUMBING = ("<frozen runpy>", "asyncio/base_events.py", "asyncio/runners.py",
            "asyncio/events.py", "uvicorn/server.py", "uvicorn/_compat.py", "service/__main__.py")


def hot_frames(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if not any(p in frame for p in PLUMBING):
                incl[frame] += count

    def share(c: Counter[str], limit: float) -> list[dict[str, Any]]:
        rows = [{"frame": f, "pct": round(100 * n / total, 1)} for f, n in c.most_common()
                if n / total <= limit]
        return rows[:top]

    if not total:
        return {"samples": 0, "self": [], "inclusive": []}
    return {"samples": total, "self": share(own, 1.0), "inclusive": share(incl, 0.95)}


# ---- Markdown ---------------------------------------------------------------------------

def _n(v: Any, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.1f}{unit}"
    return f"{int(v):,}{unit}"


def _get(data: dict[str, Any], peer: str, sc: str) -> dict[str, Any] | None:
    r = data["results"].get(peer, {}).get(sc)
    return r if r and "error" not in r else None


def _error_row(data: dict[str, Any], peer: str, sc: str, ncols: int) -> str | None:
    r = data["results"].get(peer, {}).get(sc)
    if r is None:
        return None
    if "error" in r:
        msg = r["error"].replace("|", "/").replace("\n", " ")[:160]
        return f"| {data['peers'][peer]['label']} | error: {msg} |" + " |" * (ncols - 2)
    return ""


def _table(data: dict[str, Any], sc: str, header: list[str], row: Any) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for peer in data["results"]:
        err = _error_row(data, peer, sc, len(header))
        if err is None:
            continue
        if err:
            lines.append(err)
            continue
        r = data["results"][peer][sc]
        lines.append("| " + " | ".join([data["peers"][peer]["label"], *row(peer, r)]) + " |")
    return lines


def _stream_cells(peer: str, r: dict[str, Any]) -> list[str]:
    return [
        f"{r['healthy']}",
        _n(r["offered_per_s"]),
        _n(r["updates_per_s"]) + f" ({_n(100 * (r['delivered_share'] or 0))}%)",
        _n(r["quotes_per_s"]),
        _n(r["age_p50_ms"]), _n(r["age_p99_ms"]), _n(r["age_max_ms"]),
        _n(r["server_cpu_pct"], "%"), _n(r["server_rss_mb"]),
        _n(r["client_cpu_pct"], "%") + _cb(r),
        "yes" if r.get("deflate_conns") else "no",
    ]


STREAM_HEADER = ["server", "clients", "offered/s", "updates/s (share)", "quotes recv/s",
                 "p50 ms", "p99 ms", "max ms", "server CPU", "RSS MB", "client CPU", "deflate"]


def targets(data: dict[str, Any]) -> list[str]:
    out: list[str] = []

    def verdict(ok: bool | None) -> str:
        return "–" if ok is None else ("met" if ok else "**missed**")

    fire = _get(data, "service", "firehose")
    bro = _get(data, "broadcaster", "firehose")
    uws = _get(data, "uws", "firehose")
    rows = [["target", "measured", "verdict"], ["---", "---", "---"]]
    if fire and bro:
        ratio = fire["updates_per_s"] / bro["updates_per_s"] if bro["updates_per_s"] else math.inf
        qratio = fire["quotes_per_s"] / bro["quotes_per_s"] if bro["quotes_per_s"] else math.inf
        rows.append([f"Firehose ≥ {FIREHOSE_VS_BROADCASTER:g}× broadcaster's delivered/s",
                     f"{ratio:.2f}× updates/s ({qratio:.2f}× raw quotes/s)",
                     verdict(ratio >= FIREHOSE_VS_BROADCASTER)])
    if fire and uws:
        ratio = fire["updates_per_s"] / uws["updates_per_s"] if uws["updates_per_s"] else math.inf
        qratio = fire["quotes_per_s"] / uws["quotes_per_s"] if uws["quotes_per_s"] else math.inf
        rows.append([f"Firehose ≥ uWebSockets.js's delivered/s (within {EQUAL_TOLERANCE:.0%})",
                     f"{ratio:.3f}× updates/s ({qratio:.2f}× raw quotes/s); shares of offered "
                     f"{fire['delivered_share']:.1%} vs {uws['delivered_share']:.1%}",
                     verdict(ratio >= 1.0 - EQUAL_TOLERANCE)])
    if fire:
        p99 = fire["age_p99_ms"]
        rows.append([f"Firehose p99 age ≤ {FIREHOSE_P99_MS} ms", f"{_n(p99)} ms",
                     verdict(p99 is not None and p99 <= FIREHOSE_P99_MS)])
    tick = _get(data, "service", "ticker")
    if tick:
        p99 = tick["held_p99_ms"]
        rows.append([f"Ticker p99 age ≤ {TICKER_P99_MS} ms", f"{_n(p99)} ms (held state)",
                     verdict(p99 is not None and p99 <= TICKER_P99_MS)])
        c = tick.get("converged", {})
        rows.append(["Ticker: every client holds the final state within 1 s",
                     f"{c.get('within_1s')}/{c.get('clients')} (last at {c.get('max_s')} s)",
                     verdict(c.get("within_1s") == c.get("clients") == tick["clients"])])
    idle = _get(data, "service", "idle")
    if idle:
        kb = idle["kb_per_conn"]
        rows.append([f"Idle crowd: {IDLE_CONNS:,} connections at ≤ {IDLE_KB} KB each",
                     f"{idle['connected']:,} connected, {_n(kb)} KB each",
                     verdict(idle["connected"] >= IDLE_CONNS and kb is not None and kb <= IDLE_KB)
                     if idle["clients"] >= IDLE_CONNS else "– (quick mode)"])
    st = _get(data, "service", "stalled")
    if st and fire and fire["age_p99_ms"]:
        ratio = (st["age_p99_ms"] or math.inf) / fire["age_p99_ms"]
        rows.append([f"Stalled readers: healthy p99 within {STALLED_RATIO}× of Firehose",
                     f"{_n(st['age_p99_ms'])} ms vs {_n(fire['age_p99_ms'])} ms = {ratio:.2f}×",
                     verdict(ratio <= STALLED_RATIO)])
    if len(rows) > 2:
        out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    v = data["versions"]
    sc = {s["key"]: s for s in data["scenarios"]}
    lines = [
        f"# Benchmark results ({data['mode']} mode)",
        "",
        f"Run {data['started']}, {data['duration_s']} s in all. Machine: {m['nproc']} CPUs "
        f"({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, "
        f"Node {m['node']}, Redis {m['redis']}. Server under test pinned to CPU "
        f"{data['pinning']['server']}; Redis, publisher and load client to CPU "
        f"{data['pinning']['redis_publisher_client']}. Load average before/after: "
        f"{data.get('loadavg_before')} / {data.get('loadavg_after')}.",
        "",
        *_unpinned_note(data),
        f"Source measured: {data.get('source', '?')}.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
    ]
    if data["failed"]:
        lines += ["**Could not run:**", ""]
        lines += [f"- {data['peers'][k]['label']} (`{k}`): {why}" for k, why in data["failed"].items()]
        lines.append("")
    t = targets(data)
    if t:
        lines += ["## The service against its targets", "", *t, ""]
    lines += commits_section(data)
    if "firehose" in sc:
        s = sc["firehose"]
        lines += [f"## 1. Firehose: {s['clients']} clients on all symbols, publisher at "
                  f"{s['rate']:g} quotes/s, {s['measure_s']:g} s", "",
                  *_table(data, "firehose", STREAM_HEADER, _stream_cells), ""]
    if "ticker" in sc:
        s = sc["ticker"]

        def ticker_cells(peer: str, r: dict[str, Any]) -> list[str]:
            c = r.get("converged", {})
            return [f"{r['healthy']}", _n(r["offered_per_s"]),
                    _n(r["updates_per_s"]) + f" ({_n(100 * (r['delivered_share'] or 0))}%)",
                    _n(r["held_p50_ms"]), _n(r["held_p99_ms"]), _n(r["age_max_ms"]),
                    f"{c.get('within_1s')}/{c.get('clients')}",
                    "–" if c.get("max_s") is None else f"{c['max_s']:.2f} s",
                    _n(r["server_cpu_pct"], "%"), _n(r["server_rss_mb"]),
                    _n(r["client_cpu_pct"], "%") + _cb(r)]

        lines += [f"## 2. Ticker: {s['clients']} clients on all symbols, {s['rate']:g} quotes/s, "
                  f"{s['measure_s']:g} s, then the publisher stops", "",
                  *_table(data, "ticker", ["server", "clients", "offered/s", "updates/s (share)",
                                           "held p50 ms", "held p99 ms", "max ms",
                                           "final state ≤ 1 s", "last converged", "server CPU",
                                           "RSS MB", "client CPU"], ticker_cells), ""]
    if "idle" in sc:
        s = sc["idle"]

        def idle_cells(peer: str, r: dict[str, Any]) -> list[str]:
            return [f"{r['connected']:,}/{r['clients']:,}", _n(r["connect_s"], " s"),
                    _n(r["rss_before_mb"]), _n(r["rss_after_mb"]), _n(r["kb_per_conn"]),
                    f"{r['receiving']:,}", f"{r['still_open']:,}"]

        lines += [f"## 3. Idle crowd: {s['clients']:,} connections, {s['rate']:g} quote/s", "",
                  *_table(data, "idle", ["server", "connected", "time to connect all",
                                         "RSS before MB", "RSS after MB", "KB per connection",
                                         f"got a quote in {s['measure_s']:g} s", "open at end"],
                          idle_cells), ""]
    if "stalled" in sc:
        s = sc["stalled"]

        def stalled_cells(peer: str, r: dict[str, Any]) -> list[str]:
            base = _get(data, peer, "firehose")
            ratio = "–"
            if base and base["age_p99_ms"] and r["age_p99_ms"] is not None:
                ratio = f"{r['age_p99_ms'] / base['age_p99_ms']:.2f}×"
            return [f"{r['healthy']}+{r['stalled']}", _n(r["updates_per_s"]) +
                    f" ({_n(100 * (r['delivered_share'] or 0))}%)",
                    _n(r["age_p50_ms"]), _n(r["age_p99_ms"]), ratio, _n(r["age_max_ms"]),
                    f"{r['stalled'] - r['stalled_open_at_end']}/{r['stalled']}",
                    _n(r.get("stalled_sendq_mb")),
                    _n(r["server_rss_start_mb"]) + " → " + _n(r["server_rss_mb"]),
                    _n(r["server_cpu_pct"], "%"), _n(r["client_cpu_pct"], "%") + _cb(r)]

        lines += [f"## 4. Stalled readers: Firehose with {s['stall']} of {s['clients']} clients "
                  "not reading", "",
                  *_table(data, "stalled", ["server", "healthy+stalled", "healthy updates/s",
                                            "healthy p50 ms", "healthy p99 ms", "p99 vs Firehose",
                                            "max ms", "stalled dropped by server",
                                            "kernel send queue to stalled, MB", "RSS MB",
                                            "server CPU", "client CPU"], stalled_cells), ""]
    lines += workers_section(data)
    sweep = [s for s in data["scenarios"] if s["sweep"] or s["key"] == "firehose"]
    if len(sweep) > 1:
        sweep.sort(key=lambda s: s["rate"])
        header = ["server"] + [f"{s['rate']:g}/s" for s in sweep]
        lines += ["## Offered load: updates/s delivered and p99 age, 200 clients", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for peer in data["results"]:
            cells = []
            for s in sweep:
                r = _get(data, peer, s["key"])
                cells.append(f"{_n(r['updates_per_s'])} / {_n(r['age_p99_ms'])} ms{_cb(r)}"
                             if r else "–")
            lines.append("| " + " | ".join([data["peers"][peer]["label"], *cells]) + " |")
        lines.append("")
    prof = data.get("profile")
    if prof and not prof.get("error"):
        lines += ["## Where the service spends its time (py-spy, Firehose)", "",
                  f"{prof['samples']} samples; flame graph `{prof['svg']}`, collapsed stacks "
                  f"`{prof['collapsed']}`.", "", "| self % | frame |", "|---|---|"]
        lines += [f"| {row['pct']} | `{row['frame']}` |" for row in prof["self"][:12]]
        lines += ["", "| inclusive % | frame |", "|---|---|"]
        lines += [f"| {row['pct']} | `{row['frame']}` |" for row in prof["inclusive"][:12]]
        lines.append("")
    elif prof:
        lines += [f"Profile: py-spy failed: {prof['error']}", ""]
    lines += [
        "Columns: *offered/s* = quotes the publisher put out per second × healthy clients. "
        "*updates/s* counts state a client gained: per symbol the rise of `seq` (a quote that "
        "was conflated away is counted as covered by the newer one), *share* is that over "
        "offered. *quotes recv/s* counts quote objects received. Ages are receive time minus "
        "the quote's `ts` (publisher clock), over every quote in `quotes` frames; *held* ages "
        "are those of the quotes that became a client's held state. Server CPU is % of one "
        "core (all threads of the server process and of its child processes: a WORKERS=2 "
        "supervisor and its workers), RSS its peak in the window (summed over those "
        "processes). *deflate*: "
        "the server accepted the client's permessage-deflate offer (browsers offer it too). "
        f"† the load client used ≥ {CLIENT_BOUND_PCT}% of its core, or that core (shared with "
        f"Redis and the publisher) was ≥ {LOAD_CORE_FULL_PCT}% busy, so the client side may "
        "have been the bottleneck: that server's rate is a lower bound and its ages an upper "
        "bound.",
        "",
    ]
    return "\n".join(lines)


def _unpinned_note(data: dict[str, Any]) -> list[str]:
    unpinned = data["pinning"].get("unpinned_servers") or {}
    if not unpinned:
        return []
    names = ", ".join(data["peers"][k]["label"] for k in unpinned if k in data["peers"])
    cpus = next(iter(unpinned.values()))
    return [f"Not pinned: {names} (several serving processes and only 2 cores, so no core "
            f"can be given to it alone): its processes run on CPUs {cpus}, sharing CPU 1 with "
            "Redis, the publisher and the load client, which stay where they are.", ""]


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


def commits_section(data: dict[str, Any]) -> list[str]:
    """`service@REV` beside the working tree's `service` (bench/revs.py): server CPU µs per
    delivered frame in each stream scenario, and the working tree's over each commit's."""
    sc = {s["key"]: s for s in data["scenarios"]}
    old = [k for k in data["results"] if "@" in k]
    if not old:
        return []
    keys = [*old, *(k for k in data["results"] if "@" not in k and k.startswith("service"))]
    stream = [k for k in sc if not sc[k]["idle"]]
    header = ["server", "imported from"] + [f"{k} µs/frame (frames/s, CPU)" for k in stream]
    lines = ["## Commits side by side: server CPU µs per delivered frame", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in keys:
        row = [data["peers"][key]["label"],
               f"`{(data['peers'][key].get('imports') or {}).get('service')}`"]
        for k in stream:
            r = _get(data, key, k)
            row.append(f"{_n(r.get('server_us_per_frame'))} ({_n(r['frames_per_s'])}, "
                       f"{_n(r['server_cpu_pct'], '%')})" if r else "–")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if "service" in data["results"]:
        for key in old:
            parts = []
            for k in stream:
                a, b = _get(data, "service", k), _get(data, key, k)
                if a and b:
                    parts.append(f"{k} {_ratio(a.get('server_us_per_frame'), b.get('server_us_per_frame'))}")
            if parts:
                lines.append(f"- working tree over `{key}` (µs/frame; 1.00× is the same cost, "
                             "above 1 costlier): " + ", ".join(parts) + ".")
        lines.append("")
    return lines


def workers_section(data: dict[str, Any]) -> list[str]:
    """The scenario `workers` (WORKERS=2 against 1, uvloop against asyncio): server CPU per
    delivered frame, and the same figure from the other stream scenarios."""
    sc = {s["key"]: s for s in data["scenarios"]}
    lines: list[str] = []
    if "workers" in sc:
        s = sc["workers"]

        def cells(peer: str, r: dict[str, Any]) -> list[str]:
            per_proc = r.get("server_cpu_pct_per_proc") or []
            procs = (f"{r.get('server_procs')} (" + " + ".join(f"{c:g}%" for c in per_proc) + ")"
                     if len(per_proc) > 1 else f"{r.get('server_procs') or 1}")
            return [f"{r['healthy']}", procs, _n(r["frames_per_s"]), _n(r["quotes_per_s"]),
                    _n(r["age_p50_ms"]), _n(r["age_p99_ms"]),
                    _n(r["server_cpu_pct"], "%"), _n(r.get("server_us_per_frame")),
                    _n(r.get("frames_per_core_s")),
                    _n(r.get("client_us_per_frame")) + _cb(r), _n(r["server_rss_mb"]),
                    _n(r.get("redis_subscribers")), _n(r.get("pubsub_bytes_per_s")),
                    _n(r.get("pubsub_bytes_per_msg"))]

        lines += [f"## 5. Workers and event loop: {s['clients']} clients, {s['rate']:g} quotes/s, "
                  f"{s['measure_s']:g} s; server CPU per delivered frame", "",
                  f"The load client decodes one frame in {s['parse_every']} per connection "
                  "(ages, quotes) and only counts the others, so that it costs less per frame "
                  "than the server it measures.", "",
                  *_table(data, "workers", ["server", "clients", "processes (CPU each)",
                                            "frames recv/s", "quotes recv/s (est.)", "p50 ms",
                                            "p99 ms", "server CPU", "server µs/frame",
                                            "frames/s per server core", "client µs/frame",
                                            "RSS MB", "Redis subscriptions",
                                            "pub/sub B/s per subscription", "B per message"],
                          cells), ""]
    variants = [k for k in ("service", "service-asyncio", "service-2w") if k in data["results"]]
    stream = [k for k in ("firehose", "ticker", "workers") if k in sc]
    if len(variants) > 1 and stream:
        header = ["server"] + [f"{k} µs/frame (frames/s)" for k in stream]
        lines += ["### Server CPU µs per delivered frame, by scenario", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for peer in variants:
            row = []
            for k in stream:
                r = _get(data, peer, k)
                row.append(f"{_n(r.get('server_us_per_frame'))} ({_n(r['frames_per_s'])})"
                           if r else "–")
            lines.append("| " + " | ".join([data["peers"][peer]["label"], *row]) + " |")
        lines.append("")
        for other, what in (("service-2w", "2 workers against 1"),
                            ("service-asyncio", "asyncio loop against uvloop")):
            if other not in variants or "service" not in variants:
                continue
            parts = []
            for k in stream:
                a, b = _get(data, other, k), _get(data, "service", k)
                if a and b:
                    parts.append(f"{k} {_ratio(a.get('server_us_per_frame'), b.get('server_us_per_frame'))}")
            if parts:
                lines.append(f"- CPU per delivered frame, {what}: " + ", ".join(parts) + ".")
        lines.append("")
    return lines


# ---- chart ------------------------------------------------------------------------------

def chart(data: dict[str, Any], path: Path) -> bool:
    if not HAVE_MPL:
        return False
    keys = {s["key"] for s in data["scenarios"] if s["sweep"] or s["key"] == "firehose"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    top = 1.0
    for peer, res in data["results"].items():
        pts = sorted((r["offered_per_s"], r["updates_per_s"], r["age_p99_ms"])
                     for k, r in res.items() if k in keys and "error" not in r)
        if not pts:
            continue
        label = data["peers"][peer]["label"]
        xs = [p[0] for p in pts]
        top = max(top, *xs)
        # The service on top and bold: where it overlaps another line it stays visible.
        style: dict[str, Any] = ({"marker": "s", "linewidth": 2.8, "zorder": 5}
                                 if peer == "service" else {"marker": "o", "linewidth": 1.4})
        if peer == "uws":  # dashed, over the service's line where they coincide
            style.update(linestyle="--", zorder=6)
        left.plot(xs, [p[1] for p in pts], label=label, **style)
        right.plot(xs, [max(p[2] or 0, 1) for p in pts], label=label, **style)
    left.plot([0, top], [0, top], linestyle="--", color="grey", linewidth=1, label="everything")
    left.set_xlabel("offered deliveries/s (quotes/s × clients)")
    left.set_ylabel("delivered updates/s")
    left.set_title("Delivered rate")
    left.ticklabel_format(style="plain")
    right.set_xlabel("offered deliveries/s (quotes/s × clients)")
    right.set_ylabel("p99 age at receipt, ms (log)")
    right.set_yscale("log")
    right.set_title("Latency (p99 age)")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v/1000:g}k"))
    left.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v/1000:g}k"))
    left.legend(fontsize=8)
    m = data["machine"]
    fig.suptitle(f"Quote fan-out, 200 clients, publisher rate swept ({m['nproc']} CPUs, {m['cpu']}; "
                 f"{data['mode']} mode)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(data: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    (out_dir / "latest.md").write_text(markdown(data))
    chart(data, out_dir / "latest.png")


README_START = "<!-- bench:results:start -->"
README_END = "<!-- bench:results:end -->"


def update_readme(data: dict[str, Any], readme: Path, chart_name: str = "results/latest.png") -> bool:
    """Put the latest full run's tables and chart between the markers of bench/README.md."""
    try:
        text = readme.read_text()
    except OSError:
        return False
    if README_START not in text or README_END not in text:
        return False
    body = markdown(data).split("\n", 1)[1].lstrip("\n")
    body = body.replace("## ", "### ")
    body = body.replace("`service-firehose-profile.svg`", "[`service-firehose-profile.svg`]"
                        "(results/service-firehose-profile.svg)")
    chart = f"![Delivered rate and p99 age against offered load]({chart_name})"
    block = f"{README_START}\n{chart}\n\n{body}\n{README_END}"
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(head + block + tail)
    return True
