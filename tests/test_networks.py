"""Clients on real bad links (issue 25): test hosts in network namespaces (tests/netns.py),
each joined to the root namespace by a link with its own delay, loss and rate.

- Slow links: readers on a 300 ms / 2% / 256 kbit/s line and on an 80 ms / 0.5% one,
  beside local readers, under a feed heavier than the slow line carries: the slow ones
  are served conflated, current boards, never a queue that grows; the kernel holds no
  more than NOTSENT_LOWAT and a frame unsent for them.
- A link that goes dead (set down: no FIN, no RST): the service frees the connection
  within its heartbeat and TCP_USER_TIMEOUT, and the Python and JS SDKs notice the
  silence and come back when the link does.
- The same for Redis, in its own host: the feed goes stale and recovers.
- A thousand readers behind one address are all served with the default settings, while
  a second address that floods connects is held to its burst and rate.

Everything here needs root (namespaces, devices): elsewhere each test skips, saying why.
The figures (ages with and without the slow groups, memory per slow client) are
bench/netlinks.py's.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.server import NOTSENT_LOWAT
from tests.netns import LOCAL, JsonLines, NetHost, Shape, hosts_on_links, require_netns
from tests.service_proc import ARTIFACTS, ROOT, ServiceProcess, end_process, http_get

SLOW = Shape(rtt_ms=300, loss=0.02, rate_kbit=256)
MEDIUM = Shape(rtt_ms=80, loss=0.005)
NODE_MODULES = ROOT / "clients" / "js" / "node_modules"


@pytest.fixture(autouse=True)
def _needs_netns() -> None:
    require_netns()


def readers(where: NetHost | None, url: str, name: str, *args: str) -> JsonLines:
    """tests/net_readers.py in a host (None: here), its stderr in tests/artifacts."""
    argv = [sys.executable, "-m", "tests.net_readers", url, "--report-s", "0.5", *args]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return JsonLines(where.command(argv) if where else argv, ARTIFACTS / f"net-{name}.log")


def ws_url(service: ServiceProcess, host: NetHost) -> str:
    return f"ws://{host.gateway}:{service.port}/ws"


def readyz(service: ServiceProcess) -> tuple[int, dict[str, Any]]:
    status, body = http_get(service.url + "/readyz")
    return status, orjson.loads(body)


def wait_ready(service: ServiceProcess, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, report = readyz(service)
        if predicate(status, report):
            return report
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}; /readyz {status} {report}\n{service.log()}")
        time.sleep(0.1)


def metric(service: ServiceProcess, name: str) -> float:
    status, body = http_get(service.url + "/metrics")
    assert status == 200
    found = re.search(rf"^{name} (\S+)$", body.decode(), re.MULTILINE)
    assert found, name
    return float(found.group(1))


def unsent_bytes(service: ServiceProcess, peer_prefix: str) -> list[int]:
    """The kernel's unsent bytes (ss's notsent) of each connection to peers whose
    address starts with `peer_prefix`."""
    out = subprocess.run(["ss", "-tni", "state", "established", f"( sport = :{service.port} )"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    found = []
    for block in re.split(r"\n(?=\S)", out):
        if re.search(rf"\s{re.escape(peer_prefix)}\d+:\d+", block):
            m = re.search(r"notsent:(\d+)", block)
            found.append(int(m.group(1)) if m else 0)
    return found


@pytest.fixture
def children() -> Iterator[list[JsonLines]]:
    made: list[JsonLines] = []
    yield made
    for child in made:
        child.stop()


def test_slow_links_get_conflated_current_boards(children: list[JsonLines]) -> None:
    """The slow line carries about a quarter of what three protocol-1 readers of every
    symbol are offered: each gets merged frames of the latest state, so its board's age
    stays put (the line's delay and a frame or two), where a queue would age it by
    seconds every few seconds; the kernel holds at most NOTSENT_LOWAT and a frame unsent
    for each; no one is dropped as a slow consumer."""
    # The default settings: a slow reader is served, not cut. (With HEARTBEAT_S=1 the SDK,
    # which takes 2 * HEARTBEAT_S + 2 s of silence for a dead path, reconnected when this
    # line's retransmission stalls outlasted 4 s.)
    service = ServiceProcess({"HOST": "0.0.0.0", "SIM_RATE": "2000"})
    service.start()
    try:
        with hosts_on_links(SLOW, MEDIUM) as (slow, medium):
            heavy = ("--count", "2", "--encoding", "json", "--no-compression")
            slow_readers = readers(slow, ws_url(service, slow), "slow", *heavy)
            children.append(slow_readers)
            children.append(readers(medium, ws_url(service, medium), "medium", "--count", "2"))
            children.append(readers(None, service.ws_url, "local", "--count", "2"))
            for child in children:
                child.wait_for(lambda s: s.get("served") == s.get("count"), 20, "every board in")
            conflated = metric(service, "quote_service_quotes_conflated_total")
            start = time.monotonic()
            unsent: list[int] = []
            while time.monotonic() - start < 20:
                time.sleep(1)
                unsent += unsent_bytes(service, slow.address.rpartition(".")[0] + ".")
            got = list(slow_readers.lines)  # before the service stops
            assert metric(service, "quote_service_quotes_conflated_total") > conflated
    finally:
        # A slow reader's sender waiting on its socket takes the drain's close only when
        # its send ends or SEND_TIMEOUT_S cuts it; uvicorn's graceful 5 s end it sooner.
        service.stop(timeout=30)
    end = got[-1]["t"]
    print(f"\nslow readers' newest quote age, ms: {[s['age_ms_max'] for s in got[-40::4]]}; "
          f"kernel unsent bytes: max {max(unsent, default=0)}")
    first = [s["age_ms_max"] for s in got if end - 15 <= s["t"] < end - 10]
    last = [s["age_ms_max"] for s in got if s["t"] >= end - 5]
    window = [s for s in got if s["t"] >= end - 20]
    off = [(s["t"], s["served"], s["reconnects"], s["close_codes"]) for s in window
           if s["reconnects"] or s["served"] != 2]
    assert not off, (off, service.events("client_closed"))
    # Current: the newest quote on each slow board is seconds old at most, and no older at
    # the end than 10 s before (a queue adds about 0.6 s every second here).
    assert max(last) < 12_000, last
    assert statistics.median(last) < statistics.median(first) + 3_000, (first, last)
    assert unsent and max(unsent) <= NOTSENT_LOWAT + 65536, unsent


def node_watch(host: NetHost, url: str) -> JsonLines:
    node = "node"
    if not (NODE_MODULES / "ws" / "package.json").exists():
        pytest.fail("clients/js/node_modules is missing: run `make js`")
    return JsonLines(host.command([node, "test/netwatch.mjs", url]), ARTIFACTS / "net-node.log",
                     cwd=ROOT / "clients" / "js")


def test_a_dead_link_is_freed_and_the_sdks_come_back(children: list[JsonLines]) -> None:
    """Set down, the host's link drops everything without a word. The service, which sends
    a heartbeat every HEARTBEAT_S, finds the peer gone once TCP_USER_TIMEOUT
    (SEND_TIMEOUT_S * 2) passes without an ack, and frees the connection; the SDKs hear
    nothing for twice the heartbeat and reconnect once the link is back."""
    heartbeat_s, send_timeout_s = 1, 1
    service = ServiceProcess({"HOST": "0.0.0.0", "SIM_RATE": "50", "HEARTBEAT_S": str(heartbeat_s),
                              "SEND_TIMEOUT_S": str(send_timeout_s)})
    service.start()
    try:
        with hosts_on_links(LOCAL) as (host,):
            python = readers(host, ws_url(service, host), "dead-link", "--count", "2")
            children.append(python)
            js = node_watch(host, ws_url(service, host))
            children.append(js)
            python.wait_for(lambda s: s.get("live") == 2, 20, "the Python readers live")
            js.wait_for(lambda s: s.get("feed") == "live", 20, "the JS reader live")
            wait_ready(service, lambda _, r: r["connections"] == 3, 10, "three connections")
            host.down()
            freed = heartbeat_s + 2 * send_timeout_s + 3  # + the sweeper's pass and slack
            wait_ready(service, lambda _, r: r["connections"] == 0, freed,
                       "the service frees the dead link's connections")
            silence = 2 * heartbeat_s + 3 + 3  # the SDKs' silence limits, and slack
            python.wait_for(lambda s: s["live"] == 0, silence, "the Python readers notice")
            js.wait_for(lambda s: s["feed"] != "live", silence, "the JS reader notices")
            host.up()
            python.wait_for(lambda s: s["live"] == 2 and s["reconnects"] >= 2
                            and s["age_ms_max"] < 2000, 30, "the Python readers back and current")
            js.wait_for(lambda s: s["feed"] == "live" and s["reconnects"] >= 1
                        and s["age_ms"] is not None and s["age_ms"] < 2000, 30,
                        "the JS reader back and current")
            wait_ready(service, lambda _, r: r["connections"] == 3, 10, "three connections again")
    finally:
        service.stop()


def test_a_dead_path_to_redis_is_stale_then_recovers(tmp_path: Path, children: list[JsonLines]) -> None:
    """Redis and the publisher in a host of their own; the service reaches Redis over the
    link. Set down, the path drops everything (no refusal, no RST): the probe does not come
    back, and the feed is stale within FEED_SILENCE_S, to /readyz and to a client's status;
    with the link back the service subscribes again and is live."""
    with hosts_on_links(LOCAL) as (host,):
        redis = subprocess.Popen(
            host.command(["redis-server", "--port", "6379", "--bind", host.address, "127.0.0.1",
                          "--protected-mode", "no", "--save", "", "--appendonly", "no",
                          "--dir", str(tmp_path)]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
        publisher = JsonLines(host.command([sys.executable, "-m", "publisher", "simulate", "--rate", "20"]),
                              ARTIFACTS / "net-publisher.log",
                              env={"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_RETRY_MAX_S": "1"})
        children.append(publisher)
        silence_s = 3
        service = ServiceProcess({"REDIS_URL": f"redis://{host.address}:6379/0",
                                  "FEED_SILENCE_S": str(silence_s), "PROBE_INTERVAL_S": "0.5",
                                  "PROBE_TIMEOUT_S": "2", "REDIS_RETRY_MAX_S": "1"})
        try:
            service.start(ready="/readyz", timeout=20)
            client = readers(None, service.ws_url, "redis-path", "--count", "1")
            children.append(client)
            client.wait_for(lambda s: s.get("live") == 1, 15, "a live reader")
            host.down()
            report = wait_ready(service, lambda status, r: status == 503 and r["feed"] == "stale",
                                silence_s + 1, "stale within FEED_SILENCE_S")
            assert report["redis"] == "lost", report
            client.wait_for(lambda s: s["feeds"].get("stale") == 1, 3, "the reader told stale")
            host.up()
            wait_ready(service, lambda status, r: status == 200 and r["feed"] == "live", 20,
                       "live again once the path is back")
            client.wait_for(lambda s: s["live"] == 1 and s["age_ms_max"] < 2000, 10,
                            "the reader live and current")
        finally:
            service.stop()
            end_process(redis)


@pytest.mark.timeout(150)
def test_a_thousand_readers_behind_one_address(children: list[JsonLines]) -> None:
    """An office NAT: a thousand readers from one address, all at once, with the default
    settings (MAX_CONNECTS_PER_IP_PER_S 50, BURST 500): the burst is let in, the rest are
    told 1013 and come back on the SDK's back-off, and all hold a board within a bound. A
    second address then floods connects: held to its burst and rate (1013 past them),
    while the first address's readers stay connected and current."""
    service = ServiceProcess({"HOST": "0.0.0.0"})
    service.start()
    try:
        with hosts_on_links(LOCAL, LOCAL) as (office, flooder):
            crowd = readers(office, ws_url(service, office), "office", "--count", "1000",
                            "--symbols", "OGDC", "--max-hz", "1", "--report-s", "1")
            children.append(crowd)
            served = crowd.wait_for(lambda s: s.get("served") == 1000, 90, "all 1,000 served")
            print(f"\n1,000 readers behind one address: all held a board after {served['t']:.1f}s "
                  f"({served['close_codes']} closes on the way)")
            flood = readers(flooder, ws_url(service, flooder), "flood", "--flood", "--report-s", "1")
            children.append(flood)
            line = flood.wait_for(lambda s: s.get("refused", 0) >= 200, 40, "the flood refused")
            assert line["admitted"] <= 500 + 50 * (line["t"] + 2), line
            after = crowd.wait_for(lambda s: s["t"] > served["t"] + 1, 5, "a report after the flood")
            assert after["served"] == 1000 and after["reconnects"] == served["reconnects"], after
    finally:
        service.stop()
