"""The JavaScript client on the compact encoding against the real service, with its
embedded simulated market (tests/service_proc.py):

- in Node, a client on compact (the default) and one on protocol 1 (`encoding: 'json'`)
  on the same service for ten seconds: every quote both were given (same symbol, same
  seq) is the same, field for field; once the feed's latest update has reached both,
  their boards are equal; and the compact board is the service's own (GET /quotes) for
  every symbol;
- in Chromium, the demo page: the widget's socket asks for compact, gets array frames and
  permessage-deflate (the browser's own), and what it renders is the service's board;
  the SSE fallback on compact holds the same board as a protocol-1 socket.

Every wait is on a condition with a deadline; the ten seconds are the run, not a check.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, WebSocket, expect

from quote_core.quote import Quote
from quote_core.text import format_line
from tests.browser import checked_page
from tests.service_proc import ServiceProcess, http_fetch, run_service
from tests.test_js_client import JS, embedder, foreign_page, require_node

__all__ = ["embedder"]  # a fixture: another origin's blank page

# The demo market ten times as fast as shipped: many deltas in ten seconds.
SERVICE_ENV = {"SIM_RATE": "200"}
RUN_MS = 10_000
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    yield from run_service(SERVICE_ENV, ready="/readyz")


def rest_board(service: ServiceProcess) -> dict[str, dict[str, Any]]:
    status, _, body = http_fetch(service.url + "/quotes")
    assert status == 200
    return {q["symbol"]: q for q in json.loads(body)["quotes"]}


# --- Node: compact beside protocol 1 ----------------------------------------------------------

BESIDE_SCRIPT = r"""
import WebSocket from 'ws';
import { connect, connections } from 'quote-stream';

const [url, base, runMs, waitMs] = [process.argv[1], process.argv[2], Number(process.argv[3]),
                                    Number(process.argv[4])];
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(predicate, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await predicate()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await wait(2);
  }
}
// Every field, -0 told from 0, in one string.
const canon = (q) => JSON.stringify(Object.keys(q).sort().map((k) => [k, Object.is(q[k], -0) ? '-0' : q[k]]));

// What each socket was sent, counted from its raw frames.
const wire = {};
function spy(name) {
  wire[name] = { url: null, extensions: null, arrays: 0, deltas: 0, full: 0, indexed: 0, objects: 0 };
  const w = wire[name];
  return class extends WebSocket {
    constructor(u, ...rest) {
      super(u, ...rest);
      w.url = u;
      this.addEventListener('open', () => { w.extensions = this.extensions; });
      this.addEventListener('message', (ev) => {
        const m = JSON.parse(String(ev.data));
        if (Array.isArray(m)) {
          w.arrays += 1;
          for (const e of m.slice(1)) if (Array.isArray(e)) w.deltas += 1; else w.full += 1;
        } else if (m.type === 'quotes' || m.type === 'snapshot') {
          w.objects += 1;
          w.indexed += m.quotes.filter((q) => 'i' in q).length;
        }
      });
    }
  };
}

const streams = {
  compact: connect(url, { WebSocket: spy('compact') }),
  json: connect(url, { WebSocket: spy('json'), encoding: 'json' }),
};
const given = { compact: new Map(), json: new Map() }; // 'SYMBOL seq' -> every field
for (const [name, stream] of Object.entries(streams)) {
  stream.on('quote', (q) => given[name].set(`${q.symbol} ${q.seq}`, canon(q)));
  stream.subscribe('*');
}
await until(() => streams.compact.feed === 'live' && streams.json.feed === 'live', waitMs, 'live');
await wait(runMs); // the market runs
const boards = () => Object.fromEntries(Object.entries(streams).map(
  ([name, s]) => [name, Object.fromEntries([...s.board].map(([sym, q]) => [sym, canon(q)]))]));
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
// The feed never stops: the boards are equal at the moments both have the latest update.
await until(() => { const b = boards(); return same(b.compact, b.json); }, waitMs, 'equal boards');
const settled = boards();

// The compact board against the service's own: each symbol the same wherever the seq is.
const rest = new Map();
await until(async () => {
  const body = await (await fetch(`${base}/quotes`)).json();
  for (const q of body.quotes) {
    const mine = streams.compact.board.get(q.symbol);
    if (mine && mine.seq === q.seq) rest.set(q.symbol, [canon(mine), canon(q)]);
  }
  return rest.size === body.quotes.length;
}, waitMs, 'every symbol of GET /quotes at the seq the compact board holds');

const common = [...given.compact.keys()].filter((k) => given.json.has(k));
const differ = common.filter((k) => given.compact.get(k) !== given.json.get(k));
const report = {
  encodings: [streams.compact.encoding, streams.json.encoding],
  sockets: connections().map((c) => [c.encoding, c.subscribed]).sort(),
  wire,
  counts: [given.compact.size, given.json.size, common.length],
  differ: differ.slice(0, 5).map((k) => [given.compact.get(k), given.json.get(k)]),
  settled,
  rest: [...rest].filter(([, [a, b]]) => a !== b),
  restSymbols: rest.size,
};
for (const s of Object.values(streams)) s.close();
console.log(JSON.stringify(report));
"""


def test_compact_and_protocol_1_clients_hold_the_same_board(service: ServiceProcess) -> None:
    node = require_node()
    args = [service.ws_url, service.url, str(RUN_MS), str(WAIT_MS)]
    result = subprocess.run([node, "--input-type=module", "-e", BESIDE_SCRIPT, *args], cwd=JS,
                            capture_output=True, text=True, timeout=(RUN_MS + 3 * WAIT_MS) / 1000 + 30)
    assert result.returncode == 0, result.stderr + "\n" + service.log()[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["encodings"] == ["compact", "json"]
    assert report["sockets"] == [["compact", "*"], ["json", "*"]], "a socket each"
    wire = report["wire"]
    assert wire["compact"]["url"] == service.ws_url + "?encoding=compact"
    assert wire["json"]["url"] == service.ws_url + "?encoding=json"
    for name in ("compact", "json"):  # ws offers permessage-deflate; the service takes it
        assert "permessage-deflate" in wire[name]["extensions"], wire[name]
    # The compact socket got its updates as deltas, protocol 1 none of that.
    assert wire["compact"]["arrays"] > 100 and wire["compact"]["deltas"] > 1000, wire["compact"]
    assert wire["compact"]["indexed"] > 0, "the snapshot's quotes carry their index"
    assert (wire["json"]["arrays"], wire["json"]["indexed"]) == (0, 0), wire["json"]
    # Both were given most of the same quotes (conflation may differ a little): all equal.
    given_compact, given_json, common = report["counts"]
    assert common > 0.8 * min(given_compact, given_json) and common > 1000, report["counts"]
    assert report["differ"] == []
    settled = report["settled"]
    assert settled["compact"] == settled["json"] and len(settled["compact"]) == len(rest_board(service))
    assert report["rest"] == [] and report["restSymbols"] == len(settled["compact"])


# --- Chromium: the demo page ----------------------------------------------------------------

@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with checked_page(browser, 1100, 900, WAIT_MS) as page:
        yield page


class Sockets:
    """The page's websockets as the browser saw them: URLs, the frames received, and the
    extensions of each handshake's response (from Chromium's DevTools protocol)."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.frames: list[str] = []
        self.extensions: list[str] = []
        page.on("websocket", self.opened)
        cdp = page.context.new_cdp_session(page)
        cdp.on("Network.webSocketHandshakeResponseReceived", self.handshake)
        cdp.send("Network.enable")

    def opened(self, ws: WebSocket) -> None:
        self.urls.append(ws.url)
        ws.on("framereceived", lambda payload: self.frames.append(
            payload if isinstance(payload, str) else payload.decode()))

    def handshake(self, event: dict[str, Any]) -> None:
        headers = {k.lower(): v for k, v in event["response"]["headers"].items()}
        self.extensions.append(headers.get("sec-websocket-extensions", ""))


RENDERED = """async () => {
    // Each ticker's quotes and its rendering of them, read together once nothing waits to
    // be drawn (rendered() resolves right after a render, before any other task runs).
    const out = {};
    for (const t of document.querySelectorAll('quote-ticker')) {
        await t.rendered();
        const shown = {};
        for (const e of t.shadowRoot.querySelectorAll('[data-symbol]')) {
            const symbol = e.dataset.symbol;
            if (!e.closest('[aria-hidden="true"]')) shown[symbol] = [e.innerText, t.quote(symbol)];
        }
        out[t.id] = shown;
    }
    return out;
}"""


def test_demo_page_renders_the_service_board_over_compact(service: ServiceProcess, page: Page) -> None:
    sockets = Sockets(page)
    page.goto(service.url + "/")
    for ticker in ("#ticker-strip", "#ticker-panel"):
        expect(page.locator(ticker)).to_have_attribute("data-feed", "live", timeout=WAIT_MS)
    encodings = page.evaluate("() => [...document.querySelectorAll('quote-ticker')]"
                              ".map((t) => t.stream.encoding)")
    assert encodings == ["compact", "compact"]
    assert sockets.urls == [service.ws_url + "?encoding=compact"], "one socket for both tickers"
    assert sockets.extensions and "permessage-deflate" in sockets.extensions[0], sockets.extensions

    # Several seconds of live updates: array frames, with deltas in them.
    def deltas() -> int:
        arrays = [json.loads(f) for f in sockets.frames if f.startswith("[")]
        return sum(isinstance(e, list) for a in arrays for e in a[1:])

    deadline = time.monotonic() + WAIT_MS / 1000
    while deltas() < 400:
        assert time.monotonic() < deadline, f"{deltas()} deltas in {len(sockets.frames)} frames"
        page.wait_for_timeout(100)

    # What each ticker shows is the service's board: for every symbol shown, at the moments
    # its seq is the service's, the quote is GET /quotes' field for field and its text the
    # seed's line of it. (The board moves 200 times a second: each symbol is caught in turn.)
    matched: dict[str, set[str]] = {}
    shown_symbols: dict[str, set[str]] = {}
    deadline = time.monotonic() + 2 * WAIT_MS / 1000
    while not shown_symbols or any(matched.get(t) != s for t, s in shown_symbols.items()):
        missing = {t: sorted(s - matched.get(t, set())) for t, s in shown_symbols.items()}
        assert time.monotonic() < deadline, f"never caught at the service's seq: {missing}"
        rendered = page.evaluate(RENDERED)
        board = rest_board(service)
        for ticker, shown in rendered.items():
            shown_symbols[ticker] = set(shown)
            for symbol, (text, quote) in shown.items():
                served = board[symbol]
                assert quote["seq"] <= served["seq"], (symbol, quote, served)
                if quote["seq"] == served["seq"]:
                    assert quote == served, symbol
                    assert " ".join(text.split()) == format_line(Quote.from_dict(served)), (ticker, text)
                    matched.setdefault(ticker, set()).add(symbol)
    assert shown_symbols["ticker-strip"] == set(rest_board(service)), "the strip shows every symbol"


SSE_PAGE = """async ([base, ws]) => {
    const S = await import(base + '/js/index.js');
    // A websocket that never opens: after three attempts the client takes /sse.
    class Refused {
        constructor() { this.readyState = 0; setTimeout(() => this.onclose?.({ code: 1006 }), 0); }
        send() { throw new Error('not open'); }
        close() {}
    }
    window.S = S;
    window.viaSse = S.connect(ws, { WebSocket: Refused });
    window.plain = S.connect(ws, { encoding: 'json' });
    window.updates = 0;
    viaSse.on('quote', (q, { snapshot }) => { if (!snapshot) updates += 1; });
    viaSse.subscribe('*');
    plain.subscribe('*');
    const canon = (q) => JSON.stringify(Object.keys(q).sort().map((k) => [k, q[k]]));
    window.boards = () => [viaSse, plain].map(
        (s) => JSON.stringify([...s.board].map(([k, q]) => [k, canon(q)])));
}"""


def test_sse_fallback_on_compact_holds_the_protocol_1_board(service: ServiceProcess, page: Page,
                                                             embedder: str) -> None:
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    foreign_page(page, service, embedder)  # a page with no socket of its own (/sse is CORS *)
    page.evaluate(SSE_PAGE, [service.url, service.ws_url])
    page.wait_for_function("() => viaSse.feed === 'live' && plain.feed === 'live'", timeout=WAIT_MS)
    conns = page.evaluate("() => S.connections().map((c) => [c.transport, c.encoding]).sort()")
    assert conns == [["sse", "compact"], ["websocket", "json"]]
    assert any("/sse?" in url and "encoding=compact" in url for url in requests), requests
    # Some seconds of updates over SSE, then the boards equal at a moment both are current.
    page.wait_for_function("() => updates >= 500", timeout=WAIT_MS)
    equal = "(n) => { const [a, b] = boards(); return a === b && JSON.parse(a).length === n; }"
    page.wait_for_function(equal, arg=len(rest_board(service)), timeout=WAIT_MS, polling=5)
