"""The benchmark's floor program (bench/floor.c) and the viewers scenario's tools run.

The floor is built with the system compiler as `make bench` builds it and run small; the
viewers scenario runs its quick mode for one rate. Only the shape and sanity of what they
print is asserted: nothing here times anything.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.fastclient import viewer_url
from bench.viewers import build_floor, run_floor, ws_frame_bytes
from tests.service_proc import run_module

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def floor_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert shutil.which("cc"), "cc not found: bench/floor.c needs a C compiler (apt-get install gcc)"
    return build_floor(tmp_path_factory.mktemp("floor") / "floor")


def _check(result: dict[str, object], conns: int, nbytes: int) -> None:
    assert result["conns"] == conns
    assert result["bytes"] == nbytes
    assert isinstance(result["writes"], int) and result["writes"] > 0
    per = result["cpu_us_per_write"]
    assert isinstance(per, dict) and set(per) == {"user", "sys", "total"}
    for v in per.values():
        assert isinstance(v, int | float) and math.isfinite(v) and v >= 0
    assert per["total"] > 0
    assert abs(per["total"] - per["user"] - per["sys"]) < 0.01
    assert isinstance(result["wall_s"], int | float) and result["wall_s"] > 0
    assert result["sink_exit"] == 0


def test_floor_back_to_back(floor_bin: Path) -> None:
    result = run_floor(100, 3000, writes=2000, seconds=20, binary=floor_bin)
    _check(result, 100, 3000)
    assert result["writes"] == 2000
    assert result["payload_bytes"] == 2996  # a 4-byte websocket header


def test_floor_paced_small_frames(floor_bin: Path) -> None:
    # --hz: one frame to every socket per 1/hz s; 10 rounds of 100 at 50 Hz is 0.2 s.
    result = run_floor(100, 300, writes=1000, seconds=20, hz=50, binary=floor_bin)
    _check(result, 100, 300)
    assert result["hz"] == 50
    assert result["wall_s"] >= 0.15


def test_floor_prints_usage_on_bad_arguments(floor_bin: Path) -> None:
    done = subprocess.run([str(floor_bin), "--conns", "0"], capture_output=True, text=True, timeout=10)
    assert done.returncode == 2 and "usage" in done.stderr


def test_frame_sizes_and_urls() -> None:
    assert ws_frame_bytes(100) == 102
    assert ws_frame_bytes(3000) == 3004
    assert ws_frame_bytes(70000) == 70010
    assert viewer_url("ws://127.0.0.1:1/ws", 4) == "ws://127.0.0.1:1/ws?symbols=*&max_hz=4"
    assert viewer_url("ws://127.0.0.1:1/ws", 0.5) == "ws://127.0.0.1:1/ws?symbols=*&max_hz=0.5"
    assert viewer_url("ws://127.0.0.1:1/ws", None) == "ws://127.0.0.1:1/ws?symbols=*"


def test_viewers_quick(tmp_path: Path) -> None:
    done = run_module("bench.viewers", "--quick", "--rates", "4", "--out", str(tmp_path),
                      timeout=100)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    data = json.loads((tmp_path / "viewers.json").read_text())
    [res] = data["rates"]
    [point] = res["points"]
    assert point["connected"] == point["viewers"] == 100
    assert point["frames_per_s"] > 0
    assert point["boards"] > 0
    assert point["server_us_per_frame"] > 0 and point["generator_us_per_frame"] > 0
    assert point["floor_us_per_write"] > 0
    assert (tmp_path / "viewers.md").read_text().startswith("Run ")
