"""Real nginx for tests, running the project's own deploy/nginx.conf.

Only what must differ on a test machine is rewritten: the upstream servers, the listen
address, and paths nginx writes to (so it also runs without root). Each rewrite must match
exactly once, so a change to the file's shape fails here loudly instead of testing
something else.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "deploy" / "nginx.conf"


def _sub_once(pattern: str, replacement: str, text: str) -> str:
    result, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count == 1, f"deploy/nginx.conf: expected one match of {pattern!r}, got {count}"
    return result


def rewritten_config(upstreams: Sequence[int], port: int, workdir: Path,
                     extra: Sequence[tuple[str, str]] = ()) -> str:
    """`extra`: further (pattern, replacement) rewrites, each matching exactly once too (a
    benchmark's worker counts and limits)."""
    text = CONF.read_text()
    servers = re.findall(r"^\s*server service-\d+:8000 .*;$", text, flags=re.MULTILINE)
    assert len(servers) == len(upstreams), "one upstream server line per test instance"
    for line, upstream in zip(servers, upstreams, strict=True):
        text = text.replace(line, line.replace(line.split()[1], f"127.0.0.1:{upstream}"), 1)
    text = _sub_once(r"^(\s*)listen 80;$", rf"\1listen 127.0.0.1:{port};", text)
    temp = "".join(f"    {kind}_temp_path {workdir / kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text = _sub_once(r"^http \{\n", "http {\n" + temp, text)
    for pattern, replacement in extra:
        text = _sub_once(pattern, replacement, text)
    return text


class Nginx:
    def __init__(self, upstreams: Sequence[int], workdir: Path,
                 extra: Sequence[tuple[str, str]] = ()) -> None:
        exe = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
        if exe is None:
            pytest.fail("nginx not found: apt-get install nginx (.ci/system-packages does)")
        self.exe = exe
        self.workdir = workdir
        self.port = free_port()
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(rewritten_config(upstreams, self.port, workdir, extra))
        self.error_log = workdir / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        argv = [self.exe, "-p", str(self.workdir), "-c", str(self.conf), "-e", str(self.error_log),
                "-g", f"daemon off; pid {self.workdir / 'nginx.pid'};"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"nginx exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"nginx did not listen in 10 s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM: nginx's fast stop; its workers end with it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        try:
            return self.error_log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@contextmanager
def nginx(upstreams: Sequence[int], workdir: Path) -> Iterator[Nginx]:
    server = Nginx(upstreams, workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
