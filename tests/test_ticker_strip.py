"""The strip as a reader meets it, in real headless Chromium against the demo (`python -m
service` without Redis: the simulated market, about 20 quotes a second), at desktop and
phone sizes: it scrolls one way at --qt-speed, pauses on hover, keyboard focus, Pause and
reduced motion, hides nothing when it fits, shifts nothing as prices change, and keeps the reader's main
thread nearly idle (CDP Performance metrics: the page's main-thread task time over wall time).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, CDPSession, Page, expect

from tests.browser import checked_page, chromium
from tests.service_proc import ServiceProcess, run_service

STRIP = "#ticker-strip"
WAIT_MS = 10_000
# The widget's default speed (--qt-speed, px/s) and the tolerance the issue sets.
SPEED = 40.0
SPEED_TOLERANCE = 0.15
# The reader's main thread, busy share over the measured window: about 3-4% measured here;
# the test fails only well above that, where the page would again work every frame.
BUSY_LIMIT = 0.10

# The belt's offset into its loop (px), from where it is on screen: the rows and their
# echo repeat every `period` px, so an offset taken modulo the period is the position.
POSITION = """() => {
    const t = document.querySelector('#ticker-strip');
    const root = t.shadowRoot;
    const belt = root.querySelector('.belt').getBoundingClientRect().left;
    const view = root.querySelector('.viewport').getBoundingClientRect().left;
    return {offset: view - belt, at: performance.now(), period: t.scroll ? t.scroll.period : null,
            state: root.querySelector('.wrap').className};
}"""
FIRST_VISIBLE = """() => {
    const root = document.querySelector('#ticker-strip').shadowRoot;
    const left = root.querySelector('.viewport').getBoundingClientRect().left;
    const items = [...root.querySelectorAll('.belt .item')];
    const first = items.find((e) => e.getBoundingClientRect().right > left + 1);
    return first ? first.querySelector('.sym').textContent : null;
}"""


@pytest.fixture(scope="module")
def demo() -> Iterator[ServiceProcess]:
    yield from run_service({}, ready="/readyz")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(params=[(1366, 900), (390, 844)], ids=["desktop", "phone"])
def page(request: pytest.FixtureRequest, browser: Browser) -> Iterator[Page]:
    """A page of its own at desktop and at phone size."""
    width, height = request.param
    with checked_page(browser, width, height, WAIT_MS) as page:
        yield page


def size(page: Page) -> tuple[int, int]:
    viewport = page.viewport_size
    assert viewport is not None
    return viewport["width"], viewport["height"]


def open_live(page: Page, url: str, count: int = 34) -> None:
    """Load the page until the strip is live with `count` quotes; on a timeout, say what
    the page logged and which requests failed."""
    log: list[str] = []
    page.on("console", lambda m: log.append(f"console {m.type}: {m.text}"))
    page.on("requestfailed", lambda r: log.append(f"failed {r.url}: {r.failure}"))
    page.on("response", lambda r: log.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(url)
    try:
        expect(page.locator(STRIP)).to_have_attribute("data-feed", "live", timeout=WAIT_MS)
        expect(page.locator(STRIP)).to_have_attribute("data-count", str(count), timeout=WAIT_MS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\npage log: {log}") from None


def wait_state(page: Page, word: str, present: bool = True) -> None:
    """Until the strip's wrap has (or lacks) the class `word`."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while (word in page.evaluate(POSITION)["state"].split()) != present:
        assert time.monotonic() < deadline, f"the strip never became {'' if present else 'not '}{word}"
        page.wait_for_timeout(50)


def travel(page: Page, seconds: float, every_ms: int = 250) -> list[float]:
    """The distance the belt moved between samples over `seconds` (px, unwrapped)."""
    samples = [page.evaluate(POSITION)]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        page.wait_for_timeout(every_ms)
        samples.append(page.evaluate(POSITION))
    steps = []
    for a, b in itertools.pairwise(samples):
        period = b["period"] or a["period"]
        step = b["offset"] - a["offset"]
        if period and step < -period / 2:  # wrapped round to the loop's start
            step += period
        steps.append(step)
    return steps


def holds_still(page: Page) -> bool:
    return all(abs(step) < 0.5 for step in travel(page, 1.0))


def goes_on(page: Page) -> bool:
    return sum(travel(page, 1.0)) > SPEED * 0.5


def speed_of(page: Page, seconds: float) -> tuple[float, list[float]]:
    start = page.evaluate(POSITION)
    steps = travel(page, seconds)
    end = page.evaluate(POSITION)
    return sum(steps) / ((end["at"] - start["at"]) / 1000), steps


def test_the_strip_scrolls_one_way_at_its_speed_from_the_first_second(
        page: Page, demo: ServiceProcess) -> None:
    width, _ = size(page)
    open_live(page, demo.url + "/")
    wait_state(page, "moving")
    first = page.evaluate(FIRST_VISIBLE)
    speed, steps = speed_of(page, 5.0)
    assert all(step > 0 for step in steps), f"not one way: {steps}"
    assert abs(speed - SPEED) <= SPEED * SPEED_TOLERANCE, f"{speed:.1f} px/s, want {SPEED}"
    if width < 600:
        # The reader sees the next quote come in within seconds, not half a minute.
        deadline = time.monotonic() + 10
        while page.evaluate(FIRST_VISIBLE) == first:
            assert time.monotonic() < deadline, f"{first} still first after 10 s"
            page.wait_for_timeout(200)
    # The echo repeats the rows, word for word, as prices change in place.
    texts = page.evaluate("""() => {
        const root = document.querySelector('#ticker-strip').shadowRoot;
        const text = (sel) => [...root.querySelectorAll(sel)].map((e) => e.innerText);
        return [text('.track:not(.echo) .item'), text('.echo .item'),
                root.querySelector('.echo').getAttribute('aria-hidden'),
                root.querySelectorAll('.echo [data-symbol]').length];
    }""")
    assert texts[0] == texts[1] and len(texts[0]) == 34
    assert texts[2:] == ["true", 0]


def test_hover_focus_pause_and_reduced_motion_hold_it_still(
        page: Page, demo: ServiceProcess) -> None:
    width, height = size(page)
    open_live(page, demo.url + "/")
    wait_state(page, "moving")
    strip = page.locator(STRIP)
    viewport = strip.locator(".viewport")

    page.mouse.move(width - 20, 15)  # over the quotes
    page.wait_for_timeout(100)
    assert holds_still(page), "hover did not hold it"
    page.mouse.move(width - 20, height - 20)  # away, over the article
    assert goes_on(page), "it did not go on after the hover"

    # Keyboard focus on the quotes region holds it; leaving it lets it go.
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement?.id === 'ticker-strip' && "
                         "document.activeElement.shadowRoot.activeElement?.classList.contains('viewport')"):
            break
    else:
        pytest.fail("Tab never reached the strip's quotes")
    page.wait_for_timeout(100)  # the compositor's frame in flight when it was told
    steps = travel(page, 1.0)
    assert all(abs(s) < 0.5 for s in steps), (
        f"keyboard focus did not hold it: {steps}, "
        + str(strip.evaluate("(t) => [t.held, t.scroll && t.scroll.playState, "
                             "t.shadowRoot.activeElement && t.shadowRoot.activeElement.className]")))
    page.keyboard.press("Tab")
    assert goes_on(page), "it did not go on after the focus left"

    # Pause: still, and the reader can scroll the row from where it stopped.
    strip.get_by_role("button", name="Pause").click()
    wait_state(page, "still")
    page.mouse.move(width - 20, height - 20)
    assert holds_still(page)
    assert viewport.evaluate("(v) => v.scrollWidth > v.clientWidth") is True
    strip.get_by_role("button", name="Pause").click()
    wait_state(page, "moving")
    assert goes_on(page)

    page.emulate_media(reduced_motion="reduce")
    wait_state(page, "still")
    assert holds_still(page)
    assert viewport.evaluate("(v) => getComputedStyle(v).overflowX") == "auto"
    page.emulate_media(reduced_motion="no-preference")
    wait_state(page, "moving")

    strip.evaluate("(t) => t.setAttribute('motion', 'off')")
    wait_state(page, "still")
    assert holds_still(page)


def test_a_strip_that_fits_stands_still_and_hides_nothing(
        browser: Browser, demo: ServiceProcess) -> None:
    with checked_page(browser, 1366, 900, WAIT_MS) as page:
        open_live(page, demo.url + "/?symbols=OGDC,PPL,KSE100", count=3)
        page.wait_for_timeout(300)  # the ResizeObserver's first report
        assert "still" in page.evaluate(POSITION)["state"].split()
        assert all(abs(s) < 0.5 for s in travel(page, 1.5)), "a strip that fits moved"
        boxes = page.evaluate("""() => {
            const root = document.querySelector('#ticker-strip').shadowRoot;
            const view = root.querySelector('.viewport').getBoundingClientRect();
            return [...root.querySelectorAll('.track:not(.echo) .item')].map((e) => {
                const r = e.getBoundingClientRect();
                return [e.dataset.symbol, r.left >= view.left, r.right <= view.right];
            });
        }""")
        assert boxes == [["OGDC", True, True], ["PPL", True, True], ["KSE100", True, True]]


def metrics(cdp: CDPSession) -> dict[str, float]:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def test_the_reader_s_main_thread_stays_nearly_idle_and_nothing_shifts(
        page: Page, demo: ServiceProcess) -> None:
    """The demo's updates at the widget's max_hz 4, the strip scrolling and flashing, the
    panel's sparklines growing: the main thread's task time over 6 s of wall time."""
    width, _ = size(page)
    page.add_init_script("""
        window.shifts = [];
        new PerformanceObserver((list) => {
            for (const e of list.getEntries()) if (!e.hadRecentInput) window.shifts.push(e.value);
        }).observe({type: 'layout-shift', buffered: true});""")
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable", {"timeDomain": "threadTicks"})
    open_live(page, demo.url + "/")
    wait_state(page, "moving")
    page.wait_for_timeout(1000)
    page.evaluate("() => { window.shifts = []; }")
    before, t0 = metrics(cdp), time.monotonic()
    page.wait_for_timeout(6000)
    after, t1 = metrics(cdp), time.monotonic()
    busy = (after["TaskDuration"] - before["TaskDuration"]) / (t1 - t0)
    frames_moved = page.evaluate("() => document.querySelector('#ticker-strip').scroll.playState")
    assert frames_moved == "running"
    assert busy <= BUSY_LIMIT, f"the main thread was {busy:.1%} busy"
    # A number that needs more room than it ever had (a percentage gaining a digit) still
    # moves what follows it, once; then its room stays. Without that, every shorter and
    # longer figure moves the rest of the strip: several shifts a second.
    shifts: list[Any] = page.evaluate("() => window.shifts")
    assert len(shifts) <= 3 and sum(shifts) < 0.001, f"layout shifts: {shifts}"
    print(f"{width}px: main thread {busy:.1%} busy, "
          f"{(after['RecalcStyleCount'] - before['RecalcStyleCount']) / (t1 - t0):.1f} style "
          f"recalculations/s, {(after['LayoutCount'] - before['LayoutCount']) / (t1 - t0):.1f} layouts/s")
