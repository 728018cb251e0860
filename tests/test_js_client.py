"""The JavaScript client (clients/js, the npm package `quote-stream`) for real.

The service runs as a subprocess (tests/service_proc.py) with its embedded simulated market
(no REDIS_URL). The stream client runs in Node 20 (clients/js/test/live.mjs, with the `ws`
package as its WebSocket) and in Debian's Chromium (tests/browser.py), on a page of another
origin, as a site that embeds the widget would load it. The type declarations are checked
by tsc against clients/js/examples, the README's example runs in a project that installed
the package from its path, and the example table page is loaded and sorted.

Node's packages (typescript, ws) come from clients/js/package-lock.json by `make js`.
Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import pytest
from playwright.sync_api import Browser, Page, expect

from quote_core.quote import Quote
from quote_core.text import format_line, parse_line
from tests.browser import checked_page
from tests.service_proc import ROOT, ServiceProcess, end_process, http_fetch as fetch, run_service

JS = ROOT / "clients" / "js"
NODE_MODULES = JS / "node_modules"
README = (ROOT / "README.md").read_text(encoding="utf-8")
WEB = ROOT / "web"

# Quotes often enough that every wait for "some updates" is short (20/s by default).
SERVICE_ENV = {"SIM_RATE": "200"}
WAIT_MS = 10_000
RECONNECT_MS = 30_000  # back-off with full jitter after a restart, and the restart itself
SYMBOLS = ["OGDC", "PPL", "KSE100"]
SEED_LINE = re.compile(r"^[A-Z0-9.\-]{1,16} [\d,.]+ (Increased By|Decreased By|No Change) .*\(-?[\d.]+%\)$")


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: the JS client's tests need Node.js 20+ (bash .ci/system-packages)")
    for needed in (NODE_MODULES / ".bin" / "tsc", NODE_MODULES / "ws" / "package.json"):
        if not needed.exists():
            pytest.fail(f"{needed.relative_to(ROOT)} is missing: run `make js` (npm ci in clients/js)")
    return node


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    yield from run_service(SERVICE_ENV, ready="/readyz")


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with checked_page(browser, 1100, 900, WAIT_MS) as page:
        yield page


class Lines:
    """A child's stdout, one line at a time, each read with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self, timeout: float) -> str | None:
        """The next line, or None at the end of the output; fails after `timeout` s."""
        try:
            line = self.queue.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output in {timeout}s; so far: {self.seen[-20:]}")
        if line is not None:
            self.seen.append(line)
        return line


def node_process(node: str, args: list[str], cwd: Path, stderr: IO[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([node, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=stderr,
                            stdin=subprocess.DEVNULL, text=True, env={**os.environ, "NO_COLOR": "1"})


def stop(proc: subprocess.Popen[str]) -> None:
    end_process(proc)


def python_line(q: dict[str, Any]) -> str:
    return format_line(Quote.from_dict(q))


# --- the package --------------------------------------------------------------------------

def test_declarations_type_check_the_examples() -> None:
    """`tsc --noEmit -p examples`: the examples import the package by its name (its exports
    and types), one in Node with the `ws` package, one in a browser page."""
    require_node()
    result = subprocess.run([str(NODE_MODULES / ".bin" / "tsc"), "--noEmit", "-p", "examples"],
                            cwd=JS, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (JS / "examples").glob("*.ts")) == ["browser-table.ts", "node-board.ts"]


def test_declarations_reject_misuse(tmp_path: Path) -> None:
    """The check is not vacuous: the same compiler on wrong uses of the API fails on each."""
    require_node()
    (tmp_path / "bad.mts").write_text(
        f"import {{ connect }} from '{JS / 'src' / 'index.js'}';\n"
        "const stream = connect('ws://127.0.0.1:1/ws');\n"
        "stream.on('quot', () => {});\n"  # no such event
        "stream.subscribe(5);\n"  # not symbols
        "stream.on('status', (feed) => { const n: number = feed; return n; });\n"
        "connect('ws://x', { WebSocket: 42 });\n"
        "connect('ws://x', { encoding: 'msgpack' });\n",  # not an encoding
        encoding="utf-8")
    (tmp_path / "tsconfig.json").write_text(json.dumps({
        "extends": str(JS / "examples" / "tsconfig.json"),
        "compilerOptions": {"typeRoots": [str(NODE_MODULES / "@types")]},
        "include": ["bad.mts"]}), encoding="utf-8")
    result = subprocess.run([str(NODE_MODULES / ".bin" / "tsc"), "--noEmit", "-p", str(tmp_path)],
                            cwd=JS, capture_output=True, text=True, timeout=120)
    errors = re.findall(r"bad\.mts\((\d+),\d+\): error", result.stdout)
    assert result.returncode != 0 and sorted(set(errors)) == ["3", "4", "5", "6", "7"], result.stdout


def test_every_export_is_declared() -> None:
    """Each module's runtime exports (as Node imports them by the package's name) are the
    names its .d.ts declares, and package.json points at both."""
    node = require_node()
    package = json.loads((JS / "package.json").read_text(encoding="utf-8"))
    assert package["name"] == "quote-stream" and package["type"] == "module"
    assert (JS / "package-lock.json").is_file()
    assert {"typescript", "ws"} <= set(package["devDependencies"])
    assert not package.get("dependencies"), "no runtime dependencies"
    for entry, target in package["exports"].items():
        if entry == "./package.json":
            continue
        js, dts = JS / target["default"], JS / target["types"]
        assert js.is_file() and dts.is_file(), entry
        specifier = "quote-stream" + entry[1:]
        script = f"import('{specifier}').then((m) => console.log(JSON.stringify(Object.keys(m))))"
        result = subprocess.run([node, "--input-type=module", "-e", script], cwd=JS,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        runtime = set(json.loads(result.stdout))
        declared = declared_names(dts)
        assert runtime == declared, (entry, runtime ^ declared)
    assert package["types"] == package["exports"]["."]["types"]


def declared_names(dts: Path) -> set[str]:
    text = dts.read_text(encoding="utf-8")
    names = set(re.findall(r"^export declare (?:function|const|class) (\w+)", text, re.MULTILINE))
    for reexport in re.findall(r"^export \* from '\./(\w+)\.js';", text, re.MULTILINE):
        names |= declared_names(dts.parent / f"{reexport}.d.ts")
    return names


# --- how the service serves the modules ---------------------------------------------------

def module_imports(path: Path) -> list[str]:
    return re.findall(r"^(?:import|export)\s[^;()]*?\sfrom\s'([^']+)';", path.read_text(encoding="utf-8"),
                      re.MULTILINE)


def test_modules_are_served_as_widget_js_is(service: ServiceProcess) -> None:
    """/widget.js and every module it imports, transitively: 200, text/javascript, open to
    any origin (a page on another site loads them with CORS), with validators for caching;
    each import relative to the importing module, so they come from the host that served
    /widget.js wherever it is embedded."""
    folders = {"/js/": JS / "src", "/widget/": WEB / "widget"}  # the routes of service/app.py

    def source(url_path: str) -> Path:
        if url_path == "/widget.js":
            return WEB / "widget.js"
        prefix = next(p for p in folders if url_path.startswith(p))
        return folders[prefix] / url_path[len(prefix):]

    pending, served = ["/widget.js"], {}
    files = {"/widget.js": source("/widget.js")}
    while pending:
        path = pending.pop()
        status, headers, body = fetch(service.url + path)
        assert status == 200, path
        assert headers["content-type"] == "text/javascript; charset=utf-8", path
        assert headers["access-control-allow-origin"] == "*", path
        assert "etag" in headers and "last-modified" in headers, path
        assert body == files[path].read_bytes(), f"{path} is not {files[path]}"
        served[path] = headers
        for specifier in module_imports(files[path]):
            assert specifier.startswith(("./", "../")), f"{path} imports {specifier}: not relative"
            target = os.path.normpath(os.path.join(os.path.dirname(path), specifier))
            files[target] = source(target)
            if target not in served and target not in pending:
                pending.append(target)
    assert set(served) == {"/widget.js", "/js/format.js", "/js/stream.js", "/js/sse-socket.js",
                           "/js/compact.js", "/widget/quote-ticker.js", "/widget/styles.js"}
    assert files["/js/stream.js"] == JS / "src" / "stream.js", "the widget runs the package's code"
    assert "COPY clients/js/src " in (ROOT / "Dockerfile").read_text(), "the image serves /js/ too"
    # Conditional requests on the modules, as StaticFiles answers them.
    status, headers, _ = fetch(service.url + "/js/stream.js",
                               {"If-None-Match": served["/js/stream.js"]["etag"]})
    assert status == 304 and headers["access-control-allow-origin"] == "*"
    # Only modules are published from those folders: no declarations, no package files.
    for path in ("/js/stream.d.ts", "/js/nope.js", "/js/%2e%2e/package.json",
                 "/js/..%2fpackage.json", "/widget/", "/js/"):
        assert fetch(service.url + path)[0] == 404, path
    status, headers, _ = fetch(service.url + "/examples/table.html")
    assert status == 200 and headers["content-type"].startswith("text/html")


# --- the stream client in Node --------------------------------------------------------------

def test_stream_client_in_node(service: ServiceProcess, tmp_path: Path) -> None:
    """clients/js/test/live.mjs against the real service: quotes arrive (snapshot, then
    updates), the board by seq, unsubscribe stops a symbol, one socket for two streams, a
    restart of the service (same port) followed by reconnect and resubscribe, and close()
    lets the process end by itself."""
    node = require_node()
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        proc = node_process(node, ["test/live.mjs", service.ws_url], JS, stderr)
        try:
            assert proc.stdout is not None
            lines, steps = Lines(proc.stdout), []
            done: dict[str, Any] = {}
            while not done:
                raw = lines.next(timeout=60)
                if raw is None:
                    stderr.seek(0)
                    pytest.fail(f"node ended early: {lines.seen[-5:]}\n{stderr.read()}")
                message = json.loads(raw)
                assert "error" not in message, message["error"]
                steps.append(message["step"])
                if message["step"] == "restart":
                    service.restart()  # SIGTERM (close 1001), the same port again
                elif message["step"] == "done":
                    done = message
            assert steps == ["live", "unsubscribed", "restart", "reconnected", "done"]
            assert proc.wait(10) == 0, "the process did not end by itself after close()"
        finally:
            stop(proc)
    # The seed's text form, computed in Node, is Python's format_line on the same quotes.
    formatted = done["formatted"]
    assert len(formatted) >= 10
    assert [text for _, text in formatted] == [python_line(q) for q, _ in formatted]


# --- the stream client in Chromium ------------------------------------------------------------

EMBED_PAGE = b"<!doctype html><html lang=en><meta charset=utf-8><title>embedder</title><body></body></html>"


class EmbedderHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(EMBED_PAGE)))
        self.end_headers()
        self.wfile.write(EMBED_PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def embedder() -> Iterator[str]:
    """Another site: a blank page on another port (so another origin) of this machine."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), EmbedderHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def foreign_page(page: Page, service: ServiceProcess, origin: str) -> None:
    """A page of another origin, as a site that embeds the widget: every module it loads
    from the service is a cross-origin fetch (with CORS)."""
    page.goto(origin + "/")
    assert page.evaluate("() => location.origin") == origin != service.url


def test_stream_client_in_chromium(service: ServiceProcess, page: Page, embedder: str) -> None:
    foreign_page(page, service, embedder)
    page.evaluate("""async ([base, ws]) => {
        const S = await import(base + '/js/index.js');
        window.log = {statuses: [], delivered: []};
        const stream = window.stream = S.connect(ws);   // the browser's WebSocket
        window.other = S.connect(ws);
        window.S = S;
        stream.on('status', (feed) => log.statuses.push(feed));
        stream.on('quote', (q, {snapshot}) => log.delivered.push(
            {symbol: q.symbol, seq: q.seq, ts: q.ts, snapshot, text: S.tickerText(q), q}));
        stream.subscribe(['OGDC', 'PPL', 'KSE100']);
        other.subscribe(['HBL']);
    }""", [service.url, service.ws_url])
    # Quotes arrive: the snapshot (the three at once, on live), then updates.
    page.wait_for_function("() => stream.feed === 'live'", timeout=WAIT_MS)
    assert page.evaluate("() => [...stream.board.keys()].sort()") == sorted(SYMBOLS)
    conns = page.evaluate("() => S.connections()")
    assert len(conns) == 1 and conns[0]["consumers"] == 2
    assert conns[0]["subscribed"] == ["HBL", "KSE100", "OGDC", "PPL"]
    page.wait_for_function("() => log.delivered.filter((d) => !d.snapshot).length >= 10", timeout=WAIT_MS)

    delivered = page.evaluate("() => log.delivered")
    assert all(d["snapshot"] for d in delivered[:3]) and {d["symbol"] for d in delivered} == set(SYMBOLS)
    assert_by_seq(delivered)
    # Both read in one turn of the page's event loop: no quote comes between them.
    board, seen = page.evaluate("""() => [Object.fromEntries([...stream.board].map(([s, q]) => [s, q.seq])),
                                          log.delivered]""")
    last = {d["symbol"]: d["seq"] for d in seen}
    assert all(board[s] >= last[s] for s in SYMBOLS)
    assert [d["text"] for d in delivered] == [python_line(d["q"]) for d in delivered]

    # Unsubscribe stops a symbol: nothing of PPL after the call, OGDC goes on.
    mark = page.evaluate("() => { stream.unsubscribe(['PPL']); return log.delivered.length; }")
    page.wait_for_function("(m) => log.delivered.slice(m).filter((d) => d.symbol === 'OGDC').length >= 3",
                           arg=mark, timeout=WAIT_MS)
    assert not [d for d in page.evaluate("(m) => log.delivered.slice(m)", mark) if d["symbol"] == "PPL"]
    assert page.evaluate("() => [stream.board.has('PPL'), stream.symbols]") == [False, ["OGDC", "KSE100"]]
    page.wait_for_function("() => S.connections()[0].subscribed.join() === 'HBL,KSE100,OGDC'",
                           timeout=WAIT_MS)

    # The service restarts on the same port: reconnecting, then live with the new snapshot.
    mark = page.evaluate("() => { log.statuses = []; return log.delivered.length; }")
    service.restart()
    page.wait_for_function("() => log.statuses.includes('reconnecting') && stream.feed === 'live'",
                           timeout=RECONNECT_MS)
    page.wait_for_function("(m) => log.delivered.slice(m).filter((d) => !d.snapshot).length >= 3",
                           arg=mark, timeout=WAIT_MS)
    after = page.evaluate("(m) => log.delivered.slice(m)", mark)
    assert {d["symbol"] for d in after} <= {"OGDC", "KSE100"}
    assert page.evaluate("() => S.connections()[0].subscribed") == ["HBL", "KSE100", "OGDC"]
    assert_by_seq(page.evaluate("() => log.delivered"))

    # Closing both streams closes the socket.
    page.evaluate("() => { stream.close(); other.close(); }")
    page.wait_for_function("() => S.connections().length === 0", timeout=WAIT_MS)


def assert_by_seq(delivered: list[dict[str, Any]]) -> None:
    """Per symbol, each delivered quote replaces the one before: a higher seq, or (a
    restarted service's snapshot on a new socket) a later ts."""
    held: dict[str, dict[str, Any]] = {}
    for d in delivered:
        before = held.get(d["symbol"])
        assert before is None or d["seq"] > before["seq"] or d["ts"] > before["ts"], (before, d)
        held[d["symbol"]] = d


def test_widget_embedded_from_another_origin(service: ServiceProcess, page: Page, embedder: str) -> None:
    """The one-tag embed, unchanged: a page elsewhere loads /widget.js by its absolute URL;
    its imports come from the service, and its default socket is /ws beside widget.js."""
    foreign_page(page, service, embedder)
    page.evaluate("""(src) => {
        const s = document.createElement('script');
        s.type = 'module';
        s.src = src;
        document.head.append(s);
        const t = document.createElement('quote-ticker');
        t.setAttribute('symbols', 'OGDC,KSE100');
        t.setAttribute('layout', 'panel');
        document.body.append(t);
    }""", service.url + "/widget.js")
    ticker = page.locator("quote-ticker")
    expect(ticker).to_have_attribute("data-feed", "live", timeout=WAIT_MS)
    expect(ticker).to_have_attribute("data-count", "2")
    for symbol in ("OGDC", "KSE100"):
        text = page.locator(f'quote-ticker [data-symbol="{symbol}"]').inner_text()
        assert SEED_LINE.match(text) and text.startswith(symbol + " "), text
    widget = service.url + "/widget.js"
    exports = page.evaluate("async (src) => Object.keys(await import(src)).sort()", widget)
    # The exports web/README.md lists (as before the split), and the stream client's connect.
    assert {"tickerText", "formatQuote", "pyFixed", "groupThousands", "trimZeros", "round2",
            "parseSymbols", "resolveSocketUrl", "isNewer", "backoffDelay", "RECONNECT",
            "connections", "QuoteTicker", "connect"} <= set(exports)
    conns = page.evaluate("async (src) => (await import(src)).connections()", widget)
    assert [c["url"] for c in conns] == [service.ws_url]
    assert conns[0]["subscribed"] == ["KSE100", "OGDC"]
    # A human rate: 4 quotes frames a second unless `max-hz` says otherwise.
    assert conns[0]["maxHz"] == 4 and conns[0]["grantedHz"] == 4
    granted = "async (src) => (await import(src)).connections()[0].grantedHz"
    ticker.evaluate("(t) => t.setAttribute('max-hz', '2')")
    deadline = time.monotonic() + WAIT_MS / 1000
    while page.evaluate(granted, widget) != 2:
        assert time.monotonic() < deadline, "max-hz=2 not granted"
        page.wait_for_timeout(50)
    ticker.evaluate("(t) => t.setAttribute('max-hz', 'fast')")  # invalid: the default
    while page.evaluate(granted, widget) != 4:
        assert time.monotonic() < deadline, "an invalid max-hz is not back to 4"
        page.wait_for_timeout(50)
    assert ticker.evaluate("(t) => t.maxHz") == 4
    expect(ticker).to_have_attribute("data-feed", "live")


# --- the example page -----------------------------------------------------------------------

def test_example_table_page(service: ServiceProcess, page: Page) -> None:
    """/examples/table.html: a sortable price table on the stream client, under 60 lines."""
    source = WEB / "examples" / "table.html"
    assert len(source.read_text(encoding="utf-8").splitlines()) < 60
    assert "web/examples/table.html" in section("### Consume from JavaScript")
    page.goto(service.url + "/examples/table.html")
    expect(page.locator("#feed")).to_have_text("live", timeout=WAIT_MS)
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(34, timeout=WAIT_MS)  # every symbol of the market

    def table() -> list[list[str]]:
        # One read of the whole table: it is redrawn at once, between frames.
        return page.evaluate("""() => [...document.querySelectorAll('tbody tr')]
            .map((tr) => [...tr.cells].map((td) => td.textContent))""")

    first = table()
    assert [r[0] for r in first] == sorted(r[0] for r in first)  # by symbol at first
    for symbol, price, change, pct in first:  # the parts of the seed's text form
        assert re.fullmatch(r"[\d,]+(\.\d\d)?", price) and re.fullmatch(r"\(-?[\d.]+%\)", pct), symbol
        assert re.fullmatch(r"(▲ |▼ | )-?[\d.]+", change), (symbol, change)

    def prices() -> list[float]:
        return [float(r[1].replace(",", "")) for r in table()]

    price = page.get_by_role("button", name="Price")
    price.click()
    expect(page.locator("th", has=price)).to_have_attribute("aria-sort", "ascending")
    assert (p := prices()) == sorted(p)
    price.click()
    expect(page.locator("th", has=price)).to_have_attribute("aria-sort", "descending")
    assert (p := prices()) == sorted(p, reverse=True)
    # And it stays live: the table keeps changing under the sort.
    before = table()
    page.wait_for_function("(b) => JSON.stringify([...document.querySelectorAll('tbody tr')]"
                           ".map((tr) => [...tr.cells].map((td) => td.textContent))) !== b",
                           arg=json.dumps(before), timeout=WAIT_MS)
    assert (p := prices()) == sorted(p, reverse=True)


# --- the README's example -------------------------------------------------------------------

def section(title: str) -> str:
    """The README's text under `title`, to the next heading of level 2 or 3."""
    start = README.index(f"\n{title}\n") + len(title) + 2
    end = re.compile(r"^#{2,3} ", re.MULTILINE).search(README, start)
    return README[start:end.start() if end else None]


def test_readme_consume_from_javascript_example_runs(service: ServiceProcess, tmp_path: Path) -> None:
    """The README's "Consume from JavaScript" as a newcomer follows it in Node 20: its shell lines
    in a folder beside the checkout (`npm init -y`, then the package installed from the
    checkout's path), its example saved verbatim as example.mjs (only the URL pointed at
    this test's service), then `node example.mjs` prints the feed and the quotes."""
    node = require_node()
    text = section("### Consume from JavaScript")
    blocks = re.findall(r"```(\w+)\n(.*?)```", text, re.DOTALL)
    shell = next(code for lang, code in blocks if lang == "sh")
    example = next(code for lang, code in blocks if lang == "js")
    commands = [line.split("#")[0].strip() for line in shell.strip().splitlines()]
    assert commands == ["mkdir my-ui && cd my-ui && npm init -y",
                        "npm install ../psx-quotes/clients/js ws", "node example.mjs"]
    assert len(example.strip().splitlines()) <= 12, "about ten lines"
    assert example.count("ws://127.0.0.1:8000/ws") == 1

    (tmp_path / "psx-quotes").symlink_to(ROOT)  # the checkout, beside the new project
    made = subprocess.run(["bash", "-c", commands[0]], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    project = tmp_path / "my-ui"
    # The README's install line, kept off the network: `ws` is the copy `make js` installed.
    install = [str(NODE_MODULES / "ws") if arg == "ws" else arg for arg in commands[1].split()]
    installed = subprocess.run([*install, "--offline", "--no-audit", "--no-fund"], cwd=project,
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    assert (project / "node_modules" / "quote-stream" / "package.json").is_file()
    script = project / commands[2].split()[1]
    script.write_text(example.replace("ws://127.0.0.1:8000/ws", service.ws_url), encoding="utf-8")

    with open(tmp_path / "stderr.txt", "w+") as stderr:
        proc = node_process(node, [script.name], project, stderr)
        try:
            assert proc.stdout is not None
            lines = Lines(proc.stdout)
            seen: set[str] = set()
            live = False
            deadline = time.monotonic() + 20
            while not (live and seen >= {"OGDC", "KSE100"}):
                line = lines.next(timeout=max(0.1, deadline - time.monotonic()))
                if line is None:
                    stderr.seek(0)
                    pytest.fail(f"the example ended: {lines.seen}\n{stderr.read()}")
                if line == "feed live":
                    live = True
                elif line.startswith("feed "):
                    assert line in ("feed connecting", "feed reconnecting", "feed stale"), line
                else:
                    assert SEED_LINE.match(line), line
                    assert format_line(parse_line(line)) == line  # the seed's form exactly
                    seen.add(line.split()[0])
            assert seen == {"OGDC", "KSE100"}
        finally:
            stop(proc)


# --- max_hz ---------------------------------------------------------------------------------

MAX_HZ_SCRIPT = r"""
import WebSocket from 'ws';
import { connect, connections, checkMaxHz } from 'quote-stream';

const url = process.argv[1];
const sent = [];
let frames = [];
class Spy extends WebSocket {
  send(data) { sent.push(JSON.parse(data)); super.send(data); }
}
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(predicate, ms, what) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await wait(20);
  }
}
const bad = [];
for (const v of [0.4, 51, 'x', true, NaN]) {
  try { checkMaxHz(v); } catch (err) { if (err instanceof RangeError) bad.push(String(v)); }
}
try { connect(url, { WebSocket: Spy, maxHz: 0 }); } catch (err) { bad.push('connect 0'); }
const slow = connect(url, { WebSocket: Spy, maxHz: 2 });
slow.on('quotes', (_q, info) => { if (!info.snapshot) frames.push(Date.now()); });
slow.subscribe('*');
await until(() => slow.feed === 'live', 10000, 'live');
await until(() => connections()[0].grantedHz === 2, 10000, 'the 2 Hz ack');
const firstRates = sent.filter((m) => 'max_hz' in m).map((m) => [m.symbols, m.max_hz]);
await wait(500);
frames = [];
await wait(3000);
const slowFrames = frames.length;
const faster = connect(url, { maxHz: 10 }).subscribe(['OGDC']);
await until(() => connections()[0].grantedHz === 10, 5000, 'the socket at the fastest rate');
faster.close();
await until(() => connections()[0].grantedHz === 2, 5000, 'back at 2 Hz');
const plain = connect(url).subscribe(['PPL']);
await until(() => connections()[0].grantedHz === 50, 5000, 'a stream without a rate: the default');
plain.close();
await until(() => connections()[0].grantedHz === 2, 5000, 'back at 2 Hz again');
slow.setMaxHz(4);
await until(() => connections()[0].grantedHz === 4, 5000, 'setMaxHz');
const rates = sent.filter((m) => 'max_hz' in m).map((m) => m.max_hz);
slow.close();
console.log(JSON.stringify({ bad, firstRates, slowFrames, rates, board: slow.board.size }));
"""


def test_stream_client_max_hz_in_node(service: ServiceProcess) -> None:
    """connect(url, {maxHz}): the first subscribe carries the rate, the socket runs at the
    highest rate of its streams (the default if one asks for none), setMaxHz changes it,
    and at 2 Hz the stream gets at most 2 quotes frames a second."""
    node = require_node()
    result = subprocess.run([node, "--input-type=module", "-e", MAX_HZ_SCRIPT, service.ws_url],
                            cwd=JS, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bad"] == ["0.4", "51", "x", "true", "NaN", "connect 0"]
    assert report["firstRates"] == [["*", 2]], "the rate goes with the first subscribe"
    assert 4 <= report["slowFrames"] <= 7, report
    assert report["rates"] == [2, 10, 2, 50, 2, 4]


# --- every update ---------------------------------------------------------------------------

EVERY_SCRIPT = r"""
import WebSocket from 'ws';
import { connect, connections } from 'quote-stream';

// Every quote as a line [symbol, seq]; statuses and recovery answers as objects. Ends, and
// closes its streams, when stdin does (the test's signal that it has read enough).
const url = process.argv[1];
const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
const refused = [];
try { connect(url, { WebSocket, mode: 'every', maxHz: 4 }); } catch (err) { refused.push(err.name); }
try { connect(url, { WebSocket, mode: 'each' }); } catch (err) { refused.push(err.name); }
try { connect(url, { WebSocket, since: { OGDC: 1 } }); } catch (err) { refused.push(err.name); }
const every = connect(url, { WebSocket, mode: 'every' });
const ticker = connect(url, { WebSocket }); // conflated: a socket of its own
every.on('quote', (q) => out([q.symbol, q.seq]));
every.on('status', (feed) => out({ feed }));
every.on('recovery', (info) => out({ recovery: info, recovered: every.recovered }));
every.subscribe(['OGDC', 'PPL', 'KSE100']);
ticker.subscribe(['OGDC']);
setTimeout(() => {
  const sockets = connections().map((c) => [c.mode, c.subscribed]).sort();
  out({ refused, sockets, mode: every.mode });
}, 500);
process.stdin.resume();
process.stdin.on('end', () => {
  out({ positions: Object.fromEntries(every.positions), unrecovered: every.unrecovered });
  every.close();
  ticker.close();
});
"""


def test_stream_client_every_mode_across_a_service_restart(tmp_path: Path) -> None:
    """connect(url, {mode: 'every'}) in Node against a Redis-fed service and the real
    publisher: the service restarts on the same port, the socket comes back and resubscribes
    with `since`, and the quotes it delivered are each symbol's tape exactly (XRANGE once
    the publisher stopped): none lost, none repeated, in order. Its socket is not the
    conflated stream's."""
    import redis  # the tape, read as the test of the Python client reads it

    from quote_bus.layout import Layout
    from tests.redis_server import redis_server
    from tests.service_proc import feed_stack

    node = require_node()
    env = {"DRAIN_S": "0", "PROBE_INTERVAL_S": "0.5", "PROBE_TIMEOUT_S": "2"}
    with redis_server() as server, feed_stack(server.url, 150, env) as (service, publisher), \
            open(tmp_path / "stderr.txt", "w+") as stderr:
        proc = subprocess.Popen([node, "--input-type=module", "-e", EVERY_SCRIPT, service.ws_url],
                                cwd=JS, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.PIPE,
                                text=True, env={**os.environ, "NO_COLOR": "1"})
        try:
            assert proc.stdout is not None and proc.stdin is not None
            lines = Lines(proc.stdout)
            got: list[tuple[str, int]] = []
            events: list[dict[str, Any]] = []

            def read_until(done: Any, timeout: float, what: str) -> None:
                deadline = time.monotonic() + timeout
                while not done():
                    left = deadline - time.monotonic()
                    try:
                        raw = lines.queue.get(timeout=max(left, 0.01))
                    except queue.Empty:
                        pytest.fail(f"not within {timeout}s: {what}; last {lines.seen[-5:]}\n"
                                    f"{service.log()}")
                    if raw is not None:
                        lines.seen.append(raw)
                    if raw is None:
                        stderr.seek(0)
                        pytest.fail(f"node ended early: {lines.seen[-5:]}\n{stderr.read()}")
                    message = json.loads(raw)
                    if isinstance(message, list):
                        got.append((message[0], message[1]))
                    else:
                        events.append(message)

            read_until(lambda: len(got) > 40 and any("sockets" in e for e in events), 20,
                       "quotes in every mode")
            setup = next(e for e in events if "sockets" in e)
            assert setup["refused"] == ["RangeError", "RangeError", "TypeError"]
            assert setup["mode"] == "every"
            assert setup["sockets"] == [["conflated", ["OGDC"]], ["every", ["KSE100", "OGDC", "PPL"]]]
            service.restart()
            read_until(lambda: any("recovery" in e for e in events), RECONNECT_MS / 1000,
                       "the resubscription's answer")
            mark = len(got)
            read_until(lambda: len(got) > mark + 30, 15, "quotes after the restart")
            recovery = next(e for e in events if "recovery" in e)
            assert recovery["recovery"] == {"recovered": True, "unrecovered": []}
            assert recovery["recovered"] is True
            assert {"feed": "reconnecting"} in events

            publisher.stop()
            layout = Layout()
            client = redis.Redis.from_url(server.url, socket_timeout=2)
            try:
                tape = {s: [json.loads(fields[b"q"])["seq"] for _, fields in client.xrange(layout.tape(s))]
                        for s in SYMBOLS}
            finally:
                client.close()

            def caught_up() -> bool:
                last: dict[str, int] = {}
                for symbol, seq in got:
                    last[symbol] = seq
                return all(last.get(s) == seqs[-1] for s, seqs in tape.items())

            read_until(caught_up, 15, "the last quote of each symbol")
            proc.stdin.close()
            read_until(lambda: any("positions" in e for e in events), 10, "the positions")
            assert proc.wait(10) == 0, "the process did not end by itself after close()"
        finally:
            stop(proc)
    positions = next(e for e in events if "positions" in e)["positions"]
    assert positions == {s: seqs[-1] for s, seqs in tape.items()}
    for symbol, seqs in tape.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{symbol}'s tape has a hole"
        mine = [seq for s, seq in got if s == symbol]
        assert mine == [seq for seq in seqs if seq >= mine[0]], symbol


# --- tokens ---------------------------------------------------------------------------------

TOKEN_SCRIPT = r"""
import { createHmac } from 'node:crypto';
import WebSocket from 'ws';
import { connect, connections } from 'quote-stream';

// HS256 tokens signed here, as an identity service would sign them.
const [url, secret] = process.argv.slice(1);
const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
function sign(claims) {
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}
const soon = (s, sub) => sign({ exp: Math.floor(Date.now() / 1000) + s, sub });

const spies = [];
const closes = [];
class Spy extends WebSocket {
  constructor(u) {
    super(u);
    this.ops = [];
    spies.push(this);
    this.addEventListener('close', (ev) => closes.push(ev.code));
  }
  send(data) { this.ops.push(JSON.parse(data).op); super.send(data); }
}
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(predicate, ms, what) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await wait(20);
  }
}

// A function returning a Promise: called on open and on each token_expired.
let calls = 0;
const fresh = async () => {
  calls += 1;
  await wait(30); // e.g. a fetch to the identity service
  return soon(3, `call-${calls}`);
};
const stream = connect(url, { WebSocket: Spy, token: fresh });
const twin = connect(url, { WebSocket: Spy, token: fresh }); // the same source: one socket
const auths = [];
const requests = [];
const statuses = [];
let perSecond = [];
stream.on('auth', (info) => auths.push(info));
stream.on('token', (r) => requests.push(r.reason));
stream.on('status', (feed) => statuses.push(feed));
stream.on('quotes', (_q, info) => {
  const second = Math.floor((Date.now() - started) / 1000);
  if (!info.snapshot) perSecond[second] = (perSecond[second] || 0) + 1;
});
stream.subscribe(['OGDC', 'PPL']);
twin.subscribe(['KSE100']);

// A string answered on the 'token' event with stream.authenticate(fresh string).
const plain = connect(url, { WebSocket: Spy, token: soon(3, 'plain-1') });
const plainAuths = [];
plain.on('auth', (info) => plainAuths.push(info.sub));
plain.on('token', (r) => { if (r.reason === 'expired') plain.authenticate(soon(600, 'plain-2')); });
plain.subscribe(['HBL']);

// No token at all: the service (ANONYMOUS=deny) closes it, and says why.
const anonymous = connect(url, { WebSocket });
const refusals = [];
anonymous.on('token', (r) => refusals.push(r));
anonymous.subscribe(['OGDC']);

const started = Date.now();
await until(() => stream.feed === 'live' && plain.feed === 'live', 10000, 'live');
const firstOps = spies.map((spy) => spy.ops.slice(0, 2));
const sockets = connections().map((c) => [c.token, c.consumers]).sort();
await wait(9000 - (Date.now() - started));
perSecond = Array.from({ length: 9 }, (_, i) => perSecond[i] || 0);
await until(() => refusals.length > 0, 10000, 'the refusal of the anonymous socket');
const report = {
  firstOps, calls, sockets, statuses, perSecond, requests, closes,
  subs: auths.map((a) => a.sub), auth: stream.auth, tier: stream.tier, delayS: stream.delayS,
  plainAuths, refusals, board: [...stream.board.keys()].sort(),
};
stream.close(); twin.close(); plain.close(); anonymous.close();
console.log(JSON.stringify(report));
"""


@pytest.fixture(scope="module")
def token_service() -> Iterator[ServiceProcess]:
    from tests.test_auth import SECRET

    yield from run_service({**SERVICE_ENV, "TOKEN_SECRET": SECRET, "TOKEN_GRACE_S": "2",
                            "ANONYMOUS": "deny"}, ready="/readyz")


def test_stream_client_token_function_refreshes_in_node(token_service: ServiceProcess) -> None:
    """connect(url, {token: async () => ...}) against ANONYMOUS=deny and tokens of 2-3 s
    with TOKEN_GRACE_S=2: the token is the socket's first message, each token_expired is
    answered from the function, so the socket lives on past several graces with quotes all
    along; a string is refreshed from the 'token' event; streams share a socket only with
    the same token source; a socket without a token hears why it was refused."""
    from tests.test_auth import SECRET

    node = require_node()
    result = subprocess.run([node, "--input-type=module", "-e", TOKEN_SCRIPT, token_service.ws_url,
                             SECRET], cwd=JS, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["firstOps"] == [["auth", "subscribe"]] * 2, "the token first, on each socket"
    assert report["sockets"] == [[False, 1], [True, 1], [True, 2]], "one socket per token source"
    assert report["calls"] >= 3, report
    assert report["subs"][0] == "call-1" and len(report["subs"]) >= 3, report["subs"]
    assert set(report["requests"]) == {"expired"}
    assert report["closes"] == [], "no socket with a token was closed"
    assert report["statuses"] == ["live"], report["statuses"]
    assert all(n > 0 for n in report["perSecond"]), report["perSecond"]
    assert report["auth"]["tier"] == "realtime" and report["auth"]["entitled"] == "*"
    assert report["auth"]["expires"] > 0
    assert (report["tier"], report["delayS"]) == ("realtime", 0)
    assert report["plainAuths"][:2] == ["plain-1", "plain-2"]
    assert report["refusals"][0]["reason"] == "refused"
    assert report["refusals"][0]["message"].startswith("authentication required")
    assert report["board"] == ["OGDC", "PPL"]
