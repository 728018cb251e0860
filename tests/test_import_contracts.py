"""The import contracts (.importlinter) hold, and would catch a package importing back.

`make lint` runs lint-imports on the tree; here each contract is also shown to fail on a
planted back-import, in a copy of the packages, so a contract that could not fail (a
misspelt module, a layer left out) does not pass unnoticed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
# Where each package's source is in the repository.
PACKAGES = {"service": ROOT / "service", "publisher": ROOT / "publisher",
            "quote_sim": ROOT / "quote_sim", "quote_bus": ROOT / "quote_bus",
            "quote_runtime": ROOT / "quote_runtime", "quote_core": ROOT / "core" / "quote_core",
            "quote_client": ROOT / "clients" / "python" / "quote_client"}


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the packages under `root`, with the project's contracts."""
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / ".importlinter"),
                           "--no-cache"], cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("packages")
    for name, source in PACKAGES.items():
        shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "data"))
    return root


def test_the_tree_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken." in result.stdout, result.stdout


NEVER_EACH_OTHER = "The publisher and the service never import each other"


@pytest.mark.parametrize(("module", "planted", "contract"), [
    ("publisher/__init__.py", "import service.hub", NEVER_EACH_OTHER),
    ("service/feeds/__init__.py", "import publisher", NEVER_EACH_OTHER),
    ("quote_core/quote.py", "import quote_runtime", "Packages depend one way"),
    ("quote_bus/__init__.py", "import service", "Packages depend one way"),
    ("quote_client/client.py", "import quote_bus.layout", "The SDK carries no server code"),
    ("quote_core/text.py", "import websockets", "The core depends on orjson only"),
    ("service/outbox.py", "import starlette.websockets", "sans-I/O core"),
])
def test_a_planted_back_import_breaks_its_contract(copy: Path, module: str, planted: str,
                                                   contract: str) -> None:
    path = copy / module
    original = path.read_text(encoding="utf-8")
    path.write_text(original + f"\n{planted}  # planted\n", encoding="utf-8")
    try:
        result = lint(copy)
    finally:
        path.write_text(original, encoding="utf-8")
    assert result.returncode != 0, f"{planted} in {module} went unnoticed:\n{result.stdout}"
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken) or contract in result.stdout.split(
        "Broken contracts")[-1], result.stdout
