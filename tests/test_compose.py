"""docker-compose.yml cannot be run here (no Docker engine), so check what it promises:
its structure, and that every command it names exists in this project."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

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
        redis_url = urlsplit(interpolated(services[name]["environment"]["REDIS_URL"]))
        assert (redis_url.scheme, redis_url.hostname, redis_url.port) == ("redis", "redis", 6379)
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
        assert node["healthcheck"] == services["redis"]["healthcheck"], name
        assert node["restart"] == "unless-stopped", name


def test_the_cluster_is_formed_once_with_a_replica_per_primary(compose: dict[str, Any]) -> None:
    init = compose["services"]["redis-cluster-init"]
    assert init["image"] == compose["services"]["redis"]["image"]
    assert init["command"][0] == "sh"
    script = init["command"][-1]
    create = re.search(r"redis-cli [^\n]*--cluster create ([^\n]+)", script)
    assert create is not None, script
    words = create.group(1).split()
    assert [w for w in words if not w.startswith("-")][:6] == [f"{n}:6379" for n in CLUSTER_NODES]
    # The nodes' default user is off: every redis-cli logs in as admin, its password
    # from REDISCLI_AUTH (so on no command line), the nodes' own.
    for call in re.findall(r"redis-cli [^|\n]*", script):
        assert call.startswith("redis-cli --user admin "), call
    assert init["environment"]["REDISCLI_AUTH"] == node_password("redis-node-1", "admin", compose)
    assert "--cluster-replicas 1" in create.group(1)
    assert "--cluster-yes" in words, "nothing answers its question in a container"
    # Run again on a formed cluster, `create` would fail: the job checks first.
    assert script.index("cluster_state:ok") < script.index("--cluster create")
    # Compose would substitute a lone `$` from the host's environment.
    assert re.search(r"(?<!\$)\$(?!\$)", script) is None
    for name in CLUSTER_NODES:
        assert init["depends_on"][name]["condition"] == "service_healthy"
    assert init.get("restart", "no") == "no", "a one-shot job"


def test_publisher_and_service_share_the_cluster_nodes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    urls = {name: interpolated(services[name]["environment"]["REDIS_URL"])
            for name in ("publisher-cluster", "service-cluster")}
    # One cluster, the same startup nodes; each logs in as its own user (below).
    assert len({urlsplit(url).netloc.rpartition("@")[2] for url in urls.values()}) == 1, urls
    for url in urls.values():
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


# Least-privilege Redis: deploy/redis/users.acl, written out with the passwords by
# deploy/redis/entrypoint.sh (tests/test_redis_acl.py runs both on real servers).

ACL_DIR = ROOT / "deploy" / "redis"
ACL_MOUNT = "/usr/local/etc/redis-acl"
REDIS_SERVERS = ["redis", *CLUSTER_NODES]
# Who logs in as whom: every process that reads REDIS_URL has a user of its own side.
USER_OF = {"publisher": "publisher", "service": "quotes-service"}


def interpolated(value: str) -> str:
    """What compose makes of each `${VAR:-default}` with VAR unset: its default."""
    assert re.search(r"\$\{(?!\w+:-)", value) is None, f"only ${{VAR:-default}} here: {value}"
    return re.sub(r"\$\{\w+:-([^}]*)\}", lambda m: m.group(1), value)


def acl_users() -> dict[str, list[str]]:
    """users.acl: each user's rules, the words after its name."""
    users = {}
    for line in (ACL_DIR / "users.acl").read_text().splitlines():
        words = line.split()
        assert words[0] == "user" and words[1] not in users, line
        users[words[1]] = words[2:]
    return users


def password_variable(user: str) -> str:
    tokens = [m.group(1) for w in acl_users()[user] if (m := re.fullmatch(r"<(REDIS_\w+_PASSWORD)>", w))]
    assert len(tokens) == 1, (user, tokens)
    return tokens[0]


def node_password(server: str, user: str, compose: dict[str, Any]) -> str:
    """The `${VAR:-default}` a Redis server's entrypoint reads that user's password from."""
    value: str = compose["services"][server]["environment"][password_variable(user)]
    return value


def test_every_redis_server_writes_its_acl_from_users_acl(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert (ACL_DIR / "entrypoint.sh").is_file() and (ACL_DIR / "users.acl").is_file()
    variables = {password_variable(u) for u, rules in acl_users().items()
                 if any(w.startswith("<REDIS_") for w in rules)}
    assert variables == {"REDIS_PUBLISHER_PASSWORD", "REDIS_SERVICE_PASSWORD",
                         "REDIS_ADMIN_PASSWORD", "REDIS_REPLICATION_PASSWORD"}
    for name in REDIS_SERVERS:
        server = services[name]
        assert server["entrypoint"] == ["sh", f"{ACL_MOUNT}/entrypoint.sh"], name
        assert f"./deploy/redis:{ACL_MOUNT}:ro" in server["volumes"], name
        # The entrypoint puts its config file (aclfile, masteruser) first after this.
        assert server["command"][0] == "redis-server", name
        for variable in variables:
            # Set from the shell or a .env file; the same on every server.
            value = server["environment"][variable]
            assert value.startswith(f"${{{variable}:-"), (name, value)
            assert value == services["redis"]["environment"][variable], name
            assert re.fullmatch(r"[A-Za-z0-9._~-]+", interpolated(value)), "entrypoint.sh's rule"


def test_the_default_user_is_off_and_the_healthcheck_may_only_ping(compose: dict[str, Any]) -> None:
    users = acl_users()
    assert users["default"] == ["reset", "off"]
    assert users["healthcheck"] == ["reset", "on", "nopass", "+ping"]
    test = compose["services"]["redis"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    assert "redis-cli --user healthcheck " in test[1] and test[1].endswith("ping | grep -q PONG")


def test_publishers_and_services_log_in_as_their_own_users(compose: dict[str, Any]) -> None:
    users = acl_users()
    seen = set()
    for name, spec in compose["services"].items():
        command = spec.get("command", [])
        if command[:2] != ["python", "-m"]:
            assert "REDIS_URL" not in spec.get("environment", {}), name
            continue
        user = USER_OF[command[2]]
        raw = spec["environment"]["REDIS_URL"]
        url = urlsplit(interpolated(raw))
        assert url.username == user, (name, raw)
        assert users[user][:2] == ["reset", "on"], user
        # Its password is the one its Redis servers hash into the ACL file.
        server = "redis-node-1" if url.scheme == "redis+cluster" else "redis"
        assert urlsplit(raw).password == node_password(server, user, compose), name
        assert unquote(url.password or "") == interpolated(node_password(server, user, compose))
        Settings(redis_url=url.geturl()).check()
        seen.add((command[2], url.scheme))
    assert seen == {("publisher", "redis"), ("service", "redis"),
                    ("publisher", "redis+cluster"), ("service", "redis+cluster")}, seen


def test_the_two_users_hold_their_own_keys_and_channels() -> None:
    """What each may touch, in words a reviewer can check (the behaviour is proven on a
    real server in tests/test_redis_acl.py)."""
    publisher, service = acl_users()["publisher"], acl_users()["quotes-service"]
    assert "~quotes:*" in publisher and "&quotes:{*}" in publisher
    assert {"+evalsha", "+script|load", "+publish", "+spublish"} <= set(publisher)
    assert not {"+eval", "+del", "+subscribe", "+ssubscribe", "+@all", "+keys"} & set(publisher)
    # Read-only keys, every partition's channel to listen on, and a selector that lets it
    # publish on its probe channels and nowhere else.
    assert "%R~quotes:*" in service and "&quotes:*" in service
    assert " (+publish +spublish &quotes:{*}:probe:*)" in " " + " ".join(service)
    root = service[:service.index("(+publish")]
    assert not {"+publish", "+spublish", "+hset", "+xadd", "+evalsha", "+eval",
                "+script|load", "+fcall", "+@all", "+@write"} & set(root)
    for rules in (publisher, service):
        assert not any(w.startswith(("~*", "&*", "allkeys", "allchannels", "+@all")) for w in rules)
