"""Bytes per viewer (issue 24): what each encoding costs on the wire and in the service's
CPU, measured side by side in one run, against the information floor.

    python -m bench.bytes                   # everything: about 15 minutes
    python -m bench.bytes --no-cpu          # the bytes alone: about 2 minutes
    python -m bench.bytes --rounds 5        # more CPU rounds
    python -m bench.bytes --quick           # seconds: what tests/test_bench_bytes.py runs
    python -m bench.bytes --report-only     # bytes.md again (after a viewers-per-core run)

Encodings: `json` (protocol 1), `deflate` (protocol 1, permessage-deflate offered),
`compact` (`?encoding=compact`), `compact+deflate` (both: what the JS widget asks for).

**Bytes on the wire.** For each setting (rate 20 and 1,000 quotes/s, max_hz 4 and the
default rate) one service runs its embedded market (`SIM_RATE=<rate> SIM_SEED=1 python -m
service`, no Redis) and `--viewers` viewers of each encoding watch `/ws?symbols=*` at once.
A viewer is a plain socket speaking RFC 6455 itself (`RawViewer`): the handshake (with
`Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover;
client_no_context_takeover` for the deflate encodings), then every frame's header and
payload as they came off the socket, compressed or not. Bytes/s per viewer = the frames'
bytes (header + payload: the stream after the handshake, byte for byte; TCP/IP headers
not counted) received in the window, every frame type, over the window. Every frame is
then decoded (inflated when RSV1 is set, compact frames through quote_core.compact.Decoder)
and each quote checked against the protocol-1 viewer's quote of the same symbol and seq.
The floor is computed from the protocol-1 frames (FLOOR_TEXT).

**Deflate by frame size.** Every quotes frame the first compact viewer received, by payload
size, compressed as the service does it (service/wire.py deflated_frame: level 6, no context;
None when not smaller): wire bytes compressed / uncompressed, and the zlib time per frame on
this machine (paid once per shared frame, not per viewer); beside it, what the compact+deflate
viewer really received in that bucket.

**Service CPU per client frame.** bench/viewers.py's points (`run_point`): the service
pinned to CPU 0, Redis, the per-quote publisher (bench/publisher.py at the rate) and the
native generator (bench/viewers_load.c --encoding) on CPU 1; every viewer of a point asks
for the same encoding. µs per client frame = the service's CPU time (/proc utime+stime)
over the window / frames the generator counted. For each setting the encodings run back to
back, `--rounds` times, the order reversed every other round; the table gives each
encoding's median, and its median ratio to protocol 1 over the rounds (each round's ratio
is of points minutes apart).

**Viewers per core** at max_hz 4, compact+deflate against protocol 1, is bench/viewers.py's
search (`--encodings json,compact+deflate`); the runs kept under
bench/results/viewers-encodings/<run>/ are read into the targets (the median of their ratios).

Writes bench/results/bytes.md and bytes.json (--quick: bench/results/tmp/).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import statistics
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.output import write_results
from bench.viewers import ws_frame_bytes
from quote_core.compact import Decoder
from quote_core.quote import derived_change
from service.wire import DEFLATE_MIN_BYTES, deflated_frame
from tests.service_proc import ServiceProcess

RESULTS = Path(__file__).resolve().parent / "results"
RATES = (20, 1000)
MAX_HZS: tuple[int | None, ...] = (4, None)
DEFAULT_HZ = 50  # the service's default rate: max_hz 50 is the same group as none
ENCODINGS = ("json", "deflate", "compact", "compact+deflate")
CPU_ENCODINGS = ("json", "compact", "compact+deflate")
SYMBOLS = 34
SYMBOL_BITS = math.ceil(math.log2(SYMBOLS))
SYNC_TAIL = b"\x00\x00\xff\xff"
OFFER = b"permessage-deflate; server_no_context_takeover; client_no_context_takeover"
# Thresholds tried (what compact+deflate would have cost with DEFLATE_MIN_BYTES at each).
THRESHOLDS = (0, 32, 64, 96, 128, 192, 256, 512, 1024)
BUCKETS = ((0, 128, "< 128 B"), (128, 256, "128-255 B"), (256, 1025, "256-1024 B"),
           (1025, 1 << 62, "> 1024 B"))
ALWAYS = ("symbol", "seq", "ts", "price")
DERIVED = ("change", "change_pct")
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


# ---- a viewer that sees the wire ------------------------------------------------------------

@dataclass
class WireFrame:
    t: float  # time.monotonic() when its last byte was read
    first: int  # the header's first byte: FIN, RSV1-3, opcode
    wire: int  # header + payload bytes
    payload: bytes  # as received (compressed when RSV1 is set)

    @property
    def opcode(self) -> int:
        return self.first & 0x0F

    @property
    def rsv1(self) -> bool:
        return bool(self.first & 0x40)


@dataclass
class RawViewer:
    """One websocket connection over a plain socket: every frame with its wire size."""
    encoding: str
    frames: list[WireFrame] = field(default_factory=list)
    deflate: bool = False  # the 101 accepted permessage-deflate
    stream_bytes: int = 0  # every byte read after the handshake
    error: str | None = None

    async def run(self, port: int, query: str, until: float, ready: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            key = base64.b64encode(os.urandom(16))
            request = (f"GET /ws?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
                       + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       + b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n"
                       + (b"Sec-WebSocket-Extensions: " + OFFER + b"\r\n"
                          if "deflate" in self.encoding else b"") + b"\r\n")
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"no upgrade: {head[:200]!r}")
            self.deflate = b"permessage-deflate" in head.lower()
            ready.set()
            while (left := until - time.monotonic()) > 0:
                try:
                    h = await asyncio.wait_for(reader.readexactly(2), left)
                except TimeoutError:
                    break
                n = h[1] & 0x7F
                extra = 2 if n == 126 else 8 if n == 127 else 0
                ext = await reader.readexactly(extra) if extra else b""
                if extra:
                    n = int.from_bytes(ext, "big")
                payload = await reader.readexactly(n)
                self.stream_bytes += 2 + extra + n
                if not h[0] & 0x80:
                    raise RuntimeError("a fragmented message (the service sends none)")
                frame = WireFrame(time.monotonic(), h[0], 2 + extra + n, payload)
                if frame.opcode == 9:  # a ping: pong, masked as a client's frames are
                    mask = os.urandom(4)
                    writer.write(bytes((0x8A, 0x80 | n)) + mask
                                 + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
                elif frame.opcode == 8:
                    break
                else:
                    self.frames.append(frame)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            ready.set()
        finally:
            writer.close()

    def messages(self) -> list[tuple[WireFrame, bytes]]:
        """Every data frame with its payload as sent before compression."""
        out = []
        for f in self.frames:
            if f.rsv1:
                inflater = zlib.decompressobj(wbits=-15)
                out.append((f, inflater.decompress(f.payload + SYNC_TAIL)))
            else:
                out.append((f, f.payload))
        return out


def query_of(encoding: str, max_hz: int | None) -> str:
    return ("symbols=*" + (f"&max_hz={max_hz}" if max_hz else "")
            + ("&encoding=compact" if "compact" in encoding else ""))


async def record(port: int, max_hz: int | None, per_encoding: int, warmup: float,
                 seconds: float) -> tuple[list[RawViewer], float, float]:
    """Every encoding's viewers at once; the window (start, end) on the monotonic clock."""
    viewers = [RawViewer(e) for e in ENCODINGS for _ in range(per_encoding)]
    readies = [asyncio.Event() for _ in viewers]
    until = time.monotonic() + 10 + warmup + seconds
    tasks = [asyncio.create_task(v.run(port, query_of(v.encoding, max_hz), until, r))
             for v, r in zip(viewers, readies, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 10)
    start = time.monotonic() + warmup
    end = start + seconds
    await asyncio.sleep(end - time.monotonic() + 0.3)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return viewers, start, end


def record_setting(rate: int, max_hz: int | None, per_encoding: int, warmup: float,
                   seconds: float) -> tuple[list[RawViewer], float, float]:
    service = ServiceProcess({"SIM_RATE": str(rate), "SIM_SEED": "1"})
    service.start("/healthz")
    try:
        return asyncio.run(record(service.port, max_hz, per_encoding, warmup, seconds))
    finally:
        service.stop()


# ---- the floor ------------------------------------------------------------------------------

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
class FloorState:
    """What one viewer holds: each symbol's last quote, the last frame's first ts."""
    board: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_ts: int | None = None
    symbols: dict[str, int] = field(default_factory=dict)

    def encode(self, quotes: list[dict[str, Any]]) -> int:
        """The floor's wire bytes of one frame of these quotes; the board moves on."""
        bits = 8 * varint_bytes(len(quotes))
        prev_ts = self.first_ts
        for i, q in enumerate(quotes):
            prev = self.board.get(q["symbol"])
            index = self.symbols.setdefault(q["symbol"], len(self.symbols))
            bits += max(SYMBOL_BITS, index.bit_length())
            bits += 8 * varint_bytes(q["seq"] - (prev["seq"] if prev else 0))
            bits += 8 * zigzag_bytes(q["ts"] - (prev_ts if prev_ts is not None else 0))
            bits += 8 * zigzag_bytes(ticks(q["price"]) - (ticks(prev["price"]) if prev else 0))
            for name, value in changed_fields(q, prev).items():
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
        return ws_frame_bytes(-(-bits // 8))


# ---- the analysis of a setting --------------------------------------------------------------

def is_quotes(message: Any) -> bool:
    return isinstance(message, list) or (isinstance(message, dict)
                                         and message.get("type") == "quotes")


def bucket_of(payload: int) -> str:
    return next(name for low, high, name in BUCKETS if low <= payload < high)


def zlib_us(payloads: list[bytes], repeat: int = 3) -> float | None:
    """µs per deflated_frame() of these payloads on this machine (best of `repeat`)."""
    if not payloads:
        return None
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for p in payloads:
            deflated_frame(p)
        best = min(best, time.perf_counter() - t0)
    return round(1e6 * best / len(payloads), 2)


def analyse(viewers: list[RawViewer], start: float, end: float) -> dict[str, Any]:
    seconds = end - start
    errors = [f"{v.encoding}: {v.error}" for v in viewers if v.error]
    reference: dict[tuple[str, int], dict[str, Any]] = {}  # the protocol-1 viewer's quotes
    per_encoding: dict[str, dict[str, Any]] = {}
    floor_sum, floor_frames = 0, 0
    checked = differ = 0
    first_of: dict[str, RawViewer] = {}
    for v in viewers:
        first_of.setdefault(v.encoding, v)
    for v in sorted(viewers, key=lambda v: v.encoding != "json"):
        decoder = Decoder()
        floor = FloorState() if v is first_of["json"] else None
        wire = quotes_wire = frames = quotes_frames = compressed = payload = 0
        for f, text in v.messages():
            message = orjson.loads(text) if f.opcode == 1 else None
            counted = start <= f.t < end
            quotes: list[dict[str, Any]] = []
            if is_quotes(message) or (isinstance(message, dict)
                                      and message.get("type") == "snapshot"):
                quotes = decoder.quotes(message)
                if floor is not None:
                    floor_bytes = floor.encode(quotes)
                    if counted and is_quotes(message):
                        floor_sum += floor_bytes
                        floor_frames += 1
            for q in quotes:
                key = (q["symbol"], q["seq"])
                if v.encoding == "json":
                    reference.setdefault(key, q)
                elif key in reference:
                    checked += 1
                    differ += reference[key] != q
            if not counted:
                continue
            wire += f.wire
            frames += 1
            compressed += f.rsv1
            if is_quotes(message):
                quotes_wire += f.wire
                quotes_frames += 1
                payload += len(text)
        row = per_encoding.setdefault(v.encoding, {"viewers": 0, "bytes": [], "frames": [],
                                                   "quotes_frames": [], "quotes_bytes": [],
                                                   "compressed": [], "payload": [],
                                                   "deflate_negotiated": 0})
        row["viewers"] += 1
        row["bytes"].append(wire)
        row["frames"].append(frames)
        row["quotes_frames"].append(quotes_frames)
        row["quotes_bytes"].append(quotes_wire)
        row["compressed"].append(compressed)
        row["payload"].append(payload)
        row["deflate_negotiated"] += v.deflate
        if v.stream_bytes != sum(f.wire for f in v.frames):
            # Control frames (pings) are read but not kept: they are the only difference.
            row["control_bytes"] = row.get("control_bytes", 0) + v.stream_bytes - sum(
                f.wire for f in v.frames)
    json_bps = sum(per_encoding["json"]["bytes"]) / len(per_encoding["json"]["bytes"]) / seconds
    encodings = {}
    for name, row in per_encoding.items():
        n = row["viewers"]
        bps = sum(row["bytes"]) / n / seconds
        qf = sum(row["quotes_frames"])
        encodings[name] = {
            "viewers": n,
            "bytes_per_s": round(bps, 1),
            "ratio": round(bps / json_bps, 4) if json_bps else None,
            "bytes_per_s_range": [round(min(row["bytes"]) / seconds, 1),
                                  round(max(row["bytes"]) / seconds, 1)],
            "frames_per_s": round(sum(row["frames"]) / n / seconds, 2),
            "quotes_frames_per_viewer": row["quotes_frames"],
            "mean_quotes_frame_wire_bytes": round(sum(row["quotes_bytes"]) / qf, 1) if qf else None,
            "mean_quotes_payload_bytes": round(sum(row["payload"]) / qf, 1) if qf else None,
            "compressed_frames": sum(row["compressed"]),
            "deflate_negotiated": row["deflate_negotiated"],
            "control_bytes": row.get("control_bytes", 0),
        }
    floor_bps = floor_sum / seconds
    return {
        "seconds": round(seconds, 3),
        "errors": errors,
        "encodings": encodings,
        "floor": {"bytes_per_s": round(floor_bps, 1),
                  "ratio": round(floor_bps / json_bps, 4) if json_bps else None,
                  "frames": floor_frames},
        "quotes_checked": checked,
        "quotes_differ": differ,
        "buckets": buckets(first_of.get("compact"), first_of.get("compact+deflate"), start, end),
        "thresholds": thresholds(first_of.get("compact"), start, end, json_bps),
    }


def thresholds(compact: RawViewer | None, start: float, end: float,
               json_bps: float) -> dict[str, dict[str, float | None]]:
    """Bytes/s per viewer compact+deflate would have cost with each threshold: the compact
    viewer's window, each quotes frame of at least T bytes compressed as wire.py does it."""
    if compact is None:
        return {}
    seconds = end - start
    plain = 0
    frames: list[tuple[int, int, int]] = []  # (payload, plain wire, deflated wire)
    for f, text in compact.messages():
        if not start <= f.t < end:
            continue
        if f.opcode == 1 and is_quotes(orjson.loads(text)):
            d = deflated_frame(text)
            frames.append((len(text), f.wire, f.wire if d is None else len(d)))
        else:
            plain += f.wire
    out = {}
    for t in THRESHOLDS:
        total = plain + sum(d if n >= t else w for n, w, d in frames)
        out[str(t)] = {"bytes_per_s": round(total / seconds, 1),
                       "ratio": round(total / seconds / json_bps, 4) if json_bps else None,
                       "compressed_per_s": round(sum(n >= t for n, _, _ in frames) / seconds, 2)}
    return out


def buckets(compact: RawViewer | None, both: RawViewer | None, start: float,
            end: float) -> dict[str, dict[str, Any]]:
    """Deflate's effect by compact payload size: each quotes frame of the compact viewer
    compressed as the service would (wire.deflated_frame), and what the compact+deflate
    viewer received."""
    out: dict[str, dict[str, Any]] = {
        name: {"frames": 0, "payload": 0, "wire": 0, "deflated_wire": 0, "not_smaller": 0,
               "payloads": [], "received_frames": 0, "received_wire": 0,
               "received_plain_wire": 0, "received_compressed": 0}
        for _, _, name in BUCKETS}
    for f, text in (compact.messages() if compact else []):
        if not (start <= f.t < end) or f.opcode != 1 or not is_quotes(orjson.loads(text)):
            continue
        b = out[bucket_of(len(text))]
        b["frames"] += 1
        b["payload"] += len(text)
        b["wire"] += f.wire
        d = deflated_frame(text)
        b["deflated_wire"] += f.wire if d is None else len(d)
        b["not_smaller"] += d is None
        b["payloads"].append(text)
    for f, text in (both.messages() if both else []):
        if not (start <= f.t < end) or f.opcode != 1 or not is_quotes(orjson.loads(text)):
            continue
        b = out[bucket_of(len(text))]
        b["received_frames"] += 1
        b["received_wire"] += f.wire
        b["received_plain_wire"] += ws_frame_bytes(len(text))
        b["received_compressed"] += f.rsv1
    for b in out.values():
        b["mean_payload"] = round(b["payload"] / b["frames"], 1) if b["frames"] else None
        b["ratio"] = round(b["deflated_wire"] / b["wire"], 4) if b["wire"] else None
        b["saved_bytes_per_frame"] = (round((b["wire"] - b["deflated_wire"]) / b["frames"], 1)
                                      if b["frames"] else None)
        b["zlib_us_per_frame"] = zlib_us(b.pop("payloads"))
        b["received_ratio"] = (round(b["received_wire"] / b["received_plain_wire"], 4)
                               if b["received_plain_wire"] else None)
    return out


# ---- service CPU per client frame -----------------------------------------------------------

def cpu_rounds(settings: list[tuple[int, int | None]], encodings: list[str], rounds: int,
               viewers_at: dict[int, int], warmup: float, measure: float,
               say: Any = print) -> dict[str, Any]:
    """bench/viewers.py points, every encoding of a setting back to back, `rounds` times."""

    from bench import viewers as vw
    from bench.procs import cpu_plan, raise_nofile

    raise_nofile()
    cpus = cpu_plan(True)
    logs = RESULTS / "tmp" / "logs"
    points: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    t0 = time.monotonic()
    with vw.redis_beside(cpus) as (redis_url, r):
        for k in range(rounds):
            order = encodings if k % 2 == 0 else encodings[::-1]
            for rate, max_hz in settings:
                hz = max_hz or DEFAULT_HZ
                n = viewers_at[hz]
                for encoding in order:
                    plan = vw.Plan(warmup_s=warmup, measure_s=measure, procs=2, boards=2,
                                   decode_every=20, rate=float(rate), encoding=encoding)
                    p = vw.run_point(vw.SERVERS["service"], redis_url, r, n, hz,
                                     plan, logs, cpus, say)
                    points.append({"round": k, "rate": rate, "max_hz": max_hz, **p})
    summary = []
    for rate, max_hz in settings:
        here = [p for p in points if p["rate"] == rate and p["max_hz"] == (max_hz or DEFAULT_HZ)]
        row: dict[str, Any] = {"rate": rate, "max_hz": max_hz,
                               "viewers": viewers_at[max_hz or DEFAULT_HZ], "encodings": {}}
        base = {p["round"]: p["server_us_per_frame"] for p in here if p["encoding"] == "json"}
        for e in encodings:
            mine = [p for p in here if p["encoding"] == e]
            us = [p["server_us_per_frame"] for p in mine if p["server_us_per_frame"]]
            ratios = [p["server_us_per_frame"] / base[p["round"]] for p in mine
                      if p["server_us_per_frame"] and base.get(p["round"])]
            row["encodings"][e] = {
                "us_per_frame": us,
                "median_us_per_frame": round(statistics.median(us), 2) if us else None,
                "median_ratio": round(statistics.median(ratios), 3) if ratios else None,
                "ratios": [round(x, 3) for x in ratios],
                "server_cpu_pct": [p["server_cpu_pct"] for p in mine],
                "frames_per_viewer_s": [p["frames_per_viewer_s"] for p in mine],
                "mean_frame_bytes": [p["mean_frame_bytes"] for p in mine],
                "generator_us_per_frame": [p["generator_us_per_frame"] for p in mine],
                "passed": sum(p["pass"] for p in mine),
                "points": len(mine),
                "fail_reasons": sorted({x for p in mine for x in p["fail_reasons"]}),
            }
        summary.append(row)
    return {"rounds": rounds, "encodings": encodings, "warmup_s": warmup, "measure_s": measure,
            "viewers_at_hz": viewers_at, "duration_s": round(time.monotonic() - t0),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "settings": summary, "points": points}


# ---- the report ---------------------------------------------------------------------------

def hz_label(max_hz: int | None) -> str:
    return str(max_hz) if max_hz else f"default ({DEFAULT_HZ} Hz)"


def per_core(root: Path) -> list[dict[str, Any]]:
    """The viewers-per-core runs with encodings (bench/viewers.py --encodings --out
    ROOT/<run>), oldest first: each run's most viewers passing per max_hz/encoding."""
    runs = []
    for path in sorted(root.glob("*/viewers.json")):
        data = json.loads(path.read_text())
        best = {(r["max_hz"], r.get("encoding", "json")): (r["best"] or {}).get("viewers")
                for r in data.get("rates", []) if r["peer"] == "service"}
        runs.append({"run": path.parent.name, "started": data.get("started"),
                     "resolution": data.get("search", {}).get("resolution"),
                     "encodings": data.get("encodings"),
                     "best": {f"{hz:g}/{e}": v for (hz, e), v in best.items()}})
    return sorted(runs, key=lambda r: r["started"] or "")


def targets(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for s in result["bytes"]["settings"]:
        if s["max_hz"] != 4:
            continue
        enc = s["encodings"]
        best = min(("compact", "compact+deflate"), key=lambda e: enc[e]["bytes_per_s"])
        factor = enc["json"]["bytes_per_s"] / enc[best]["bytes_per_s"]
        rows.append((f"≥ 5× fewer bytes per viewer-second than protocol 1, {s['rate']:,} q/s, "
                     "max_hz 4", f"{factor:.1f}× ({best}; compact alone "
                     f"{enc['json']['bytes_per_s'] / enc['compact']['bytes_per_s']:.1f}×)",
                     "met" if factor >= 5 else "**missed**"))
    for s in (result.get("cpu") or {}).get("settings", []):
        for e in ("compact", "compact+deflate"):
            row = s["encodings"].get(e)
            if not row or row["median_ratio"] is None:
                continue
            each = ", ".join(f"{x:.2f}" for x in row["ratios"])
            rows.append((f"CPU per client frame ≤ 1.05× protocol 1's, {e}, {s['rate']:,} q/s, "
                         f"max_hz {hz_label(s['max_hz'])}",
                         f"{row['median_ratio']:.3f}× (rounds {each})",
                         "met" if row["median_ratio"] <= 1.05 else "**missed**"))
    pairs = [(run, run["best"].get("4/compact+deflate"), run["best"].get("4/json"))
             for run in result.get("per_core") or []]
    pairs = [(run, new, old) for run, new, old in pairs if new and old]
    if pairs:
        ratio = statistics.median(new / old for _, new, old in pairs)
        rows.append(("viewers per core at max_hz 4: compact+deflate ≥ protocol 1",
                     f"median {ratio:.2f}× over {len(pairs)} runs: " + "; ".join(
                         f"{new:,} vs {old:,} ({run['started']}, searches in turn: "
                         f"{' / '.join(run['encodings'] or [])})"
                         for run, new, old in pairs)
                     + f"; search resolution {pairs[0][0]['resolution']}",
                     "met" if ratio >= 1 else "**missed**"))
    return rows


def checks(s: dict[str, Any]) -> str:
    """A bytes setting's checks, in words."""
    e = s["encodings"]
    deflating = [e[name] for name in ("deflate", "compact+deflate")]
    return (f"{s['rate']} q/s max_hz {hz_label(s['max_hz'])}: {s['quotes_checked']:,} quotes "
            "of the other encodings decoded equal to protocol 1's"
            + (f", **{s['quotes_differ']} differ**" if s["quotes_differ"] else "")
            + f", compressed frames {e['compact+deflate']['compressed_frames']} "
            f"(compact+deflate) / {e['deflate']['compressed_frames']} (deflate), deflate "
            f"negotiated by {sum(x['deflate_negotiated'] for x in deflating)}"
            f"/{sum(x['viewers'] for x in deflating)}"
            + (f", errors: {s['errors']}" if s["errors"] else ""))


def report(result: dict[str, Any]) -> str:
    b = result["bytes"]
    lines = [
        "# Bytes per viewer (issue 24)", "",
        f"{result['date']}, commit {result['commit']}: `{result['command']}`. Load average "
        f"before/after: {result['load_before']} / {result['load_after']} (2 CPUs).", "",
        "## Bytes on the wire", "",
        f"{b['per_encoding']} viewer(s) of each encoding at once on `/ws?symbols=*`, one "
        f"service with its embedded market (SIM_SEED=1) per setting, {b['warmup_s']:g} s "
        f"warm-up, {b['seconds']:g} s window. Bytes/s per viewer: websocket frames as read "
        "off the socket (header + payload, compressed where RSV1 is set; every frame type); "
        "(×) is the ratio to protocol 1. *Floor*: computed from the protocol-1 frames (below).",
        "",
        "| rate q/s | max_hz | protocol-1 frames/s | protocol 1 | deflate | compact | "
        "compact + deflate | floor | compact quotes frame B (payload) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in b["settings"]:
        e = s["encodings"]
        cells = [f"{s['rate']:,}", hz_label(s["max_hz"]), f"{e['json']['frames_per_s']:g}",
                 f"{e['json']['bytes_per_s']:,.0f}"]
        for name in ("deflate", "compact", "compact+deflate"):
            cells.append(f"{e[name]['bytes_per_s']:,.0f} ({e[name]['ratio']:.3f}×)")
        cells.append(f"{s['floor']['bytes_per_s']:,.0f} ({s['floor']['ratio']:.3f}×)")
        cells.append(f"{e['compact']['mean_quotes_payload_bytes']:,.0f}"
                     if e["compact"]["mean_quotes_payload_bytes"] else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Checks: " + "; ".join(checks(s) for s in b["settings"]) + ".", ""]
    lines += ["## Deflate by compact frame size", "",
              "The first compact viewer's quotes frames in the window by payload size, each "
              "compressed as the service does it (service/wire.py `deflated_frame`, level 6, "
              "no context): frames, mean payload, wire bytes deflated / plain, bytes saved per "
              "frame, zlib µs per frame on this machine (paid once per shared frame); then "
              "what the compact+deflate viewer received in that bucket (frames compressed of "
              f"frames, wire / plain). The service compresses from {DEFLATE_MIN_BYTES} B.", "",
              "| rate q/s | max_hz | bucket | frames | mean B | deflated / plain | saved B/frame "
              "| zlib µs/frame | received: compressed, wire / plain |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in b["settings"]:
        for _, _, name in BUCKETS:
            k = s["buckets"][name]
            if not k["frames"] and not k["received_frames"]:
                continue
            lines.append(
                f"| {s['rate']:,} | {hz_label(s['max_hz'])} | {name} | {k['frames']} | "
                f"{k['mean_payload'] or 0:,.0f} | "
                + (f"{k['ratio']:.3f}" if k["ratio"] is not None else "–")
                + f" | {k['saved_bytes_per_frame'] if k['saved_bytes_per_frame'] is not None else '–'}"
                f" | {k['zlib_us_per_frame'] if k['zlib_us_per_frame'] is not None else '–'} | "
                f"{k['received_compressed']}/{k['received_frames']}, "
                + (f"{k['received_ratio']:.3f}" if k["received_ratio"] is not None else "–")
                + " |")
    lines += ["", "What compact+deflate would cost per viewer-second with the threshold at T "
              "bytes of compact payload (the compact viewer's frames of at least T compressed "
              f"as wire.py does it; (×) to protocol 1; {DEFLATE_MIN_BYTES} is the service's):", "",
              "| rate q/s | max_hz | " + " | ".join(f"T={t}" for t in THRESHOLDS) + " |",
              "|---|---|" + "---|" * len(THRESHOLDS)]
    for s in b["settings"]:
        th = s.get("thresholds") or {}
        if th:
            lines.append(f"| {s['rate']:,} | {hz_label(s['max_hz'])} | " + " | ".join(
                f"{th[str(t)]['bytes_per_s']:,.0f} ({th[str(t)]['ratio']:.3f}×)"
                for t in THRESHOLDS) + " |")
    cpu = result.get("cpu")
    if cpu:
        lines += ["", "## Service CPU per client frame", "",
                  f"bench/viewers.py points: the service pinned to CPU 0; Redis, the per-quote "
                  f"publisher at the rate and the native generator on CPU 1; all viewers of a "
                  f"point on one encoding; {cpu['warmup_s']:g} s warm-up, {cpu['measure_s']:g} s "
                  f"window; {cpu['rounds']} rounds, the encodings back to back per setting, "
                  f"their order reversed every other round ({cpu['duration_s']} s in all; load "
                  f"average {cpu['load_before']} / {cpu['load_after']}). µs = service CPU "
                  "(utime+stime) / frames delivered; the median of the rounds, and the median "
                  "of each round's ratio to protocol 1 (the rounds' ratios in brackets). The "
                  "per-quote ingest (one Redis message a quote) is in every figure alike.", "",
                  "| rate q/s | max_hz | viewers | frames/s per viewer | "
                  + " | ".join(cpu["encodings"]) + " | generator µs/frame | passed |",
                  "|---|---|---|---|" + "---|" * len(cpu["encodings"]) + "---|---|"]
        for s in cpu["settings"]:
            e = s["encodings"]
            cells = [f"{s['rate']:,}", hz_label(s["max_hz"]), f"{s['viewers']:,}",
                     f"{statistics.median(e['json']['frames_per_viewer_s']):g}"]
            for name in cpu["encodings"]:
                x = e[name]
                cell = f"{x['median_us_per_frame']}"
                if name != "json" and x["median_ratio"] is not None:
                    rounds = ", ".join(f"{r:.2f}" for r in x["ratios"])
                    cell += f" ({x['median_ratio']:.3f}× [{rounds}])"
                else:
                    cell += f" [{', '.join(f'{u:g}' for u in x['us_per_frame'])}]"
                cells.append(cell)
            cells.append(" / ".join(f"{statistics.median(e[n]['generator_us_per_frame']):g}"
                                    for n in cpu["encodings"]))
            cells.append(", ".join(f"{e[n]['passed']}/{e[n]['points']}" for n in cpu["encodings"]))
            lines.append("| " + " | ".join(cells) + " |")
        fails = sorted({r for s in cpu["settings"] for x in s["encodings"].values()
                        for r in x["fail_reasons"]})
        if fails:
            lines += ["", "Points that failed bench/viewers.py's checks: " + "; ".join(fails) + "."]
    rows = targets(result)
    if rows:
        lines += ["", "## Targets", "", "| target | measured | verdict |", "|---|---|---|",
                  *(f"| {a} | {m} | {v} |" for a, m, v in rows)]
    lines += ["", f"Floor: {FLOOR_TEXT}.", ""]
    return "\n".join(lines)


def commit() -> str:
    import subprocess
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=RESULTS.parent.parent, check=False)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="bytes window (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--viewers", type=int, default=2, help="bytes: viewers per encoding")
    parser.add_argument("--no-cpu", action="store_true", help="the bytes only")
    parser.add_argument("--rounds", type=int, default=3, help="CPU rounds (default 3)")
    parser.add_argument("--cpu-encodings", default=",".join(CPU_ENCODINGS))
    parser.add_argument("--cpu-viewers", default="4:6000,50:1500",
                        help="viewers per CPU point by max_hz (default 4:6000,50:1500)")
    parser.add_argument("--cpu-seconds", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true",
                        help="3 s, 1 viewer per encoding, 20 quotes/s at max_hz 4; one CPU "
                             "round of 100 viewers at 1,000 q/s max_hz 4; into results/tmp/")
    parser.add_argument("--out", type=Path, default=None,
                        help="where bytes.md/json go (default bench/results, --quick: tmp/)")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: bytes.md again from bytes.json, with the "
                             "viewers-per-core runs under results/viewers-encodings/ read again")
    args = parser.parse_args()
    if args.report_only:
        out = args.out or RESULTS
        kept: dict[str, Any] = json.loads((out / "bytes.json").read_text())
        kept["per_core"] = per_core(RESULTS / "viewers-encodings")
        write_results(out, "bytes", kept, report(kept))
        return
    settings = [(rate, hz) for rate in RATES for hz in MAX_HZS]
    seconds, per_encoding = args.seconds, args.viewers
    cpu_settings, rounds = settings, args.rounds
    viewers_at = {int(k): int(v) for k, v in (x.split(":") for x in args.cpu_viewers.split(","))}
    cpu_seconds, cpu_warmup = args.cpu_seconds, 2.0
    if args.quick:
        settings, seconds, per_encoding = [(20, 4)], 3.0, 1
        cpu_settings, rounds, viewers_at = [(1000, 4)], 1, {4: 100}
        cpu_seconds, cpu_warmup = 1.5, 0.5
    out = args.out or (RESULTS / "tmp" if args.quick else RESULTS)
    command = "python -m bench.bytes" + (" --quick" if args.quick else f" --seconds {seconds:g}"
                                         + (" --no-cpu" if args.no_cpu else f" --rounds {rounds}"))
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit(),
        "command": command, "load_before": [round(x, 2) for x in os.getloadavg()],
        "floor": FLOOR_TEXT, "deflate_min_bytes": DEFLATE_MIN_BYTES,
        "bytes": {"per_encoding": per_encoding, "warmup_s": args.warmup, "seconds": seconds,
                  "settings": []},
    }
    for rate, max_hz in settings:
        viewers, start, end = record_setting(rate, max_hz, per_encoding, args.warmup, seconds)
        figures = analyse(viewers, start, end)
        result["bytes"]["settings"].append({"rate": rate, "max_hz": max_hz, **figures})
        print(json.dumps({"rate": rate, "max_hz": max_hz, "floor": figures["floor"]["bytes_per_s"],
                          **{k: v["bytes_per_s"] for k, v in figures["encodings"].items()}}),
              flush=True)
    if not args.no_cpu:
        encodings = [e for e in args.cpu_encodings.split(",") if e]
        if "json" not in encodings:
            encodings.insert(0, "json")
        result["cpu"] = cpu_rounds(cpu_settings, encodings, rounds, viewers_at, cpu_warmup,
                                   cpu_seconds)
    if not args.quick:
        result["per_core"] = per_core(RESULTS / "viewers-encodings")
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    write_results(out, "bytes", result, report(result))


if __name__ == "__main__":
    main()
