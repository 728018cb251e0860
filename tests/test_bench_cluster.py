"""The cluster benchmark's quick mode runs end to end (bench/cluster.py, bench/README.md).

`python -m bench.cluster --quick` (a subprocess, as `make bench` runs it) starts its own
six-node Redis Cluster and one redis-server, runs sharded against classic pub/sub and the
service on both, and writes cluster.json and cluster.md. Only that the outputs exist and
are sane is asserted: that every message and quote count is there, never how fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.service_proc import run_module

# About 10 s on an idle 2-core machine.
RUN_TIMEOUT_S = 55
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench-cluster-quick")
    done = run_module("bench.cluster", "--quick", "--out", str(out), timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, (f"bench.cluster --quick failed:\n{done.stdout[-3000:]}\n"
                                  f"{done.stderr[-3000:]}")
    return out, json.loads((out / "cluster.json").read_text())


def test_outputs_are_written(quick_run: tuple[Path, dict[str, Any]]) -> None:
    out, data = quick_run
    assert data["mode"] == "quick" and "error" not in data
    md = (out / "cluster.md").read_text()
    for heading in ("# Three-primary Redis Cluster",
                    "## 1. Redis: sharded against classic pub/sub in the cluster",
                    "## 2. The service on the cluster against the service on one Redis"):
        assert heading in md
    assert "measures nothing worth quoting" in md
    assert "| sharded (SPUBLISH/SSUBSCRIBE) |" in md and "| classic (PUBLISH/SUBSCRIBE) |" in md
    assert "| one server |" in md and "| cluster, 3 primaries |" in md


def test_sharded_and_classic_deliver_every_message(quick_run: tuple[Path, dict[str, Any]]) -> None:
    _, data = quick_run
    redis = data["redis"]
    assert redis["messages"] > 0
    roles = redis["roles"].values()
    assert sum(r == "primary" for r in roles) == 3 and len(roles) == 6
    for mode in ("sharded", "classic"):
        r = redis["modes"][mode]
        assert r["sent"] == redis["messages"], mode
        assert r["received"] == r["sent"] and r["all_delivered"], f"{mode}: {r}"
        assert r["publish_replies"] == r["sent"] and not r["errors"], f"{mode}: {r['errors']}"
        assert r["redis_cpu_s"] >= 0 and set(r["redis_cpu_s_per_node"]) == set(redis["roles"])
    assert redis["modes"]["sharded"]["subscribers"] == 3
    assert redis["modes"]["classic"]["subscribers"] == 1


def test_service_on_cluster_and_single(quick_run: tuple[Path, dict[str, Any]]) -> None:
    _, data = quick_run
    service = data["service"]
    for key, connections in (("cluster", 3), ("single", 1)):
        r = service[key]
        assert r["connected"] == r["clients"] > 0, f"{key}: {r['connect_errors']}"
        assert r["published"] > 0 and r["quotes"] > 0 and r["frames"] > 0, f"{key}: nothing delivered"
        assert r["age_p50_ms"] is not None and r["age_p99_ms"] is not None
        assert r["age_p50_ms"] <= r["age_p99_ms"]
        assert r["converged"]["converged"] > 0, f"{key}: {r['converged']}"
        subs = r["subscriptions"]
        # One subscriber per data channel: the service's own, on one connection per node.
        assert subs["channel_subscriptions"] == 16, f"{key}: {subs}"
        assert subs["pubsub_connections"] == connections, f"{key}: {subs}"
        assert r["service_alive_at_end"]
    assert set(service["cluster_over_single"]) >= {"quotes_per_s_per_client", "service_cpu_pct"}
