"""docker-compose.yml cannot be run here (no Docker engine), so check what it promises:
its structure, and that every command it names exists in this project."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.app import create_app
from service.settings import Settings
from service.topology import cluster

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_three_services_started_in_order_of_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"redis", "publisher", "service"}
    for name in ("publisher", "service"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://redis:6379")
        assert services[name]["build"] == "."
        assert services[name]["restart"] in ("unless-stopped", "always", "on-failure")
    for name in ("redis", "service"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert "8000:8000" in services["service"]["ports"]


def test_an_optional_replica_shares_the_redis(compose: dict[str, Any]) -> None:
    replica = compose["services"]["service-replica"]
    assert replica["profiles"] == ["replica"]
    assert replica["environment"] == compose["services"]["service"]["environment"]
    assert replica["ports"] != compose["services"]["service"]["ports"]


def test_redis_image_is_pinned(compose: dict[str, Any]) -> None:
    image = compose["services"]["redis"]["image"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+[-\w.]*", image), image


def test_the_redis_keeps_the_tape_across_a_restart(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    given = options(redis["command"])
    assert given["--appendonly"] == "yes" and given["--appendfsync"] == "everysec"
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in compose["volumes"]


def test_commands_exist(compose: dict[str, Any]) -> None:
    for name in ("publisher", "service", "service-replica", "service-1", "service-2",
                 "publisher-cluster", "service-cluster"):
        command = compose["services"][name]["command"]
        assert command[:2] == ["python", "-m"]
        # `--help` proves the module and its arguments parse without starting anything.
        result = subprocess.run(
            [sys.executable, *command[1:], "--help"], cwd=ROOT, capture_output=True,
            text=True, timeout=30,
        )
        assert result.returncode == 0, result.stderr


def test_service_healthcheck_targets_a_route_that_exists(compose: dict[str, Any]) -> None:
    test = " ".join(compose["services"]["service"]["healthcheck"]["test"])
    path = re.search(r"127\.0\.0\.1:8000(/\w+)", test)
    assert path is not None
    app = create_app(Settings())
    assert path.group(1) in {getattr(r, "path", None) for r in app.routes}
    code = compose["services"]["service"]["healthcheck"]["test"][-1]
    compile(code, "healthcheck", "exec")


def test_dockerfile_is_slim_and_runs_as_a_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim", dockerfile, re.MULTILINE)
    assert re.search(r"^USER \w+", dockerfile, re.MULTILINE)
    assert "[test]" not in dockerfile
    for copied in re.findall(r"^COPY (\S+)", dockerfile, re.MULTILINE):
        assert (ROOT / copied).exists(), copied


def test_the_lb_profile_puts_nginx_in_front_of_two_instances(compose: dict[str, Any]) -> None:
    services = compose["services"]
    proxy = services["nginx"]
    assert proxy["profiles"] == ["lb"]
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+[-\w.]*", proxy["image"])
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert (ROOT / "deploy" / "nginx.conf").is_file()
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    behind = re.findall(r"^\s*server (service-\d+):8000", conf, re.MULTILINE)
    assert len(behind) == 2
    for name in behind:
        instance = services[name]
        assert instance["profiles"] == ["lb"]
        assert "ports" not in instance, "only nginx is published"
        assert int(instance["environment"]["WORKERS"]) >= 2
        assert instance["environment"]["REDIS_URL"] == services["service"]["environment"]["REDIS_URL"]
        assert instance["environment"]["FORWARDED_ALLOW_IPS"]
        assert proxy["depends_on"][name]["condition"] == "service_healthy"
        # Draining must end before compose's stop_grace_period runs out.
        grace = float(instance["stop_grace_period"].rstrip("s"))
        assert float(instance["environment"]["DRAIN_S"]) + 5 < grace


CLUSTER_NODES = [f"redis-node-{n}" for n in range(1, 7)]


def options(command: list[str]) -> dict[str, str]:
    """`redis-server --name value ...` as a dict; every option here takes one value."""
    assert command[0] == "redis-server" and len(command) % 2 == 1, command
    return dict(zip(command[1::2], command[2::2], strict=True))


def test_the_cluster_profile_has_six_cluster_nodes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in (*CLUSTER_NODES, "redis-cluster-init", "publisher-cluster", "service-cluster"):
        assert services[name]["profiles"] == ["cluster"], name
    for name in CLUSTER_NODES:
        node = services[name]
        assert node["image"] == services["redis"]["image"], name
        given = options(node["command"])
        assert given["--cluster-enabled"] == "yes", name
        assert given["--cluster-node-timeout"] == "2000", name
        assert (given["--save"], given["--appendonly"]) == ("", "no"), name
        # Redis 7 tells clients addresses unless asked for names; the compose network
        # resolves only names, and each node must announce its own.
        assert given["--cluster-announce-hostname"] == name
        assert given["--cluster-preferred-endpoint-type"] == "hostname", name
        assert node["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"], name
        assert node["restart"] == "unless-stopped", name


def test_the_cluster_is_formed_once_with_a_replica_per_primary(compose: dict[str, Any]) -> None:
    init = compose["services"]["redis-cluster-init"]
    assert init["image"] == compose["services"]["redis"]["image"]
    assert init["command"][0] == "sh"
    script = init["command"][-1]
    create = re.search(r"redis-cli --cluster create ([^\n]+)", script)
    assert create is not None, script
    words = create.group(1).split()
    assert [w for w in words if not w.startswith("-")][:6] == [f"{n}:6379" for n in CLUSTER_NODES]
    assert "--cluster-replicas 1" in create.group(1)
    assert "--cluster-yes" in words, "nothing answers its question in a container"
    # Run again on a formed cluster, `create` would fail: the job checks first.
    assert script.index("cluster_state:ok") < script.index("--cluster create")
    # Compose would substitute a lone `$` from the host's environment.
    assert re.search(r"(?<!\$)\$(?!\$)", script) is None
    for name in CLUSTER_NODES:
        assert init["depends_on"][name]["condition"] == "service_healthy"
    assert init.get("restart", "no") == "no", "a one-shot job"


def test_publisher_and_service_share_one_cluster_url(compose: dict[str, Any]) -> None:
    services = compose["services"]
    urls = {name: services[name]["environment"]["REDIS_URL"]
            for name in ("publisher-cluster", "service-cluster")}
    assert len(set(urls.values())) == 1, urls
    url = urls["service-cluster"]
    assert url.startswith("redis+cluster://")
    Settings(redis_url=url).check()
    for host, port in cluster.parse(url).nodes:
        assert host in CLUSTER_NODES, host
        assert port == 6379
    for name in urls:
        assert services[name]["depends_on"] == {
            "redis-cluster-init": {"condition": "service_completed_successfully"}}, name
        assert services[name]["restart"] in ("unless-stopped", "always", "on-failure")
    service = services["service-cluster"]
    assert "8002:8000" in service["ports"]
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), "two services on one host port"
    assert service["healthcheck"] == services["service"]["healthcheck"]
