"""The Python client as a package of its own (clients/python) on the shared core (core/):
the client imports nothing of the server, the core nothing but orjson, nobody keeps a
second copy of what the core holds, the README's example runs against the real service,
and `pip install ./core ./clients/python` in a fresh venv, with no Starlette or uvicorn in
it, gives a working QuoteClient and `quote-tail`."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from quote_core.quote import Quote
from quote_core.text import parse_line
from tests.service_proc import ROOT, ServiceProcess, run_example, run_service

PACKAGE = ROOT / "clients" / "python"
SOURCE = PACKAGE / "quote_client"
CORE = ROOT / "core"
CORE_SOURCE = CORE / "quote_core"
README = (ROOT / "README.md").read_text(encoding="utf-8")
SEED_SYMBOLS = 34
# A child Python of ours, without this checkout or a developer's settings on its path.
ENV = {k: v for k, v in os.environ.items()
       if k not in ("PYTHONPATH", "VIRTUAL_ENV", "REDIS_URL", "NO_COLOR")} | {"PYTHONUNBUFFERED": "1"}


def python_section() -> str:
    start = README.index("### Consume from Python\n")
    end = README.index("\n### ", start + 1)
    return README[start:end]


def code_block(language: str) -> str:
    """The section's one code block in that language."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", python_section(), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"expected one ```{language} block under Consume from Python"
    return str(blocks[0])


# Static: the package stands alone, and each shared idea has one implementation.


def check_imports(source: Path, allowed: set[str]) -> None:
    """Every absolute import of the package's modules is of one of `allowed`."""
    for path in sorted(source.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def dependencies_of(package: Path) -> list[str]:
    text = (package / "pyproject.toml").read_text(encoding="utf-8")
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    assert dependencies is not None
    return sorted(re.findall(r'^\s*"([A-Za-z0-9_.-]+)', dependencies.group(1), re.MULTILINE))


def test_the_package_imports_only_the_standard_library_websockets_orjson_and_the_core() -> None:
    check_imports(SOURCE, set(sys.stdlib_module_names) | {"websockets", "orjson", "quote_core"})
    assert dependencies_of(PACKAGE) == ["orjson", "psx-quote-core", "websockets"]


def test_the_core_imports_only_the_standard_library_and_orjson() -> None:
    check_imports(CORE_SOURCE, set(sys.stdlib_module_names) | {"orjson"})
    assert dependencies_of(CORE) == ["orjson"]


def _top_level_names(path: Path) -> set[str]:
    """Public functions, classes and constants a module defines (not imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {n for n in names if not n.startswith("_") and n != "log"}


# Every Python package of the checkout but the core: the server's, the publisher's, the SDK.
USERS_OF_THE_CORE = ("service", "publisher", "quote_bus", "quote_runtime", "quote_sim",
                     "clients/python/quote_client")


def test_nobody_defines_again_what_the_core_holds() -> None:
    """quote, text, protocol and backoff live in quote_core only: the service, the
    publisher and the client import them, they do not define them again."""
    shared: dict[str, str] = {}
    for module in ("quote", "text", "protocol", "backoff"):
        for name in _top_level_names(CORE_SOURCE / f"{module}.py"):
            shared[name] = module
    for path in sorted(p for folder in USERS_OF_THE_CORE for p in ROOT.glob(f"{folder}/**/*.py")):
        again = _top_level_names(path) & shared.keys()
        assert not again, f"{path.relative_to(ROOT)} defines {sorted(again)} again " \
                          f"(quote_core: {sorted({shared[n] for n in again})})"
    for gone in ("quote.py", "ticker_text.py", "protocol.py", "backoff.py"):
        assert not (SOURCE / gone).exists(), f"quote_client/{gone}: the core's now"
    for gone in ("quote.py", "ticker_text.py", "backoff.py", "client.py", "tail.py"):
        assert not (ROOT / "service" / gone).exists(), gone


def test_the_client_ships_no_server_code() -> None:
    """The Redis payload decoding is the server's (quote_bus.payload): neither the SDK nor
    the core it installs defines it, and importing the SDK loads nothing of the server."""
    for source in (SOURCE, CORE_SOURCE):
        for path in source.glob("*.py"):
            assert "decode_payload" not in _top_level_names(path), path
    loaded = subprocess.run([sys.executable, "-c", "import sys, quote_client; "
                             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30)
    assert loaded.returncode == 0, loaded.stderr
    server = {"service", "publisher", "quote_bus", "quote_runtime", "quote_sim", "redis",
              "starlette", "uvicorn"}
    assert not server & set(loaded.stdout.split()), loaded.stdout


# Against the real service.


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    yield from run_service({"SIM_RATE": "200"}, ready="/readyz")


def run_readme_example(python: str, service: ServiceProcess, cwd: Path, lines: int = 8) -> list[str]:
    """The README's example, pointed at the test's service, until it printed `lines` lines."""
    return run_example(python, code_block("python"), service, cwd, lines, ENV)


def check_example_output(lines: list[str]) -> None:
    assert lines[0] == "2 symbols, feed live"
    parsed = [parse_line(line) for line in lines[1:]]
    assert {p.symbol for p in parsed[:2]} == {"OGDC", "KSE100"}, "the board first"
    assert {p.symbol for p in parsed} == {"OGDC", "KSE100"}
    assert {p.kind for p in parsed} == {"stock", "index"}


def test_the_readme_example_runs(service: ServiceProcess, tmp_path: Path) -> None:
    check_example_output(run_readme_example(sys.executable, service, tmp_path))


def test_the_readme_shows_the_install_line_and_the_tail() -> None:
    assert code_block("sh").strip() == "pip install ./core ./clients/python"
    section = python_section()
    assert "quote-tail --symbols" in section and "python -m quote_client tail" in section
    assert "--json" in section and "--once" in section


# A consumer's machine: a fresh venv with the package alone.

BOARD_SCRIPT = """
import asyncio, importlib.metadata, json, sys

from quote_client import QuoteClient


async def main() -> None:
    async with QuoteClient(sys.argv[1], symbols="*") as client:
        first = dict(client.board)
        async for quote in client.quotes():
            if quote.seq > first[quote.symbol].seq:
                break
        print(json.dumps({
            "board": len(client.board), "feed": client.feed,
            "requires": importlib.metadata.requires("psx-quote-client"),
            "core_requires": importlib.metadata.requires("psx-quote-core"),
            "loaded": sorted({m.split(".")[0] for m in sys.modules}),
        }))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install ./core ./clients/python` (the README's line) into a new venv, run in a
    folder that holds a copy of core and clients/python and nothing else: the two folders
    alone are enough. pip fetches websockets and orjson from the index as a consumer's
    would, and takes psx-quote-core from its path."""
    root = tmp_path_factory.mktemp("consumer")
    for folder in (CORE, PACKAGE):
        shutil.copytree(folder, root / folder.relative_to(ROOT),
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120,
                   capture_output=True)
    install = code_block("sh").split()
    assert install[:2] == ["pip", "install"]
    result = subprocess.run([str(venv / "bin" / "python"), "-m", *install, "--quiet"], cwd=root,
                            env=ENV, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    return venv


# The first of these pays for the venv (its fixture counts into its time).
FRESH_VENV = pytest.mark.timeout(360)


@FRESH_VENV
def test_a_fresh_venv_has_no_server_dependencies(fresh_venv: Path) -> None:
    python = str(fresh_venv / "bin" / "python")
    for module in ("starlette", "uvicorn", "redis", "prometheus_client", "service", "publisher",
                   "quote_bus"):
        result = subprocess.run([python, "-c", f"import {module}"], cwd=fresh_venv, env=ENV,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module
    where = subprocess.run([python, "-c", "import quote_client; print(quote_client.__file__)"],
                           cwd=fresh_venv, env=ENV, capture_output=True, text=True, timeout=30)
    assert Path(where.stdout.strip()).is_relative_to(fresh_venv), "installed, not this checkout"
    where = subprocess.run([python, "-c", "import quote_core; print(quote_core.__file__)"],
                           cwd=fresh_venv, env=ENV, capture_output=True, text=True, timeout=30)
    assert Path(where.stdout.strip()).is_relative_to(fresh_venv), "installed, not this checkout"


@FRESH_VENV
def test_a_fresh_venv_client_holds_the_full_board(fresh_venv: Path, service: ServiceProcess) -> None:
    result = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", BOARD_SCRIPT, service.ws_url],
                            cwd=fresh_venv, env=ENV, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["board"] == SEED_SYMBOLS and report["feed"] == "live"
    assert sorted(r.split(">")[0].split("=")[0] for r in report["requires"]) == [
        "orjson", "psx-quote-core", "websockets"]
    assert [r.split(">")[0] for r in report["core_requires"]] == ["orjson"], "the core needs orjson only"
    assert not {"starlette", "uvicorn", "service", "publisher", "quote_bus"} & set(report["loaded"])


@FRESH_VENV
def test_a_fresh_venv_quote_tail_once(fresh_venv: Path, service: ServiceProcess) -> None:
    tail = str(fresh_venv / "bin" / "quote-tail")
    result = subprocess.run([tail, "--once", "--symbols", "KSE100,OGDC", service.ws_url],
                            cwd=fresh_venv, env=ENV, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert [parse_line(line).symbol for line in result.stdout.splitlines()] == ["KSE100", "OGDC"]
    result = subprocess.run([tail, "--once", "--json", service.ws_url], cwd=fresh_venv, env=ENV,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    quotes = [Quote.from_dict(orjson.loads(line), require_seq=True) for line in result.stdout.splitlines()]
    assert len(quotes) == SEED_SYMBOLS


@FRESH_VENV
def test_a_fresh_venv_runs_the_readme_example(fresh_venv: Path, service: ServiceProcess,
                                              tmp_path: Path) -> None:
    check_example_output(run_readme_example(str(fresh_venv / "bin" / "python"), service, tmp_path))
