"""The JavaScript client's side of the compact encoding (docs/PROTOCOL.md, "Compact
encoding"), in Node, on frames built here:

- round2 and derivedChange (clients/js/src/format.js, compact.js) are Python's round(x, 2)
  and quote_core.quote.derived_change on many values: random two-decimal prices and
  previous closes, random doubles, and every exact tie k/8, negative ones too;
- the decoder rebuilds, field for field, the protocol-1 quotes of long random walks that
  a reference encoder written here from the wire contract turned into frames (full and
  delta entries, conflated seqs, time going back, optional fields set and removed, new
  days, indexed protocol-1-form frames), and docs/PROTOCOL.md's example into its
  protocol-1 frame;
- the stream client asks for the encoding in its URL, reads the welcome, strips `i`,
  falls back to protocol 1 on a welcome that says nothing, and reconnects (forgetting
  every index) after a delta for an index it does not know; the SSE fallback asks too.

The same client against the real service, compact beside protocol 1, and the widget in
Chromium: tests/test_js_compact_live.py.
"""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
from typing import Any

from quote_core.quote import Quote, derived_change
from tests.service_proc import ROOT
from tests.test_js_client import JS, require_node


def run_node(script: str, stdin: Any = None, timeout: float = 60) -> Any:
    """A module script run by Node in clients/js (so `quote-stream` is this package): its
    last line of output, as JSON."""
    node = require_node()
    result = subprocess.run([node, "--input-type=module", "-e", script], cwd=JS,
                            input=None if stdin is None else json.dumps(stdin),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# JSON has no -0; numbers go out as [value, is -0] so the sign is compared too.
SIGNED = "const signed = (v) => [v, Object.is(v, -0)];"


def signed(value: float) -> list[Any]:
    return [value, math.copysign(1.0, value) < 0 and value == 0]


# --- round2 and the derivation --------------------------------------------------------------

ROUND_SCRIPT = SIGNED + r"""
import { round2, derivedChange } from 'quote-stream';
let text = '';
for await (const chunk of process.stdin) text += chunk;
const { values, pairs } = JSON.parse(text);
console.log(JSON.stringify({
  rounded: values.map((x) => signed(round2(x))),
  derived: pairs.map(([price, prev]) => derivedChange(price, prev).map(signed)),
}));
"""


def test_round2_and_derived_change_are_pythons() -> None:
    rng = random.Random(24)
    ties = [k / 8 for k in range(-40_000, 40_001) if k % 2]  # every exact tie, both signs
    doubles = [rng.uniform(-1e4, 1e4) for _ in range(20_000)]
    near = [round(rng.uniform(-500, 500), 3) + rng.choice((0.0, 5e-16, -5e-16)) for _ in range(20_000)]
    values = [*ties, *doubles, *near, 0.0, -0.0, -0.001, 0.004999, 1e22, -1e22, 2675e-3, 1.005]
    pairs = []
    for _ in range(30_000):
        scale = rng.choice((100, 10_000, 20_000_000))  # cents: up to 1.00, 100.00, 200,000.00
        pairs.append((rng.randint(1, scale) / 100, rng.randint(1, scale) / 100))
    pairs += [(p / 100, (p + d) / 100) for p in (1, 8, 125, 9_999, 7_190_250) for d in (-7, -1, 0, 1, 3)
              if p + d > 0]
    got = run_node(ROUND_SCRIPT, {"values": values, "pairs": pairs})
    assert len(ties) == 40_000
    bad = [(x, js, signed(round(x, 2))) for x, js in zip(values, got["rounded"], strict=True)
           if js != signed(round(x, 2))]
    assert not bad, bad[:10]
    assert [round(x, 2) for x in (-0.125, -0.375, 0.125, 0.375, 0.625, 0.875)] == [
        -0.12, -0.38, 0.12, 0.38, 0.62, 0.88]
    wrong = [(p, js, derived_change(*p)) for p, js in zip(pairs, got["derived"], strict=True)
             if js != [signed(v) for v in derived_change(*p)]]
    assert not wrong, wrong[:10]


# --- the decoder on a reference encoder's frames --------------------------------------------

DERIVED = ("price", "seq", "ts", "change", "change_pct")
OPTIONAL = ("open", "high", "low", "volume", "bid", "ask", "state")


class Encoder:
    """The wire contract's encoder for one connection, as plainly as it can be written: a
    symbol the client does not hold, or whose kind or prev_close changed, goes in full; any
    other as a delta from what was sent before."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.index: dict[str, int] = {}
        self.sent: dict[str, dict[str, Any]] = {}

    def indexed(self, q: dict[str, Any]) -> dict[str, Any]:
        i = self.index.setdefault(q["symbol"], len(self.index) * 3 + 1)  # not 0..n-1
        self.sent[q["symbol"]] = q
        return {**q, "i": i}

    def p1_form(self, kind: str, quotes: list[dict[str, Any]]) -> dict[str, Any]:
        """A `snapshot` or `quotes` frame in protocol-1 form: every quote with its `i`."""
        return {"type": kind, "quotes": [self.indexed(q) for q in quotes]}

    def compact(self, quotes: list[dict[str, Any]]) -> list[Any]:
        t = quotes[0]["ts"] + self.rng.randint(-50, 50)
        frame: list[Any] = [t]
        for q in quotes:
            held = self.sent.get(q["symbol"])
            if held is None or held["kind"] != q["kind"] or held["prev_close"] != q["prev_close"]:
                frame.append(self.indexed(q))
            else:
                entry: list[Any] = [self.index[q["symbol"]], q["price"], q["seq"] - held["seq"], q["ts"] - t]
                changes = {k: q.get(k) for k in set(held) | set(q)
                           if k not in DERIVED and held.get(k) != q.get(k)}
                if changes:
                    entry.append(changes)
                frame.append(entry)
                self.sent[q["symbol"]] = q
            t = q["ts"]
        return frame


class Market:
    """Random walks of a few symbols as the service would publish them (Quote.make, so
    change and change_pct are the core's), with every kind of change the wire carries."""

    def __init__(self, rng: random.Random, delayed: bool) -> None:
        self.rng = rng
        self.delayed = delayed
        self.quotes: dict[str, dict[str, Any]] = {}
        self.ts = 1_719_216_000_000
        for n, (symbol, kind) in enumerate([("OGDC", "stock"), ("PPL", "stock"), ("KSE100", "index"),
                                            ("HBL", "stock"), ("A.B-1", "stock")]):
            prev = round(rng.uniform(1, 300), 2) if kind == "stock" else 71_902.5
            self.quotes[symbol] = self.make(symbol, kind, prev, prev, n + 1, {"volume": 100 * n})

    def make(self, symbol: str, kind: str, price: float, prev: float, seq: int,
             optional: dict[str, Any]) -> dict[str, Any]:
        q = Quote.make(symbol, price, prev, kind=kind, ts=self.ts, **optional).with_seq(seq).to_dict()
        return {**q, "delayed": True} if self.delayed else q

    def step(self) -> dict[str, Any]:
        rng = self.rng
        symbol = rng.choice(list(self.quotes))
        q = self.quotes[symbol]
        self.ts += rng.randint(0, 400)
        optional = {k: q[k] for k in OPTIONAL if k in q}
        price = max(0.01, round(q["price"] + rng.choice((-1, 1)) * rng.randint(0, 300) / 100, 2))
        prev, kind = q["prev_close"], q["kind"]
        roll = rng.random()
        if roll < 0.03:  # a new day
            prev = q["price"]
        elif roll < 0.05:
            kind = "index" if kind == "stock" else "stock"
        if rng.random() < 0.3:
            optional["volume"] = optional.get("volume", 0) + rng.randint(1, 5000)
        if rng.random() < 0.1:
            optional["high"] = max(price, optional.get("high", price))
        if rng.random() < 0.05:
            optional.pop(rng.choice(OPTIONAL), None)  # no longer set: null in CHANGES
        if rng.random() < 0.05:
            optional["state"] = rng.choice(("trading", "halted", "closed"))
        seq = q["seq"] + (1 if rng.random() < 0.8 else rng.randint(2, 9))  # conflated
        ts = self.ts - rng.randint(0, 3000) if rng.random() < 0.1 else self.ts  # time going back
        q = {**self.make(symbol, kind, price, prev, seq, optional), "ts": ts}
        self.quotes[symbol] = q
        return q


DECODE_SCRIPT = SIGNED + r"""
import { CompactDecoder } from 'quote-stream';
let text = '';
for await (const chunk of process.stdin) text += chunk;
const runs = JSON.parse(text);
const signedQuote = (q) => Object.fromEntries(Object.entries(q).map(
  ([k, v]) => [k, typeof v === 'number' ? signed(v) : v]));
console.log(JSON.stringify(runs.map((frames) => {
  const decoder = new CompactDecoder();
  return frames.flatMap((f) => (Array.isArray(f) ? decoder.frame(f) : decoder.quotes(f.quotes)))
    .map(signedQuote);
})));
"""


def walk(seed: int, steps: int) -> tuple[list[Any], list[dict[str, Any]]]:
    """One connection's frames, and the protocol-1 quotes they stand for, in order."""
    rng = random.Random(seed)
    market, encoder = Market(rng, delayed=seed % 2 == 1), Encoder(rng)
    first = rng.sample(list(market.quotes), 3)  # the others come later, in full
    snapshot = [market.quotes[s] for s in first]
    frames: list[Any] = [encoder.p1_form("snapshot", snapshot)]
    quotes = list(snapshot)
    while len(quotes) < steps:
        batch: dict[str, dict[str, Any]] = {}
        for _ in range(rng.randint(1, 8)):
            q = market.step()
            batch.pop(q["symbol"], None)  # conflated: the latest of each, in the order changed
            batch[q["symbol"]] = q
        ordered = list(batch.values())
        frames.append(encoder.p1_form("quotes", ordered) if rng.random() < 0.05 else encoder.compact(ordered))
        quotes += ordered
    return frames, quotes


def test_decoder_rebuilds_protocol_1_quotes() -> None:
    runs = [walk(seed, 3000) for seed in range(6)]
    got = run_node(DECODE_SCRIPT, [frames for frames, _ in runs])
    for (frames, expected), decoded in zip(runs, got, strict=True):
        kinds = {type(e).__name__ for f in frames if isinstance(f, list) for e in f[1:]}
        assert kinds == {"dict", "list"}, "both full and delta entries"
        assert any(isinstance(e, list) and len(e) == 5 and None in e[4].values()
                   for f in frames if isinstance(f, list) for e in f[1:]), "a field removed"
        want = [{k: signed(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                 for k, v in q.items()} for q in expected]
        assert len(decoded) == len(want)
        for n, (js, py) in enumerate(zip(decoded, want, strict=True)):
            assert js == py, (n, js, py)


DECODE_ERRORS_SCRIPT = r"""
import { CompactDecoder, CompactError, checkEncoding, ENCODINGS } from 'quote-stream';
const q = { symbol: 'OGDC', kind: 'stock', price: 10, prev_close: 9, change: 1, change_pct: 11.11,
            ts: 5, seq: 1 };
const refused = [];
for (const frame of [
  [1, [7, 10.5, 1, 0]],                 // an index never sent in full
  [1, [0, 10.5, 1, 0]],                 // nor 0
  [1, { ...q }],                         // a full entry without i
  ['x', { ...q, i: 1 }],                 // no time
  [1, { ...q, i: 1 }, [1, '10', 1, 0]],  // a price that is not a number
  [1, { ...q, i: 1 }, [1, 10, 1.5, 0]],  // a fractional seq step
  [1, { ...q, i: 1 }, [1, 10, 1, 0, [1]]],
  [1, { ...q, i: 1 }, [1, 10, 1]],
  [1, { ...q, i: -1 }],
  [1, 42],
]) {
  try {
    new CompactDecoder().frame(frame);
    refused.push(false);
  } catch (err) {
    refused.push(err instanceof CompactError);
  }
}
const d = new CompactDecoder();
d.frame([1, { ...q, i: 1 }]);
const fresh = new CompactDecoder(); // a new connection knows nothing
let forgotten = false;
try { fresh.frame([1, [1, 10, 1, 0]]); } catch (err) { forgotten = err instanceof CompactError; }
const plain = d.quotes([{ ...q, symbol: 'PPL' }]); // no i: as it is
const encodings = [undefined, null, 'compact', 'json'].map(checkEncoding);
let bad = null;
try { checkEncoding('msgpack'); } catch (err) { bad = err.name; }
console.log(JSON.stringify({ refused, forgotten, plain, encodings, bad, ENCODINGS,
                             ok: d.frame([9, [1, 10.5, 2, -3]]) }));
"""


def test_decoder_refuses_what_no_service_sends() -> None:
    report = run_node(DECODE_ERRORS_SCRIPT)
    assert report["refused"] == [True] * 10
    assert report["forgotten"] is True
    assert report["plain"][0]["symbol"] == "PPL" and "i" not in report["plain"][0]
    assert report["encodings"] == ["compact", "compact", "compact", "json"]
    assert report["bad"] == "RangeError" and report["ENCODINGS"] == ["compact", "json"]
    assert report["ok"] == [{"symbol": "OGDC", "kind": "stock", "price": 10.5, "prev_close": 9,
                             "change": 1.5, "change_pct": 16.67, "ts": 6, "seq": 3}]


# --- the stream client on a scripted socket -------------------------------------------------

STREAM_SCRIPT = r"""
import { connect, connections } from 'quote-stream';
import { SseSocket } from './src/sse-socket.js';

// A WebSocket the script plays the service's part on: its frames go to onmessage.
const sockets = [];
class Scripted {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closed = null;
    sockets.push(this);
    setTimeout(() => { this.readyState = 1; this.onopen?.({}); }, 0);
  }
  send(data) { this.sent.push(JSON.parse(data)); }
  close(code, reason) { this.readyState = 3; this.closed = [code, reason]; }
  say(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }
}
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(predicate, ms, what) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await wait(5);
  }
}
const warnings = [];
console.warn = (...args) => warnings.push(args.join(' '));
const q = (symbol, price, seq, i, extra = {}) => ({
  symbol, kind: 'stock', price, prev_close: 100, change: +(price - 100).toFixed(2),
  change_pct: +(price - 100).toFixed(2), ts: 1000 + seq, seq, ...(i === undefined ? {} : { i }), ...extra });
const welcome = (encoding) => ({ type: 'welcome', protocol: 1, heartbeat_s: 15,
  ...(encoding === undefined ? {} : { encoding }) });

const out = {};
// 1. The default: ?encoding=compact beside the caller's query; the welcome says compact.
const stream = connect('ws://quotes.example/ws?x=1', { WebSocket: Scripted });
const seen = [];
stream.on('quote', (quote) => seen.push(quote));
stream.subscribe(['OGDC', 'PPL']);
await until(() => sockets.length === 1 && sockets[0].sent.length === 1, 2000, 'the subscribe');
const ws = sockets[0];
out.url = ws.url;
out.before = stream.encoding;
ws.say(welcome('compact'));
out.after = [stream.encoding, connections()[0].encoding, connections()[0].url];
ws.say({ type: 'ack', id: ws.sent[0].id, op: 'subscribe', symbols: ['OGDC', 'PPL'] });
ws.say({ type: 'snapshot', quotes: [q('OGDC', 101, 1, 4), q('PPL', 99, 7, 9)] });
ws.say([1001, [4, 101.25, 1, 1], [9, 98.5, 2, 6, { volume: 5 }]]);
ws.say({ type: 'quotes', quotes: [q('OGDC', 103, 5, 4)] }); // every-mode form: a full state
ws.say([1000, [4, 104.125, 1, 6, { volume: null }]]);
out.seen = seen.slice();
out.board = Object.fromEntries(stream.board);
out.feed = stream.feed;

// 2. A delta for an index this socket never learnt: dropped, a new socket, nothing kept.
ws.say([1000, [77, 1, 1, 1]]);
out.closed = ws.closed;
out.afterError = stream.feed;
await until(() => sockets.length === 2 && sockets[1].sent.length === 1, 3000, 'a new socket');
const again = sockets[1];
again.say(welcome('compact'));
again.say([1000, [4, 105, 1, 1]]); // index 4 was the old socket's
out.forgotten = again.closed;
out.boardKept = stream.board.get('OGDC').price;
await until(() => sockets.length === 3 && sockets[2].sent.length === 1, 3000, 'a third socket');
const third = sockets[2];
third.say(welcome('compact'));
third.say({ type: 'ack', id: third.sent[0].id, op: 'subscribe', symbols: ['OGDC', 'PPL'] });
third.say({ type: 'snapshot', quotes: [q('OGDC', 106, 20, 0), q('PPL', 97, 30, 1)] });
third.say([1000, [0, 107, 1, 2]]);
out.recovered = [stream.feed, stream.board.get('OGDC'), third.closed];
stream.close();

// 3. An older service: a welcome without `encoding` is protocol 1, read as ever.
const old = connect('ws://old.example/ws', { WebSocket: Scripted });
old.subscribe(['OGDC']);
await until(() => sockets.length === 4 && sockets[3].sent.length === 1, 2000, 'the old socket');
const oldWs = sockets[3];
oldWs.say(welcome());
oldWs.say({ type: 'ack', id: oldWs.sent[0].id, op: 'subscribe', symbols: ['OGDC'] });
oldWs.say({ type: 'snapshot', quotes: [q('OGDC', 101, 1)] });
oldWs.say([1000, [0, 1, 1, 1]]); // not protocol 1: nothing
out.old = [oldWs.url, old.encoding, Object.fromEntries(old.board), oldWs.closed];
old.close();

// 4. encoding: 'json' asks for protocol 1, on a socket of its own.
const plain = connect('ws://quotes.example/ws?x=1', { WebSocket: Scripted, encoding: 'json' });
const compact = connect('ws://quotes.example/ws?x=1', { WebSocket: Scripted });
plain.subscribe(['OGDC']);
compact.subscribe(['OGDC']);
await until(() => sockets.length === 6, 2000, 'two sockets');
out.two = sockets.slice(4).map((s) => s.url).sort();
try {
  connect('ws://quotes.example/ws', { WebSocket: Scripted, encoding: 'gzip' });
} catch (err) {
  out.bad = err.name;
}
plain.close();
compact.close();

// 5. The SSE fallback asks for the same encoding on its URL.
class Source {
  constructor(url) { this.url = url; Source.made.push(this); }
  addEventListener() {}
  close() {}
}
Source.made = [];
const sse = new SseSocket('ws://quotes.example/ws', Source, 'compact');
await wait(0);
sse.send(JSON.stringify({ op: 'subscribe', id: 1, symbols: ['OGDC'], max_hz: 4 }));
await wait(0);
out.sse = Source.made.map((s) => s.url);
out.warnings = warnings;
console.log(JSON.stringify(out));
"""


def test_stream_client_on_scripted_compact_frames() -> None:
    out = run_node(STREAM_SCRIPT)
    assert out["url"] == "ws://quotes.example/ws?x=1&encoding=compact"
    assert out["before"] is None
    assert out["after"] == ["compact", "compact", "ws://quotes.example/ws?x=1"]

    def full(symbol: str, price: float, prev: float, seq: int, ts: int, **extra: Any) -> dict[str, Any]:
        change, pct = derived_change(price, prev)
        return {"symbol": symbol, "kind": "stock", "price": price, "prev_close": prev, "change": change,
                "change_pct": pct, "ts": ts, "seq": seq, **extra}

    seen = out["seen"]
    assert all("i" not in quote for quote in seen)
    assert [(s["symbol"], s["seq"], s["ts"]) for s in seen] == [
        ("OGDC", 1, 1001), ("PPL", 7, 1007), ("OGDC", 2, 1002), ("PPL", 9, 1008), ("OGDC", 5, 1005),
        ("OGDC", 6, 1006)]
    assert seen[2] == full("OGDC", 101.25, 100, 2, 1002)
    assert seen[3] == full("PPL", 98.5, 100, 9, 1008, volume=5)
    # 104.125 - 100 = 4.125: an exact tie, to the even hundredth as the service rounds it.
    assert seen[5] == full("OGDC", 104.125, 100, 6, 1006) and seen[5]["change"] == 4.12
    assert out["board"] == {"OGDC": seen[5], "PPL": seen[3]}
    assert out["feed"] == "live"

    assert out["closed"] == [4000, "protocol error"] and out["afterError"] == "reconnecting"
    assert out["forgotten"] == [4000, "protocol error"], "a new socket forgets the indices"
    assert out["boardKept"] == 104.125, "the board is kept across the reconnect"
    feed, ogdc, closed = out["recovered"]
    assert (feed, closed) == ("live", None) and ogdc == full("OGDC", 107, 100, 21, 1002)
    assert sum("protocol error" in w for w in out["warnings"]) == 2

    old_url, old_encoding, old_board, old_closed = out["old"]
    assert old_url == "ws://old.example/ws?encoding=compact" and old_encoding == "json"
    assert old_board["OGDC"]["seq"] == 1 and old_closed is None

    assert out["two"] == ["ws://quotes.example/ws?x=1&encoding=compact",
                          "ws://quotes.example/ws?x=1&encoding=json"]
    assert out["bad"] == "RangeError"
    assert out["sse"] == ["http://quotes.example/sse?symbols=OGDC&max_hz=4&encoding=compact"]


def test_the_compact_example_of_protocol_md_decodes_in_js() -> None:
    """docs/PROTOCOL.md's snapshot with `i`, its compact frame, and the protocol-1 frame it
    stands for: the JS decoder turns the first two into the third."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    section = text[text.index("### The compact `quotes` frame"):text.index("## permessage-deflate")]
    frames = [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", section, re.DOTALL)]
    (compact,) = [f for f in frames if isinstance(f, list)]
    protocol_1 = frames[frames.index(compact) + 1]
    before = text[text.index("### `snapshot` and `quotes` frames in protocol-1 form"):]
    snapshot = json.loads(re.search(r"```json\n(.*?)\n```", before, re.DOTALL)[1])  # type: ignore[index]
    assert snapshot["type"] == "snapshot" and all("i" in q for q in snapshot["quotes"])
    got = run_node(r"""
import { CompactDecoder } from 'quote-stream';
let text = '';
for await (const chunk of process.stdin) text += chunk;
const [snapshot, frame] = JSON.parse(text);
const decoder = new CompactDecoder();
decoder.quotes(snapshot.quotes);
console.log(JSON.stringify(decoder.frame(frame)));
""", [snapshot, compact])
    assert got == protocol_1["quotes"]
