"""A private redis-server for tests: its own free port, no persistence, stopped by PID.

Reusable from any test module (`from tests.redis_server import redis_url`). It never
touches a Redis the developer may run on 6379. `RedisServer` can be killed, frozen and
restarted on the same port, empty, as fault tests need.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from quote_bus.layout import Layout

# The default layout, as publisher and service use it unless REDIS_PREFIX/PARTITIONS say.
LAYOUT = Layout()
CHANNELS = [LAYOUT.channel(p) for p in range(LAYOUT.partitions)]

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))  # up, with or without a password
    except OSError:
        return False


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, args: Sequence[str] = (),
                 config: Path | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server not found: apt-get install redis-server")
        self.exe = exe
        self.workdir = workdir
        self.port = port or free_port()
        self.args = list(args)
        # A config file must be redis-server's first argument (a sentinel needs one, and
        # writes to it, so it belongs in `workdir`).
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> bool:
        """Start (again, empty) on this port; False if it did not answer in time."""
        config = [str(self.config)] if self.config else []
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, *config, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.workdir), *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            if _pings(self.port):
                return True
            time.sleep(0.02)
        self.stop()
        return False

    def kill(self) -> None:
        """Die at once, as a crashed server does: no goodbye to its clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def freeze(self) -> None:
        """Stopped but with its sockets open: the failure only a probe notices."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]


@contextmanager
def redis_server(attempts: int = 3, args: Sequence[str] = ()) -> Iterator[RedisServer]:
    """A started server, retried on a port race, stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="test-redis-") as workdir:
        for _ in range(attempts):
            server = RedisServer(Path(workdir), args=args)
            if server.start():
                break
        else:
            pytest.fail(f"redis-server did not start:\n{server.log()}")
        try:
            yield server
        finally:
            server.stop()


@contextmanager
def start_redis_server(attempts: int = 3) -> Iterator[str]:
    """Yield `redis://127.0.0.1:PORT/0` of a fresh server."""
    with redis_server(attempts) as server:
        yield server.url


@pytest.fixture
def redis_url() -> Iterator[str]:
    with start_redis_server() as url:
        yield url


def latest_in_redis(url: str) -> dict[str, bytes]:
    """symbol -> the latest quote JSON, from every partition's hash (-1 as a sign of trouble
    is the caller's business: this raises if Redis cannot be read)."""
    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        out: dict[str, bytes] = {}
        for p in range(LAYOUT.partitions):
            out.update({k.decode(): v for k, v in client.hgetall(LAYOUT.latest(p)).items()})
        return out
    finally:
        client.close()
