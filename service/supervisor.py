"""WORKERS=N: N serving processes on one port, kept running by a small supervisor.

Each worker binds its own SO_REUSEPORT socket, so the kernel spreads new connections
evenly over them and a worker that stops takes its socket out of the spread at once.
Each holds its own Redis subscription and its own clients; nothing is shared but the port
and the directory of prometheus-client's multiprocess mode, so that a scrape of any
worker answers for the host.

The supervisor restarts a worker that dies (its clients reconnect to the others and get
a fresh snapshot), passes SIGTERM on (every client gets 1001, spread over DRAIN_S), and
gives up with exit 1 when workers keep dying right after they start, or at once when one
reports a configuration error (exit 3), so a bad setting never becomes a restart loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from quote_runtime.exits import EXIT_CONFIG

from .metrics import MULTIPROC_ENV
from .settings import Settings

log = logging.getLogger("service.supervisor")


class GiveUp(Exception):
    """Restarting would not help; the message says why."""


class RestartPolicy:
    """When to restart a worker that died, and when to stop trying (sans I/O).

    A death within `min_uptime_s` of its start is a failed start; `max_failed_starts` of
    those in a row, from any worker, mean the cause is not going away. A worker that ran
    longer is replaced at once and resets the count."""

    def __init__(self, min_uptime_s: float = 10.0, max_failed_starts: int = 3) -> None:
        self.min_uptime_s = min_uptime_s
        self.max_failed_starts = max_failed_starts
        self.failed_starts = 0

    def died(self, exit_code: int | None, uptime_s: float) -> float:
        """Seconds to wait before the replacement starts; GiveUp if none should."""
        if exit_code == EXIT_CONFIG:
            raise GiveUp(f"a worker exited with {EXIT_CONFIG}: a configuration error "
                         "(its log line above says which); restarting cannot fix it")
        if uptime_s >= self.min_uptime_s:
            self.failed_starts = 0
            return 0.0
        self.failed_starts += 1
        if self.failed_starts >= self.max_failed_starts:
            raise GiveUp(f"workers keep dying at start ({self.failed_starts} in a row within "
                         f"{self.min_uptime_s:g}s of starting); see their log lines above")
        return 0.5 * 2.0 ** (self.failed_starts - 1)


def describe(exit_code: int | None) -> str:
    if exit_code is None:
        return "running"
    if exit_code < 0:
        return f"killed by {signal.Signals(-exit_code).name}"
    return f"exit code {exit_code}"


@dataclass
class Worker:
    slot: int
    proc: subprocess.Popen[bytes]
    lifeline: socket.socket
    started: float
    node: str | None = None
    buffer: bytes = field(default=b"")


class Supervisor:
    def __init__(self, settings: Settings, worker_args: Sequence[str] = (),
                 policy: RestartPolicy | None = None) -> None:
        self.settings = settings
        self.worker_args = list(worker_args)
        self.policy = policy or RestartPolicy()
        self.workers: dict[int, Worker] = {}
        self.pending: dict[int, float] = {}  # slot -> when to start its replacement
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.metrics_dir: Path | None = None
        self._own_metrics_dir = False

    # Lifetime

    def run(self) -> int:
        settings = self.settings
        reason = self._port_taken()
        if reason is not None:
            log.error("cannot listen on %s:%d: %s", settings.host, settings.port, reason,
                      extra={"event": "fatal", "reason": reason})
            return 1
        self._metrics_dir()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        log.info("supervising %d workers on http://%s:%d", settings.workers, settings.host,
                 settings.port, extra={"event": "supervisor_start", "pid": os.getpid(),
                                       "workers": settings.workers})
        try:
            for slot in range(settings.workers):
                self._spawn(slot)
            while not self.stopping:
                self._step()
            return self._stop_all()
        except GiveUp as exc:
            log.error("giving up: %s", exc, extra={"event": "gave_up", "reason": str(exc)})
            self._stop_all()
            return 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._own_metrics_dir and self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("%s: stopping the workers", signal.Signals(signum).name,
                     extra={"event": "stopping"})
        self.stopping = True

    def _port_taken(self) -> str | None:
        """Bind once without SO_REUSEPORT: that fails if anything listens there already,
        including workers of another supervisor, which we must not join by accident."""
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.settings.host, self.settings.port))
            except OSError as exc:
                return str(exc)
        return None

    def _metrics_dir(self) -> None:
        """prometheus-client's multiprocess mode: every worker writes its values under one
        directory, which must start empty."""
        given = self.settings.prometheus_multiproc_dir
        if given:
            self.metrics_dir = Path(given)
            self.metrics_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.metrics_dir.glob("*.db"):
                stale.unlink()
        else:
            self.metrics_dir = Path(tempfile.mkdtemp(prefix="quote-service-metrics-"))
            self._own_metrics_dir = True

    # Workers

    def _spawn(self, slot: int) -> None:
        ours, theirs = socket.socketpair()
        env = {**os.environ, MULTIPROC_ENV: str(self.metrics_dir)}
        argv = [sys.executable, "-m", "service", "--worker-fd", str(theirs.fileno()),
                *self.worker_args]
        proc = subprocess.Popen(argv, env=env, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        ours.setblocking(False)
        worker = Worker(slot, proc, ours, time.monotonic())
        self.workers[slot] = worker
        self.selector.register(ours, selectors.EVENT_READ, worker)

    def _step(self) -> None:
        for key, _ in self.selector.select(timeout=0.1):
            self._read(key.data)
        now = time.monotonic()
        for worker in list(self.workers.values()):
            code = worker.proc.poll()
            if code is not None:
                self._reap(worker, code, now)
        for slot, due in list(self.pending.items()):
            if now >= due and not self.stopping:
                del self.pending[slot]
                self._spawn(slot)

    def _read(self, worker: Worker) -> None:
        try:
            data = worker.lifeline.recv(256)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # it is exiting; _step reaps it
            self.selector.unregister(worker.lifeline)
            return
        worker.buffer += data
        while b"\n" in worker.buffer:
            line, worker.buffer = worker.buffer.split(b"\n", 1)
            word, _, node = line.decode(errors="replace").partition(" ")
            if word == "ready":
                worker.node = node
                log.info("worker %d ready (pid %d, node %s)", worker.slot, worker.proc.pid, node,
                         extra={"event": "worker_ready", "slot": worker.slot,
                                "worker_pid": worker.proc.pid, "worker_node": node})

    def _forget(self, worker: Worker) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(worker.lifeline)
        worker.lifeline.close()
        self.workers.pop(worker.slot, None)
        self._mark_dead(worker.proc.pid)

    def _mark_dead(self, pid: int) -> None:
        """Its live gauges (connections...) leave the host's sums; its counters stay, so
        totals never go backwards."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]

    def _reap(self, worker: Worker, code: int, now: float) -> None:
        self._forget(worker)
        uptime = now - worker.started
        log.warning("worker %d (pid %d, node %s) died after %.1fs: %s", worker.slot,
                    worker.proc.pid, worker.node, uptime, describe(code),
                    extra={"event": "worker_died", "slot": worker.slot, "worker_pid": worker.proc.pid,
                           "worker_node": worker.node, "exit_code": code})
        delay = self.policy.died(code, uptime)
        self.pending[worker.slot] = now + delay

    def _stop_all(self) -> int:
        """SIGTERM every worker (each drains its clients), then wait; SIGKILL stragglers."""
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_s + 10
        for worker in list(self.workers.values()):
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop in time; killing it", worker.slot,
                          worker.proc.pid)
                worker.proc.kill()
                worker.proc.wait(5)
            self._forget(worker)
        log.info("all workers stopped", extra={"event": "stop", "pid": os.getpid()})
        return 0
