"""A Docker engine of the test's own, and the base images a compose file names.

The engine is a `dockerd` started on a socket in a temporary folder and stopped by its PID,
so it never touches a Docker the machine may already run. Its data root (images, layers)
lives in a cache folder outside the clone (/var/cache/psx-quotes-tests, or
PSX_QUOTES_TEST_CACHE), keyed by the dockerd version, so a second run, from a fresh clone
too, reuses the base images and the image build's layers.

A base image that cannot be pulled (no registry reachable) is replaced by a stand-in
under the same name, built from a Debian rootfs (`debootstrap --variant=minbase`, cached
as a tarball keyed by what it holds) with Debian's python3, redis-server and nginx. Each
stand-in carries a label, and `ensure_image` returns a warning naming it, so a run on
stand-ins says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CACHE = Path(os.environ.get("PSX_QUOTES_TEST_CACHE", "/var/cache/psx-quotes-tests"))
# dockerd and debootstrap live in sbin, which a PATH may leave out.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What the stand-ins need: python3 3.11 with venv (python:3.11-slim), redis-server 7.0 and
# its redis-cli (redis:*), nginx (nginx:*). One rootfs serves all three.
PACKAGES = ("python3", "python3-venv", "redis-server", "nginx", "ca-certificates")
# Bump when the rootfs recipe below changes: it is part of the cache key.
RECIPE = 1
STAND_IN_LABEL = "org.psx-quotes.stand-in"
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Per base image name: the Dockerfile that makes the Debian rootfs act like it, and what
# it runs in its place (for the warning).
STAND_INS = {
    "python": ("Debian's python3 3.11 in a venv on PATH",
               # The official image has python and pip on PATH; pip there trusts what this
               # host trusts (a TLS-inspecting egress proxy has its own CA).
               "RUN python3 -m venv /opt/python\n"
               "COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\n"
               "RUN printf '[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n' > /etc/pip.conf\n"
               f"ENV PATH=/opt/python/bin:{PATH_ENV} LANG=C.UTF-8\n"
               'CMD ["python3"]\n'),
    "redis": ("Debian's redis-server 7.0",
              "RUN mkdir -p /data\n"
              "WORKDIR /data\n"
              f"ENV PATH={PATH_ENV}\n"
              'CMD ["redis-server"]\n'),
    "nginx": ("Debian's nginx 1.22",
              f"ENV PATH={PATH_ENV}\n"
              "STOPSIGNAL SIGQUIT\n"
              'CMD ["nginx", "-g", "daemon off;"]\n'),
}


def which(command: str) -> str | None:
    return shutil.which(command, path=SEARCH_PATH)


def compose_command() -> list[str] | None:
    """docker-compose (1.29 here), or the `docker compose` plugin where that is installed."""
    if (legacy := which("docker-compose")) is not None:
        return [legacy]
    docker = which("docker")
    if docker is not None and subprocess.run([docker, "compose", "version"], capture_output=True,
                                             timeout=30).returncode == 0:
        return [docker, "compose"]
    return None


def unavailable() -> str | None:
    """Why no engine of our own can run here, or None when one can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "starting a Docker engine of its own needs root"
    missing = [name for name in ("dockerd", "docker") if which(name) is None]
    if compose_command() is None:
        missing.append("docker-compose")
    if missing:
        return (f"{', '.join(missing)} not found (Debian: apt-get install docker.io "
                "docker-compose debootstrap; bash .ci/system-packages does)")
    return None


def run(argv: Sequence[str], env: Mapping[str, str], timeout: float, *, check: bool = True,
        log: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a client command; with `log`, its output goes there (appended) as well."""
    try:
        result = subprocess.run(list(argv), env=dict(env), capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        said = "".join(o.decode(errors="replace") if isinstance(o, bytes) else o or ""
                       for o in (exc.stdout, exc.stderr))
        pytest.fail(f"{' '.join(argv)} did not finish in {timeout:.0f}s:\n{said[-4000:]}")
    if log is not None:
        with open(log, "a") as out:
            out.write(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}\n")
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited with {result.returncode}:\n"
                    f"{(result.stdout + result.stderr)[-4000:]}")
    return result


@contextmanager
def cache_lock(timeout: float = 600.0) -> Iterator[None]:
    """One run at a time on the cached data root (a developer's and CI's, say)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another run held {CACHE / 'lock'} for {timeout:.0f}s")
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _keyed(prefix: str, key: str) -> Path:
    """CACHE/prefix-key, with any other prefix-* (a stale key, made by this module: the
    prefixes are its own) removed."""
    for stale in CACHE.glob(f"{prefix}-*"):
        if stale.name != f"{prefix}-{key}":
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    return CACHE / f"{prefix}-{key}"


class Engine:
    """dockerd on a socket of its own; `docker(...)` and `compose(...)` talk to it."""

    def __init__(self) -> None:
        dockerd, docker = which("dockerd"), which("docker")
        assert dockerd is not None and docker is not None, unavailable()
        self.dockerd, self.docker_exe = dockerd, docker
        version = subprocess.run([dockerd, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.strip()
        # A data root written by another dockerd version is not reused.
        release = version.split(",")[0].split()[-1]  # Docker version 20.10.24+dfsg1, build ...
        self.data_root = _keyed("dockerd-data", re.sub(r"[^\w.+-]+", "_", release))
        # A short path: the socket's must fit in sun_path (108 bytes).
        self.run_dir = Path(tempfile.mkdtemp(prefix="psxd-", dir="/tmp"))
        self.socket = self.run_dir / "docker.sock"
        self.log_path = ARTIFACTS / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.answering = False  # start() saw it answer: there is a stack to take down
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            # The classic builder: a daemon-side layer cache, and no buildx plugin needed.
            "DOCKER_BUILDKIT": "0",
            "COMPOSE_DOCKER_CLI_BUILD": "0",
        }
        # Only the engine above, never a context or a config pointing elsewhere.
        for name in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            self.env.pop(name, None)

    def start(self, timeout: float = 60.0) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        argv = [self.dockerd, "-H", f"unix://{self.socket}",
                "--data-root", str(self.data_root), "--exec-root", str(self.run_dir / "exec"),
                "--pidfile", str(self.run_dir / "docker.pid"),
                # No docker0: compose makes its own networks, builds use the host's, and a
                # Docker already on this machine keeps its bridge to itself.
                "--bridge", "none"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"dockerd exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists() and self.docker("version", check=False, timeout=10).returncode == 0:
                self.answering = True
                return
            time.sleep(0.2)
        pytest.fail(f"dockerd did not answer on {self.socket} in {timeout:.0f}s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the dockerd we started (it stops its containerd), SIGKILL if it hangs;
        then what it may leave mounted under its run folder goes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                containerd = self.run_dir / "exec" / "containerd" / "containerd.pid"
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(containerd.read_text()), signal.SIGKILL)
        for mount in reversed(self._mounts()):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _mounts(self) -> list[str]:
        """Mount points under the run folder (dockerd leaves its netns one behind)."""
        found = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(f"{self.run_dir}/"):
                found.append(point)
        return found

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def docker(self, *args: str, timeout: float = 120.0, check: bool = True,
               log: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run([self.docker_exe, *args], self.env, timeout, check=check, log=log)

    def compose(self, compose_args: Sequence[str], env: Mapping[str, str], timeout: float = 300.0,
                *, check: bool = True, log: Path | None = None) -> subprocess.CompletedProcess[str]:
        command = compose_command()
        assert command is not None
        return run([*command, *compose_args], {**self.env, **env}, timeout, check=check, log=log)

    def inspect(self, kind: str, *names: str) -> list[dict[str, Any]]:
        """`docker KIND inspect` of each name; [] when one is missing."""
        result = self.docker(kind, "inspect", *names, check=False)
        if result.returncode != 0:
            return []
        found: list[dict[str, Any]] = json.loads(result.stdout)
        return found

    # Base images.

    def ensure_image(self, name: str) -> str | None:
        """Make `name` present: the real image, pulled if needed, or else a stand-in.
        Returns the warning to show when it is a stand-in."""
        present = self.inspect("image", name)
        if present and STAND_IN_LABEL not in (present[0]["Config"].get("Labels") or {}):
            return None
        if self.docker("pull", name, check=False, timeout=600).returncode == 0:
            return None
        kind = name.split(":")[0].rsplit("/", 1)[-1]
        if kind not in STAND_INS:
            pytest.fail(f"{name} could not be pulled, and there is no stand-in for it here")
        what, dockerfile = STAND_INS[kind]
        base = self._stand_in_base()
        with tempfile.TemporaryDirectory(prefix="stand-in-") as context:
            Path(context, "Dockerfile").write_text(f"FROM {base}\n{dockerfile}")
            shutil.copyfile(_ca_bundle(), Path(context, "ca-certificates.crt"))
            self.docker("build", "--network", "host", "--label", f"{STAND_IN_LABEL}={what}",
                        "-t", name, context, timeout=600, log=ARTIFACTS / "docker-build.log")
        return (f"{name} could not be pulled (no image registry reachable): a stand-in built "
                f"from a Debian {SUITE} rootfs runs in its place ({what})")

    def _stand_in_base(self) -> str:
        """The Debian rootfs as an image, imported from the cached tarball (made first if
        there is none for this key)."""
        debootstrap = which("debootstrap")
        if debootstrap is None:
            pytest.skip("a base image cannot be pulled and debootstrap, which builds its "
                        "stand-in, is not installed (apt-get install debootstrap)")
        version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "debootstrap"],
                                 capture_output=True, text=True, timeout=30).stdout
        key = hashlib.sha256(json.dumps([SUITE, PACKAGES, RECIPE, version]).encode()).hexdigest()[:12]
        tag = f"psx-quotes-stand-in:{key}"
        if self.inspect("image", tag):
            return tag
        tarball = _keyed("debian-rootfs", f"{key}.tar")
        if not tarball.exists():
            _debootstrap(debootstrap, tarball)
        self.docker("import", str(tarball), tag, timeout=300)
        return tag


def _ca_bundle() -> Path:
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.fail("no CA bundle on this host for the python stand-in's pip")


def _debootstrap(debootstrap: str, tarball: Path) -> None:
    """A minbase Debian with PACKAGES, less apt's caches and the docs, as a tarball."""
    work = tarball.with_suffix(".tmp")
    shutil.rmtree(work, ignore_errors=True)
    log = ARTIFACTS / "debootstrap.log"
    with open(log, "wb") as out:
        result = subprocess.run(
            [debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             str(work), MIRROR],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=900)
    if result.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        pytest.fail(f"debootstrap exited with {result.returncode}: see {log}")
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                     "usr/share/locale", "usr/share/man"):
        for path in (work / leftover).glob("*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    partial = tarball.with_suffix(".partial")
    with open(partial, "wb") as out:
        subprocess.run(["tar", "-C", str(work), "-c", "."], stdout=out, check=True, timeout=300)
    partial.rename(tarball)
    shutil.rmtree(work, ignore_errors=True)
