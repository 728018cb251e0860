"""Run the real service (`python -m service`) and publisher as subprocesses for tests."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"


def http_fetch(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
               ) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased names) and body, a 4xx or 5xx included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def end_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """Terminate a child the test started, then kill it if it does not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class ChildProcess:
    """`python -m MODULE ARGS` with its output in tests/artifacts, stopped by PID."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None, name: str) -> None:
        self.argv = [sys.executable, "-m", *argv]
        # Never inherit a developer's REDIS_URL: tests use only servers they started.
        inherited = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        self.env = {**inherited, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log_path = ARTIFACTS / f"{name}.log"
        self.log_path.unlink(missing_ok=True)  # a port of an earlier run: not our lines

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

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
            pytest.fail(f"{self.argv} did not stop on SIGTERM in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def events(self, event: str) -> list[dict[str, object]]:
        """The JSON log lines (the format when stderr is not a terminal) of that event."""
        found = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
        return found


class ServiceProcess(ChildProcess):
    """The service on a free port; `restart()` keeps the port so clients can come back."""

    def __init__(self, env: Mapping[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__(["service"], {"HOST": "127.0.0.1", "PORT": str(self.port), **(env or {})},
                         f"service-{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, ready: str = "/healthz", timeout: float = 15.0) -> None:
        self.spawn()
        assert self.proc is not None
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

    def restart(self) -> None:
        self.stop()
        self.start()

    def wait_workers(self, n: int, timeout: float = 15.0) -> list[dict[str, object]]:
        """Until the supervisor has logged `n` workers ready; their worker_ready lines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = self.events("worker_ready")
            if len(ready) >= n:
                return ready
            time.sleep(0.05)
        pytest.fail(f"{n} workers not ready in {timeout}s:\n{self.log()}")


class PublisherProcess(ChildProcess):
    """`python -m publisher simulate` into the given Redis."""

    def __init__(self, redis_url: str, rate: float = 50, env: Mapping[str, str] | None = None
                 ) -> None:
        super().__init__(["publisher", "simulate", "--rate", str(rate)],
                         {"REDIS_URL": redis_url, **(env or {})}, f"publisher-{free_port()}")

    def start(self) -> None:
        self.spawn()


def run_module(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m ARGV` to its end, without a developer's REDIS_URL; the caller checks it."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def replay_file(redis_url: str, path: Path) -> subprocess.CompletedProcess[str]:
    """`python -m publisher replay FILE` into that Redis; the caller checks the result."""
    return subprocess.run(
        [sys.executable, "-m", "publisher", "replay", str(path)], check=False, cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_url}, capture_output=True, text=True, timeout=30,
    )


def replay(redis_url: str, text: str, path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(text, encoding="utf-8")
    return replay_file(redis_url, path)


def wait_publisher_silent(service: ServiceProcess, timeout: float = 10.0) -> None:
    """Until /readyz says stale because Redis is heard and the publisher is not (the feed
    is also stale for a moment at start, before Redis was reached, and that one turns live)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = http_get(service.url + "/readyz")
        report = orjson.loads(body)
        if status == 503 and report["redis"] == "connected" and report["publisher"] == "silent":
            return
        time.sleep(0.1)
    pytest.fail(f"the feed did not go stale in {timeout}s:\n{service.log()}")


@contextmanager
def feed_stack(redis_url: str, rate: float, env: Mapping[str, str] | None = None,
               ready: str = "/healthz") -> Iterator[tuple[ServiceProcess, PublisherProcess]]:
    """The service and `publisher simulate` on one REDIS_URL (any topology), stopped after."""
    service = ServiceProcess({"REDIS_URL": redis_url, **(env or {})})
    publisher = PublisherProcess(redis_url, rate=rate, env={"REDIS_RETRY_MAX_S": "1"})
    try:
        service.start(ready)
        publisher.start()
        yield service, publisher
    finally:
        publisher.stop()
        service.stop()


def run_service(env: Mapping[str, str] | None = None, ready: str = "/healthz"
                ) -> Iterator[ServiceProcess]:
    service = ServiceProcess(env)
    service.start(ready)
    try:
        yield service
    finally:
        service.stop()


def run_example(python: str, code: str, service: ServiceProcess, cwd: Path, lines: int,
                env: Mapping[str, str] | None = None) -> list[str]:
    """A documented example (its one ws://127.0.0.1:8000/ws pointed at `service`), run
    until it printed `lines` lines, 20 s at most: those lines."""
    assert code.count("ws://127.0.0.1:8000/ws") == 1
    script = cwd / "example.py"
    script.write_text(code.replace("ws://127.0.0.1:8000/ws", service.ws_url), encoding="utf-8")
    proc = subprocess.Popen([python, str(script)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    got: list[str] = []
    with selectors.DefaultSelector() as waiting:
        waiting.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 20
        try:
            while len(got) < lines and waiting.select(timeout=max(0.0, deadline - time.monotonic())):
                line = proc.stdout.readline()
                if not line:
                    break
                got.append(line.rstrip("\n"))
        finally:
            proc.kill()
            _, err = proc.communicate(timeout=10)
    assert len(got) == lines, f"the example printed {got} and then stopped:\n{err}"
    return got
