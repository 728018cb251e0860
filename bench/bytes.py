"""Bytes per viewer (issue 24): what protocol 1 costs on the wire, against estimates of
permessage-deflate, a changed-fields encoding and the information floor.

    python -m bench.bytes                 # 20 and 1,000 quotes/s, max_hz 4 and the default rate
    python -m bench.bytes --seconds 60    # a longer window
    python -m bench.bytes --quick         # 3 s, 2 viewers, 20 quotes/s at max_hz 4 (the test)

For each setting the service runs its embedded market (`SIM_RATE=<rate> SIM_SEED=1
python -m service`, no Redis) on a free port; a few viewers (the websockets library, no
compression offered) connect to `/ws?symbols=*` (`&max_hz=4`), a warm-up is skipped, and
every frame each viewer receives is recorded for the window. Everything but the first row
is computed from those recorded protocol-1 frames: estimates until an encoding exists.

- protocol 1: the payload and its websocket header (server frames are unmasked: 2 bytes
  up to 125, 4 up to 65,535, 10 above).
- deflate per frame, no context: raw deflate (wbits -15) of each frame alone, Z_SYNC_FLUSH,
  the trailing 00 00 ff ff stripped (RFC 7692): what permessage-deflate with
  server_no_context_takeover computes once per shared frame. Levels 1 and 6.
- deflate with context: one compressor per viewer across all its frames (welcome and
  snapshot included), as per-connection context takeover does. Levels 1 and 6.
- changed fields, JSON: per quote `[symbol, seq, ts, price]` and, when any other field
  differs from that symbol's previous quote as this viewer received it, an object of
  those fields (change/change_pct only when they are not derived_change(price,
  prev_close)); the frame `{"t":"d","q":[...]}`, compact.
- floor: see FLOOR_TEXT.

Writes bench/results/bytes.md and bytes.json (--quick: bench/results/tmp/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect

from bench.output import write_results
from bench.viewers import ws_frame_bytes
from quote_core.quote import derived_change
from tests.service_proc import ServiceProcess

RESULTS = Path(__file__).resolve().parent / "results"
RATES = (20, 1000)
MAX_HZS: tuple[int | None, ...] = (4, None)
SYMBOLS = 34
SYMBOL_BITS = math.ceil(math.log2(SYMBOLS))
SYNC_TAIL = b"\x00\x00\xff\xff"
BUCKETS = ((0, 256, "< 256 B"), (256, 1025, "256-1024 B"), (1025, 1 << 62, "> 1024 B"))
ALWAYS = ("symbol", "seq", "ts", "price")
DERIVED = ("change", "change_pct")
ROWS = (
    ("protocol1", "protocol 1"),
    ("deflate_frame_l1", "deflate per frame, L1"),
    ("deflate_frame_l6", "deflate per frame, L6"),
    ("deflate_context_l1", "deflate with context, L1"),
    ("deflate_context_l6", "deflate with context, L6"),
    ("changed_json", "changed fields, JSON"),
    ("floor", "floor"),
)
FLOOR_TEXT = (
    f"per frame: a varint of its quote count and the websocket header of a binary frame; per "
    f"quote: the symbol's index ({SYMBOL_BITS} bits, ceil(log2 {SYMBOLS})), a varint of its seq's "
    "increase over that symbol's previous quote, a zigzag varint of its ts's difference in ms "
    "from the previous quote of the frame (the frame's first: from the previous frame's "
    "first), a zigzag varint of its price's change in ticks of 0.01, and for any other field "
    "that changed and is not derived (kind, prev_close, optional fields; change/change_pct only "
    "when they are not derived_change()) one tag byte and a zigzag varint of the change in "
    "ticks (a varint of the string's length and its bytes for a string); the bits of a frame "
    "rounded up to whole bytes")


# ---- recording ----------------------------------------------------------------------------

Frame = tuple[float, bytes]  # (time.monotonic() at receipt, payload)


async def _viewer(url: str, until: float, frames: list[Frame], ready: asyncio.Event) -> None:
    async with connect(url, compression=None, max_size=None, open_timeout=10) as ws:
        ready.set()
        while (left := until - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            frames.append((time.monotonic(),
                           message.encode() if isinstance(message, str) else message))


async def record(url: str, viewers: int, warmup: float, seconds: float
                 ) -> tuple[list[list[Frame]], float, float]:
    """Every frame each viewer received from connecting to the end of the window, and the
    window (start, end) on the monotonic clock."""
    frames: list[list[Frame]] = [[] for _ in range(viewers)]
    readies = [asyncio.Event() for _ in range(viewers)]
    end_guess = time.monotonic() + 10 + warmup + seconds
    tasks = [asyncio.create_task(_viewer(url, end_guess, frames[i], readies[i]))
             for i in range(viewers)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 10)
    start = time.monotonic() + warmup
    end = start + seconds
    await asyncio.sleep(end - time.monotonic() + 0.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return frames, start, end


def record_setting(rate: int, max_hz: int | None, viewers: int, warmup: float,
                   seconds: float) -> tuple[list[list[Frame]], float, float]:
    service = ServiceProcess({"SIM_RATE": str(rate), "SIM_SEED": "1"})
    service.start("/healthz")
    try:
        url = f"{service.ws_url}?symbols=*" + (f"&max_hz={max_hz}" if max_hz else "")
        return asyncio.run(record(url, viewers, warmup, seconds))
    finally:
        service.stop()


# ---- the encodings ------------------------------------------------------------------------

def deflate(compressor: Any, payload: bytes) -> int:
    """Wire bytes of one permessage-deflate frame from this compressor (RFC 7692 7.2.1)."""
    out = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if out.endswith(SYNC_TAIL):
        out = out[:-len(SYNC_TAIL)]
    return ws_frame_bytes(len(out))


def raw_deflater(level: int) -> Any:
    return zlib.compressobj(level, zlib.DEFLATED, -15)


def varint_bytes(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def zigzag_bytes(n: int) -> int:
    return varint_bytes(2 * n if n >= 0 else -2 * n - 1)


def ticks(value: float) -> int:
    return round(value * 100)


def changed_fields(quote: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
    """The fields of `quote` beyond ALWAYS that a viewer holding `prev` could not know."""
    out: dict[str, Any] = {}
    derived = dict(zip(DERIVED, derived_change(quote["price"], quote["prev_close"]),
                       strict=True))
    for name, value in quote.items():
        if name in ALWAYS:
            continue
        if name in DERIVED:
            if value != derived[name]:
                out[name] = value
        elif prev is None or prev.get(name) != value:
            out[name] = value
    return out


@dataclass
class ViewerState:
    """What one viewer holds: each symbol's last quote, the last frame's first ts, and a
    compressor per level with its context."""
    board: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_ts: int | None = None
    contexts: dict[int, Any] = field(default_factory=lambda: {1: raw_deflater(1),
                                                               6: raw_deflater(6)})
    symbols: dict[str, int] = field(default_factory=dict)

    def encode(self, quotes: list[dict[str, Any]]) -> tuple[int, int, int]:
        """(changed-fields JSON wire bytes, floor wire bytes, quotes with another field
        changed) of one frame of these quotes; the board moves on to them."""
        rows: list[list[Any]] = []
        bits = 8 * varint_bytes(len(quotes))
        other = 0
        prev_ts = self.first_ts
        for i, q in enumerate(quotes):
            prev = self.board.get(q["symbol"])
            extra = changed_fields(q, prev)
            row: list[Any] = [q[name] for name in ALWAYS]
            if extra:
                row.append(extra)
                other += 1
            rows.append(row)
            index = self.symbols.setdefault(q["symbol"], len(self.symbols))
            bits += max(SYMBOL_BITS, index.bit_length())
            bits += 8 * varint_bytes(q["seq"] - (prev["seq"] if prev else 0))
            bits += 8 * zigzag_bytes(q["ts"] - (prev_ts if prev_ts is not None else 0))
            bits += 8 * zigzag_bytes(ticks(q["price"]) - (ticks(prev["price"]) if prev else 0))
            for name, value in extra.items():
                if isinstance(value, str):
                    bits += 8 * (1 + varint_bytes(len(value.encode())) + len(value.encode()))
                else:
                    old = prev.get(name) if prev else None
                    before = ticks(old) if isinstance(old, (int, float)) else 0
                    bits += 8 * (1 + zigzag_bytes(ticks(value) - before))
            if i == 0:
                self.first_ts = q["ts"]
            prev_ts = q["ts"]
            self.board[q["symbol"]] = q
        delta = ws_frame_bytes(len(orjson.dumps({"t": "d", "q": rows})))
        return delta, ws_frame_bytes(-(-bits // 8)), other


def bucket_of(payload: int) -> str:
    return next(name for low, high, name in BUCKETS if low <= payload < high)


def analyse(recorded: list[list[Frame]], start: float, end: float) -> dict[str, Any]:
    """Per viewer-second figures over the window, from the recorded frames."""
    seconds = end - start
    shared: dict[bytes, dict[int, int]] = {}  # payload -> level -> wire bytes, no context
    first_viewer = {payload for _, payload in recorded[0]}
    per_viewer: list[dict[str, Any]] = []
    buckets: dict[str, dict[str, int]] = {
        name: {"frames": 0, "protocol1": 0, "deflate_frame_l1": 0, "deflate_frame_l6": 0}
        for _, _, name in BUCKETS}
    for v, frames in enumerate(recorded):
        state = ViewerState()
        sums = dict.fromkeys((key for key, _ in ROWS), 0)
        counts = {"frames": 0, "quotes": 0, "payload": 0, "other_changed": 0,
                  "not_in_viewer_0": 0, "other_types": 0}
        for t, payload in frames:
            message = orjson.loads(payload)
            kind = message.get("type")
            counted = start <= t < end
            context = {level: deflate(c, payload) for level, c in state.contexts.items()}
            if kind not in ("snapshot", "quotes"):
                counts["other_types"] += counted
                continue
            delta, floor, other = state.encode(message["quotes"])
            if kind != "quotes" or not counted:
                continue
            if payload not in shared:
                shared[payload] = {level: deflate(raw_deflater(level), payload) for level in (1, 6)}
            wire = ws_frame_bytes(len(payload))
            row = {"protocol1": wire, "deflate_frame_l1": shared[payload][1],
                   "deflate_frame_l6": shared[payload][6], "deflate_context_l1": context[1],
                   "deflate_context_l6": context[6], "changed_json": delta, "floor": floor}
            for key, value in row.items():
                sums[key] += value
            counts["frames"] += 1
            counts["quotes"] += len(message["quotes"])
            counts["payload"] += len(payload)
            counts["other_changed"] += other
            counts["not_in_viewer_0"] += payload not in first_viewer
            if v == 0:
                bucket = buckets[bucket_of(len(payload))]
                bucket["frames"] += 1
                for key in bucket:
                    if key != "frames":
                        bucket[key] += row[key]
        per_viewer.append({"bytes_per_s": {k: s / seconds for k, s in sums.items()}, **counts})
    n = len(per_viewer)
    mean = {key: sum(p["bytes_per_s"][key] for p in per_viewer) / n for key, _ in ROWS}
    frames = sum(p["frames"] for p in per_viewer) / n
    p1 = mean["protocol1"]
    return {
        "seconds": round(seconds, 3),
        "viewers": n,
        "frames_per_s": round(frames / seconds, 2),
        "mean_frame_bytes": round(sum(p["payload"] for p in per_viewer) / n / frames, 1)
        if frames else 0.0,
        "quotes_per_frame": round(sum(p["quotes"] for p in per_viewer) / n / frames, 2)
        if frames else 0.0,
        "rows": {key: {"bytes_per_s": round(mean[key], 1),
                       "ratio": round(mean[key] / p1, 4) if p1 else None} for key, _ in ROWS},
        "protocol1_bytes_per_s_range": [round(min(p["bytes_per_s"]["protocol1"]
                                                  for p in per_viewer), 1),
                                        round(max(p["bytes_per_s"]["protocol1"]
                                                  for p in per_viewer), 1)],
        "frames_per_viewer": [p["frames"] for p in per_viewer],
        "frames_not_in_viewer_0": sum(p["not_in_viewer_0"] for p in per_viewer),
        "same_frames": all(p["not_in_viewer_0"] == 0 for p in per_viewer),
        "quotes_with_other_fields_changed": sum(p["other_changed"] for p in per_viewer),
        "other_frames_in_window": sum(p["other_types"] for p in per_viewer),
        "buckets_viewer_0": {
            name: {**b, "ratio_l1": round(b["deflate_frame_l1"] / b["protocol1"], 4)
                   if b["protocol1"] else None,
                   "ratio_l6": round(b["deflate_frame_l6"] / b["protocol1"], 4)
                   if b["protocol1"] else None}
            for name, b in buckets.items()},
    }


# ---- the report ---------------------------------------------------------------------------

def hz_label(max_hz: int | None) -> str:
    return str(max_hz) if max_hz else "none (50 Hz)"


def report(result: dict[str, Any]) -> str:
    lines = [
        "# Bytes per viewer (issue 24)", "",
        f"{result['date']}, commit {result['commit']}: `{result['command']}`. "
        f"{result['viewers']} viewers on `/ws?symbols=*`, no compression offered, "
        f"{result['warmup_s']:g} s warm-up, {result['seconds']:g} s window; the service's "
        "embedded market, SIM_SEED=1. Bytes/s are per viewer, websocket headers included; "
        "(×) is the ratio to protocol 1. **Every column but protocol 1 is an estimate** "
        "computed from the recorded protocol-1 frames, until the encoding exists.", "",
        "| rate q/s | max_hz | frames/s | mean frame B | quotes/frame | "
        + " | ".join(label for _, label in ROWS) + " |",
        "|" + "---|" * (5 + len(ROWS)),
    ]
    for s in result["settings"]:
        cells = [f"{s['rate']:,}", hz_label(s["max_hz"]), f"{s['frames_per_s']:g}",
                 f"{s['mean_frame_bytes']:,.0f}", f"{s['quotes_per_frame']:g}"]
        for key, _ in ROWS:
            row = s["rows"][key]
            cells.append(f"{row['bytes_per_s']:,.0f}" if key == "protocol1"
                         else f"{row['bytes_per_s']:,.0f} ({row['ratio']:.3f}×)")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Deflate per frame (no context) by protocol-1 payload size, the first viewer's "
              "frames: frames, and compressed / protocol-1 wire bytes at L1 and L6.", "",
              "| rate q/s | max_hz | " + " | ".join(name for _, _, name in BUCKETS) + " |",
              "|---|---|" + "---|" * len(BUCKETS)]
    for s in result["settings"]:
        cells = [f"{s['rate']:,}", hz_label(s["max_hz"])]
        for _, _, name in BUCKETS:
            b = s["buckets_viewer_0"][name]
            cells.append(f"{b['frames']}: {b['ratio_l1']:.3f} / {b['ratio_l6']:.3f}"
                         if b["frames"] else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Same frames: every viewer's window frames are byte for byte frames the first "
              "viewer received too: " + "; ".join(
                  f"{s['rate']} q/s max_hz {hz_label(s['max_hz'])}: "
                  + ("yes" if s["same_frames"] else f"**no**, {s['frames_not_in_viewer_0']} "
                     "frames differ")
                  + f" (frames per viewer {s['frames_per_viewer']})"
                  for s in result["settings"]) + ".", "",
              f"Floor: {FLOOR_TEXT}. Quotes with a changed field beyond symbol, seq, ts, "
              "price (counted in the last two columns): " + ", ".join(
                  str(s["quotes_with_other_fields_changed"]) for s in result["settings"]) + ".",
              "", "Changed fields, JSON: each quote `[symbol, seq, ts, price]` plus an object "
              "of any other field that differs from the symbol's previous quote as the viewer "
              "received it (change/change_pct only when not derived from price and "
              "prev_close), in a frame `{\"t\":\"d\",\"q\":[...]}`.", ""]
    return "\n".join(lines)


def commit() -> str:
    import subprocess
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=RESULTS.parent.parent, check=False)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="the window (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--viewers", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="3 s, 2 viewers, 20 quotes/s at max_hz 4, into results/tmp/")
    parser.add_argument("--out", type=Path, default=None,
                        help="where bytes.md/json go (default bench/results, --quick: tmp/)")
    args = parser.parse_args()
    settings = [(rate, hz) for rate in RATES for hz in MAX_HZS]
    seconds, viewers = args.seconds, args.viewers
    if args.quick:
        settings, seconds, viewers = [(20, 4)], 3.0, 2
    out = args.out or (RESULTS / "tmp" if args.quick else RESULTS)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "commit": commit(),
        "command": "python -m bench.bytes" + (" --quick" if args.quick else
                                              f" --seconds {seconds:g}"),
        "viewers": viewers, "warmup_s": args.warmup, "seconds": seconds, "floor": FLOOR_TEXT,
        "settings": [],
    }
    for rate, max_hz in settings:
        recorded, start, end = record_setting(rate, max_hz, viewers, args.warmup, seconds)
        figures = analyse(recorded, start, end)
        result["settings"].append({"rate": rate, "max_hz": max_hz, **figures})
        print(json.dumps({"rate": rate, "max_hz": max_hz,
                          **{k: v["bytes_per_s"] for k, v in figures["rows"].items()}}),
              flush=True)
    write_results(out, "bytes", result, report(result))


if __name__ == "__main__":
    main()
