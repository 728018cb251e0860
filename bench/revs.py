"""The service as of another commit, run beside the working tree's in one benchmark run.

A peer spec `service@REV` (`python -m bench --peers service@9fcb21a,service`, and the same
for `python -m bench.viewers`) is the service of git revision REV: the commit's tree is
exported once (`git archive`, read-only for the repository) to
bench/results/tmp/worktrees/<sha>/ and its `python -m service` runs there, with this
venv's python and packages, cwd the export and PYTHONPATH the export's root plus whichever
of its clients/python (quote_client, before issue 23) and core (quote_core, after) exist.
PYTHONPATH comes before the venv's editable installs (.pth entries, which point at this
checkout), so the commit's own code is what runs; `imports()` proves it by asking that
interpreter where `service` came from. Everything else (publisher, load generator,
Redis) stays the working tree's, so both services get the same input.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKTREES = ROOT / "bench" / "results" / "tmp" / "worktrees"
# Where the quote model package lives beside the root, before and after issue 23.
IMPORT_DIRS = ("clients/python", "core")
# The packages whose origin is checked and recorded, those of them a tree holds: the
# service and what it imports from beside it, before and after issue 23.
PROBED = ("service", "quote_client", "quote_core", "quote_bus", "quote_runtime", "quote_sim")


class RevError(ValueError):
    """A revision that does not name a commit here, or whose tree has no service."""


def git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RevError(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


@dataclass(frozen=True)
class Tree:
    """A source tree a service runs from: an exported commit, or the working tree (sha None)."""
    root: Path
    sha: str | None = None

    @property
    def short(self) -> str:
        return self.sha[:7] if self.sha else "working tree"

    def pythonpath(self) -> str:
        dirs = [self.root, *(self.root / d for d in IMPORT_DIRS if (self.root / d).is_dir())]
        return os.pathsep.join(str(d) for d in dirs)

    def env(self) -> dict[str, str]:
        """What a service child started from this tree adds to its environment."""
        return {"PYTHONPATH": self.pythonpath()}

    def packages(self) -> dict[str, Path]:
        """The PROBED packages this tree holds, and where: what its service may import."""
        return {m: d / m for m in PROBED
                for d in (self.root, *(self.root / i for i in IMPORT_DIRS))
                if (d / m / "__init__.py").is_file()}

    def imports(self) -> dict[str, str | None]:
        """Where this tree's interpreter set-up imports each of packages() from; RevError
        when one of them comes from elsewhere (the venv's editable install of this
        checkout, say), so that the tree's own code is what runs."""
        held = self.packages()
        code = ("import importlib.util, json, sys\n"
                "print(json.dumps({m: getattr(importlib.util.find_spec(m), 'origin', None)"
                " for m in sys.argv[1:]}))\n")
        env = {**os.environ, **self.env()}
        done = subprocess.run([sys.executable, "-c", code, *held], cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RevError(f"probing imports in {self.root}: {done.stderr.strip()[-600:]}")
        found: dict[str, str | None] = json.loads(done.stdout)
        for module, where in held.items():
            origin = found.get(module)
            if not origin or not Path(origin).resolve().is_relative_to(where.resolve()):
                raise RevError(f"`import {module}` from {self.root} gives {origin}, not {where}")
        return found


WORKING = Tree(ROOT)


def split(spec: str) -> tuple[str, str | None]:
    """`service@9fcb21a` -> ("service", "9fcb21a"); `service` -> ("service", None)."""
    base, at, rev = spec.partition("@")
    return base, (rev or None) if at else None


def commit_sha(rev: str) -> str:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except RevError:
        raise RevError(f"{rev!r} names no commit in {ROOT}") from None


def export(rev: str) -> Tree:
    """The tree of commit `rev` under WORKTREES/<sha>, exported on first use (kept: the
    same sha always has the same tree)."""
    sha = commit_sha(rev)
    target = WORKTREES / sha
    if not (target / "service" / "__init__.py").is_file():
        WORKTREES.mkdir(parents=True, exist_ok=True)
        # Extracted beside it, then renamed into place: a tree there is always whole.
        staging = Path(tempfile.mkdtemp(prefix=f".{sha[:7]}-", dir=WORKTREES))
        try:
            archive = subprocess.run(["git", "archive", "--format=tar", sha], cwd=ROOT,
                                     capture_output=True, timeout=120)
            if archive.returncode != 0:
                raise RevError(f"git archive {sha}: {archive.stderr.decode(errors='replace')}")
            with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                tar.extractall(staging, filter="data")
            if not (staging / "service" / "__init__.py").is_file():
                raise RevError(f"commit {sha[:7]} has no service/ package")
            with contextlib.suppress(OSError):  # another run put it there first
                staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return Tree(target, sha)


def head() -> str:
    """HEAD's short sha, and whether the working tree differs from it (bench/ aside)."""
    try:
        sha = git("rev-parse", "--short=7", "HEAD")
        dirty = git("status", "--porcelain", "--", ".", ":(exclude)bench")
    except (RevError, OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + (" + uncommitted changes" if dirty else "")


def provenance(tree: Tree, label: str, compared: bool) -> dict[str, Any]:
    """What a results file says of a service's source: its label (the working tree's names
    HEAD's sha when a `service@REV` is beside it, so the tables name both), the tree, and
    where that interpreter set-up imports `service` and the quote model from (the proof
    that a `service@REV` ran that commit's code; an `error` there means it must not run)."""
    entry: dict[str, Any] = {"label": label if tree.sha or not compared
                             else f"{label}, working tree (HEAD {head()})",
                             "tree": tree.sha or f"working tree, HEAD {head()}"}
    try:
        entry["imports"] = tree.imports()
    except (RevError, OSError, subprocess.SubprocessError) as exc:
        entry["imports"] = {"error": str(exc)}
    return entry
