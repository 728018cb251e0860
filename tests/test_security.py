"""Origins, connections per address, the security headers and the /metrics token, against
the real service process: real websocket clients (the `websockets` library), real HTTP,
real SSE streams over sockets (tests/sseclient.py), and real nginx running
deploy/nginx.conf for the proxied client address. The settings' checks are unit tests."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import websockets
from websockets.typing import Origin

from quote_runtime.settings import ConfigError
from service import security
from service.limits import KeyedBuckets
from service.settings import Settings
from tests.nginx_server import nginx
from tests.redis_server import free_port
from tests.service_proc import ROOT, ServiceProcess, http_fetch, run_service
from tests.sseclient import open_sse
from tests.test_sse import wait_until
from tests.wsclient import closed_code, connect, recv, recv_type

serving = contextmanager(run_service)

ALLOWED = "https://news.example.com"
TOKEN = "s3cret-metrics-token-0123456789"
NOSNIFF = ("x-content-type-options", "nosniff")
REFERRER = ("referrer-policy", "strict-origin-when-cross-origin")


def refused(service: ServiceProcess, reason: str, token: str | None = None) -> float:
    """quote_service_connections_refused_total{reason=...} as /metrics says it."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    status, _, body = http_fetch(service.url + "/metrics", headers)
    assert status == 200
    found = re.search(rf'^quote_service_connections_refused_total\{{reason="{reason}"\}} (\S+)$',
                      body.decode(), re.MULTILINE)
    assert found, reason
    return float(found.group(1))


async def ws_refusal(url: str, **kwargs: object) -> websockets.InvalidStatus:
    """The HTTP answer that refused the upgrade (the `websockets` client raises it)."""
    with pytest.raises(websockets.InvalidStatus) as info:
        async with asyncio.timeout(5):
            async with connect(url, **kwargs):  # type: ignore[arg-type]
                pass
    return info.value


async def welcomed(url: str, **kwargs: object) -> None:
    async with connect(url, open_timeout=5, **kwargs) as ws:  # type: ignore[arg-type]
        await recv_type(ws, "welcome")


# Origins


@pytest.fixture(scope="module")
def guarded() -> Iterator[ServiceProcess]:
    """Only news.example.com's pages (and an explicit port of another site) may connect."""
    yield from run_service({"ALLOWED_ORIGINS": f"{ALLOWED}, HTTPS://Desk.Example.com:8443",
                            "SIM_RATE": "20"})


async def test_a_foreign_origin_is_refused_with_403_before_the_upgrade(
        guarded: ServiceProcess) -> None:
    before = refused(guarded, "origin")
    for origin in ("https://evil.example", "http://news.example.com",  # another scheme
                   "https://news.example.com:444", "https://desk.example.com",  # another port
                   "null"):  # a sandboxed frame or a file:// page
        refusal = await ws_refusal(guarded.ws_url, origin=Origin(origin))
        assert refusal.response.status_code == 403, origin
        assert orjson.loads(refusal.response.body)["error"] == "forbidden"
        assert refusal.response.headers["content-type"] == "application/json"
    wait_until(lambda: refused(guarded, "origin") == before + 5, 5, "5 refusals counted")
    # Logged, at most a line a second (five refusals at once: one line).
    lines = guarded.events("client_refused")
    assert lines and lines[0]["reason"] == "origin" and lines[0]["origin"] == "https://evil.example"
    assert lines[0]["client"] == "127.0.0.1"
    assert len([e for e in lines if e["reason"] == "origin"]) < 5


async def test_listed_origins_and_requests_without_one_are_served(guarded: ServiceProcess) -> None:
    before = refused(guarded, "origin")
    await welcomed(guarded.ws_url, origin=Origin(ALLOWED))
    # As browsers serialise it or not: the default port and case do not matter.
    await welcomed(guarded.ws_url, origin=Origin("https://NEWS.example.com:443"))
    await welcomed(guarded.ws_url, origin=Origin("https://desk.example.com:8443"))
    await welcomed(guarded.ws_url)  # another service: no Origin at all
    assert refused(guarded, "origin") == before


async def test_sse_checks_the_origin_too(guarded: ServiceProcess) -> None:
    url = guarded.url + "/sse?symbols=OGDC"
    async with await open_sse(url, {"Origin": "https://evil.example"}) as stream:
        assert stream.status == 403
        assert stream.json["error"] == "forbidden"
        assert "access-control-allow-origin" not in stream.headers  # no page may read it
    async with await open_sse(url, {"Origin": "https://evil.example"}, method="OPTIONS") as stream:
        assert stream.status == 403  # the preflight of a polyfill too
    for headers in ({"Origin": ALLOWED}, {}):
        async with await open_sse(url, headers) as stream:
            assert stream.status == 200
            assert (await stream.event_of("welcome")).kind == "welcome"


async def test_any_origin_by_default(tmp_path: Path) -> None:
    with serving({"SIM_RATE": "5"}) as service:
        for origin in ("https://evil.example", "null", "http://localhost:3000"):
            await welcomed(service.ws_url, origin=Origin(origin))
            async with await open_sse(service.url + "/sse?symbols=OGDC",
                                      {"Origin": origin}) as stream:
                assert stream.status == 200
        assert refused(service, "origin") == 0


# Connections per address


def test_each_address_has_a_bucket_and_idle_ones_are_dropped() -> None:
    buckets = KeyedBuckets(rate=10, burst=50)
    assert sum(buckets.take("a", 100.0) for _ in range(80)) == 50  # the burst
    assert buckets.take("b", 100.0)  # another address: its own
    assert sum(buckets.take("a", 101.0) for _ in range(80)) == 10  # then the rate
    # 5 s (burst / rate) idle: both full again, and forgotten on the next take.
    assert buckets.take("c", 106.0) and len(buckets) == 1
    assert sum(buckets.take("a", 106.0) for _ in range(80)) == 50


def test_many_addresses_keep_the_table_bounded() -> None:
    buckets = KeyedBuckets(rate=10, burst=50, max_keys=1000)
    for n in range(5000):  # a flood of addresses within one refill time
        assert buckets.take(f"10.0.{n // 256}.{n % 256}", 200.0 + n / 10000)
        assert len(buckets) <= 1000
    assert buckets.take("10.0.0.0", 261.0) and len(buckets) == 1  # all idle: swept


def test_an_ipv6_address_counts_by_its_64() -> None:
    assert security.rate_key("2001:db8:1:2:aaaa::1") == security.rate_key("2001:db8:1:2::ff") \
        == "2001:db8:1:2::/64"
    assert security.rate_key("2001:db8:1:3::1") != security.rate_key("2001:db8:1:2::1")
    assert security.rate_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert security.rate_key("203.0.113.9") == "203.0.113.9"
    assert security.rate_key("not-an-address:x") == "not-an-address:x"


async def snapshot_of(url: str) -> dict[str, object]:
    """Welcome, subscribe, and the snapshot that answers it; a refusal raises."""
    async with connect(url, open_timeout=20) as ws:
        await recv_type(ws, "welcome", timeout=20)
        await ws.send(orjson.dumps({"op": "subscribe", "id": 1, "symbols": ["OGDC"]}).decode())
        return await recv_type(ws, "snapshot", timeout=20)


async def test_hundreds_of_readers_behind_one_address_are_all_served_by_default() -> None:
    """An office NAT or a carrier's CGNAT: 300 readers from one address, all at once."""
    with serving({"SIM_RATE": "5"}) as service:
        results = await asyncio.gather(*(snapshot_of(service.ws_url) for _ in range(300)),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed == [], f"{len(failed)} of 300 not served, e.g. {failed[:3]!r}"
        assert all(r["type"] == "snapshot" and r["quotes"] for r in results
                   if isinstance(r, dict))
        assert refused(service, "per_address") == refused(service, "address_rate") == 0


async def first_answer(url: str) -> str | int | None:
    """'welcome', or the close code that came instead."""
    async with connect(url, open_timeout=10) as ws:
        try:
            return str((await recv(ws, timeout=10))["type"])
        except websockets.ConnectionClosed:
            return ws.close_code


async def test_a_flood_over_the_address_rate_gets_1013_while_its_readers_keep_quotes() -> None:
    with serving({"MAX_CONNECTS_PER_IP_PER_S": "1", "MAX_CONNECTS_PER_IP_BURST": "5",
                  "SIM_RATE": "50"}) as service:
        async with connect(service.ws_url) as reader:
            await recv_type(reader, "welcome")
            await reader.send(orjson.dumps({"op": "subscribe", "id": 1,
                                            "symbols": ["OGDC", "KSE100"]}).decode())
            await recv_type(reader, "snapshot")
            results = await asyncio.gather(*(first_answer(service.ws_url) for _ in range(40)))
            # 4 tokens left of the burst, and about one a second while the flood lasts.
            assert set(results) <= {"welcome", 1013}, results
            assert results.count(1013) >= 30, results
            async with connect(service.ws_url) as late:
                assert await closed_code(late) == 1013
                assert late.close_reason == ("too many new connections from this address, "
                                             "try again later")
            async with await open_sse(service.url + "/sse?symbols=OGDC") as stream:
                assert stream.status == 503
                assert stream.json["error"] == "try_again_later"
                assert stream.headers["retry-after"] == "5"
            # The reader already in is not touched: quotes keep coming.
            for _ in range(3):
                await recv_type(reader, "quotes")
        assert refused(service, "address_rate") >= 32
        assert refused(service, "capacity") == 0
        line = next(e for e in service.events("client_refused") if e["reason"] == "address_rate")
        assert line["client"] == "127.0.0.1"
        # Another address has its own bucket (127.0.0.1 trusts X-Forwarded-For).
        async with connect(service.ws_url,
                           additional_headers={"X-Forwarded-For": "203.0.113.9"}) as other:
            await recv_type(other, "welcome")


async def test_past_the_cap_an_address_is_closed_with_1008_and_counted() -> None:
    with serving({"MAX_CONNECTIONS_PER_IP": "2", "SIM_RATE": "5"}) as service:
        async with connect(service.ws_url) as one, \
                await open_sse(service.url + "/sse?symbols=OGDC") as two:
            await recv_type(one, "welcome")
            assert two.status == 200  # websockets and SSE streams count alike
            async with connect(service.ws_url) as third:
                assert await closed_code(third) == 1008
                assert third.close_reason == "too many connections from this address"
            async with await open_sse(service.url + "/sse?symbols=OGDC") as fourth:
                assert fourth.status == 429
                assert fourth.json == {"error": "too_many_connections",
                                       "message": "too many connections from this address"}
                assert fourth.headers["retry-after"] == "5"
                assert fourth.headers["access-control-allow-origin"] == "*"
            assert refused(service, "per_address") == 2
            assert refused(service, "capacity") == 0
            line = next(e for e in service.events("client_refused")
                        if e["reason"] == "per_address")
            assert line["client"] == "127.0.0.1"
        # Both closed: the address's share comes back (the service notices the ends).

        async def accepted() -> bool:
            async with connect(service.ws_url) as a, connect(service.ws_url) as b:
                await recv_type(a, "welcome")
                try:
                    await recv_type(b, "welcome", timeout=2)
                except websockets.ConnectionClosed:
                    return False
            return True

        for _ in range(100):  # 10 s at most
            if await accepted():
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the address's share did not come back in 10 s")


async def test_the_address_is_the_forwarded_one_from_a_trusted_proxy() -> None:
    """From 127.0.0.1 (trusted by default) X-Forwarded-For names the client: each named
    address has its own share. The websocket is served ahead of Starlette's middleware,
    and still sees the address uvicorn's proxy layer set."""
    with serving({"MAX_CONNECTIONS_PER_IP": "1", "SIM_RATE": "5"}) as service:
        first = {"X-Forwarded-For": "203.0.113.7"}
        async with connect(service.ws_url, additional_headers=first) as a, \
                connect(service.ws_url, additional_headers={"X-Real-IP": "203.0.113.8"}) as b, \
                connect(service.ws_url) as c:
            for ws in (a, b, c):
                await recv_type(ws, "welcome")
            async with connect(service.ws_url, additional_headers=first) as again:
                assert await closed_code(again) == 1008
            async with await open_sse(service.url + "/sse?symbols=OGDC", first) as stream:
                assert stream.status == 429
        assert [e["client"] for e in service.events("client_refused")][:1] == ["203.0.113.7"]


async def test_an_untrusted_peer_cannot_name_another_address() -> None:
    with serving({"MAX_CONNECTIONS_PER_IP": "1", "FORWARDED_ALLOW_IPS": "10.9.9.9",
                  "SIM_RATE": "5"}) as service:
        async with connect(service.ws_url, additional_headers={"X-Forwarded-For": "1.2.3.4"}
                           ) as a:
            await recv_type(a, "welcome")
            async with connect(service.ws_url,
                               additional_headers={"X-Forwarded-For": "5.6.7.8"}) as b:
                assert await closed_code(b) == 1008  # both are 127.0.0.1 really


async def test_through_nginx_each_client_address_has_its_share(tmp_path: Path) -> None:
    """deploy/nginx.conf in front (X-Real-IP and X-Forwarded-For from 127.0.0.1, which
    the service trusts by default): the cap applies to the address nginx names."""
    with serving({"MAX_CONNECTIONS_PER_IP": "2", "SIM_RATE": "5"}) as service, \
            nginx([service.port, service.port], tmp_path) as proxy:
        # The test's own requests all come from 127.0.0.1; nginx appends that to what the
        # client sent, and uvicorn takes the last address that is not a trusted proxy.
        reader = {"X-Forwarded-For": "198.51.100.20"}
        other = {"X-Forwarded-For": "198.51.100.21"}
        async with connect(proxy.ws_url, additional_headers=reader) as one, \
                connect(proxy.ws_url, additional_headers=reader) as two, \
                connect(proxy.ws_url, additional_headers=other) as three:
            for ws in (one, two, three):
                await recv_type(ws, "welcome")
            async with connect(proxy.ws_url, additional_headers=reader) as past:
                assert await closed_code(past) == 1008
                assert past.close_reason == "too many connections from this address"
            async with await open_sse(f"http://127.0.0.1:{proxy.port}/sse?symbols=OGDC",
                                      reader) as stream:
                assert stream.status == 429
            async with connect(proxy.ws_url) as plain:  # 127.0.0.1 itself: its own share
                await recv_type(plain, "welcome")
        assert refused(service, "per_address") == 2
        clients = {e["client"] for e in service.events("client_refused")}
        assert clients == {"198.51.100.20"}


# Headers


@pytest.fixture(scope="module")
def plain() -> Iterator[ServiceProcess]:
    yield from run_service({"SIM_RATE": "5"})


def test_the_page_has_a_strict_policy_with_its_stylesheet_by_hash(plain: ServiceProcess) -> None:
    status, headers, body = http_fetch(plain.url + "/")
    assert status == 200
    assert (NOSNIFF[0], headers[NOSNIFF[0]]) == NOSNIFF
    assert (REFERRER[0], headers[REFERRER[0]]) == REFERRER
    assert headers["x-frame-options"] == "SAMEORIGIN"
    policy = dict(d.strip().split(" ", 1) for d in headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"  # no inline script, no eval
    assert policy["frame-ancestors"] == "'self'"
    assert policy["object-src"] == "'none'" and policy["base-uri"] == "'none'"
    # The inline <style> of each declarative shadow root is allowed by its hash, and is
    # the only inline stylesheet the page has.
    styles = set(re.findall(rb"<style>(.*?)</style>", body, re.DOTALL))
    assert len(styles) == 1
    assert policy["style-src"] == f"'self' {security.style_hash(styles.pop().decode())}"
    # Nothing the policy would block: no inline script, no event handler attributes.
    # (The page links its files in the versioned tree, service/assets.py.)
    scripts = [re.sub(rb"/v/[0-9a-f]{12}/", b"/", s) for s in re.findall(rb"<script\b[^>]*>", body)]
    assert scripts == [b'<script type="module" src="/static/page.js">']
    assert not re.search(rb"<[^>]+\son[a-z]+\s*=", body)


def test_every_http_answer_carries_the_headers(plain: ServiceProcess) -> None:
    for path in ("/quotes", "/history?symbols=OGDC", "/widget.js", "/widget/quote-ticker.js",
                 "/js/stream.js", "/static/style.css", "/healthz", "/metrics", "/nope", "/ws"):
        status, headers, _ = http_fetch(plain.url + path)
        assert status in (200, 404, 426), path
        assert headers[NOSNIFF[0]] == NOSNIFF[1], path
        assert headers[REFERRER[0]] == REFERRER[1], path
        # Not a document: nothing may run in it or frame it.
        assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'", path
    # The modules stay open to every origin (pages elsewhere embed the widget).
    assert http_fetch(plain.url + "/widget.js")[1]["access-control-allow-origin"] == "*"
    # Other HTML (the examples, with inline scripts of their own): who may frame it.
    status, headers, _ = http_fetch(plain.url + "/examples/table.html")
    assert status == 200 and headers[NOSNIFF[0]] == NOSNIFF[1]
    assert headers["content-security-policy"] == ("frame-ancestors 'self'; object-src 'none'; "
                                                  "base-uri 'self'")


async def test_the_event_stream_carries_them_too(plain: ServiceProcess) -> None:
    async with await open_sse(plain.url + "/sse?symbols=OGDC") as stream:
        assert stream.status == 200 and stream.headers["content-type"] == "text/event-stream"
        assert stream.headers[NOSNIFF[0]] == NOSNIFF[1]
        assert stream.headers[REFERRER[0]] == REFERRER[1]
        await stream.event_of("welcome")  # and the stream flows as ever


def test_frame_ancestors_is_configurable() -> None:
    with serving({"FRAME_ANCESTORS": "'self', https://news.example.com https://*.example.org",
                  "SIM_RATE": "5"}) as service:
        _, headers, _ = http_fetch(service.url + "/")
        assert headers["content-security-policy"].endswith(
            "; frame-ancestors 'self' https://news.example.com https://*.example.org")
        assert "x-frame-options" not in headers  # it cannot say that


# /metrics


def test_metrics_wants_the_bearer_token_when_one_is_set() -> None:
    with serving({"METRICS_TOKEN": TOKEN, "SIM_RATE": "5"}) as service:
        url = service.url + "/metrics"
        status, headers, _ = http_fetch(url)
        assert status == 401 and headers["www-authenticate"] == 'Bearer realm="metrics"'
        for wrong in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", "Bearer"):
            status, headers, _ = http_fetch(url, {"Authorization": wrong})
            assert status == 401, wrong
            assert headers["www-authenticate"] == 'Bearer realm="metrics", error="invalid_token"'
        status, _, body = http_fetch(url, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and b"quote_service_connections " in body
        status, _, _ = http_fetch(url, {"Authorization": f"bearer  {TOKEN}"})
        assert status == 200
        assert refused(service, "capacity", TOKEN) == 0
        # Everything else stays open.
        assert http_fetch(service.url + "/readyz")[0] in (200, 503)
        assert http_fetch(service.url + "/quotes")[0] == 200


# Settings


@pytest.mark.parametrize(("env", "message"), [
    ({"ALLOWED_ORIGINS": "news.example.com"}, "ALLOWED_ORIGINS 'news.example.com' is not an origin"),
    ({"ALLOWED_ORIGINS": "https://news.example.com/"}, "no trailing slash"),
    ({"ALLOWED_ORIGINS": "https://a.example, *"}, "cannot be combined"),
    ({"ALLOWED_ORIGINS": ","}, "ALLOWED_ORIGINS must be"),
    ({"ALLOWED_ORIGINS": "https://a.example:99999"}, "is not an origin"),
    ({"MAX_CONNECTIONS_PER_IP": "-1"}, "MAX_CONNECTIONS_PER_IP must be 0"),
    ({"MAX_CONNECTS_PER_IP_PER_S": "-1"}, "MAX_CONNECTS_PER_IP_PER_S must be 0 (no per-address"),
    ({"MAX_CONNECTS_PER_IP_BURST": "0"}, "MAX_CONNECTS_PER_IP_BURST must be positive"),
    ({"FRAME_ANCESTORS": "'self'; script-src *"}, "FRAME_ANCESTORS"),
    ({"FRAME_ANCESTORS": "'none' 'self'"}, "'none' cannot be combined"),
    ({"FRAME_ANCESTORS": "'unsafe-inline'"}, "is not a CSP source"),
    ({"METRICS_TOKEN": "short"}, "METRICS_TOKEN must be at least 16"),
    ({"METRICS_TOKEN": "a token with spaces in it"}, "METRICS_TOKEN must be a bearer token"),
])
def test_bad_security_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


def test_a_bad_metrics_token_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"METRICS_TOKEN": "not-long-enough"})
    assert "not-long-enough" not in str(info.value)


def test_good_security_settings() -> None:
    settings = Settings.from_env({"ALLOWED_ORIGINS": " https://News.Example.com ,http://127.0.0.1:8080",
                                  "MAX_CONNECTIONS_PER_IP": "0", "FRAME_ANCESTORS": "'none'",
                                  "METRICS_TOKEN": TOKEN})
    assert security.parse_origins(settings.allowed_origins) == frozenset({
        "https://news.example.com", "http://127.0.0.1:8080"})
    assert security.parse_origins("*") is None
    assert security.parse_frame_ancestors("'SELF' https:") == "'self' https:"
    assert Settings().allowed_origins == "*" and Settings().max_connections_per_ip == 0
    assert (Settings().max_connects_per_ip_per_s, Settings().max_connects_per_ip_burst) == (50, 500)
    assert Settings().frame_ancestors == "'self'" and Settings().metrics_token is None


def test_the_process_stops_at_start_on_a_bad_origin() -> None:
    inherited = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, capture_output=True,
                            text=True, timeout=30, check=False,
                            env={**inherited, "PORT": str(free_port()),
                                 "ALLOWED_ORIGINS": "news.example.com"})
    assert result.returncode == 2
    assert "ALLOWED_ORIGINS 'news.example.com' is not an origin" in result.stderr
