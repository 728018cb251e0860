"""`service@REV` peers (bench/revs.py): the service as of a commit, beside the working tree's.

The spec resolves to an export of that commit whose files are the commit's, the export's
interpreter set-up imports `service` from the export (not from the venv's editable install
of this checkout), and a quick firehose runs both side by side and names both. Nothing is
timed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from bench import revs
from bench.peers import resolve
from bench.viewers import in_turn, parse_peers
from tests.service_proc import run_module

pytestmark = pytest.mark.timeout(120)


def git_show(rev: str, path: str) -> bytes:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=revs.ROOT, check=True,
                          capture_output=True).stdout


@pytest.fixture
def worktrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(revs, "WORKTREES", tmp_path)
    return tmp_path


def test_a_revision_is_its_commits_tree(worktrees: Path) -> None:
    sha = revs.commit_sha("HEAD")
    tree = revs.export("HEAD")
    assert tree.sha == sha and tree.root == worktrees / sha and tree.short == sha[:7]
    assert (tree.root / "service" / "__init__.py").read_bytes() == git_show(sha, "service/__init__.py")
    assert revs.export(sha) == tree  # cached: the same tree again
    pythonpath = tree.pythonpath().split(":")
    assert pythonpath[0] == str(tree.root)
    assert all(Path(p).is_relative_to(tree.root) for p in pythonpath)
    imports = tree.imports()
    assert Path(imports["service"] or "").is_relative_to(tree.root)
    assert set(imports) == set(tree.packages())


def test_peer_specs(worktrees: Path) -> None:
    short = revs.commit_sha("HEAD")[:7]
    assert revs.split("service@HEAD") == ("service", "HEAD")
    assert revs.split("service") == ("service", None)
    peer = resolve("service@HEAD")
    assert peer.key == f"service@{short}" and short in peer.label
    assert peer.cwd == worktrees / revs.commit_sha("HEAD")
    argv, env = peer.command(1234, "redis://127.0.0.1:1/0")
    assert argv[1:] == ["-m", "service"] and env["PYTHONPATH"] == peer.tree.pythonpath()
    assert resolve("service").cwd == revs.ROOT
    servers = parse_peers("service@HEAD,service")
    assert [s.key for s in servers] == [f"service@{short}", "service"]
    assert servers[0].tree == peer.tree
    with pytest.raises(revs.RevError):
        resolve("service@no-such-revision")
    with pytest.raises(KeyError):
        resolve("uws@HEAD")


def test_searches_take_turns() -> None:
    order: list[str] = []

    def steps(name: str, n: int) -> Generator[None, None, dict[str, Any]]:
        for i in range(n):
            order.append(f"{name}{i}")
            yield
        return {"peer": name}

    assert in_turn([steps("a", 3), steps("b", 1)]) == [{"peer": "a"}, {"peer": "b"}]
    assert order == ["a0", "b0", "a1", "a2"]


def test_quick_firehose_side_by_side(tmp_path: Path) -> None:
    done = run_module("bench", "--quick", "--peers", "service@HEAD,service", "--scenarios",
                      "firehose", "--out", str(tmp_path), timeout=100)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    old = f"service@{revs.commit_sha('HEAD')[:7]}"
    assert not data["failed"] and set(data["results"]) == {old, "service"}
    assert "/worktrees/" in data["peers"][old]["imports"]["service"]
    assert data["peers"]["service"]["imports"]["service"] == str(revs.ROOT / "service" / "__init__.py")
    md = (tmp_path / "latest.md").read_text()
    assert "## Commits side by side" in md and f"@ {old[8:]}" in md
