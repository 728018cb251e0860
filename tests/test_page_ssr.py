"""GET / rendered on the server, in real headless Chromium: the board in the tickers with
JavaScript disabled; with it, the widget taking over those same items without a flash; and
the panel's sparklines drawn from /history on page load, then extended live.

The stack is real: a private redis-server, `python -m service`, the publisher's `replay`
(the seed, for a known board) and `simulate` as subprocesses; the embedded demo too.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import Browser, Page, expect

from quote_core.quote import Quote
from quote_core.text import format_line
from service import page as page_module
from tests.browser import checked_page
from tests.redis_server import latest_in_redis, start_redis_server
from tests.service_proc import (
    ROOT,
    PublisherProcess,
    ServiceProcess,
    http_get,
    replay_file,
    run_service,
)
from tests.test_rest import get, get_json, wait_for

SEED_FILE = ROOT / "quote_sim" / "data" / "psx_ticker.txt"
SEED = [line.strip() for line in SEED_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
SEED_BY_SYMBOL = {line.split()[0]: line for line in SEED}
INDICES = sorted(s for s in SEED_BY_SYMBOL if s.startswith(("KSE", "BR")))
STOCKS = sorted(s for s in SEED_BY_SYMBOL if s not in INDICES)
STRIP, PANEL = "#ticker-strip", "#ticker-panel"
WAIT_MS = 10_000


def items(page: Page, widget: str) -> list[list[str]]:
    """[symbol, innerText] of each item of a ticker, in order (through its shadow root)."""
    return page.evaluate(
        """(sel) => [...document.querySelector(sel).shadowRoot.querySelectorAll('.item[data-symbol]')]
              .map((e) => [e.dataset.symbol, e.innerText])""", widget)


def lines_of(board: dict[str, Any]) -> dict[str, str]:
    return {s: format_line(Quote.from_dict(q)) for s, q in board.items()}


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with start_redis_server() as url:
        yield url


@pytest.fixture(scope="module")
def service(redis_url: str) -> Iterator[ServiceProcess]:
    yield from run_service({"REDIS_URL": redis_url, "FEED_SILENCE_S": "0"}, ready="/readyz")


@pytest.fixture
def seeded(redis_url: str, service: ServiceProcess) -> ServiceProcess:
    """The 34 seed lines are the board (published again), and the service has them."""
    result = replay_file(redis_url, SEED_FILE)
    assert result.returncode == 0, result.stderr

    def has_seed() -> bool:
        board = {q["symbol"]: q for q in get_json(service.url + "/quotes")["quotes"]}
        return lines_of(board) == SEED_BY_SYMBOL

    wait_for("the seed on the service's board", has_seed)
    return service


def test_the_page_shows_the_board_with_javascript_disabled(browser: Browser,
                                                           seeded: ServiceProcess) -> None:
    status, headers, body = get(seeded.url + "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "public, max-age=1"
    assert "OGDC 137.75" not in body.decode()  # the line is in the widget's parts, not a blob
    newest = max(q["ts"] for q in get_json(seeded.url + "/quotes")["quotes"])
    taken = datetime.fromtimestamp(newest / 1000, tz=UTC)
    for width, height in [(1280, 900), (390, 844)]:
        with checked_page(browser, width, height, WAIT_MS, javascript=False) as page:
            requests: list[str] = []
            page.on("request", lambda r, requests=requests: requests.append(r.url))
            page.goto(seeded.url + "/")
            expected = [[s, SEED_BY_SYMBOL[s]] for s in INDICES + STOCKS]
            assert items(page, STRIP) == expected
            assert items(page, PANEL) == expected
            # Playwright's own locators read them too, as a crawler's renderer does.
            expect(page.locator(f'{STRIP} [data-symbol="HBL"]')).to_have_text(
                SEED_BY_SYMBOL["HBL"], use_inner_text=True)
            # Nothing ran (the modules are preloaded, never run): no socket, no /history.
            assert not any(u.endswith("/ws") or "/history" in u for u in requests), requests
            assert page.evaluate("() => customElements.get('quote-ticker') === undefined") is True
            # The status says when the prices were taken (a narrow strip: the time only);
            # no Pause, which would need a script.
            status_text = page.locator(STRIP).get_by_role("status")
            assert " ".join(status_text.inner_text().split()) == f"Prices at {taken:%H:%M} UTC"
            words = page.locator(f"{STRIP} .asof-words").bounding_box()
            assert words is not None and (words["width"] > 20) == (width > 600), words
            assert page.locator(f"{STRIP} time").get_attribute("datetime") == (
                taken.isoformat(timespec="seconds").replace("+00:00", "Z"))
            assert page.locator(STRIP).get_by_role("button", name="Pause").count() == 0
            # The row starts at the strip's left edge, right after the status: no gap, the
            # first item whole; the rest are there to scroll to.
            box = page.evaluate("""(sel) => {
                const root = document.querySelector(sel).shadowRoot;
                const r = (q) => root.querySelector(q).getBoundingClientRect();
                const view = root.querySelector('.viewport');
                return {controls: r('.controls').right, viewport: r('.viewport').left,
                        first: r('.row').left, sym: r('.sym').left,
                        scroll: view.scrollWidth, width: view.clientWidth};
            }""", STRIP)
            assert box["viewport"] - box["controls"] < 2, box
            assert 0 <= box["first"] - box["viewport"] < 20, box
            assert box["sym"] >= box["viewport"], box
            assert box["scroll"] > box["width"], box
            page.screenshot(path=str(ROOT / "tests" / "artifacts" / f"page-no-javascript-{width}.png"))


def test_symbols_query_is_rendered_as_the_widget_reads_it(browser: Browser,
                                                          seeded: ServiceProcess) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    query = f"?symbols=ppl,{hostile},KSE100,PPL,%22%3E%3Cb%3E"
    status, body = http_get(seeded.url + "/" + query.replace("<", "%3C").replace(">", "%3E")
                            .replace(" ", "%20").replace("=x", "%3Dx"))
    assert status == 200 and b"<img" not in body and b"<b>" not in body
    with checked_page(browser, 1280, 900, WAIT_MS, javascript=False) as page:
        page.goto(seeded.url + "/" + query)
        # Invalid symbols are left out, the rest in the query's order, once each.
        assert items(page, STRIP) == [["PPL", SEED_BY_SYMBOL["PPL"]],
                                      ["KSE100", SEED_BY_SYMBOL["KSE100"]]]
        assert page.locator("img").count() == 0


def test_the_widget_takes_over_the_rendered_items_without_a_flash(
        browser: Browser, seeded: ServiceProcess) -> None:
    with checked_page(browser, 1280, 900, WAIT_MS) as page:
        # Before any script of the page runs (the document is parsed, modules not yet
        # run): keep each rendered item and watch for rows taken out of the list.
        page.add_init_script("""
            document.addEventListener('readystatechange', () => {
              if (document.readyState !== 'interactive') return;
              window.rendered = {};
              window.removed = 0;
              for (const t of document.querySelectorAll('quote-ticker')) {
                const root = t.shadowRoot;
                window.rendered[t.id] = root ? [...root.querySelectorAll('.item[data-symbol]')] : [];
                if (root) new MutationObserver((records) => {
                  for (const r of records) window.removed += r.removedNodes.length;
                }).observe(root.querySelector('.track'), { childList: true });
              }
            });""")
        page.goto(seeded.url + "/")
        expect(page.locator(STRIP)).to_have_attribute("data-feed", "live")
        expect(page.locator(PANEL)).to_have_attribute("data-feed", "live")
        same = page.evaluate("""() => Object.fromEntries(Object.entries(window.rendered).map(
            ([id, nodes]) => {
              const now = [...document.getElementById(id).shadowRoot.querySelectorAll('.item[data-symbol]')];
              return [id, [nodes.length, now.length, nodes.every((n, i) => n === now[i])]];
            }))""")
        assert same == {"ticker-strip": [34, 34, True], "ticker-panel": [34, 34, True]}
        assert page.evaluate("() => window.removed") == 0
        expected = [[s, SEED_BY_SYMBOL[s]] for s in INDICES + STOCKS]
        assert items(page, STRIP) == expected
        expect(page.locator(STRIP).get_by_role("status")).to_have_text("Live")
        # The stylesheet the server wrote is the widget's own (web/widget/styles.js).
        css = page.evaluate("async () => (await import('/widget/styles.js')).CSS")
        assert css == page_module.widget_css((ROOT / "web" / "widget" / "styles.js").read_text())
        # The Pause button the server rendered works once taken over.
        page.locator(STRIP).get_by_role("button", name="Pause").click()
        expect(page.locator(STRIP)).to_have_attribute("paused", "")
        expect(page.locator(PANEL)).to_have_attribute("paused", "")


def spark_points(page: Page) -> dict[str, int]:
    """symbol -> the number of points of its panel sparkline."""
    return page.evaluate("""() => Object.fromEntries([...document.querySelector('#ticker-panel')
        .shadowRoot.querySelectorAll('.row')].map((r) => [r.querySelector('.item').dataset.symbol,
          (r.querySelector('polyline').getAttribute('points') || '').split(' ').filter(Boolean).length]))""")


def test_sparklines_are_drawn_from_history_then_extended(
        browser: Browser, redis_url: str, service: ServiceProcess, tmp_path: Path) -> None:
    publisher = PublisherProcess(redis_url, rate=2000)
    try:
        publisher.start()
        wait_for("the simulated market's quotes on the board",
                 lambda: sum(q["seq"] for q in get_json(service.url + "/quotes")["quotes"]) > 34 * 80)
    finally:
        assert publisher.stop() == 0
    days = get_json(service.url + "/history?points=160")["history"]
    assert min(len(p) for p in days.values()) > 10
    with checked_page(browser, 1280, 900, WAIT_MS) as page:
        page.goto(service.url + "/")
        expect(page.locator(PANEL)).to_have_attribute("data-feed", "live")
        want = {s: len(p) for s, p in days.items()}
        page.wait_for_function("""(want) => {
            const rows = document.querySelector('#ticker-panel').shadowRoot.querySelectorAll('.row');
            return rows.length === Object.keys(want).length && [...rows].every((r) =>
              (r.querySelector('polyline').getAttribute('points') || '').split(' ')
                .filter(Boolean).length === want[r.querySelector('.item').dataset.symbol]);
        }""", arg=want, timeout=WAIT_MS)
        assert spark_points(page) == want
        # Time runs along x: the day's first point at 0, the last at 100.
        xs = page.evaluate("""() => document.querySelector('#ticker-panel').shadowRoot
            .querySelector('[data-symbol="OGDC"]').parentElement.querySelector('polyline')
            .getAttribute('points').split(' ').map((p) => Number(p.split(',')[0]))""")
        assert xs[0] == 0 and xs[-1] == 100 and xs == sorted(xs)
        # A new quote extends its sparkline by one point.
        line = format_line(Quote.make("OGDC", 140.01, 137.75))
        path = tmp_path / "one.txt"
        path.write_text(line + "\n", encoding="utf-8")
        assert replay_file(redis_url, path).returncode == 0
        expect(page.locator(f'{PANEL} [data-symbol="OGDC"]')).to_have_text(
            line, use_inner_text=True)
        page.wait_for_function("""(n) => document.querySelector('#ticker-panel').shadowRoot
            .querySelector('[data-symbol="OGDC"]').parentElement.querySelector('polyline')
            .getAttribute('points').split(' ').length === n""", arg=want["OGDC"] + 1,
                               timeout=WAIT_MS)


def test_the_embedded_demo_renders_its_board_too(browser: Browser) -> None:
    """The market moves on meanwhile, so each item is the line of its symbol's quote in
    /quotes just before or just after the page was rendered."""
    for service in run_service({"SIM_RATE": "2"}, ready="/readyz"):
        before = lines_of({q["symbol"]: q for q in get_json(service.url + "/quotes")["quotes"]})
        with checked_page(browser, 1280, 900, WAIT_MS, javascript=False) as page:
            page.goto(service.url + "/")
            shown = items(page, STRIP)
        after = lines_of({q["symbol"]: q for q in get_json(service.url + "/quotes")["quotes"]})
        assert [s for s, _ in shown] == INDICES + STOCKS
        for symbol, text in shown:
            assert text in (before[symbol], after[symbol]), symbol


def test_redis_board_equals_the_rendered_page(browser: Browser, redis_url: str,
                                              service: ServiceProcess) -> None:
    """Whatever the board holds (after the simulation above, or the seed), the page reads
    as the latest quotes in Redis."""
    board = {k: orjson.loads(v) for k, v in latest_in_redis(redis_url).items()}
    with checked_page(browser, 1280, 900, WAIT_MS, javascript=False) as page:
        page.goto(service.url + "/")
        assert dict(map(tuple, items(page, STRIP))) == lines_of(board)  # type: ignore[arg-type]
