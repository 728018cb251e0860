"""Static files compressed and cacheable (service/assets.py, GZip in service/app.py), against
the real service over HTTP: the page links only the versioned tree, which a year's cache
may keep; another version is served but never kept; /widget.js stays where other sites
embed it; and in Chromium the versioned widget still finds its socket, under a path prefix
too.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Route, expect

from service import assets
from tests.browser import checked_page
from tests.nginx_server import nginx
from tests.service_proc import ROOT, ServiceProcess, http_fetch, run_service

WEB = ROOT / "web"
JS = ROOT / "clients" / "js" / "src"
VERSIONED = re.compile(r"/v/(?P<version>[0-9a-f]{12})(?P<path>/[^\"?#]+)")
# What the page's <link> and <script> tags point at.
REFS = re.compile(rb'<(?:link|script)\b[^>]*?\s(?:href|src)="([^"]*)"', re.IGNORECASE)
IMPORTS = re.compile(r"""^\s*(?:import|export)\b[^'"]*?\sfrom\s+['"]([^'"]+)['"]""", re.MULTILINE)
STALE_VERSION = "0" * assets.VERSION_LENGTH


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    yield from run_service({"SIM_RATE": "5"})


def source(path: str) -> Path:
    """The file behind an unversioned URL path."""
    if path == "/widget.js":
        return WEB / "widget.js"
    for prefix, folder in (("/js/", JS), ("/widget/", WEB / "widget"), ("/static/", WEB),
                           ("/examples/", WEB / "examples")):
        if path.startswith(prefix):
            return folder / path[len(prefix):]
    raise AssertionError(f"{path} is not a static file's URL")


def page_refs(service: ServiceProcess) -> list[str]:
    status, _, body = http_fetch(service.url + "/")
    assert status == 200
    return [ref.decode() for ref in REFS.findall(body) if not ref.startswith(b"data:")]


def current_version(service: ServiceProcess) -> str:
    m = VERSIONED.fullmatch(page_refs(service)[0])
    assert m is not None
    return m["version"]


def test_the_page_links_only_the_versioned_tree_and_a_year_may_keep_each(
        service: ServiceProcess) -> None:
    refs = page_refs(service)
    # The stylesheet, the page's script, and the modules it preloads.
    assert {"/static/style.css", "/static/page.js", "/widget.js", "/js/stream.js"} <= {
        m["path"] if (m := VERSIONED.fullmatch(ref)) else ref for ref in refs}
    versions = set()
    for ref in refs:
        m = VERSIONED.fullmatch(ref)
        assert m is not None, f"the page links {ref}, not a versioned URL"
        versions.add(m["version"])
        status, headers, body = http_fetch(service.url + ref)
        assert status == 200, ref
        assert headers["cache-control"] == assets.IMMUTABLE, ref
        assert body == source(m["path"]).read_bytes(), ref
        if ref.endswith(".js") and "/static/" not in ref:
            assert headers["content-type"] == assets.JS_TYPE, ref
            assert headers["access-control-allow-origin"] == "*", ref
    assert len(versions) == 1, versions


def test_the_modules_imports_stay_inside_the_versioned_tree(service: ServiceProcess) -> None:
    """Every module /v/<version>/widget.js and the page's script reach, by relative import,
    is in the same version's tree, served as such."""
    base = f"/v/{current_version(service)}"
    pending, seen = [base + "/static/page.js", base + "/widget.js"], set()
    while pending:
        path = pending.pop()
        seen.add(path)
        status, headers, body = http_fetch(service.url + path)
        assert status == 200 and headers["cache-control"] == assets.IMMUTABLE, path
        text = body.decode()
        specifiers = IMPORTS.findall(text) + re.findall(r"import\('([^']+)'\)", text)
        for specifier in specifiers:
            assert specifier.startswith(("./", "../")), f"{path} imports {specifier}"
            target = os.path.normpath(os.path.join(os.path.dirname(path), specifier))
            assert target.startswith(base + "/"), f"{path} imports {specifier}: {target}"
            if target not in seen and target not in pending:
                pending.append(target)
    assert {base + p for p in ("/widget.js", "/widget/quote-ticker.js", "/widget/styles.js",
                               "/js/stream.js", "/js/format.js", "/js/sse-socket.js")} <= seen


def test_another_version_is_served_but_not_kept(service: ServiceProcess) -> None:
    """A rolling deploy: a page of another version asks this instance for its files."""
    current = current_version(service)
    assert current != STALE_VERSION
    for path in ("/widget.js", "/js/stream.js", "/static/style.css"):
        status, headers, body = http_fetch(f"{service.url}/v/{STALE_VERSION}{path}")
        assert status == 200, path
        assert headers["cache-control"] == assets.STALE == "no-cache", path
        assert body == source(path).read_bytes()
    # A revalidation of the current version keeps the year; an error is not cached.
    url = f"{service.url}/v/{current}/js/stream.js"
    etag = http_fetch(url)[1]["etag"]
    status, headers, _ = http_fetch(url, {"If-None-Match": etag})
    assert status == 304 and headers["cache-control"] == assets.IMMUTABLE
    assert headers["access-control-allow-origin"] == "*"
    for path in ("/js/nope.js", "/js/stream.d.ts", "/nope.js", ""):
        status, headers, _ = http_fetch(f"{service.url}/v/{current}{path}")
        assert status == 404 and "cache-control" not in headers, path


def test_the_unversioned_urls_stay_short_lived(service: ServiceProcess) -> None:
    for path in ("/widget.js", "/widget/quote-ticker.js", "/js/stream.js"):
        status, headers, body = http_fetch(service.url + path, {"Origin": "https://news.example"})
        assert status == 200, path
        assert headers["content-type"] == "text/javascript; charset=utf-8", path
        assert headers["access-control-allow-origin"] == "*", path
        assert headers["cache-control"] == assets.SHORT_CACHE == "public, max-age=300", path
        assert body == source(path).read_bytes()
        status, headers, _ = http_fetch(service.url + path, {"If-None-Match": headers["etag"]})
        assert status == 304 and headers["cache-control"] == assets.SHORT_CACHE, path
    status, headers, _ = http_fetch(service.url + "/static/style.css")
    assert status == 200 and headers["cache-control"] == assets.SHORT_CACHE
    # The page itself: a second, as before.
    assert http_fetch(service.url + "/")[1]["cache-control"] == "public, max-age=1"


@pytest.mark.parametrize("path", ["/js/stream.js", "/widget.js", "/static/style.css"])
def test_a_module_is_gzipped_when_the_client_accepts_it(service: ServiceProcess, path: str) -> None:
    url = f"{service.url}/v/{current_version(service)}{path}"
    file = source(path).read_bytes()
    status, headers, body = http_fetch(url, {"Accept-Encoding": "gzip"})
    small = len(file) < 500  # GZipMiddleware's minimum_size: not worth a header
    assert status == 200
    assert headers.get("content-encoding") == (None if small else "gzip")
    assert "Accept-Encoding" in headers.get("vary", "") or small
    assert (body if small else gzip.decompress(body)) == file
    if not small:
        assert len(body) < len(file) * (0.4 if len(file) > 10_000 else 0.8)
    status, headers, body = http_fetch(url)
    assert status == 200 and "content-encoding" not in headers and body == file


def test_the_page_is_gzipped_when_the_client_accepts_it(service: ServiceProcess) -> None:
    status, headers, body = http_fetch(service.url + "/", {"Accept-Encoding": "gzip, br"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert headers["vary"] == "Accept-Encoding"
    # Its headers still (service/security.py, page.py): the page's CSP, a second's cache.
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["cache-control"] == "public, max-age=1"
    html = gzip.decompress(body)
    status, headers, plain = http_fetch(service.url + "/")
    assert status == 200 and "content-encoding" not in headers
    # The same page (the board in it moves between the two requests; the head does not).
    head = plain.split(b"</head>")[0]
    assert html.startswith(head) and html.rstrip().endswith(b"</html>")


def test_the_projects_nginx_passes_the_encoding_and_the_caching_through(
        service: ServiceProcess, tmp_path: Path) -> None:
    """deploy/nginx.conf in front (its two upstreams both this instance)."""
    version = current_version(service)
    with nginx([service.port, service.port], tmp_path) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        status, headers, body = http_fetch(f"{base}/v/{version}/js/stream.js",
                                           {"Accept-Encoding": "gzip"})
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert headers["vary"] == "Accept-Encoding"
        assert headers["cache-control"] == assets.IMMUTABLE
        assert headers["access-control-allow-origin"] == "*"
        assert gzip.decompress(body) == (JS / "stream.js").read_bytes()
        status, headers, _ = http_fetch(base + "/widget.js")
        assert status == 200 and headers["cache-control"] == assets.SHORT_CACHE
        status, headers, body = http_fetch(base + "/", {"Accept-Encoding": "gzip"})
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert f"/v/{version}/static/page.js".encode() in gzip.decompress(body)


def test_the_version_follows_the_content_not_the_place(tmp_path: Path) -> None:
    def tree(root: Path, text: str) -> assets.Version:
        (root / "web" / "widget").mkdir(parents=True)
        (root / "js").mkdir()
        (root / "web" / "widget.js").write_text("export {};\n")
        (root / "web" / "widget" / "a.js").write_text(text)
        (root / "js" / "b.js").write_text("export const b = 1;\n")
        return assets.Version(root / "web", root / "js")

    one, two = tree(tmp_path / "one", "a"), tree(tmp_path / "two", "a")
    first = one()
    assert re.fullmatch(r"[0-9a-f]{12}", first) and one() == first
    assert two() == first  # installed elsewhere, the same files: the same URLs
    (tmp_path / "one" / "web" / "widget" / "a.js").write_text("b")
    assert one() != first
    (tmp_path / "one" / "web" / "widget" / "a.js").write_text("a")
    assert one() == first
    (tmp_path / "one" / "js" / "c.js").write_text("")
    assert one() != first


def test_the_page_in_chromium_runs_the_versioned_widget_on_its_socket(
        browser: Browser, service: ServiceProcess) -> None:
    with checked_page(browser, 1280, 900) as page:
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(service.url + "/")
        expect(page.locator("#ticker-strip")).to_have_attribute("data-feed", "live",
                                                                timeout=10_000)
        base = f"{service.url}/v/{current_version(service)}"
        urls = page.evaluate("async (src) => (await import(src)).connections().map((c) => c.url)",
                             base + "/widget.js")
        assert urls == [service.ws_url]
        static = [u for u in requests if u.endswith((".js", ".css"))]
        assert static and all(u.startswith(base + "/") for u in static), static


def test_the_default_socket_is_next_to_widget_js_under_a_path_prefix(
        browser: Browser, service: ServiceProcess) -> None:
    """A proxy serving the service under /quotes-svc/: loaded from either tree, the widget's
    default socket is /quotes-svc/ws."""
    prefix = service.url + "/quotes-svc"

    def proxy(route: Route) -> None:
        route.fulfill(response=route.fetch(url=route.request.url.replace(prefix, service.url)))

    with checked_page(browser, 800, 600) as page:
        page.route(prefix + "/**", proxy)  # the page itself: about:blank, no CSP
        resolve = "async (src) => (await import(src)).resolveSocketUrl(null)"
        want = f"ws://127.0.0.1:{service.port}/quotes-svc/ws"
        version = current_version(service)
        assert page.evaluate(resolve, f"{prefix}/v/{version}/widget.js") == want
        assert page.evaluate(resolve, f"{prefix}/widget.js") == want
        # And without the proxy, from the versioned tree: the service's own /ws.
        assert page.evaluate(resolve, f"{service.url}/v/{version}/widget.js") == service.ws_url
