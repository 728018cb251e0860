"""bench/bytes.py runs end to end (a subprocess, small), so its figures cannot rot: real
viewers of each encoding on one service, their bytes ordered as the encodings promise
(compact below protocol 1, deflate below protocol 1, compact+deflate no larger than
compact, the floor below them all), every decoded quote equal to protocol 1's, deflate
negotiated; and one CPU point per encoding through bench/viewers.py's run_point, with the
native generator speaking each encoding. Nothing here times anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.service_proc import run_module

pytestmark = pytest.mark.timeout(100)

RESULT = Path(__file__).resolve().parent.parent / "bench" / "results" / "tmp" / "bytes.json"


def test_the_bytes_benchmark_orders_its_encodings() -> None:
    RESULT.unlink(missing_ok=True)
    done = run_module("bench.bytes", "--quick", timeout=80)
    assert done.returncode == 0, f"bench.bytes failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    result = json.loads(RESULT.read_text())
    [setting] = result["bytes"]["settings"]
    assert (setting["rate"], setting["max_hz"]) == (20, 4)
    assert setting["errors"] == []
    enc = {name: row["bytes_per_s"] for name, row in setting["encodings"].items()}
    assert set(enc) == {"json", "deflate", "compact", "compact+deflate"}
    assert all(row["viewers"] == 1 for row in setting["encodings"].values())
    assert 0 < setting["floor"]["bytes_per_s"] < enc["compact+deflate"] <= enc["compact"] < enc["json"]
    assert enc["deflate"] < enc["json"]
    assert setting["encodings"]["deflate"]["compressed_frames"] > 0
    for name in ("deflate", "compact+deflate"):
        assert setting["encodings"][name]["deflate_negotiated"] == 1
    for name in ("json", "compact"):
        assert setting["encodings"][name]["deflate_negotiated"] == 0
        assert setting["encodings"][name]["compressed_frames"] == 0
    assert setting["quotes_checked"] > 0 and setting["quotes_differ"] == 0
    buckets = setting["buckets"]
    assert sum(b["frames"] for b in buckets.values()) > 0
    assert all(b["ratio"] is None or 0 < b["ratio"] <= 1 for b in buckets.values())

    [cpu] = result["cpu"]["settings"]
    assert (cpu["rate"], cpu["max_hz"], cpu["viewers"]) == (1000, 4, 100)
    points = {p["encoding"]: p for p in result["cpu"]["points"]}
    assert set(points) == {"json", "compact", "compact+deflate"}
    for name, p in points.items():
        assert p["connected"] == 100 and p["frames_per_s"] > 0, name
        assert p["server_us_per_frame"] > 0 and p["aged_quotes"] > 0, name
    assert points["compact+deflate"]["deflate_negotiated"] == 100
    assert points["compact+deflate"]["compressed_frames"] > 0
    assert points["json"]["compressed_frames"] == points["compact"]["compressed_frames"] == 0
    # Fewer bytes per frame: the generator counts compressed payloads as they came.
    sizes = {name: p["mean_frame_bytes"] for name, p in points.items()}
    assert sizes["compact+deflate"] < sizes["compact"] < sizes["json"]
