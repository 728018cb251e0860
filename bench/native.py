"""Build and run glue for the benchmark's C programs (bench/viewers_load.c, bench/floor.c).

They are compiled with the system compiler on first use, and again whenever the source
is newer than the binary, into bench/results/tmp/ (not committed), so a checkout never
runs a binary older than its source.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATOR_SRC = ROOT / "bench" / "viewers_load.c"
GENERATOR_BIN = ROOT / "bench" / "results" / "tmp" / "viewers_load"
CFLAGS = ("-O2", "-Wall")
# Linked into every program; only the generator uses zlib (to inflate what it decodes).
LDLIBS = ("-lz",)


def build(src: Path, out: Path) -> Path:
    """`cc -O2 -Wall -o out src -lz` unless `out` is already at least as new as `src`."""
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    cc = shutil.which("cc")
    if cc is None:
        raise RuntimeError(f"cc not found: {src.name} needs a C compiler (apt-get install gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built under another name, then renamed: a process starting it meanwhile never runs
    # a half-written file.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        done = subprocess.run([cc, *CFLAGS, "-o", str(tmp), str(src), *LDLIBS], capture_output=True,
                              text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"cc failed on {src} ({done.returncode}):\n{done.stderr.strip()}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def generator_argv(url: str, conns: int, max_hz: float | None, decode_every: int, boards: int,
                   *, binary: Path | None = None, encoding: str = "json", reconnect: bool = False,
                   reconnect_cap: float | None = None, bind: str | None = None,
                   bind_count: int = 1) -> list[str]:
    """The argv of the native generator (bench/fastclient.py's flags; built if stale), for
    `url` = ws://127.0.0.1:PORT/ws; `binary` runs another build of it instead; `encoding`:
    what its viewers ask for (issue 24: compact, deflate, compact+deflate); `reconnect`:
    its viewers come back after the SDKs' back-off (capped at `reconnect_cap` s), and
    report per-second connects (issue 25); `bind`: their source address (127.0.0.X),
    spread over `bind_count` consecutive ones."""
    exe = binary or build(GENERATOR_SRC, GENERATOR_BIN)
    argv = [str(exe), "--url", url, "--conns", str(conns), "--decode-every", str(decode_every),
            "--boards", str(boards)]
    if max_hz is not None:
        argv += ["--max-hz", f"{max_hz:g}"]
    if encoding != "json":  # protocol 1 runs with the argv it always had
        argv += ["--encoding", encoding]
    if reconnect:
        argv.append("--reconnect")
        if reconnect_cap is not None:
            argv += ["--reconnect-cap", f"{reconnect_cap:g}"]
    if bind is not None:
        argv += ["--bind", bind]
        if bind_count > 1:
            argv += ["--bind-count", str(bind_count)]
    return argv
