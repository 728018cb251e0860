"""The widget on another site with a strict Content-Security-Policy of its own, and the
service's own page under the policy the service sends, in real headless Chromium.

The embedder is a page served from another origin (a small http.server in this process on
`localhost`, while the service is on `127.0.0.1`: another site to the browser) with the
policy a careful newsroom would set: nothing by default, scripts only from the quote
service, connections only to it, styles only from itself. The widget then needs exactly
that: its modules come from the service, its socket goes there, and its stylesheet is a
constructed one (adoptedStyleSheets), which style-src does not govern, never a <style>
element. Violations are caught as the page reports them (`securitypolicyviolation`,
composed, so those inside shadow roots too) and from the console; a deliberate one at the
end proves the listener hears them. Every wait is a condition with a timeout.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from tests.browser import checked_page
from tests.redis_server import free_port
from tests.service_proc import ServiceProcess, http_fetch

WAIT_MS = 15_000
EMBED_PORT = free_port()  # the embedder's, reached as two origins:
EMBEDDER = f"http://localhost:{EMBED_PORT}"  # the one ALLOWED_ORIGINS lists
STRANGER = f"http://127.0.0.1:{EMBED_PORT}"  # and one it does not

# Installed before any script of the page runs (Playwright's init scripts are not subject
# to the page's policy).
LISTEN = """
window.violations = [];
document.addEventListener('securitypolicyviolation', (e) => window.violations.push(
  { directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample }), true);
"""


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    port = free_port()  # its own page is an origin too: listed with the embedder's
    service = ServiceProcess({"SIM_RATE": "40",
                              "ALLOWED_ORIGINS": f"{EMBEDDER},http://127.0.0.1:{port}"}, port)
    service.start("/readyz")
    try:
        yield service
    finally:
        service.stop()


def embed_page(service: ServiceProcess) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>A newsroom's page</title>
  <script type="module" src="{service.url}/widget.js"></script>
</head>
<body>
  <h1>Another site</h1>
  <quote-ticker id="strip" symbols="OGDC,PPL,KSE100"></quote-ticker>
  <quote-ticker id="panel" symbols="OGDC,HBL" layout="panel" controls="none"></quote-ticker>
</body>
</html>
"""


def strict_policy(service: ServiceProcess) -> str:
    host = f"127.0.0.1:{service.port}"
    return (f"default-src 'none'; script-src http://{host}; "
            f"connect-src ws://{host} http://{host}; style-src 'self'; img-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@pytest.fixture(scope="module")
def embedder(service: ServiceProcess) -> Iterator[str]:
    """Serves the page (with its policy) on 127.0.0.1:EMBED_PORT, reached as localhost."""
    body = embed_page(service).encode()
    policy = strict_policy(service)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/embed.html":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Security-Policy", policy)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", EMBED_PORT), Handler)
    thread = threading.Thread(target=server.serve_forever, name="embedder", daemon=True)
    thread.start()
    try:
        yield policy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def watch_console(page: Page) -> list[str]:
    found: list[str] = []

    def seen(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            found.append(message.text)

    page.on("console", seen)
    return found


def shadow_facts(page: Page, selector: str) -> dict[str, Any]:
    """How the element's shadow root is styled, and whether the styles are in effect."""
    facts: dict[str, Any] = page.evaluate("""(selector) => {
        const root = document.querySelector(selector).shadowRoot;
        const vh = root.querySelector('.item .vh');
        return { adopted: root.adoptedStyleSheets.length,
                 styleElements: root.querySelectorAll('style').length,
                 vhWidth: vh && getComputedStyle(vh).width,
                 wrapDisplay: getComputedStyle(root.querySelector('.wrap')).display };
    }""", selector)
    return facts


def item_texts(page: Page, selector: str) -> list[str]:
    texts: list[str] = page.evaluate("""(selector) => [...document.querySelector(selector)
        .shadowRoot.querySelectorAll('.item[data-symbol]')].map((i) => i.innerText)""", selector)
    return texts


def refused_origin(service: ServiceProcess) -> float:
    text = http_fetch(service.url + "/metrics")[2].decode()
    found = re.search(r'^quote_service_connections_refused_total\{reason="origin"\} (\S+)$',
                      text, re.MULTILINE)
    assert found
    return float(found.group(1))


def test_the_widget_runs_live_under_a_strict_third_party_policy(
        browser: Browser, service: ServiceProcess, embedder: str) -> None:
    with checked_page(browser, 1280, 800, WAIT_MS) as page:
        console = watch_console(page)
        page.add_init_script(LISTEN)
        response = page.goto(EMBEDDER + "/embed.html")
        assert response is not None and response.headers["content-security-policy"] == embedder
        for selector in ("#strip", "#panel"):
            expect(page.locator(selector)).to_have_attribute("data-feed", "live")
        expect(page.locator("#strip")).to_have_attribute("data-count", "3")
        first = item_texts(page, "#strip")
        assert [t.split()[0] for t in first] == ["OGDC", "PPL", "KSE100"]  # the list's order
        # Live: the simulated market moves, and the items follow.
        page.wait_for_function("""(first) => {
            const now = [...document.querySelector('#strip').shadowRoot
              .querySelectorAll('.item[data-symbol]')].map((i) => i.innerText);
            return now.length === first.length && now.some((t, i) => t !== first[i]);
        }""", arg=first, timeout=WAIT_MS)
        # Its stylesheet is a constructed one, in effect; no <style> element anywhere.
        for selector in ("#strip", "#panel"):
            assert shadow_facts(page, selector) == {"adopted": 1, "styleElements": 0,
                                                    "vhWidth": "1px", "wrapDisplay": "flex"}
        assert page.evaluate("() => document.querySelectorAll('style').length") == 0
        assert page.evaluate("() => window.violations") == []
        assert console == []
        # The listener does hear a violation: a <style> element is refused by this policy.
        page.evaluate("""() => document.head.append(Object.assign(
            document.createElement('style'), { textContent: 'h1 { color: red }' }))""")
        page.wait_for_function("() => window.violations.length > 0", timeout=WAIT_MS)
        assert [v["directive"] for v in page.evaluate("() => window.violations")] == [
            "style-src-elem"]


def test_a_page_from_an_origin_not_allowed_gets_no_quotes(
        browser: Browser, service: ServiceProcess, embedder: str) -> None:
    """The same page from another origin: the service refuses its websocket (and then its
    SSE fallback) with 403, counted; the widget never goes live."""
    before = refused_origin(service)
    with checked_page(browser, 1280, 800, WAIT_MS) as page:
        page.goto(STRANGER + "/embed.html")
        expect(page.locator("#strip")).to_have_attribute("data-feed", re.compile(
            "connecting|reconnecting"))
        # The widgets share one socket: its first attempt and a retry, both refused.
        deadline = time.monotonic() + WAIT_MS / 1000
        while refused_origin(service) < before + 2:
            assert time.monotonic() < deadline, "the service did not refuse the foreign origin"
            page.wait_for_timeout(50)
        assert page.locator("#strip").get_attribute("data-feed") != "live"
        assert item_texts(page, "#strip") == []


def test_the_service_page_keeps_to_its_own_policy(browser: Browser, service: ServiceProcess
                                                 ) -> None:
    """GET / with the policy the service sends: the widget takes over the rendered board
    and goes live, its stylesheet allowed by hash, no violation."""
    with checked_page(browser, 1280, 900, WAIT_MS) as page:
        console = watch_console(page)
        page.add_init_script(LISTEN)
        response = page.goto(service.url + "/")
        assert response is not None and "'sha256-" in response.headers["content-security-policy"]
        for selector in ("#ticker-strip", "#ticker-panel"):
            expect(page.locator(selector)).to_have_attribute("data-feed", "live")
            facts = shadow_facts(page, selector)
            assert facts["vhWidth"] == "1px" and facts["wrapDisplay"] == "flex"
        assert page.evaluate("() => window.violations") == []
        assert console == []


def test_the_rendered_board_is_styled_without_javascript_too(browser: Browser,
                                                             service: ServiceProcess) -> None:
    """Without scripts the declarative shadow root's <style> is all the styling there is:
    the hash in the policy is what lets it apply."""
    with checked_page(browser, 1280, 900, WAIT_MS, javascript=False) as page:
        page.goto(service.url + "/")
        facts = shadow_facts(page, "#ticker-strip")
        assert facts["styleElements"] == 1 and facts["adopted"] == 0
        assert facts["vhWidth"] == "1px" and facts["wrapDisplay"] == "flex"
