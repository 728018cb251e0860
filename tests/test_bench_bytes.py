"""bench/bytes.py runs end to end (a subprocess, small), so its figures cannot rot: every
estimate is positive and no larger than protocol 1, and the floor is below them all.
Nothing here times anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.service_proc import run_module

pytestmark = pytest.mark.timeout(90)

RESULT = Path(__file__).resolve().parent.parent / "bench" / "results" / "tmp" / "bytes.json"


def test_the_bytes_benchmark_orders_its_encodings() -> None:
    RESULT.unlink(missing_ok=True)
    done = run_module("bench.bytes", "--quick", timeout=60)
    assert done.returncode == 0, f"bench.bytes failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    result = json.loads(RESULT.read_text())
    [setting] = result["settings"]
    assert (setting["rate"], setting["max_hz"], setting["viewers"]) == (20, 4, 2)
    assert setting["same_frames"], setting["frames_per_viewer"]
    rows = {key: row["bytes_per_s"] for key, row in setting["rows"].items()}
    protocol1 = rows.pop("protocol1")
    floor = rows.pop("floor")
    assert protocol1 > 0
    for key, value in rows.items():
        assert 0 < value <= protocol1, key
        assert floor <= value, key
    assert floor > 0
