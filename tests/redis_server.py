"""A private redis-server for tests: its own free port, no persistence, stopped by PID.

Reusable from any test module (`from tests.redis_server import redis_url`) or from
conftest.py. It never touches a Redis the developer may run on 6379.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def start_redis_server(attempts: int = 3) -> Iterator[str]:
    """Yield `redis://127.0.0.1:PORT/0` of a fresh server; retried on a port race."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server not found: apt-get install redis-server")
    with tempfile.TemporaryDirectory(prefix="test-redis-") as workdir:
        log_path = Path(workdir) / "redis.log"
        for attempt in range(attempts):
            port = free_port()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", workdir],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )
            try:
                deadline = time.monotonic() + START_TIMEOUT_S
                while proc.poll() is None and time.monotonic() < deadline:
                    if _pings(port):
                        break
                    time.sleep(0.02)
                else:
                    log_text = log_path.read_text(errors="replace")[-2000:]
                    _stop(proc)
                    if attempt + 1 < attempts:
                        continue
                    pytest.fail(f"redis-server did not start on port {port}:\n{log_text}")
                yield f"redis://127.0.0.1:{port}/0"
                return
            finally:
                _stop(proc)


@pytest.fixture
def redis_url() -> Iterator[str]:
    with start_redis_server() as url:
        yield url
