"""<quote-ticker> with tokens and in the delayed tier, in Debian's Chromium (tests/browser.py)
against the real service as a subprocess: a `token` attribute opens a service that denies
anonymous clients; before the token expires the element asks the page for a fresh one with
a `tokenrequest` event, and the answer keeps it live past the service's grace on the same
socket; a delayed connection says "Delayed N s" (or min) next to its status.

The embedding page is another origin (a blank page on another port), as a site that embeds
the widget; tokens are signed here, in Python, and handed to the page through a binding.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import checked_page
from tests.service_proc import ServiceProcess, run_service
from tests.test_auth import SECRET, token
from tests.test_js_client import embedder  # noqa: F401  (a fixture: another origin's blank page)

WAIT_MS = 10_000
ENV = {"TOKEN_SECRET": SECRET, "TOKEN_GRACE_S": "2", "SIM_RATE": "200"}


@pytest.fixture(scope="module")
def closed_service() -> Iterator[ServiceProcess]:
    """ANONYMOUS=deny: nothing without a token."""
    yield from run_service({**ENV, "ANONYMOUS": "deny"}, ready="/readyz")


@pytest.fixture(scope="module")
def delayed_service() -> Iterator[ServiceProcess]:
    """Anonymous clients in the delayed tier, 2 s behind."""
    yield from run_service({**ENV, "ANONYMOUS": "delayed", "DELAY_S": "2"}, ready="/readyz")


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with checked_page(browser, 1100, 700, WAIT_MS) as page:
        yield page


def soon(seconds: float, sub: str) -> str:
    return token({"exp": int(time.time() + seconds), "sub": sub})


def embed(page: Page, service: ServiceProcess, origin: str, attrs: dict[str, str],
          before: str | None = None, arg: Any = None) -> list[str]:
    """The one-tag embed on a page of another origin, after the page's own script `before`
    (called with `arg`); returns the websocket URLs it opens."""
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.goto(origin + "/")
    if before is not None:
        page.evaluate(before, arg)
    page.evaluate("""([src, attrs]) => {
        window.log = {requests: [], feeds: []};
        document.addEventListener('feedchange', (ev) => log.feeds.push(ev.detail.feed));
        const s = document.createElement('script');
        s.type = 'module';
        s.src = src;
        document.head.append(s);
        const t = document.createElement('quote-ticker');
        for (const [k, v] of Object.entries(attrs)) t.setAttribute(k, v);
        document.body.append(t);
    }""", [service.url + "/widget.js", attrs])
    return sockets


def status(page: Page) -> Any:
    return page.locator("quote-ticker").get_by_role("status")


def test_a_token_attribute_opens_a_closed_service(closed_service: ServiceProcess, page: Page,
                                                   embedder: str) -> None:  # noqa: F811
    signed = soon(600, "page-reader")
    sockets = embed(page, closed_service, embedder, {"symbols": "OGDC,KSE100", "token": signed})
    ticker = page.locator("quote-ticker")
    expect(ticker).to_have_attribute("data-feed", "live", timeout=WAIT_MS)
    expect(ticker).to_have_attribute("data-count", "2")
    expect(status(page)).to_have_text("Live")
    assert sockets and all("token" not in url for url in sockets), "the token is a message, not the URL"
    auth = ticker.evaluate("(t) => t.stream.auth")
    assert (auth["tier"], auth["sub"], auth["entitled"]) == ("realtime", "page-reader", "*")
    assert ticker.evaluate("(t) => t.token") == signed
    # Without a token the same service keeps a ticker out (and the page hears why).
    page.evaluate("""() => {
        const t = document.createElement('quote-ticker');
        t.id = 'anonymous';
        t.setAttribute('symbols', 'OGDC');
        document.body.append(t);
    }""")
    page.wait_for_timeout(1500)
    assert page.locator("#anonymous").get_attribute("data-feed") in ("connecting", "reconnecting")
    assert page.locator("#anonymous").get_attribute("data-count") in (None, "0")


@pytest.mark.parametrize("answer", ["respond", "property"])
def test_tokenrequest_comes_before_expiry_and_a_fresh_token_keeps_it_live(
        closed_service: ServiceProcess, page: Page, embedder: str, answer: str) -> None:  # noqa: F811
    """Tokens of about 4 s, TOKEN_GRACE_S=2: each is replaced before it expires, through
    `detail.respond(token)` or `element.token = ...`; the socket stays the same one and the
    prices keep moving for well past several lifetimes and graces."""
    calls: list[float] = []

    def fresh() -> str:
        calls.append(time.time())
        return soon(4, f"fresh-{len(calls)}")

    page.expose_function("freshToken", fresh)
    listen = """(answer) => {
        window.requests = [];
        document.addEventListener('tokenrequest', async (ev) => {
            requests.push({reason: ev.detail.reason, expires: ev.detail.expires, at: Date.now(),
                           composed: ev.composed, bubbles: ev.bubbles});
            const t = await window.freshToken();
            if (answer === 'respond') ev.detail.respond(t);
            else ev.target.token = t;
        });
    }"""
    sockets = embed(page, closed_service, embedder, {"symbols": "OGDC,PPL", "token": soon(4, "first")},
                    listen, answer)
    ticker = page.locator("quote-ticker")
    expect(ticker).to_have_attribute("data-feed", "live", timeout=WAIT_MS)
    seqs = []
    started = time.monotonic()
    while time.monotonic() - started < 12:
        page.wait_for_timeout(1000)
        seqs.append(ticker.evaluate("(t) => t.quote('OGDC')?.seq"))
        assert ticker.get_attribute("data-feed") == "live", f"not live at {time.monotonic() - started:.1f}s"
    requests = page.evaluate("() => requests")
    assert len(requests) >= 3, requests
    for request in requests:
        assert request["reason"] == "expiring" and request["bubbles"] and request["composed"]
        assert request["at"] < request["expires"], "asked before the token expired"
    assert page.evaluate("() => log.feeds") == ["connecting", "live"], "never dropped"
    assert len(sockets) == 1, "the same socket all along"
    # OGDC gets about 6 quotes a second here, so one second without one happens (e^-6 per
    # sample, about 3% of runs over 12): the prices kept moving if no 2 s went by without.
    assert all(b > a for a, b in zip(seqs, seqs[2:], strict=False)), f"prices kept moving: {seqs}"
    assert ticker.evaluate("(t) => t.stream.auth.sub") in (f"fresh-{len(calls)}", f"fresh-{len(calls) - 1}")


def test_an_expired_token_is_asked_for_on_token_expired(
        closed_service: ServiceProcess, page: Page, embedder: str) -> None:  # noqa: F811
    """A page that answers only once the token has expired (reason 'expired', asked when
    the service says token_expired): the answer comes within the grace, the socket stays."""
    page.expose_function("freshToken", lambda: soon(600, "late"))
    listen = """() => {
        window.requests = [];
        document.addEventListener('tokenrequest', async (ev) => {
            requests.push(ev.detail.reason);
            if (ev.detail.reason === 'expired') ev.detail.respond(await window.freshToken());
        });
    }"""
    sockets = embed(page, closed_service, embedder, {"symbols": "OGDC", "token": soon(3, "short")},
                    listen)
    ticker = page.locator("quote-ticker")
    expect(ticker).to_have_attribute("data-feed", "live", timeout=WAIT_MS)
    page.wait_for_function("() => requests.includes('expired')", timeout=WAIT_MS)
    page.wait_for_function("() => document.querySelector('quote-ticker').stream.auth.sub === 'late'",
                           timeout=WAIT_MS)
    page.wait_for_timeout(3500)  # past the grace
    assert ticker.get_attribute("data-feed") == "live" and len(sockets) == 1
    assert page.evaluate("() => log.feeds") == ["connecting", "live"]


def test_the_delayed_tier_is_labelled_next_to_the_status(
        delayed_service: ServiceProcess, page: Page, embedder: str) -> None:  # noqa: F811
    embed(page, delayed_service, embedder, {"symbols": "OGDC,KSE100"})
    ticker = page.locator("quote-ticker")
    expect(ticker).to_have_attribute("data-feed", "live", timeout=WAIT_MS)
    expect(status(page)).to_have_text("Live · Delayed 2 s")
    expect(ticker).to_have_attribute("data-delayed", "2")
    assert ticker.evaluate("(t) => [t.stream.tier, t.stream.delayS, t.delayS]") == ["delayed", 2, 2]
    expect(ticker).to_have_attribute("data-count", "2")  # the delayed board fills 2 s late
    assert ticker.evaluate("(t) => t.quote('OGDC').delayed") is True
    assert ticker.evaluate("(t) => Date.now() - t.quote('OGDC').ts") >= 1900, "2 s behind"
    page.locator("quote-ticker").evaluate("(t) => { t.paused = true; }")
    expect(status(page)).to_have_text("Live · Delayed 2 s · paused")
    # The minutes form, for the shipped 15 minutes, from the module itself.
    texts = page.evaluate("""async (src) => {
        const m = await import(src);
        return [900, 1800, 90, 30, 59.6, 0].map(m.delayText);
    }""", delayed_service.url + "/widget/quote-ticker.js")
    assert texts == ["Delayed 15 min", "Delayed 30 min", "Delayed 2 min", "Delayed 30 s",
                     "Delayed 60 s", "Delayed"]


def test_a_realtime_ticker_has_no_delay_label(closed_service: ServiceProcess, page: Page,
                                              embedder: str) -> None:  # noqa: F811
    embed(page, closed_service, embedder, {"symbols": "OGDC", "token": soon(600, "rt")})
    ticker = page.locator("quote-ticker")
    expect(ticker).to_have_attribute("data-feed", "live", timeout=WAIT_MS)
    expect(status(page)).to_have_text("Live")
    assert ticker.get_attribute("data-delayed") is None
    # Quotes handed in that say they are delayed are labelled too (the amount unknown here).
    ticker.evaluate("""(t) => t.ingest({...t.quote('OGDC'), seq: t.quote('OGDC').seq + 1000,
                                         delayed: true})""")
    expect(status(page)).to_have_text("Live · Delayed")
