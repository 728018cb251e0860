"""Run the real service (`python -m service`) as a subprocess for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ServiceProcess:
    """The service on a free port; `restart()` keeps the port so clients can come back."""

    def __init__(self, env: Mapping[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        # Never inherit a developer's REDIS_URL: tests use only servers they started.
        inherited = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        self.env = {**inherited, "HOST": "127.0.0.1", "PORT": str(self.port), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = ROOT / "tests" / "artifacts" / f"service-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, ready: str = "/healthz", timeout: float = 15.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"service exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if http_get(self.url + ready, timeout=0.5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"service not ready on {self.url}{ready} in {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (a graceful shutdown), then SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"service did not stop on SIGTERM in {timeout}s:\n{self.log()}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def run_service(env: Mapping[str, str] | None = None, ready: str = "/healthz") -> Iterator[ServiceProcess]:
    service = ServiceProcess(env)
    service.start(ready)
    try:
        yield service
    finally:
        service.stop()
