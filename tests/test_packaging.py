"""How the project installs: the two make stages (what running needs, then the test tools),
setuptools silent on an editable install, and each package (the server, the shared core, the
Python client, the JS client) shipping its LICENSE and its data.

The installs are real: a fresh venv with the build system the pyprojects name (setuptools
from the index, as a newcomer's pip gets it), and pip building the packages from this
checkout with it, without their dependencies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.service_proc import ROOT

PYTHON_CLIENT = ROOT / "clients" / "python"
CORE = ROOT / "core"
JS_CLIENT = ROOT / "clients" / "js"
MIT_HEAD = "MIT License\n\nCopyright (c) 2026 The psx-quotes authors\n"
# What setuptools warns with: BuildBackendWarning, SetuptoolsDeprecationWarning, ... (pip's
# own "WARNING:" lines are about its indexes, not this project).
SETUPTOOLS_WARNING = re.compile(r"[A-Z][a-z]+Warning\b|Package would be ignored")
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def pip(venv: Path, *args: str) -> str:
    """Our pip on the venv's interpreter (`--python`: the venv needs no pip of its own),
    verbose so that the build backend's output is shown; its output, or a failure."""
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                             *args, "-v", "--disable-pip-version-check"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def warnings_in(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if SETUPTOOLS_WARNING.search(line)]


# --- the make stages ----------------------------------------------------------------------

def make(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.fail("make not found (apt-get install make)")
    return subprocess.run(["make", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_make_run_installs_what_running_needs_and_make_test_adds_the_test_tools(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run = make("-n", "run", f"VENV={venv}").stdout
    assert "pip install --quiet -e core\n" in run and "pip install --quiet -e .\n" in run
    assert "[test]" not in run, "make run installs no test tools"
    assert "clients/python" not in run, "the server does not need the client package"
    assert f"touch {venv}/.installed-run" in run
    for target in ("test", "lint", "install-test"):
        out = make("-n", target, f"VENV={venv}").stdout
        assert "pip install --quiet -e clients/python -e '.[test]'" in out, target
        assert f"touch {venv}/.installed-test" in out, target


def test_each_stage_installs_once(tmp_path: Path) -> None:
    """Stamps newer than both pyproject files: nothing to do. Only the first: only the
    test tools are installed on top."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed-run").touch()
    assert make("-q", "install", f"VENV={venv}").returncode == 0
    assert make("-q", "install-test", f"VENV={venv}").returncode == 1
    todo = make("-n", "install-test", f"VENV={venv}").stdout
    assert "'.[test]'" in todo and "-e core" not in todo
    (venv / ".installed-test").touch()
    assert make("-q", "install-test", f"VENV={venv}").returncode == 0


# --- pip and setuptools -------------------------------------------------------------------

@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the build system both pyprojects require, once for the module
    (pip's build isolation would fetch it again for every build)."""
    venv = tmp_path_factory.mktemp("packaging") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    requires = {req for pyproject in (ROOT / "pyproject.toml", CORE / "pyproject.toml",
                                      PYTHON_CLIENT / "pyproject.toml")
                for req in tomllib.loads(pyproject.read_text(encoding="utf-8"))["build-system"]["requires"]}
    pip(venv, "install", *sorted(requires))
    return venv


def test_editable_installs_print_no_setuptools_warnings(venv: Path, tmp_path: Path) -> None:
    """`pip install -e core`, `-e .` and `-e clients/python` in a fresh venv, as the Makefile
    does: no "Package would be ignored", no notice about import finders."""
    core = pip(venv, "install", "--no-deps", "--no-build-isolation", "-e", str(CORE))
    server = pip(venv, "install", "--no-deps", "--no-build-isolation", "-e", ".")
    client = pip(venv, "install", "--no-deps", "--no-build-isolation", "-e", str(PYTHON_CLIENT))
    assert "Successfully installed psx-quotes" in server
    assert warnings_in(core + server + client) == [], warnings_in(core + server + client)
    # Found in this checkout (their dependencies are not installed, so not imported).
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "from importlib.util import find_spec; print("
                            "*(find_spec(p).origin for p in ('publisher', 'quote_core', 'quote_client')))"],
                           cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=30)
    assert where.stdout.split() == [str(ROOT / "publisher" / "__init__.py"),
                                    str(CORE / "quote_core" / "__init__.py"),
                                    str(PYTHON_CLIENT / "quote_client" / "__init__.py")], where.stderr


def test_the_wheels_carry_their_license_and_data(venv: Path, tmp_path: Path) -> None:
    """The wheels pip builds from a plain `pip install ./core .` (the Dockerfile's) and of the
    client package: the LICENSE in each, the seed's ticker file, every subpackage, and
    nothing else."""
    output = pip(venv, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                 str(CORE), str(PYTHON_CLIENT), ".")
    assert warnings_in(output) == [], warnings_in(output)
    (server,) = tmp_path.glob("psx_quotes-*.whl")
    (client,) = tmp_path.glob("psx_quote_client-*.whl")
    (core,) = tmp_path.glob("psx_quote_core-*.whl")
    with zipfile.ZipFile(server) as wheel:
        names = set(wheel.namelist())
        assert wheel.read("psx_quotes-0.1.0.dist-info/licenses/LICENSE").decode().startswith(MIT_HEAD)
        assert "License-Expression: MIT" in wheel.read("psx_quotes-0.1.0.dist-info/METADATA").decode()
    assert "quote_sim/data/psx_ticker.txt" in names
    packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert packages == {"service", "service/feeds", "service/tape", "publisher", "quote_bus",
                        "quote_bus/topology", "quote_runtime", "quote_sim"}
    tops = {n.split("/")[0] for n in names if not n.startswith("psx_quotes-")}
    assert tops == {"service", "publisher", "quote_bus", "quote_runtime", "quote_sim"}, \
        "no tests, bench or clients in the server's wheel"
    with zipfile.ZipFile(client) as wheel:
        names = set(wheel.namelist())
        assert wheel.read("psx_quote_client-0.1.0.dist-info/licenses/LICENSE").decode().startswith(MIT_HEAD)
    assert "quote_client/py.typed" in names
    assert {n.split("/")[0] for n in names} == {"quote_client", "psx_quote_client-0.1.0.dist-info"}
    with zipfile.ZipFile(core) as wheel:
        names = set(wheel.namelist())
        assert wheel.read("psx_quote_core-0.1.0.dist-info/licenses/LICENSE").decode().startswith(MIT_HEAD)
        metadata = wheel.read("psx_quote_core-0.1.0.dist-info/METADATA").decode()
    assert [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")] == [
        "Requires-Dist: orjson>=3.10"], "the core needs orjson only"
    assert "quote_core/py.typed" in names
    assert {n.split("/")[0] for n in names} == {"quote_core", "psx_quote_core-0.1.0.dist-info"}


# --- the licenses -------------------------------------------------------------------------

def test_every_package_is_mit_with_its_license_file() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith(MIT_HEAD) and "THE SOFTWARE IS PROVIDED \"AS IS\"" in text
    for folder in (CORE, PYTHON_CLIENT, JS_CLIENT):
        assert (folder / "LICENSE").read_text(encoding="utf-8") == text, folder
    for pyproject in (ROOT / "pyproject.toml", CORE / "pyproject.toml", PYTHON_CLIENT / "pyproject.toml"):
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        assert (project["license"], project["license-files"]) == ("MIT", ["LICENSE"]), pyproject
    assert json.loads((JS_CLIENT / "package.json").read_text(encoding="utf-8"))["license"] == "MIT"


def test_the_js_package_ships_its_license() -> None:
    """What `npm pack` would put in quote-stream's tarball: the modules and the LICENSE."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm not found: the JS client needs Node.js 20+ and npm (bash .ci/system-packages)")
    result = subprocess.run([npm, "pack", "--dry-run", "--json", "--ignore-scripts"], cwd=JS_CLIENT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    files = {f["path"] for f in json.loads(result.stdout)[0]["files"]}
    assert {"LICENSE", "package.json", "src/index.js", "src/index.d.ts"} <= files
    assert not any(f.startswith(("test/", "examples/", "node_modules/")) for f in files), files
