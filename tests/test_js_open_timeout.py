"""The JS client gives up a handshake that never completes and tries again.

A path that drops packets while its route stays up (a dead Wi-Fi, a firewall that drops)
holds a TCP connect for the kernel's SYN retries, about two minutes, and Node's `ws` has
no handshake timeout of its own. Here the dropped SYNs are real: a listening socket that
never accepts, its backlog full, makes the kernel drop further SYNs without an answer
(tcp_abort_on_overflow is 0 by default). After `RECONNECT.openTimeoutMs` the stream
opens a new socket; once the service listens on that port, it goes live.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.redis_server import free_port
from tests.service_proc import ServiceProcess
from tests.test_js_client import JS, require_node

OPEN_TIMEOUT_S = 10  # RECONNECT.openTimeoutMs (tests/test_core_vocabulary.py holds it)

SCRIPT = r"""
import WebSocket from 'ws';
import { connect } from 'quote-stream';

// Every socket the stream opens, as a line; then its statuses and first quote.
const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
class Counted extends WebSocket {
  constructor(...args) { super(...args); out({ socket: Date.now() }); }
}
const stream = connect(process.argv[1], { WebSocket: Counted });
stream.on('status', (feed) => out({ feed }));
stream.on('quote', (q) => { out({ quote: q.symbol }); process.exit(0); });
stream.subscribe(['OGDC']);
"""


class BlackHole:
    """A port whose SYNs go unanswered: listening, never accepting, its backlog full."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        hole = socket.socket()
        self.sockets.append(hole)
        hole.bind(("127.0.0.1", free_port()))
        hole.listen(0)
        self.port: int = hole.getsockname()[1]
        while True:  # fill the accept queue until a connect hangs
            filler = socket.socket()
            filler.settimeout(0.5)
            self.sockets.append(filler)
            try:
                filler.connect(("127.0.0.1", self.port))
            except TimeoutError:
                return
            assert len(self.sockets) < 16, "the kernel answered every SYN: no dropped-SYN path here"

    def close(self) -> None:
        """The path comes back: the port is free again (what waited in the queue is reset)."""
        for s in self.sockets:
            s.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


def test_a_handshake_that_hangs_is_given_up_and_retried(black_hole: BlackHole) -> None:
    node = require_node()
    url = f"ws://127.0.0.1:{black_hole.port}/ws"
    proc = subprocess.Popen([node, "--input-type=module", "-e", SCRIPT, url], cwd=JS,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    service = ServiceProcess(port=black_hole.port)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        opened: list[float] = []
        while len(opened) < 2:  # the first socket, and the one after its open timeout
            line = proc.stdout.readline()
            assert line, f"node ended: {proc.stderr.read()}"
            event = json.loads(line)
            assert "quote" not in event
            if "socket" in event:
                opened.append(time.monotonic())
        assert opened[1] - opened[0] >= OPEN_TIMEOUT_S - 0.5, "given up before its timeout"
        # The path comes back and the service takes the port: the stream goes live (a
        # socket opened meanwhile into the hole may hang one more open timeout).
        black_hole.close()
        service.start()
        assert proc.wait(timeout=3 * OPEN_TIMEOUT_S + 20) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(5)
        service.stop()
