"""The page in real headless Chromium against the real stack: `publisher replay` ->
redis-server -> `python -m service` -> websocket -> <quote-ticker> in the DOM.

Nothing is faked: a private redis-server (tests/redis_server.py), the service as a
subprocess (tests/service_proc.py), the publisher's `replay` command as a subprocess, and
Debian's Chromium driven by Playwright (tests/browser.py). Waits are Playwright's
auto-retrying assertions with explicit timeouts; fixed sleeps appear only where the point
is that nothing happens (the display while paused, no fetch of a hostile `<img src=x>`).

Each test that depends on the board first replays the seed file, so it starts from a
known state whatever ran before it. The restart test gets its own service process (on the
same Redis), so restarting it disturbs no other test.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import Browser, Page, expect

from quote_core.quote import Quote
from quote_core.text import format_line, parse_line
from tests.redis_server import latest_in_redis, start_redis_server
from tests.service_proc import ROOT, ServiceProcess, http_get, replay_file

SEED_FILE = ROOT / "quote_sim" / "data" / "psx_ticker.txt"
SEED = [line.strip() for line in SEED_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
SEED_BY_SYMBOL = {line.split()[0]: line for line in SEED}
DOCS = ROOT / "docs"

# The service calls the feed stale after FEED_SILENCE_S (10 s) without a quote or a publisher
# heartbeat; these tests publish only when they mean to, so the check is off here.
SERVICE_ENV = {"FEED_SILENCE_S": "0"}
STRIP = "#ticker-strip"
PANEL = "#ticker-panel"
WAIT_MS = 10_000  # any single wait for the page to catch up
RECONNECT_MS = 25_000  # backoff with full jitter after a restart: 0.5+1+2+4+8 s at worst

UP_RGB = "rgb(10, 122, 60)"  # the widget's default --qt-up
DOWN_RGB = "rgb(193, 38, 46)"  # and --qt-down
# Their darker shades while a flash's tint is behind them (--qt-up-on-flash, --qt-down-on-flash).
ON_FLASH = {"rgb(6, 90, 44)": UP_RGB, "rgb(150, 26, 32)": DOWN_RGB}


def line(symbol: str, price: float, prev_close: float, kind: str = "stock") -> str:
    """A ticker line the publisher accepts: change and percent derived as it checks them."""
    return format_line(Quote.make(symbol, price, prev_close, kind=kind))


def prev_close(symbol: str) -> float:
    """The seed's previous close of a symbol (price minus change)."""
    return parse_line(SEED_BY_SYMBOL[symbol]).prev_close


# --- the stack ----------------------------------------------------------------------------

class Stack:
    def __init__(self, redis_url: str, service: ServiceProcess, workdir: Path) -> None:
        self.redis_url = redis_url
        self.service = service
        self.workdir = workdir
        self.replays = 0

    def replay_file(self, path: Path) -> subprocess.CompletedProcess[str]:
        """`python -m publisher replay FILE` into this stack's Redis; must publish all."""
        result = replay_file(self.redis_url, path)
        assert result.returncode == 0, f"replay of {path.name} failed:\n{result.stderr}"
        return result

    def replay(self, *lines: str) -> None:
        self.replays += 1
        path = self.workdir / f"update-{self.replays}.txt"
        path.write_text("".join(f"{text}\n" for text in lines), encoding="utf-8")
        self.replay_file(path)

    def seed(self) -> None:
        result = self.replay_file(SEED_FILE)
        assert f"published {len(SEED)}, rejected 0" in result.stderr, result.stderr

    def board(self) -> dict[str, str]:
        """symbol -> the ticker line of the latest quote in Redis (the service's snapshot)."""
        raw = latest_in_redis(self.redis_url)
        return {k: format_line(Quote.from_dict(orjson.loads(v))) for k, v in raw.items()}


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with start_redis_server() as url:
        yield url


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    service = ServiceProcess({"REDIS_URL": redis_url, **SERVICE_ENV})
    service.start(ready="/readyz")
    try:
        yield Stack(redis_url, service, tmp_path_factory.mktemp("replay"))
    finally:
        service.stop()


@pytest.fixture
def seeded(stack: Stack) -> Stack:
    """The 34 seed lines published (again), before any page loads."""
    stack.seed()
    return stack


class PageLog:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.requests: list[str] = []


def open_page(browser: Browser, width: int = 1280, height: int = 900) -> tuple[Page, PageLog]:
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    log = PageLog()
    page.on("pageerror", lambda exc: log.errors.append(str(exc)))
    page.on("console", lambda m: log.warnings.append(m.text) if m.type == "warning" else None)
    page.on("request", lambda r: log.requests.append(r.url))
    return page, log


@pytest.fixture
def page_and_log(browser: Browser) -> Iterator[tuple[Page, PageLog]]:
    page, log = open_page(browser)
    try:
        yield page, log
        assert not log.errors, f"uncaught errors in the page: {log.errors}"
    finally:
        page.context.close()


@pytest.fixture
def page(page_and_log: tuple[Page, PageLog]) -> Page:
    return page_and_log[0]


def load_live(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator(STRIP)).to_have_attribute("data-feed", "live", timeout=WAIT_MS)
    expect(page.locator(PANEL)).to_have_attribute("data-feed", "live", timeout=WAIT_MS)


def item(page: Page, symbol: str, widget: str = STRIP) -> Any:
    return page.locator(f'{widget} [data-symbol="{symbol}"]')


def expect_line(page: Page, symbol: str, text: str, widget: str = STRIP) -> None:
    """The item's innerText becomes exactly `text` (the seed's form) within WAIT_MS."""
    expect(item(page, symbol, widget)).to_have_text(text, use_inner_text=True, timeout=WAIT_MS)


def symbols_shown(page: Page, widget: str) -> list[str]:
    return page.evaluate(
        """(sel) => [...document.querySelector(sel).shadowRoot.querySelectorAll('[data-symbol]')]
              .map((e) => e.dataset.symbol)""", widget)


def direction(page: Page, symbol: str, widget: str = STRIP) -> list[Any]:
    """[the item's direction class, the colour of its change (its shade when not lit)]."""
    found: list[Any] = page.evaluate(
        """([sel, sym]) => {
            const root = document.querySelector(sel).shadowRoot;
            const e = root.querySelector(`[data-symbol="${sym}"]`);
            return [['up', 'down', 'flat'].filter((c) => e.classList.contains(c)),
                    getComputedStyle(e.querySelector('.chg')).color];
        }""", [widget, symbol])
    return [found[0], ON_FLASH.get(found[1], found[1])]


# --- 1. the snapshot ----------------------------------------------------------------------

def test_page_renders_the_snapshot_of_every_seed_line(seeded: Stack, page: Page) -> None:
    assert len(SEED) == 34
    load_live(page, seeded.service.url + "/")
    # Live means the snapshot has been drawn: the board is complete at once.
    expect(page.locator(STRIP)).to_have_attribute("data-count", str(len(SEED)))
    for symbol, text in SEED_BY_SYMBOL.items():
        assert item(page, symbol).inner_text() == text, symbol
        assert item(page, symbol, PANEL).inner_text() == text, symbol
    # Indices first, then the stocks in alphabetical order; nothing else.
    indices = sorted(s for s in SEED_BY_SYMBOL if s.startswith(("KSE", "BR")))
    stocks = sorted(s for s in SEED_BY_SYMBOL if s not in indices)
    assert symbols_shown(page, STRIP) == indices + stocks
    expect(page.locator(STRIP).get_by_role("status")).to_have_text("Live")


# --- 2. updates through Redis -------------------------------------------------------------

def test_updates_published_through_redis_reach_the_dom(seeded: Stack, page: Page) -> None:
    load_live(page, seeded.service.url + "/")
    ogdc, kse = item(page, "OGDC"), item(page, "KSE100")
    assert ogdc.inner_text() == SEED_BY_SYMBOL["OGDC"]

    up = line("OGDC", 140.00, prev_close("OGDC"))
    assert up == "OGDC 140.00 Increased By ▲ 7.13 (5.37%)"
    seeded.replay(up)
    for widget in (STRIP, PANEL):
        expect_line(page, "OGDC", up, widget)
        assert direction(page, "OGDC", widget) == [["up"], UP_RGB]

    # A fall: the text, the direction class and the colour all change (arrow, sign and
    # colour together, never colour alone). An index falls in the same batch.
    down = line("OGDC", 130.00, prev_close("OGDC"))
    kse_down = line("KSE100", 70_500.00, prev_close("KSE100"), kind="index")
    assert down == "OGDC 130.00 Decreased By ▼ -2.87 (-2.16%)"
    assert kse_down == "KSE100 70,500 Decreased By -166.8 (-0.24%)"
    seeded.replay(down, kse_down)
    for widget in (STRIP, PANEL):
        expect_line(page, "OGDC", down, widget)
        expect_line(page, "KSE100", kse_down, widget)
        assert direction(page, "OGDC", widget) == [["down"], DOWN_RGB]
        assert direction(page, "KSE100", widget) == [["down"], DOWN_RGB]
    assert kse.inner_text() == kse_down
    assert page.evaluate("() => document.getElementById('ticker-strip').quote('OGDC').seq") >= 3


# --- 7. screenshots for the README ---------------------------------------------------------

def test_make_screenshot_takes_the_readme_pictures_from_the_demo(tmp_path: Path) -> None:
    """`make screenshot` (tools/screenshot.py): the demo as `make run` starts it, in
    Chromium at desktop and phone sizes; here into a folder of the test's own."""
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "screenshot.py"), "--out",
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    for name, width in (("screenshot.png", 1280), ("screenshot-phone.png", 390)):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
        assert int.from_bytes(data[16:20], "big") == width, name  # the PNG's IHDR width


# --- 4. a hostile symbol in the page's query ----------------------------------------------

def test_hostile_symbols_in_the_query_are_ignored_not_rendered(
    seeded: Stack, page_and_log: tuple[Page, PageLog]
) -> None:
    page, log = page_and_log
    load_live(page, seeded.service.url + "/?symbols=OGDC,<img src=x>")
    # The hostile text did reach page.js, which copied it onto both widgets verbatim ...
    query = page.evaluate("() => new URLSearchParams(location.search).get('symbols')")
    assert query == "OGDC,<img src=x>"
    for widget in (STRIP, PANEL):
        expect(page.locator(widget)).to_have_attribute("symbols", "OGDC,<img src=x>")
        # ... and the widget ignored the invalid symbols (web/README.md), keeping OGDC.
        assert page.evaluate(f"() => document.querySelector('{widget}').symbols") == ["OGDC"]
        assert symbols_shown(page, widget) == ["OGDC"]
        expect(page.locator(widget)).to_have_attribute("data-count", "1")
        assert item(page, "OGDC", widget).inner_text() == SEED_BY_SYMBOL["OGDC"]
    # Only OGDC was asked of the service.
    # The modules the page runs: its script's version of them (service/assets.py).
    conns = page.evaluate("async () => (await import(new URL('../widget.js', "
                          "document.querySelector('script[type=module]').src))).connections()")
    assert [c["subscribed"] for c in conns] == [["OGDC"]]
    assert any("ignoring invalid symbol" in w for w in log.warnings), log.warnings
    # Nothing became markup: no <img> in the document or in any shadow root, no fetch of x.
    imgs = page.evaluate("""() => {
        let n = 0;
        const walk = (root) => {
            n += root.querySelectorAll('img').length;
            for (const e of root.querySelectorAll('*')) if (e.shadowRoot) walk(e.shadowRoot);
        };
        walk(document);
        return n;
    }""")
    assert imgs == 0
    page.wait_for_timeout(200)  # an <img> would have fetched by now
    assert not [u for u in log.requests if u.split("?")[0].rstrip("/").endswith("/x")], log.requests


# --- 6. the symbols query -----------------------------------------------------------------

def test_symbols_query_shows_exactly_those_items(seeded: Stack, page: Page) -> None:
    load_live(page, seeded.service.url + "/?symbols=OGDC,KSE100")
    for widget in (STRIP, PANEL):
        assert symbols_shown(page, widget) == ["OGDC", "KSE100"]
        expect(page.locator(widget)).to_have_attribute("data-count", "2")
        assert item(page, "OGDC", widget).inner_text() == SEED_BY_SYMBOL["OGDC"]
        assert item(page, "KSE100", widget).inner_text() == SEED_BY_SYMBOL["KSE100"]
    # Updates to other symbols never add items.
    seeded.replay(line("PPL", 126.00, prev_close("PPL")), line("OGDC", 139.00, prev_close("OGDC")))
    expect_line(page, "OGDC", line("OGDC", 139.00, prev_close("OGDC")))
    assert symbols_shown(page, STRIP) == ["OGDC", "KSE100"]


# --- 5. Pause -----------------------------------------------------------------------------

def test_pause_holds_the_display_and_resume_shows_the_latest(seeded: Stack, page: Page) -> None:
    load_live(page, seeded.service.url + "/")
    strip, panel = page.locator(STRIP), page.locator(PANEL)
    before = SEED_BY_SYMBOL["PPL"]
    assert item(page, "PPL").inner_text() == before

    button = page.get_by_role("button", name="Pause")
    expect(button).to_have_count(1)
    button.focus()
    page.keyboard.press("Enter")
    expect(button).to_have_attribute("aria-pressed", "true")
    expect(strip).to_have_attribute("paused", "")
    expect(panel).to_have_attribute("paused", "")  # one Pause holds the page still
    expect(strip.get_by_role("status")).to_have_text("Live · paused")

    first, latest = line("PPL", 126.00, prev_close("PPL")), line("PPL", 127.50, prev_close("PPL"))
    seeded.replay(first, latest)
    published = time.monotonic()
    # The quotes did arrive (the widget tracks the latest state while paused) ...
    page.wait_for_function(
        "() => document.getElementById('ticker-strip').quote('PPL')?.price === 127.5",
        timeout=WAIT_MS)
    # ... and for a while after, the display does not move.
    page.wait_for_timeout(max(300, int((1.5 - (time.monotonic() - published)) * 1000)))
    assert item(page, "PPL").inner_text() == before
    assert item(page, "PPL", PANEL).inner_text() == before

    button.press("Space")  # Resume, still from the keyboard
    expect(button).to_have_attribute("aria-pressed", "false")
    expect(strip).not_to_have_attribute("paused", "")
    for widget in (STRIP, PANEL):
        expect_line(page, "PPL", latest, widget)
    expect(strip.get_by_role("status")).to_have_text("Live")


# --- 3. the service restarts --------------------------------------------------------------

@pytest.fixture
def own_service(stack: Stack) -> Iterator[Stack]:
    """A second service on the same Redis, for this test to restart."""
    service = ServiceProcess({"REDIS_URL": stack.redis_url, **SERVICE_ENV})
    service.start(ready="/readyz")
    try:
        yield Stack(stack.redis_url, service, stack.workdir / "own")
    finally:
        service.stop()


def wait_ready(service: ServiceProcess, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_get(service.url + "/readyz", timeout=0.5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"service not ready after restart in {timeout}s:\n{service.log()}")


def test_page_recovers_after_the_service_restarts(own_service: Stack, page: Page) -> None:
    own_service.workdir.mkdir(exist_ok=True)
    own_service.seed()
    port = own_service.service.port
    load_live(page, own_service.service.url + "/")
    page.evaluate("""() => { window.feeds = [];
        document.getElementById('ticker-strip')
          .addEventListener('feedchange', (e) => feeds.push(e.detail.feed)); }""")

    own_service.service.restart()  # SIGTERM (close 1001), then the same port again
    assert own_service.service.port == port
    wait_ready(own_service.service)  # subscribed to Redis again, so nothing published is missed
    strip = page.locator(STRIP)
    expect(strip).to_have_attribute("data-feed", "live", timeout=RECONNECT_MS)
    feeds = page.evaluate("() => feeds")
    # It left "live" when the socket closed, and came back once the new one had its snapshot.
    assert "reconnecting" in feeds and feeds[-1] == "live", feeds
    # The board survived: the new socket's snapshot is the same board.
    assert item(page, "HBL").inner_text() == SEED_BY_SYMBOL["HBL"]
    expect(strip).to_have_attribute("data-count", str(len(SEED)))

    update = line("HBL", 113.05, prev_close("HBL"))
    own_service.replay(update)
    expect_line(page, "HBL", update)
    assert direction(page, "HBL") == [["up"], UP_RGB]


# --- 8. websockets blocked: the SSE fallback ---------------------------------------------

# A network that refuses the upgrade, as some proxies and filters do: every websocket
# fails before it opens. The service and its /sse are real; only the browser's socket is not.
BLOCK_WEBSOCKETS = """
window.WebSocket = class BlockedWebSocket {
  constructor(url) {
    this.url = url; this.readyState = 0;
    setTimeout(() => { this.readyState = 3; this.onerror?.({}); this.onclose?.({ code: 1006 }); }, 20);
  }
  send() { throw new Error('not open'); }
  close() {}
};
"""


def test_the_widget_falls_back_to_sse_when_websockets_fail(
        seeded: Stack, page_and_log: tuple[Page, PageLog]) -> None:
    page, log = page_and_log
    page.add_init_script(BLOCK_WEBSOCKETS)
    # Three failed attempts with back-off (0.5, 1, 2 s at most), then the event stream.
    page.goto(seeded.service.url + "/")
    strip = page.locator(STRIP)
    expect(strip).to_have_attribute("data-feed", "live", timeout=RECONNECT_MS)
    expect(strip).to_have_attribute("data-count", str(len(SEED)))
    transports = page.evaluate(
        "async () => (await import(new URL('../js/stream.js', "
        "document.querySelector('script[type=module]').src))).connections().map((c) => c.transport)")
    assert transports and set(transports) == {"sse"}, transports
    assert any("/sse?symbols=" in url for url in log.requests), log.requests
    update = line("PPL", 127.50, prev_close("PPL"))
    seeded.replay(update)
    expect_line(page, "PPL", update)
    expect_line(page, "PPL", update, PANEL)
