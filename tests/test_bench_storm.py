"""The reconnect storm's small variant runs end to end (bench/storm.py, issue 25).

`python -m bench.storm --quick` (a subprocess, as the lead reruns it) with 600 viewers
behind nginx on two instances, and the admission lowered to 50 connects/s per worker
(MAX_CONNECTS_PER_S): the 300 viewers of the killed instance come back to the survivor
within about 0.2 s, so it refuses some of them with 1013 however fast or slow the machine
is (unless it took more than 5 s for 300 handshakes), and the back-off has to spread them.
Verdicts only, never how fast: in both scenarios every viewer is back with its board and
every sampled board converges, nobody is refused in a loop and no survivor goes silent;
the instance's SIGKILL drops only its own viewers, refused ones come back; a Redis restart
disconnects nobody and every viewer sees the feed go stale, then live.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.storm import REFUSAL_LOOP
from tests.service_proc import run_module

VIEWERS = 600
# About 30 s on an idle 2-core machine.
RUN_TIMEOUT_S = 100
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench-storm-quick")
    done = run_module("bench.storm", "--quick", "--viewers", str(VIEWERS), "--set", "MAX_CONNECTS_PER_S=50",
                      "--out", str(out), timeout=RUN_TIMEOUT_S)
    assert (out / "storm.json").exists(), f"bench.storm failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out, json.loads((out / "storm.json").read_text())


def test_both_scenarios_pass(storm: tuple[Path, dict[str, Any]]) -> None:
    out, data = storm
    assert data["admission"]["MAX_CONNECTS_PER_S"] == 50
    assert set(data["scenarios"]) == {"kill", "redis"}
    for r in data["scenarios"].values():
        assert r["pass"], r["fail_reasons"]
        assert r["recovered"] and r["open"] == r["synced"] == VIEWERS
        assert r["max_refusals"] <= REFUSAL_LOOP and r["refusal_loops"] == 0
        assert r["stalled"] == 0
        assert r["converged"]["converged"] == r["converged"]["boards"] > 0
        assert r["converged"]["symbols"] >= 10  # every partition's seqs, not one's
    md = (out / "storm.md").read_text()
    assert md.startswith("# Reconnect storm (issue 25)")
    assert "| kill | pass |" in md and "| redis | pass |" in md


def test_kill_sends_only_its_viewers_to_the_survivor(storm: tuple[Path, dict[str, Any]]) -> None:
    r = storm[1]["scenarios"]["kill"]
    assert 0 < r["lost"] < VIEWERS and r["steady"] == VIEWERS - r["lost"]
    assert r["totals"]["admitted"] == r["totals"]["synced"] == r["lost"]
    # the survivor's admission turned part of the storm away, and those came back
    assert r["refused_by"].get("1013", 0) == r["totals"]["refused"] > 0
    assert r["service"]["1"]["capacity_total"] > 0
    assert r["closes"]["eof"] == r["lost"]


def test_redis_restart_disconnects_nobody(storm: tuple[Path, dict[str, Any]]) -> None:
    r = storm[1]["scenarios"]["redis"]
    assert r["lost"] == 0 and r["totals"]["attempted"] == 0 and r["closes"] == {}
    assert r["steady"] == r["stale"] == r["live"] == VIEWERS
