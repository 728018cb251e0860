"""Test hosts on real links: a network namespace each, joined to the root namespace by a
point-to-point link with an optional delay, loss and rate, which can go down (no FIN,
no RST: the path just goes dead) and come back.

The link is a veth pair shaped by `tc netem` on both ends when the kernel has sch_netem;
without it (this project's CI VM: "Specified qdisc kind is unknown", and no modules to
load) it is a pair of TUN devices joined by tests/linkemu.py, a userspace emulator that
delays, drops and paces each packet. Either way both TCP stacks see a real slow, lossy
line. Programs run inside a host with `ip netns exec` (`NetHost.command`).

Host k of a run is 10.R.k.2, the root namespace 10.R.k.1 across its link (R is a second
octet no address or route here uses); a service that both sides reach listens on 0.0.0.0
in the root namespace, or a server runs inside a host. Names carry a per-run tag, and
everything (namespaces, devices, emulators) goes at the end of `hosts_on_links`, also on
failure. It all needs root: `netns_missing()` says why it cannot run here, and the tests
skip with that reason.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import selectors
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.service_proc import end_process

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Shape:
    """What a link does to every packet, each way: `rtt_ms` is the round trip (half of
    it each way), `loss` a fraction per direction, `rate_kbit` each way (0: unshaped)."""

    rtt_ms: float = 0.0
    loss: float = 0.0
    rate_kbit: float = 0.0
    # The line's buffer at the rate stage (a modem's, a carrier's): past it, tail drop.
    queue_bytes: int = 32768


LOCAL = Shape()


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


def netns_missing() -> str | None:
    """Why test hosts cannot be built here (None: they can)."""
    if sys.platform != "linux":
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, veth/TUN devices): run as root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    if not netem_available() and not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return "the kernel has neither sch_netem nor /dev/net/tun to shape a link with"
    probe = f"q25probe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def require_netns() -> None:
    """Skip the calling test, with the reason, where test hosts cannot be built."""
    reason = netns_missing()
    if reason is not None:
        pytest.skip(reason)


@functools.cache
def netem_available() -> bool:
    """Whether `tc qdisc add ... netem` works: tried on a throwaway veth pair."""
    tag = secrets.token_hex(3)
    a, b = f"qn{tag}a", f"qn{tag}b"
    if _ip("link", "add", a, "type", "veth", "peer", "name", b, check=False).returncode != 0:
        return False
    try:
        tried = subprocess.run(["tc", "qdisc", "add", "dev", a, "root", "netem", "delay", "1ms"],
                               capture_output=True, check=False)
        return tried.returncode == 0
    finally:
        _ip("link", "del", a, check=False)


def _free_octet() -> int:
    """A second octet R such that nothing here uses 10.R.0.0/16."""
    used = " ".join(subprocess.run(argv, capture_output=True, text=True, check=False).stdout
                    for argv in (["ip", "-4", "-o", "addr"], ["ip", "-4", "route", "show", "table", "all"]))
    taken = {int(m) for m in re.findall(r"\b10\.(\d+)\.", used)}
    if re.search(r"\b10\.0\.0\.0/8\b", used):
        raise RuntimeError("10.0.0.0/8 is routed here: no private range is free for test hosts")
    free = [r for r in range(64, 250) if r not in taken]
    return free[secrets.randbelow(len(free))]


class NetHost:
    """A namespace with one link to the root namespace."""


    def __init__(self, tag: str, index: int, octet: int, shape: Shape) -> None:
        self.name = f"q25-{tag}-{index}"
        self.inner = f"q{tag}i{index}"  # the host's end (eth0, as it were)
        self.outer = f"q{tag}o{index}"  # the root namespace's end
        self.address = f"10.{octet}.{index}.2"
        self.gateway = f"10.{octet}.{index}.1"  # the root namespace, as this host reaches it
        self.shape = shape
        self.emulator: subprocess.Popen[str] | None = None
        self.via = "local"

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this host."""
        return ["ip", "netns", "exec", self.name, *argv]

    def down(self) -> None:
        """The host's link goes dead: no FIN, no RST, no ICMP; packets just vanish."""
        _ip("link", "set", self.inner, "down", netns=self.name)

    def up(self) -> None:
        """The link back, addresses and routes as before."""
        _ip("link", "set", self.inner, "up", netns=self.name)

    def received_bytes(self) -> int:
        """Bytes that came in over the link to this host, as its kernel counts them."""
        out = _ip("-j", "-s", "link", "show", self.inner, netns=self.name).stdout
        return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])

    def _build(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "set", "lo", "up", netns=self.name)
        shape = self.shape
        if shape == LOCAL:
            _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        elif netem_available():
            self.via = "netem"
            _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
            for dev in (self.outer, self.inner):
                rule = ["delay", f"{shape.rtt_ms / 2}ms"]
                if shape.loss:
                    rule += ["loss", f"{shape.loss * 100}%"]
                if shape.rate_kbit:
                    rule += ["rate", f"{shape.rate_kbit}kbit",
                             "limit", str(max(8, shape.queue_bytes // 1500))]
                subprocess.run(["tc", "qdisc", "add", "dev", dev, "root", "netem", *rule],
                               check=True, capture_output=True, timeout=10)
        else:
            self.via = "linkemu"
            self._start_emulator()
        _ip("link", "set", self.inner, "netns", self.name)
        _ip("addr", "add", self.gateway, "peer", self.address, "dev", self.outer)
        _ip("link", "set", self.outer, "up")
        _ip("addr", "add", self.address, "peer", self.gateway, "dev", self.inner, netns=self.name)
        _ip("link", "set", self.inner, "up", netns=self.name)

    def _start_emulator(self) -> None:
        shape = self.shape
        self.emulator = subprocess.Popen(
            [sys.executable, "-m", "tests.linkemu", self.inner, self.outer,
             "--delay-ms", str(shape.rtt_ms / 2), "--loss", str(shape.loss),
             "--rate-kbit", str(shape.rate_kbit), "--queue-bytes", str(shape.queue_bytes)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True)
        assert self.emulator.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.emulator.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=10) and self.emulator.stdout.readline().strip() == "ready"
        if not ready:
            self.emulator.kill()
            _, err = self.emulator.communicate(timeout=5)
            raise RuntimeError(f"the link emulator did not start: {err.strip()}")

    def _destroy(self) -> None:
        if self.emulator is not None:
            end_process(self.emulator)
        _ip("link", "del", self.outer, check=False)
        _ip("netns", "del", self.name, check=False)


@contextmanager
def hosts_on_links(*shapes: Shape) -> Iterator[list[NetHost]]:
    """One host per shape, built now and removed at the end, whatever happens."""
    tag = secrets.token_hex(2)
    octet = _free_octet()
    with ExitStack() as cleanup:
        hosts = []
        for index, shape in enumerate(shapes, start=1):
            host = NetHost(tag, index, octet, shape)
            cleanup.callback(host._destroy)
            host._build()
            hosts.append(host)
        yield hosts


def wait_reachable(host: NetHost, port: int, address: str | None = None, timeout: float = 10.0) -> None:
    """Until a TCP connect from `host` to `address` (its gateway) on `port` succeeds."""
    target = address or host.gateway
    code = (f"import socket,sys\ntry:\n socket.create_connection(({target!r},{port}),timeout=2).close()\n"
            "except OSError: sys.exit(1)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tried = subprocess.run(host.command([sys.executable, "-c", code]), capture_output=True, check=False)
        if tried.returncode == 0:
            return
        time.sleep(0.2)
    pytest.fail(f"{target}:{port} not reachable from {host.name} in {timeout}s")


class JsonLines:
    """A child (in a host or not) that prints one JSON object a line: its lines as they
    come, read on a thread, its stderr in a file for the failure message."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> None:
        self.log = log
        self.lines: list[dict[str, Any]] = []
        self._err = open(log, "wb")  # noqa: SIM115 - closed in stop()
        # Never a developer's REDIS_URL: only what the test gives.
        inherited = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        self.proc = subprocess.Popen(list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=self._err,
                                     stdin=subprocess.DEVNULL, env={**inherited, **(env or {})})
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                line["at"] = time.monotonic()  # when it came, on this process's clock
                self.lines.append(line)

    @property
    def latest(self) -> dict[str, Any]:
        return self.lines[-1] if self.lines else {}

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
                 ) -> dict[str, Any]:
        """The first line from now on (the latest included) that satisfies `predicate`."""
        start = max(0, len(self.lines) - 1)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[start:]:
                if predicate(line):
                    return line
            start = max(start, len(self.lines) - 1)
            if time.monotonic() > deadline or self.proc.poll() is not None:
                pytest.fail(f"not within {timeout}s: {what}; last lines {self.lines[-3:]}\n"
                            f"{self.stderr()}")
            time.sleep(0.05)

    def stderr(self) -> str:
        self._err.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        end_process(self.proc, timeout=10)
        self._err.close()
