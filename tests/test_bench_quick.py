"""The benchmark's quick mode runs end to end, so `make bench` cannot rot unnoticed.

`python -m bench --quick` (a subprocess, as `make bench` runs it) drives the project and
the Python peers through every scenario for a second or so each, with its own
redis-server, and writes latest.json, latest.md and (with matplotlib) latest.png. Only
that the outputs exist and are sane is asserted: nothing here times anything.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.service_proc import run_module

STREAM_SCENARIOS = ("firehose", "ticker", "stalled")
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
HAVE_BROADCASTER = importlib.util.find_spec("broadcaster") is not None
# About 25 s on an idle 2-core machine; the fixture's run counts against the first test.
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench-quick")
    done = run_module("bench", "--quick", "--out", str(out), timeout=150)
    assert done.returncode == 0, f"bench --quick failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    data = json.loads((out / "latest.json").read_text())
    return out, data


def _finite_ms(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and 0 <= value < 120_000


def _check_peer(data: dict[str, Any], peer: str) -> None:
    assert peer in data["results"], f"{peer} did not run: {data['failed'].get(peer)}"
    results = data["results"][peer]
    for scenario in STREAM_SCENARIOS:
        r = results[scenario]
        assert "error" not in r, f"{peer}/{scenario}: {r.get('error')}"
        assert r["connected"] == r["clients"], f"{peer}/{scenario}: {r['connect_errors']}"
        assert r["updates_per_s"] > 0 and r["quotes_per_s"] > 0, f"{peer}/{scenario}: nothing delivered"
        for key in ("age_p50_ms", "age_p99_ms", "age_max_ms"):
            assert _finite_ms(r[key]), f"{peer}/{scenario}: {key} = {r[key]!r}"
        assert r["age_p50_ms"] <= r["age_p99_ms"] <= r["age_max_ms"]
    assert results["ticker"]["converged"]["converged"] > 0
    idle = results["idle"]
    assert "error" not in idle, idle.get("error")
    assert idle["connected"] == idle["clients"] and idle["receiving"] > 0
    assert idle["kb_per_conn"] is not None and math.isfinite(idle["kb_per_conn"])


def test_outputs_are_written(quick_run: tuple[Path, dict[str, Any]]) -> None:
    out, data = quick_run
    assert data["mode"] == "quick"
    md = (out / "latest.md").read_text()
    for heading in ("## 1. Firehose", "## 2. Ticker", "## 3. Idle crowd", "## 4. Stalled readers",
                    "## The service against its targets"):
        assert heading in md
    assert "| this service |" in md and "| websockets.broadcast() |" in md
    png = out / "latest.png"
    if HAVE_MPL:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_project_and_websockets_peer(quick_run: tuple[Path, dict[str, Any]]) -> None:
    _, data = quick_run
    _check_peer(data, "service")
    _check_peer(data, "websockets")


@pytest.mark.skipif(not HAVE_BROADCASTER, reason="broadcaster not installed (bench/requirements.txt)")
def test_broadcaster_peer(quick_run: tuple[Path, dict[str, Any]]) -> None:
    _, data = quick_run
    _check_peer(data, "broadcaster")
