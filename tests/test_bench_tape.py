"""bench/tape.py runs end to end (a subprocess, small), so its figures cannot rot: the tape
it measures holds every quote published, and a recovery brings back all that was asked.
Nothing here times anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.service_proc import run_module

pytestmark = pytest.mark.timeout(120)


def test_the_tape_benchmark_measures_what_it_says(tmp_path: Path) -> None:
    done = run_module("bench.tape", "--quotes", "5000", "--missed", "100", "--runs", "1",
                      "--out", str(tmp_path), timeout=90)
    assert done.returncode == 0, f"bench.tape failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    result = json.loads((tmp_path / "tape.json").read_text())
    assert result["tape"]["on_tape"] == result["tape"]["quotes"] == 5000
    assert 50 < result["tape"]["bytes_per_quote"] < 1000
    assert len(result["recovery"]) == 2
    assert "per million quotes" in (tmp_path / "tape.md").read_text()
