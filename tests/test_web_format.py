"""The browser side (web/) in real Chromium: the ticker's text form, the <quote-ticker>
element, the page layout, and the widget's connection behaviour.

No quote service is needed: web/ is served by a tiny static server started here (the same
routes the service serves: / -> index.html, /widget.js, /static/<path> -> web/<path>, and
the modules /widget.js imports: /widget/<m>.js -> web/widget/, /js/<m>.js -> clients/js/src/),
and the connection tests talk to a scripted websocket feed, also started here.

Chromium is Debian's package driven by Playwright (never `playwright install`: tests/browser.py).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from quote_core.quote import Quote
from quote_core.text import format_line, parse_line
from tests.browser import checked_page

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
JS_CLIENT = ROOT / "clients" / "js" / "src"
SEED = ROOT / "quote_sim" / "data" / "psx_ticker.txt"
ARTIFACTS = ROOT / "tests" / "artifacts"
TS = 1_719_216_000_000

BLANK = (b"<!doctype html><html lang=en><head><meta charset=utf-8><title>blank</title></head>"
         b"<body></body></html>")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


# --- the seed -----------------------------------------------------------------------------

def seed_lines() -> list[str]:
    return [line.strip() for line in SEED.read_text(encoding="utf-8").splitlines() if line.strip()]


def quote_from_line(line: str, seq: int = 1) -> dict[str, Any]:
    t = parse_line(line)
    return {"symbol": t.symbol, "kind": t.kind, "price": t.price, "change": t.change,
            "change_pct": t.change_pct, "prev_close": t.prev_close, "ts": TS, "seq": seq}


def quote(symbol: str, price: float, prev_close: float, *, kind: str = "stock", seq: int = 1,
          ts: int = TS) -> dict[str, Any]:
    """A protocol quote as the service sends it (change and change_pct derived)."""
    return Quote.make(symbol, price, prev_close, kind=kind, ts=ts).with_seq(seq).to_dict()


def line_of(q: dict[str, Any]) -> str:
    return format_line(Quote.from_dict(q))


# --- servers ------------------------------------------------------------------------------

def under(folder: Path, relative: str) -> Path | None:
    target = (folder / relative).resolve()
    return target if folder.resolve() in target.parents else None


class WebHandler(BaseHTTPRequestHandler):
    """The service's web routes, for this test only: / , /widget.js, /static/<path>, and the
    ES modules /widget/<m>.js and /js/<m>.js."""

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/blank":
            return self._send(BLANK, CONTENT_TYPES[".html"])
        target: Path | None = None
        if path == "/":
            target = WEB / "index.html"
        elif path == "/widget.js":
            target = WEB / "widget.js"
        elif path.startswith("/static/"):
            target = under(WEB, path[len("/static/"):])
        elif path.startswith("/widget/") and path.endswith(".js"):
            target = under(WEB / "widget", path[len("/widget/"):])
        elif path.startswith("/js/") and path.endswith(".js"):
            target = under(JS_CLIENT, path[len("/js/"):])
        if target is None:
            return self._send(b"not found", "text/plain", HTTPStatus.NOT_FOUND)
        if not target.is_file():
            return self._send(b"not found", "text/plain", HTTPStatus.NOT_FOUND)
        self._send(target.read_bytes(), CONTENT_TYPES.get(target.suffix, "application/octet-stream"))

    def _send(self, body: bytes, content_type: str, status: int = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeFeed:
    """A scripted quote service speaking PROTOCOL.md over a real websocket, in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.board: dict[str, dict[str, Any]] = {}
        self.conns: list[dict[str, Any]] = []
        self.stale = False
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        self.thread.start()
        self.server = self.call(self._start())

    async def _start(self) -> Any:
        from websockets.asyncio.server import serve

        server = await serve(self._handler, "127.0.0.1", 0)
        self.port = next(iter(server.sockets)).getsockname()[1]
        return server

    def stop(self) -> None:
        async def _stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        self.call(_stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def call(self, coro: Any, timeout: float = 5.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def open_conns(self) -> list[dict[str, Any]]:
        return [c for c in self.conns if not c["closed"]]

    async def _handler(self, ws: Any) -> None:
        conn: dict[str, Any] = {"ws": ws, "received": [], "subs": set(), "closed": False}
        self.conns.append(conn)
        try:
            await ws.send(json.dumps({"type": "welcome", "protocol": 1, "heartbeat_s": 15, "limits": {
                "max_symbols": 500, "max_client_msgs_per_s": 20, "max_frame_bytes": 4096}}))
            if self.stale:
                await ws.send(json.dumps({"type": "status", "feed": "stale", "ts": TS}))
            async for raw in ws:
                msg = json.loads(raw)
                conn["received"].append(msg)
                await self._command(conn, msg)
        except Exception:
            pass
        finally:
            conn["closed"] = True

    async def _command(self, conn: dict[str, Any], msg: dict[str, Any]) -> None:
        ws, op, symbols = conn["ws"], msg.get("op"), msg.get("symbols")
        if op == "subscribe":
            if symbols == "*":
                added = set(self.board) if conn["subs"] != "*" else set()
                conn["subs"] = "*"
                requested = list(self.board)
            else:
                added = set() if conn["subs"] == "*" else set(symbols) - conn["subs"]
                if conn["subs"] != "*":
                    conn["subs"] |= added
                requested = symbols
            subs = conn["subs"]
            await ws.send(json.dumps({
                "type": "ack", "id": msg.get("id"), "op": "subscribe",
                "symbols": sorted(self.board if subs == "*" else subs),
                "unknown": sorted(s for s in requested if s not in self.board),
                **({"all": True} if subs == "*" else {})}))
            held = [self.board[s] for s in sorted(added) if s in self.board]
            if held:
                await ws.send(json.dumps({"type": "snapshot", "quotes": held}))
        elif op == "unsubscribe":
            if symbols == "*":
                conn["subs"] = set()
            elif conn["subs"] == "*":
                conn["subs"] = set(self.board) - set(symbols)
            else:
                conn["subs"] -= set(symbols)
            await ws.send(json.dumps({"type": "ack", "id": msg.get("id"), "op": "unsubscribe",
                                      "symbols": sorted(conn["subs"]), "unknown": []}))

    def publish(self, quotes: list[dict[str, Any]]) -> None:
        """Store and fan out; each quote's seq is the board's + 1 unless given."""
        async def _publish() -> None:
            out = []
            for q in quotes:
                q = dict(q)
                if "seq" not in q:
                    q["seq"] = self.board.get(q["symbol"], {}).get("seq", 0) + 1
                if q["seq"] > self.board.get(q["symbol"], {}).get("seq", 0):
                    self.board[q["symbol"]] = q
                out.append(q)
            await self._fan_out(out)

        self.call(_publish())

    def send_raw(self, quotes: list[dict[str, Any]]) -> None:
        """Send as-is (stale seqs, duplicates), without touching the board."""
        self.call(self._fan_out(quotes))

    async def _fan_out(self, quotes: list[dict[str, Any]]) -> None:
        for conn in self.open_conns():
            mine = [q for q in quotes if conn["subs"] == "*" or q["symbol"] in conn["subs"]]
            if mine:
                await conn["ws"].send(json.dumps({"type": "quotes", "quotes": mine}))

    def send_frame(self, frame: dict[str, Any]) -> None:
        async def _send() -> None:
            for conn in self.open_conns():
                await conn["ws"].send(json.dumps(frame))
        self.call(_send())

    def status(self, feed: str) -> None:
        async def _status() -> None:
            self.stale = feed == "stale"
            for conn in self.open_conns():
                await conn["ws"].send(json.dumps({"type": "status", "feed": feed, "ts": TS}))
        self.call(_status())

    def close_all(self, code: int) -> None:
        async def _close() -> None:
            for conn in self.open_conns():
                await conn["ws"].close(code, "test")
        self.call(_close())


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


# --- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def web_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), WebHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with checked_page(browser, 1280, 900) as page:
        yield page


@pytest.fixture
def blank(page: Page, web_url: str) -> Page:
    """A blank page on the web origin with the widget module loaded."""
    page.goto(web_url + "/blank")
    page.evaluate("async () => { window.W = await import('/widget.js'); }")
    return page


@pytest.fixture
def feed() -> Iterator[FakeFeed]:
    feed = FakeFeed()
    feed.start()
    feed.publish([quote_from_line(line) for line in seed_lines()])
    try:
        yield feed
    finally:
        feed.stop()


def add_ticker(page: Page, attrs: dict[str, str], element_id: str) -> None:
    page.evaluate(
        """([attrs, id]) => {
            const t = document.createElement('quote-ticker');
            t.id = id;
            for (const [k, v] of Object.entries(attrs)) t.setAttribute(k, v);
            document.body.append(t);
        }""",
        [attrs, element_id],
    )


def texts(page: Page, selector: str) -> dict[str, str]:
    """{symbol: innerText} of the items under `selector` (an element with a shadow root)."""
    return page.evaluate(
        """(sel) => Object.fromEntries([...document.querySelector(sel).shadowRoot
              .querySelectorAll('[data-symbol]')].map((e) => [e.dataset.symbol, e.innerText]))""",
        selector,
    )


# --- the text form ------------------------------------------------------------------------

def test_ticker_text_reproduces_every_seed_line(blank: Page) -> None:
    lines = seed_lines()
    assert len(lines) >= 30
    quotes = [quote_from_line(line) for line in lines]
    got = blank.evaluate("(qs) => qs.map((q) => W.tickerText(q))", quotes)
    assert got == lines
    # The Python formatter agrees with the same numbers (the two sides cannot drift).
    assert [line_of(q) for q in quotes] == lines


CASES = [
    (quote("HBL", 112.40, 112.76), "HBL 112.40 Decreased By ▼ -0.36 (-0.32%)"),
    (quote("UNITY", 25.10, 25.13), "UNITY 25.10 Decreased By ▼ -0.03 (-0.12%)"),
    (quote("SSGC", 10.54, 10.54), "SSGC 10.54 No Change ▼ 0.00 (0%)"),
    (quote("PPL", 125.05, 116.30), "PPL 125.05 Increased By ▲ 8.75 (7.52%)"),
    (quote("BIG", 1234567.89, 1200000.0, kind="index"), "BIG 1,234,568 Increased By 34567.9 (2.88%)"),
    (quote("KSE100", 70666.8, 71902.0, kind="index"), "KSE100 70,667 Decreased By -1235.2 (-1.72%)"),
    (quote("KSE30", 23595.0, 23224.0, kind="index"), "KSE30 23,595 Increased By 371 (1.6%)"),
    (quote("FLAT", 7566.0, 7566.0, kind="index"), "FLAT 7,566 No Change 0 (0%)"),
    (quote("SMALL", 999.4, 1000.0, kind="index"), "SMALL 999 Decreased By -0.6 (-0.06%)"),
    # Exact binary ties round half to even, as Python's format does (toFixed would not):
    # 71902.5 -> 71,902 and 71903.5 -> 71,904; a change of 12.25 -> 12.2.
    (quote("TIE", 71902.5, 71900.0, kind="index"), "TIE 71,902 Increased By 2.5 (0%)"),
    (quote("TIE2", 71903.5, 71891.25, kind="index"), "TIE2 71,904 Increased By 12.2 (0.02%)"),
    # An index change under 0.05 reads 0, never -0, and so "No Change".
    (quote("NEGZI", 500.0, 500.04, kind="index"), "NEGZI 500 No Change 0 (-0.01%)"),
]

# Inputs the service never sends (it rounds and derives), for the JS side alone.
JS_ONLY_CASES = [
    ({"symbol": "NEGZ", "kind": "stock", "price": 5.0, "change": -0.0, "change_pct": -0.0,
      "prev_close": 5.0}, "NEGZ 5.00 No Change ▼ 0.00 (0%)"),
    # Unrounded numbers are rounded to two decimals first, as Quote.from_dict does.
    ({"symbol": "RND", "kind": "index", "price": 71903.499, "change": 0.049, "change_pct": 0.001,
      "prev_close": 71903.45}, "RND 71,904 Increased By 0.1 (0%)"),
    ({"symbol": "TINY", "kind": "stock", "price": 5.0, "change": -0.004, "change_pct": -0.004,
      "prev_close": 5.0}, "TINY 5.00 No Change ▼ 0.00 (0%)"),
    # change / change_pct missing: derived from prev_close.
    ({"symbol": "DER", "kind": "stock", "price": 137.75, "prev_close": 132.87},
     "DER 137.75 Increased By ▲ 4.88 (3.67%)"),
]


def test_ticker_text_cases(blank: Page) -> None:
    for q, expected in CASES:
        assert line_of(q) == expected, "the Python formatter disagrees with the case"
    cases = CASES + JS_ONLY_CASES
    got = blank.evaluate("(qs) => qs.map((q) => W.tickerText(q))", [q for q, _ in cases])
    assert got == [expected for _, expected in cases]
    assert blank.evaluate("() => [W.pyFixed(0.125, 2), W.pyFixed(0.375, 2), W.pyFixed(2.5, 0), "
                          "W.pyFixed(-0.001, 2), W.pyFixed(1e21, 1), W.groupThousands('1234567')]") == [
        f"{0.125:.2f}", f"{0.375:.2f}", f"{2.5:.0f}", f"{-0.001:.2f}", f"{1e21:.1f}", "1,234,567"]


def test_ticker_text_matches_python_on_random_quotes(blank: Page) -> None:
    rnd = random.Random(20240624)
    quotes = []
    for i in range(3000):
        kind = rnd.choice(["stock", "index"])
        if kind == "index":
            price = rnd.choice([round(rnd.uniform(100, 3e6), 2), rnd.randint(1000, 99999) + 0.5])
        else:
            price = rnd.choice([round(rnd.uniform(0.01, 5000), 2), rnd.randint(1, 999) + 0.125])
        prev = price if rnd.random() < 0.1 else max(0.01, round(price * rnd.uniform(0.8, 1.2), 2))
        quotes.append(quote(f"S{i}", price, prev, kind=kind, seq=i + 1))
    got = blank.evaluate("(qs) => qs.map((q) => W.tickerText(q))", quotes)
    expected = [line_of(q) for q in quotes]
    mismatches = [(e, g) for e, g in zip(expected, got, strict=True) if e != g]
    assert not mismatches, mismatches[:5]


def test_format_quote_parts(blank: Page) -> None:
    parts = blank.evaluate("(q) => W.formatQuote(q)", quote_from_line(seed_lines()[0]))
    assert parts == {"symbol": "AIRLINK", "kind": "stock", "direction": "up", "price": "72.59",
                     "words": "Increased By", "arrow": "▲", "change": "3.39", "pct": "(4.9%)"}


# --- the element --------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["strip", "panel"])
def test_element_items_read_exactly_as_the_seed(blank: Page, layout: str) -> None:
    add_ticker(blank, {"layout": layout}, "t")
    quotes = [quote_from_line(line) for line in seed_lines()]
    blank.evaluate("(qs) => document.getElementById('t').ingest(qs)", quotes)
    assert texts(blank, "#t") == {q["symbol"]: line for q, line in zip(quotes, seed_lines(), strict=True)}
    # Playwright's CSS pierces the open shadow root, as the lead's tests will use it.
    expect(blank.locator('quote-ticker [data-symbol="HBL"]')).to_have_text(
        "HBL 112.40 Decreased By ▼ -0.36 (-0.32%)")
    assert blank.locator('[data-symbol="KSE100"]').inner_text() == "KSE100 71,902 Increased By 1235.2 (1.75%)"
    assert blank.get_attribute("#t", "data-count") == str(len(quotes))
    # Words hidden from the eye are still there; the arrows are hidden from screen readers.
    hidden = blank.evaluate("""() => {
        const item = document.querySelector('#t').shadowRoot.querySelector('[data-symbol="HBL"]');
        const vh = item.querySelector('.vh');
        const r = vh.getBoundingClientRect();
        return [vh.textContent, r.width <= 1 && r.height <= 1,
                item.querySelector('.arw').getAttribute('aria-hidden')];
    }""")
    assert hidden == [" Decreased By ", True, "true"]
    if layout == "panel":
        points = blank.evaluate("""() => document.querySelector('#t').shadowRoot
            .querySelectorAll('svg.spark polyline')[0].getAttribute('points')""")
        assert points and "," in points


def test_directions_are_not_colour_only(blank: Page) -> None:
    add_ticker(blank, {}, "t")
    blank.evaluate("(qs) => document.getElementById('t').ingest(qs)", [
        quote("UP", 11, 10), quote("DN", 9, 10), quote("EQ", 10, 10), quote("IX", 110, 100, kind="index")])
    got = blank.evaluate("""() => Object.fromEntries([...document.querySelector('#t').shadowRoot
        .querySelectorAll('[data-symbol]')].map((e) => [e.dataset.symbol,
          [e.className.split(' ').filter((c) => ['up', 'down', 'flat'].includes(c))[0],
           getComputedStyle(e.querySelector('.chg')).color]]))""")
    assert [got[s][0] for s in ("UP", "DN", "EQ", "IX")] == ["up", "down", "flat", "up"]
    assert len({got[s][1] for s in ("UP", "DN", "EQ")}) == 3  # green, red, neutral
    assert texts(blank, "#t")["DN"] == "DN 9.00 Decreased By ▼ -1.00 (-10%)"


def test_hostile_symbol_renders_as_text(blank: Page) -> None:
    requests: list[str] = []
    blank.on("request", lambda r: requests.append(r.url))
    add_ticker(blank, {"layout": "panel"}, "t")
    hostile = {"symbol": "<img src=x>", "kind": "stock", "price": 10, "change": 0.5,
               "change_pct": 5.26, "prev_close": 9.5, "ts": TS, "seq": 1}
    blank.evaluate("(q) => document.getElementById('t').ingest([q])", hostile)
    expected = "<img src=x> 10.00 Increased By ▲ 0.50 (5.26%)"
    assert blank.evaluate("(q) => W.tickerText(q)", hostile) == expected
    expect(blank.locator('quote-ticker [data-symbol="<img src=x>"]')).to_have_text(expected)
    counts = blank.evaluate("""() => [document.querySelectorAll('img').length,
        document.getElementById('t').shadowRoot.querySelectorAll('img').length]""")
    assert counts == [0, 0]
    # A hostile `symbols` attribute is not markup either.
    blank.evaluate("() => document.getElementById('t').setAttribute('symbols', '<img src=y>,OGDC')")
    assert blank.evaluate("() => document.getElementById('t').symbols") == ["OGDC"]
    assert not [u for u in requests if u.endswith(("/x", "/y"))]


def test_older_or_equal_seq_is_dropped(blank: Page) -> None:
    add_ticker(blank, {}, "t")
    item = blank.locator('[data-symbol="OGDC"]')
    ingest = "(q) => document.getElementById('t').ingest([q])"
    blank.evaluate(ingest, quote("OGDC", 137.75, 132.87, seq=5))
    blank.evaluate(ingest, quote("OGDC", 130.00, 132.87, seq=4))
    blank.evaluate(ingest, quote("OGDC", 131.00, 132.87, seq=5))
    expect(item).to_have_text("OGDC 137.75 Increased By ▲ 4.88 (3.67%)")
    blank.evaluate(ingest, quote("OGDC", 130.00, 132.87, seq=6))
    expect(item).to_have_text("OGDC 130.00 Decreased By ▼ -2.87 (-2.16%)")


def test_pause_freezes_display_and_resume_shows_latest(blank: Page) -> None:
    add_ticker(blank, {"symbols": "OGDC"}, "t")
    ingest = "(q) => document.getElementById('t').ingest([q])"
    blank.evaluate(ingest, quote("OGDC", 137.75, 132.87, seq=1))
    item = blank.locator('[data-symbol="OGDC"]')
    button = blank.get_by_role("button", name="Pause")
    expect(button).to_have_attribute("aria-pressed", "false")
    button.focus()
    blank.keyboard.press("Space")  # a real <button>: the keyboard works
    expect(button).to_have_attribute("aria-pressed", "true")
    expect(blank.locator("#t")).to_have_attribute("paused", "")
    blank.evaluate(ingest, quote("OGDC", 140.00, 132.87, seq=2))
    blank.evaluate(ingest, quote("OGDC", 141.00, 132.87, seq=3))
    blank.wait_for_timeout(100)
    expect(item).to_have_text("OGDC 137.75 Increased By ▲ 4.88 (3.67%)")
    assert blank.evaluate("() => document.getElementById('t').quote('OGDC').price") == 141.0
    blank.keyboard.press("Enter")
    expect(button).to_have_attribute("aria-pressed", "false")
    expect(item).to_have_text("OGDC 141.00 Increased By ▲ 8.13 (6.12%)")


def test_strip_is_a_named_region_without_live_announcements(blank: Page) -> None:
    add_ticker(blank, {}, "t")
    info = blank.evaluate("""() => {
        const root = document.getElementById('t').shadowRoot;
        const region = root.querySelector('[role="region"]');
        return {label: region.getAttribute('aria-label'),
                live: [...root.querySelectorAll('[aria-live]')].length,
                status: [...root.querySelectorAll('[role="status"]')].map((e) => e.contains(region))};
    }""")
    assert info == {"label": "Market ticker", "live": 0, "status": [False]}
    expect(blank.get_by_role("region", name="Market ticker")).to_be_visible()


def test_flash_on_change_then_off_and_none_with_reduced_motion(blank: Page) -> None:
    """A changed price tints its item (and the strip's echo of it) for a moment, as a class
    the renders set and clear, not an animation; none under reduced motion."""
    add_ticker(blank, {}, "t")
    ingest = "(q) => document.getElementById('t').ingest([q])"
    classes = """() => [...document.getElementById('t').shadowRoot.querySelectorAll('.item')]
        .filter((e) => e.querySelector('.sym').textContent === 'PPL')
        .map((e) => ['flash-up', 'flash-down'].filter((c) => e.classList.contains(c)).join())"""
    blank.evaluate(ingest, quote("PPL", 125.05, 116.30, seq=1))
    assert blank.evaluate(classes) == ["", ""], "the row and its echo, no flash on a first quote"
    blank.evaluate(ingest, quote("PPL", 126.00, 116.30, seq=2))
    assert blank.evaluate(classes) == ["flash-up", "flash-up"]
    # On the tint the figures take a darker shade (5.6:1 and more, WCAG 1.4.3's 4.5:1).
    assert blank.evaluate("""() => getComputedStyle(document.getElementById('t').shadowRoot
        .querySelector('[data-symbol="PPL"] .chg')).color""") == "rgb(6, 90, 44)"
    assert blank.evaluate("""() => getComputedStyle(document.getElementById('t').shadowRoot
        .querySelector('[data-symbol="PPL"]')).animationName""") == "none"
    blank.wait_for_function(f"({classes})().every((c) => c === '')", timeout=3000)
    blank.evaluate(ingest, quote("PPL", 125.00, 116.30, seq=3))
    assert blank.evaluate(classes) == ["flash-down", "flash-down"]
    blank.emulate_media(reduced_motion="reduce")
    blank.wait_for_timeout(450)  # past the per-item flash gap
    blank.wait_for_function(f"({classes})().every((c) => c === '')", timeout=3000)
    blank.evaluate(ingest, quote("PPL", 120.00, 116.30, seq=4))
    assert blank.evaluate(classes) == ["", ""]


# --- the page -----------------------------------------------------------------------------

def test_index_page_layout_and_screenshots(page: Page, web_url: str, feed: FakeFeed) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.goto(web_url + "/")
    expect(page.locator("article h1")).to_contain_text("KSE-100")
    assert page.locator("article .byline").inner_text().startswith("By ")
    assert page.locator("article time").get_attribute("datetime")
    assert page.locator("article .story-body p").count() >= 4
    strip, panel = page.locator("#ticker-strip"), page.locator("#ticker-panel")
    # No service behind this static server: the widgets wait for their socket.
    expect(strip).to_have_attribute("data-feed", "connecting")
    page.screenshot(path=str(ARTIFACTS / "index-1280-no-feed.png"))

    # Point both widgets at the scripted feed to see the page with prices.
    page.evaluate("(u) => document.querySelectorAll('quote-ticker').forEach((t) => t.setAttribute('src', u))",
                  feed.url)
    expect(strip).to_have_attribute("data-feed", "live")
    expect(panel).to_have_attribute("data-feed", "live")
    assert len(feed.conns) == 1, "the page's two widgets share one socket"
    expect(page.locator('#ticker-panel [data-symbol="AIRLINK"]')).to_have_text(seed_lines()[0])
    # The full board overflows the strip, so it scrolls; Pause and reduced motion stop it.
    wrap_class = "() => document.getElementById('ticker-strip').shadowRoot.querySelector('.wrap').className"
    assert "moving" in page.evaluate(wrap_class).split()
    boxes = {name: page.locator(sel).bounding_box() for name, sel in
             [("strip", "#ticker-strip"), ("article", "article"), ("panel", "aside.markets")]}
    assert boxes["strip"]["y"] < boxes["article"]["y"]
    assert boxes["panel"]["x"] > boxes["article"]["x"] + boxes["article"]["width"] - 1, "panel beside"
    page.screenshot(path=str(ARTIFACTS / "index-1280.png"))
    pause = page.get_by_role("button", name="Pause")
    pause.click()
    expect(strip.get_by_role("status")).to_have_text("Live · paused")
    assert "moving" not in page.evaluate(wrap_class).split()
    pause.click()
    assert "moving" in page.evaluate(wrap_class).split()
    page.emulate_media(reduced_motion="reduce")
    page.wait_for_function(wrap_class.replace("className", "classList.contains('still')"))
    page.emulate_media(reduced_motion="no-preference")

    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(100)
    boxes = {name: page.locator(sel).bounding_box() for name, sel in
             [("article", "article"), ("panel", "aside.markets")]}
    assert boxes["panel"]["y"] >= boxes["article"]["y"] + boxes["article"]["height"] - 1, "one column"
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, "no sideways scroll"
    page.screenshot(path=str(ARTIFACTS / "index-390.png"))
    page.screenshot(path=str(ARTIFACTS / "index-390-full.png"), full_page=True)


def test_page_symbols_query_and_one_pause_for_both(page: Page, web_url: str) -> None:
    page.goto(web_url + "/?symbols=OGDC,PPL,KSE100")
    for sel in ("#ticker-strip", "#ticker-panel"):
        expect(page.locator(sel)).to_have_attribute("symbols", "OGDC,PPL,KSE100")
    assert page.evaluate("() => document.getElementById('ticker-panel').symbols") == ["OGDC", "PPL", "KSE100"]
    pause = page.get_by_role("button", name="Pause")
    expect(pause).to_have_count(1)  # the panel shows no second set of controls
    pause.click()
    expect(page.locator("#ticker-panel")).to_have_attribute("paused", "")
    pause.click()
    expect(page.locator("#ticker-panel")).not_to_have_attribute("paused", "")


# --- the connection -----------------------------------------------------------------------

def subscribed(conn: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for msg in conn["received"]:
        if msg.get("op") == "subscribe":
            out |= {msg["symbols"]} if msg["symbols"] == "*" else set(msg["symbols"])
        elif msg.get("op") == "unsubscribe":
            out = set() if msg["symbols"] == "*" else out - set(msg["symbols"])
    return out


def test_widgets_share_one_socket_and_follow_the_feed(blank: Page, feed: FakeFeed) -> None:
    add_ticker(blank, {"src": feed.url, "symbols": "OGDC,PPL"}, "a")
    add_ticker(blank, {"src": feed.url, "symbols": "KSE100,OGDC", "layout": "panel"}, "b")
    for sel in ("#a", "#b"):
        expect(blank.locator(sel)).to_have_attribute("data-feed", "live")
    assert len(feed.conns) == 1
    conn = feed.conns[0]
    assert subscribed(conn) == {"OGDC", "PPL", "KSE100"}
    assert all(isinstance(m.get("id"), int) for m in conn["received"])
    # A human rate by default (max-hz), sent with the first subscribe.
    assert conn["received"][0]["max_hz"] == 4
    seed = {quote_from_line(line)["symbol"]: line for line in seed_lines()}
    assert texts(blank, "#a") == {"OGDC": seed["OGDC"], "PPL": seed["PPL"]}
    assert texts(blank, "#b") == {"KSE100": seed["KSE100"], "OGDC": seed["OGDC"]}

    update = quote("OGDC", 140.10, 132.87, seq=2)
    feed.publish([update])
    for sel in ("#a", "#b"):
        expect(blank.locator(f'{sel} [data-symbol="OGDC"]')).to_have_text(line_of(update))
    # Frame types and fields this version does not know are ignored.
    feed.send_frame({"type": "news", "headline": "<b>x</b>"})
    feed.publish([{**quote("PPL", 126.00, 116.30, seq=2), "venue": "PSX", "state": "trading"}])
    expect(blank.locator('#a [data-symbol="PPL"]')).to_have_text("PPL 126.00 Increased By ▲ 9.70 (8.34%)")
    # Out-of-order and duplicate quotes never go backwards.
    feed.send_raw([quote("OGDC", 100.00, 132.87, seq=1), {**update, "price": 1.0}])
    blank.wait_for_timeout(150)
    expect(blank.locator('#a [data-symbol="OGDC"]')).to_have_text(line_of(update))

    # Attribute change: subscribe the new symbol; the snapshot fills it in.
    blank.evaluate("() => document.getElementById('a').setAttribute('symbols', 'OGDC,HBL')")
    expect(blank.locator('#a [data-symbol="HBL"]')).to_have_text(seed["HBL"])
    expect(blank.locator('#a [data-symbol="PPL"]')).to_have_count(0)
    wait_until(lambda: subscribed(conn) == {"OGDC", "HBL", "KSE100"}, what="PPL unsubscribed")

    # Removing elements releases their symbols; the last one closes the socket.
    blank.evaluate("() => document.getElementById('b').remove()")
    wait_until(lambda: subscribed(conn) == {"OGDC", "HBL"}, what="KSE100 unsubscribed")
    blank.evaluate("() => document.getElementById('a').remove()")
    wait_until(lambda: conn["closed"], what="the socket to close")
    assert blank.evaluate("() => W.connections().length") == 0


def test_stale_feed_and_reconnect_after_the_service_goes_away(blank: Page, feed: FakeFeed) -> None:
    add_ticker(blank, {"src": feed.url}, "a")
    host = blank.locator("#a")
    expect(host).to_have_attribute("data-feed", "live")
    assert subscribed(feed.conns[0]) == {"*"}
    status = blank.locator("#a").get_by_role("status")
    expect(status).to_have_text("Live")

    feed.status("stale")
    expect(host).to_have_attribute("data-feed", "stale")
    expect(status).to_have_text("Feed stale")
    feed.status("live")
    expect(host).to_have_attribute("data-feed", "live")

    # The service restarts (close 1001) and, like the embedded broker, its seq starts over:
    # the new snapshot is newer in time, so it is taken despite the lower seq.
    blank.evaluate("""() => { window.seen = [];
        document.getElementById('a').addEventListener('feedchange', (e) => seen.push(e.detail.feed)); }""")
    feed.board["OGDC"] = quote("OGDC", 150.00, 132.87, ts=TS + 60_000, seq=1)
    feed.close_all(1001)
    wait_until(lambda: len(feed.open_conns()) == 1, what="a new connection")
    expect(host).to_have_attribute("data-feed", "live")
    assert blank.evaluate("() => seen") == ["reconnecting", "live"]
    assert subscribed(feed.open_conns()[0]) == {"*"}
    expect(blank.locator('#a [data-symbol="OGDC"]')).to_have_text(line_of(feed.board["OGDC"]))


def test_backoff_has_full_jitter_and_a_cap(blank: Page) -> None:
    delays = blank.evaluate("""() => {
        const at = (attempt, code, r) => W.backoffDelay(attempt, code, () => r);
        return [at(0, 1006, 0.999), at(3, 1006, 0.999), at(20, 1006, 0.999), at(20, 1006, 0),
                at(0, 1008, 0.999), at(20, 1008, 0.999)];
    }""")
    assert delays[0] < 500 and 3900 < delays[1] < 4000 and 14900 < delays[2] <= 15000
    assert delays[3] == 0
    assert 4900 < delays[4] < 5000 and 59000 < delays[5] <= 60000


def test_the_js_and_python_clients_slow_down_on_the_same_closes(blank: Page) -> None:
    """1008, 1013 and 4029 mean "slow down" to both clients (a crowd behind one address
    refused by the per-address rate with 1013 must not come straight back), and every
    other close is an ordinary drop."""
    from quote_core.protocol import SLOW_DOWN_CODES

    js = blank.evaluate("() => [...W.SLOW_DOWN_CODES]")
    assert sorted(js) == sorted(SLOW_DOWN_CODES) == [1008, 1013, 4029]
    slow = blank.evaluate("""(codes) => codes.map((c) => W.backoffDelay(0, c, () => 0.999))""",
                          [1000, 1001, 1006, 1011, 1008, 1013, 4008, 4029])
    assert [d > 4900 for d in slow] == [False, False, False, False, True, True, False, True]
