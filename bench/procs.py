"""Child processes for the benchmark: pinned, with a raised open-file limit, sampled.

Every child is started by PID and stopped by PID (SIGTERM, then SIGKILL); nothing is
ever stopped by name.
"""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
NOFILE = 65536


def raise_nofile(want: int = NOFILE) -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for target in (max(want, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, target), target))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, everything-else CPUs): with 2+ CPUs the server under test gets CPU 0
    to itself and Redis, the publisher and the load client share the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


class Child:
    """One child process, its output in a log file (or piped, for the load client)."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, log_dir: Path, cpus: set[int] | None = None,
                 pipe: bool = False) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **(env or {})}

        def setup() -> None:  # runs in the child between fork and exec
            raise_nofile()
            if cpus:
                os.sched_setaffinity(0, cpus)

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=cwd, env=full_env, preexec_fn=setup,
                stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else log,
                stderr=log,
            )
        self.lines: queue.Queue[bytes] = queue.Queue()
        if pipe:
            assert self.proc.stdout is not None
            threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(b"")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(obj) + b"\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no answer in {timeout:.0f}s") from None
        if not line:
            raise ConnectionError(f"{self.name} exited ({self.proc.poll()}):\n{self.log_tail()}")
        return orjson.loads(line)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return self.proc.returncode

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def read_proc(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, RSS in KiB) of one process (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    with open(f"/proc/{pid}/statm", "rb") as f:
        rss_pages = int(f.read().split()[1])
    return cpu, rss_pages * PAGE_KB


def cpu_times() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies since boot, from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *values = line.split()
            ticks = [int(v) for v in values[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return out


def busy_pct(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]],
             cpus: set[int] | None) -> float:
    """How busy `cpus` (None: all) were between two cpu_times(), in % of their capacity:
    everything that ran there counts, our processes and anyone else's."""
    keys = sorted(cpus) if cpus else sorted(after)
    busy = sum(after[k][0] - before[k][0] for k in keys if k in before)
    total = sum(after[k][1] - before[k][1] for k in keys if k in before)
    return round(100 * busy / total, 1) if total else 0.0


class Sampler:
    """CPU share and RSS of one process over a window, sampled every `interval`."""

    def __init__(self, pid: int, interval: float = 0.25,
                 cpus: tuple[set[int] | None, set[int] | None] = (None, None)) -> None:
        self.pid = pid
        self.cpus = cpus
        self.cpu_times0 = cpu_times()
        self.interval = interval
        self._stop = threading.Event()
        self.rss_max = 0
        self.rss_end = 0
        self.cpu0, rss = read_proc(pid)
        self.rss_start = rss
        self.t0 = time.monotonic()
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                _, rss = read_proc(self.pid)
            except (OSError, ValueError):
                return
            self.rss_max = max(self.rss_max, rss)

    def stop(self) -> dict[str, float | None]:
        self._stop.set()
        self._thread.join()
        try:
            cpu, rss = read_proc(self.pid)
        except (OSError, ValueError):
            cpu, rss = self.cpu0, 0
        self.wall_s = time.monotonic() - self.t0
        self.cpu_s = cpu - self.cpu0
        self.rss_end = rss
        self.rss_max = max(self.rss_max, rss)
        times = cpu_times()
        server_cpus, load_cpus = self.cpus
        return {
            "server_core_busy_pct": busy_pct(self.cpu_times0, times, server_cpus)
            if server_cpus else None,
            "load_core_busy_pct": busy_pct(self.cpu_times0, times, load_cpus)
            if load_cpus else None,
            "machine_busy_pct": busy_pct(self.cpu_times0, times, None),
            "cpu_pct": round(100 * self.cpu_s / self.wall_s, 1) if self.wall_s else 0.0,
            "rss_start_mb": round(self.rss_start / 1024, 1),
            "rss_max_mb": round(self.rss_max / 1024, 1),
            "rss_end_mb": round(self.rss_end / 1024, 1),
        }


def port_open(port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def server_sockets(port: int) -> dict[int, tuple[int, int]]:
    """The server side of every TCP connection to 127.0.0.1:`port`, from /proc/net/tcp:
    client port -> (state, bytes in the kernel send queue). State 1 is ESTABLISHED."""
    out: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError), open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if int(local.split(":")[1], 16) != port:
                continue
            out[int(remote.split(":")[1], 16)] = (int(state, 16), int(queues.split(":")[0], 16))
    return out
