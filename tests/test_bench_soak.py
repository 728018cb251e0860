"""The soak with churn (bench/soak.py), short: 200 steady viewers, a churn of 20 clients a
second of every kind, every-mode consumers, a Redis restart and a worker killed, sampled
every 2 s. What is asserted are the verdicts that do not depend on the machine's speed:
every worker back to its baseline (fds, tasks, hub members and groups exactly, RSS within
its margin), nothing lost or repeated in every mode against the tape, every board
converged, every steady viewer back; not the ages (bench/README.md reports those)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.service_proc import ARTIFACTS, ROOT

pytestmark = pytest.mark.timeout(240)


def test_soak_quick_comes_back_to_baseline() -> None:
    out = ARTIFACTS / "soak-quick"  # kept: soak.md, soak.json, soak.png and logs-soak/
    (out / "soak.json").unlink(missing_ok=True)  # an earlier run's is not this one's
    assert shutil.which("cc"), "cc not found: bench/viewers_load.c needs a C compiler"
    done = subprocess.run([sys.executable, "-m", "bench.soak", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=220, check=False)
    result = out / "soak.json"
    assert result.exists(), f"no soak.json ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    data = json.loads(result.read_text())
    report = (out / "soak.md").read_text()
    verdicts = data["verdicts"]
    for name in ("back to baseline", "every mode: none lost, none repeated", "boards converged",
                 "steady viewers all back", "service alive"):
        assert verdicts[name]["ok"], f"{name}: {verdicts[name]}\n{report}"
    # The run did what it says: both events, churn of every kind, a worker replaced.
    events = [e["event"] for e in data["events"]]
    assert "redis-server started again" in events and "worker SIGKILL" in events
    kinds = {k.split(":")[0] for k in data["churn"] if ":" in k}
    assert kinds == {"ws", "sse"}, data["churn"]
    assert any(r["worker"].endswith("(restarted)") for r in data["table"])
    assert data["every"]["checked"] > 0 and data["every"]["sessions"] > data["plan"]["every"]
    assert (out / "soak.png").exists()
