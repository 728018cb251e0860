"""A userspace link emulator: delay, random loss and a rate, between two TUN devices.

Why: test hosts (tests/netns.py) want real delay, loss and rate on their link, which is
`tc qdisc ... netem`'s job, but a kernel without sch_netem (this project's CI VM has none,
and no modules to load) has no delay of its own (tbf gives a rate, iptables' statistic
match loss, nothing a delay). So this process holds two TUN devices, an inner one (moved
into the host's namespace) and an outer one (in the root namespace), and forwards each IP
packet between them after the link's delay, dropping some at random and pacing them
through a token bucket with a bounded queue, as a slow line with a modem's buffer does.
Both kernels' TCP stacks then see real delay, loss and rate.

`python -m tests.linkemu INNER OUTER [--delay-ms D] [--loss P] [--rate-kbit R]
[--queue-bytes Q]` creates both devices, prints `ready` and forwards until SIGTERM; closing
the devices' file descriptors removes them (they are not persistent). Each direction is
shaped the same way: `--delay-ms` is one way (an RTT of 2x), `--loss` a fraction (0.02).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import os
import random
import selectors
import signal
import struct
import sys
import time
from types import FrameType

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MTU = 1500


def open_tun(name: str) -> int:
    """A non-persistent TUN device called `name`, without packet-information headers."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Direction:
    """One way of the link: packets waiting to be delivered, in delivery order (a constant
    delay after a FIFO rate stage keeps the order)."""

    def __init__(self, source: int, sink: int, delay_s: float, loss: float,
                 rate_bps: float, queue_bytes: int, rng: random.Random) -> None:
        self.source, self.sink = source, sink
        self.delay_s, self.loss, self.rate_bps, self.queue_bytes = delay_s, loss, rate_bps, queue_bytes
        self.rng = rng
        self.busy_until = 0.0  # when the rate stage has sent what it took
        self.due: collections.deque[tuple[float, bytes]] = collections.deque()
        self.dropped = 0

    def take(self, now: float) -> None:
        """Read what the source has; each packet lost, dropped by a full queue, or due."""
        while True:
            try:
                packet = os.read(self.source, MTU + 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the device went down: nothing to read for now
                return
            if not packet:
                return
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                continue
            sent = now
            if self.rate_bps:
                start = max(now, self.busy_until)
                if (start - now) * self.rate_bps / 8 + len(packet) > self.queue_bytes:
                    self.dropped += 1  # the line's buffer is full: tail drop
                    continue
                self.busy_until = sent = start + len(packet) * 8 / self.rate_bps
            self.due.append((sent + self.delay_s, packet))

    def deliver(self, now: float) -> float | None:
        """Write what is due; when the next packet is (None: nothing waits)."""
        while self.due and self.due[0][0] <= now:
            _, packet = self.due.popleft()
            with contextlib.suppress(OSError):  # the other side is down: lost, as on a wire
                os.write(self.sink, packet)
        return self.due[0][0] if self.due else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.linkemu", description=__doc__.split("\n")[0])
    parser.add_argument("inner")
    parser.add_argument("outer")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--rate-kbit", type=float, default=0.0)
    parser.add_argument("--queue-bytes", type=int, default=32768)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if not 0 <= args.loss < 1 or args.delay_ms < 0 or args.rate_kbit < 0 or args.queue_bytes < MTU:
        parser.error("want 0 <= loss < 1, delay and rate >= 0, queue at least one MTU")
    inner, outer = open_tun(args.inner), open_tun(args.outer)
    rng = random.Random(args.seed)
    shape = (args.delay_ms / 1000, args.loss, args.rate_kbit * 1000, args.queue_bytes, rng)
    ways = {inner: Direction(inner, outer, *shape), outer: Direction(outer, inner, *shape)}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    with selectors.DefaultSelector() as sel:
        for fd in ways:
            sel.register(fd, selectors.EVENT_READ)
        wake: float | None = None
        while not stopping:
            now = time.monotonic()
            timeout = None if wake is None else max(0.0, wake - now)
            for key, _ in sel.select(timeout):
                ways[key.fd].take(time.monotonic())
            now = time.monotonic()
            nexts = [t for t in (w.deliver(now) for w in ways.values()) if t is not None]
            wake = min(nexts) if nexts else None
    for fd in ways:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
