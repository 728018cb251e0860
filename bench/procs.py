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
        self.leftovers = 0  # descendants that outlived this process and were signalled
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
        """SIGTERM, then SIGKILL after `timeout`; then the same for any descendant still
        there (a supervisor's workers): a run never leaves a process behind."""
        descendants: list[tuple[int, bytes]] = []
        if self.proc.poll() is None:
            descendants = [(p, start_time(p)) for p in tree_pids(self.pid)[1:]]
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(5)
        self.leftovers = stop_pids(descendants, min(timeout, 5.0))
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


def start_time(pid: int) -> bytes:
    """A process's start time (field 22 of /proc/PID/stat): with the pid, it names one
    process, never a later one that reused the pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return b""


def stop_pids(procs: Sequence[tuple[int, bytes]], timeout: float) -> int:
    """Wait up to `timeout` for these (pid, start time) to exit, SIGTERM and then SIGKILL
    the ones that do not; how many had to be signalled."""
    def alive() -> list[int]:
        return [p for p, t in procs if t and start_time(p) == t]

    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = alive()
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        for p in alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        end = time.monotonic() + wait
        while alive() and time.monotonic() < end:
            time.sleep(0.05)
    return len(left)


def _children(pid: int) -> list[int]:
    """Direct children of `pid`: /proc/PID/task/*/children (CONFIG_PROC_CHILDREN), else a
    scan of every /proc/*/stat for its ppid."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    found = False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += [int(c) for c in f.read().split()]
            found = True
        except OSError:
            continue
    if found:
        return out
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rindex(b")") + 2:].split()[1]) == pid:
            out.append(int(name))
    return out


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (a WORKERS=N supervisor and its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        todo += _children(p)
    return out


def read_tree(pid: int) -> dict[int, tuple[float, int]]:
    """read_proc() of `pid` and each of its descendants that is still there: pid -> (CPU
    seconds, RSS KiB). Raises OSError when `pid` itself is gone."""
    out = {pid: read_proc(pid)}
    for p in tree_pids(pid)[1:]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            out[p] = read_proc(p)
    return out


def tree_rss_kb(pid: int) -> int:
    """RSS of a process tree, summed (pages shared between its processes count once per
    process, as in `ps`; the workers are exec'd, not forked, so little is shared)."""
    return sum(rss for _, rss in read_tree(pid).values())


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
    """CPU share and RSS of a process tree (the process and every descendant: a WORKERS=N
    supervisor and its workers) over a window, sampled every `interval`. CPU is summed
    over the processes (a process that exits in the window counts up to its last
    sample); RSS is the sum of the processes' RSS at each sample."""

    def __init__(self, pid: int, interval: float = 0.25,
                 cpus: tuple[set[int] | None, set[int] | None] = (None, None)) -> None:
        self.pid = pid
        self.cpus = cpus
        self.cpu_times0 = cpu_times()
        self.interval = interval
        self._stop = threading.Event()
        self.rss_max = 0
        self.rss_end = 0
        first = read_tree(pid)
        self.cpu_first = {p: cpu for p, (cpu, _) in first.items()}
        self.cpu_last = dict(self.cpu_first)
        self.rss_last = {p: rss for p, (_, rss) in first.items()}
        self.rss_start = sum(rss for _, rss in first.values())
        self.procs_max = len(first)
        self.t0 = time.monotonic()
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _take(self) -> int:
        tree = read_tree(self.pid)
        for p, (cpu, rss) in tree.items():
            self.cpu_last[p] = cpu
            self.rss_last[p] = rss
        self.procs_max = max(self.procs_max, len(tree))
        rss = sum(r for _, r in tree.values())
        self.rss_max = max(self.rss_max, rss)
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._take()
            except (OSError, ValueError):
                return

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        try:
            rss = self._take()
        except (OSError, ValueError):
            rss = 0
        self.wall_s = time.monotonic() - self.t0
        # A process born in the window counts from 0 (it started inside it).
        per_proc = {p: cpu - self.cpu_first.get(p, 0.0) for p, cpu in self.cpu_last.items()}
        self.cpu_s = sum(per_proc.values())
        self.rss_end = rss
        times = cpu_times()
        server_cpus, load_cpus = self.cpus
        return {
            "server_core_busy_pct": busy_pct(self.cpu_times0, times, server_cpus)
            if server_cpus else None,
            "load_core_busy_pct": busy_pct(self.cpu_times0, times, load_cpus)
            if load_cpus else None,
            "machine_busy_pct": busy_pct(self.cpu_times0, times, None),
            "cpu_pct": round(100 * self.cpu_s / self.wall_s, 1) if self.wall_s else 0.0,
            "cpu_s": round(self.cpu_s, 3),
            "wall_s": round(self.wall_s, 3),
            "procs": self.procs_max,
            # CPU % of one core per process, the tree's root first.
            "cpu_pct_per_proc": [round(100 * per_proc[p] / self.wall_s, 1) if self.wall_s else 0.0
                                 for p in sorted(per_proc, key=lambda p: (p != self.pid, p))],
            # RSS MB per process at the end, in the same order.
            "rss_mb_per_proc": [round(self.rss_last.get(p, 0) / 1024, 1)
                                for p in sorted(per_proc, key=lambda p: (p != self.pid, p))],
            "rss_start_mb": round(self.rss_start / 1024, 1),
            "rss_max_mb": round(self.rss_max / 1024, 1),
            "rss_end_mb": round(self.rss_end / 1024, 1),
        }


class PubSubTap:
    """A raw RESP subscriber to one Redis channel, in a thread: how many bytes a
    subscriber (each worker of the service holds one subscription) receives per second,
    counted on the socket, between start() and stop()."""

    MARK = b"\r\nmessage\r\n"

    def __init__(self, host: str, port: int, channel: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        name = channel.encode()
        self.sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(name), name))
        self.sock.settimeout(0.2)
        self.counting = False
        self.bytes = 0
        self.messages = 0
        self.t0 = self.t1 = 0.0
        self._tail = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            if self.counting:
                self.bytes += len(data)
                joined = self._tail + data
                self.messages += joined.count(self.MARK)
                self._tail = joined[-(len(self.MARK) - 1):]

    def start(self) -> None:
        self.bytes = self.messages = 0
        self._tail = b""
        self.t0 = time.monotonic()
        self.counting = True

    def stop(self) -> dict[str, Any]:
        self.counting = False
        self.t1 = time.monotonic()
        wall = self.t1 - self.t0
        return {
            "pubsub_bytes_per_s": round(self.bytes / wall) if wall > 0 else None,
            "pubsub_msgs_per_s": round(self.messages / wall, 1) if wall > 0 else None,
            "pubsub_bytes_per_msg": round(self.bytes / self.messages, 1) if self.messages else None,
        }

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        self._thread.join(2)


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
