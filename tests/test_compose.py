"""docker-compose.yml: first what it promises (its structure, and that every command it
names exists in this project), then the stack for real: the image built from the Dockerfile
and every profile brought up with docker-compose on a Docker engine the test starts itself
(tests/docker_engine.py), quotes read on every published port, nginx's spread over its
instances, and everything taken down again. Where no engine can be started (not root, no
dockerd) the live part skips, saying why."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import pytest
import yaml

from quote_bus.topology import cluster
from service.app import create_app
from service.settings import Settings
from tests import docker_engine
from tests.docker_engine import ARTIFACTS, Engine
from tests.redis_server import free_port
from tests.service_proc import http_get
from tests.wsclient import connect, recv, recv_type

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


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
    assert [interpolated(p) for p in services["service"]["ports"]] == ["8000:8000"]


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


# Each published port: "${QUOTES_..._PORT:-default}:container port", so the README's plain
# commands publish the defaults and a test (or a busy host) can move them.
PUBLISHED = {"service": "QUOTES_PORT", "service-replica": "QUOTES_REPLICA_PORT",
             "nginx": "QUOTES_LB_PORT", "service-cluster": "QUOTES_CLUSTER_PORT"}


def test_published_ports_come_from_variables_and_no_redis_is_published(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    published = {name: spec["ports"] for name, spec in services.items() if "ports" in spec}
    assert set(published) == set(PUBLISHED), "only the services and nginx are published"
    defaults = []
    for name, ports in published.items():
        assert len(ports) == 1, (name, ports)
        found = re.fullmatch(r"\$\{(\w+):-(\d+)\}:(\d+)", ports[0])
        assert found is not None, (name, ports[0])
        assert found.group(1) == PUBLISHED[name], name
        assert found.group(3) == ("80" if name == "nginx" else "8000"), name
        defaults.append(found.group(2))
    assert len(defaults) == len(set(defaults)), "two services on one host port"
    # The file's header names the variables, and so do the docs (the README or its
    # configuration page).
    header = (ROOT / "docker-compose.yml").read_text().split("\nx-redis-acl")[0]
    docs = "".join(path.read_text() for path in (ROOT / "README.md", ROOT / "docs" / "configuration.md")
                   if path.is_file())
    for variable in PUBLISHED.values():
        assert variable in header and variable in docs, variable


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    """.dockerignore lists what goes in (the rest, .venv and node_modules included, stays
    out): every COPY source must be among it."""
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, "an allowlist"
    kept = [line[1:] for line in ignore if line.startswith("!")]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for copied in re.findall(r"^COPY (\S+)", dockerfile, re.MULTILINE):
        assert any(copied == k or copied.startswith(k + "/") for k in kept), copied


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
    assert [interpolated(p) for p in service["ports"]] == ["8002:8000"]
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


# The stack for real: docker-compose on an engine of the test's own.

PROJECT = "psxquotestest"
PROFILES = ("replica", "lb", "cluster")
BEHIND_NGINX = ("service-1", "service-2")
UP_TIMEOUT_S = 180.0
# Cold (no cached rootfs, layers or images) it runs debootstrap and a full image build.
LIVE_TIMEOUT_S = 1200


@dataclass
class Stack:
    engine: Engine
    ports: dict[str, int]  # published service -> its port on 127.0.0.1
    timings: dict[str, float] = field(default_factory=dict)
    stand_ins: list[str] = field(default_factory=list)

    def containers(self) -> list[dict[str, Any]]:
        ids = self.engine.docker("ps", "-aq", "--filter",
                                 f"label=com.docker.compose.project={PROJECT}").stdout.split()
        return self.engine.inspect("container", *ids) if ids else []

    def container(self, service: str) -> dict[str, Any]:
        found = [c for c in self.containers() if service_of(c) == service]
        assert len(found) == 1, (service, len(found))
        return found[0]


def service_of(container: dict[str, Any]) -> str:
    return str(container["Config"]["Labels"]["com.docker.compose.service"])


def services_in(compose: dict[str, Any], profiles: tuple[str, ...]) -> set[str]:
    """What `up` with these profiles starts: the services without a profile, and theirs."""
    return {name for name, spec in compose["services"].items()
            if not spec.get("profiles") or set(spec["profiles"]) & set(profiles)}


def base_images(compose: dict[str, Any]) -> list[str]:
    """The images the stack runs but does not build, and the Dockerfile's base."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    images = {m.group(1) for m in re.finditer(r"^FROM (\S+)", dockerfile, re.MULTILINE)}
    images |= {spec["image"] for spec in compose["services"].values() if "build" not in spec}
    return sorted(images)


def not_up_yet(container: dict[str, Any]) -> str | None:
    """Why this container is not yet what `up` promises (healthy; running, for one without
    a healthcheck; exited 0 for the one-shot job), or None when it is. Raises on a state
    that will not get better."""
    state, name = container["State"], service_of(container)
    restart = container["HostConfig"]["RestartPolicy"]["Name"]
    if state["Status"] == "exited" and restart in ("", "no"):
        assert state["ExitCode"] == 0, f"{name} exited with {state['ExitCode']}"
        return None
    if "Health" in state:
        health = state["Health"]["Status"]
        assert health != "unhealthy", f"{name} is unhealthy: {state['Health']['Log'][-1:]}"
        return None if health == "healthy" else f"{name} is {health}"
    return None if state["Status"] == "running" else f"{name} is {state['Status']}"


def wait_until_up(stack: Stack, expected: set[str], timeout: float = UP_TIMEOUT_S) -> float:
    """Seconds until every container of `expected` is up (not_up_yet); fails on timeout."""
    started = time.monotonic()
    waiting: list[str] = ["no container yet"]
    while time.monotonic() - started < timeout:
        containers = stack.containers()
        unasked = {service_of(c) for c in containers} - expected
        assert not unasked, f"containers this up did not ask for: {unasked}"
        missing = expected - {service_of(c) for c in containers}
        waiting = [f"{m} has no container" for m in sorted(missing)]
        waiting += [w for c in containers if service_of(c) in expected and (w := not_up_yet(c))]
        if not waiting:
            return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(f"not up within {timeout:.0f}s: {'; '.join(waiting)}")


@pytest.fixture(scope="module")
def stack(compose: dict[str, Any]) -> Iterator[Stack]:
    reason = docker_engine.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with docker_engine.cache_lock():
        engine = Engine()
        stack = Stack(engine, {name: free_port() for name in PUBLISHED})
        env = {variable: f"127.0.0.1:{stack.ports[name]}" for name, variable in PUBLISHED.items()}
        # Passwords of this run's own, through the variables the README names.
        env |= {f"REDIS_{who}_PASSWORD": secrets.token_hex(12)
                for who in ("PUBLISHER", "SERVICE", "ADMIN", "REPLICATION")}
        project = ["-p", PROJECT, "-f", str(ROOT / "docker-compose.yml"),
                   "--project-directory", str(ROOT)]
        every = [word for profile in PROFILES for word in ("--profile", profile)]
        log = ARTIFACTS / "compose.log"
        for earlier in (log, ARTIFACTS / "docker-build.log"):
            earlier.unlink(missing_ok=True)

        def timed(step: str, started: float) -> None:
            stack.timings[step] = round(time.monotonic() - started, 1)

        try:
            started = time.monotonic()
            engine.start()
            timed("engine", started)
            # What an interrupted run left (its containers restart with the engine).
            engine.compose([*project, *every, "down", "-v", "--remove-orphans", "-t", "5"], env,
                           log=log)
            started = time.monotonic()
            for image in base_images(compose):
                if (warning := engine.ensure_image(image)) is not None:
                    warnings.warn(warning, stacklevel=1)
                    stack.stand_ins.append(image)
            timed("base images", started)

            started = time.monotonic()
            built = {spec["image"] for spec in compose["services"].values() if "build" in spec}
            assert len(built) == 1, built
            # The host's network: where that is the only way out to the package index.
            engine.docker("build", "--network", "host", "-t", built.pop(), str(ROOT),
                          timeout=900, log=ARTIFACTS / "docker-build.log")
            timed("image build", started)

            started = time.monotonic()
            engine.compose([*project, "up", "-d", "--no-build"], env, timeout=UP_TIMEOUT_S, log=log)
            wait_until_up(stack, services_in(compose, ()))
            timed("up (default)", started)
            started = time.monotonic()
            engine.compose([*project, *every, "up", "-d", "--no-build"], env, timeout=UP_TIMEOUT_S, log=log)
            wait_until_up(stack, services_in(compose, PROFILES))
            timed("up (every profile)", started)
            yield stack
        finally:
            left: dict[str, list[str]] = {}
            try:
                if engine.answering:
                    logs = engine.compose([*project, *every, "logs", "--no-color"], env, check=False)
                    (ARTIFACTS / "compose-services.log").write_text(logs.stdout + logs.stderr)
                    started = time.monotonic()
                    engine.compose([*project, *every, "down", "-v", "--remove-orphans"], env, log=log)
                    timed("down", started)
                    label = f"label=com.docker.compose.project={PROJECT}"
                    left = {kind: found for kind in ("ps -a", "volume ls", "network ls")
                            if (found := engine.docker(*kind.split(), "-q", "--filter", label)
                                .stdout.split())}
                    # Images an earlier build left untagged: only the current one's layers stay.
                    engine.docker("image", "prune", "-f", check=False)
            finally:
                engine.stop()
            print(f"\ncompose, every profile, for real: {stack.timings}"
                  + (f"; stand-ins for {stack.stand_ins}" if stack.stand_ins else ""))
            assert not left, f"down -v left {left}"


@pytest.mark.timeout(LIVE_TIMEOUT_S)
def test_every_profile_comes_up_and_publishes_only_its_ports(
        stack: Stack, compose: dict[str, Any]) -> None:
    containers = stack.containers()
    assert {service_of(c) for c in containers} == services_in(compose, PROFILES)
    assert all(not_up_yet(c) is None for c in containers)
    for container in containers:
        name = service_of(container)
        bindings = {port: [(b["HostIp"], int(b["HostPort"])) for b in bound or []]
                    for port, bound in container["NetworkSettings"]["Ports"].items()}
        published = {port: bound for port, bound in bindings.items() if bound}
        if name in PUBLISHED:
            target = "80/tcp" if name == "nginx" else "8000/tcp"
            assert published == {target: [("127.0.0.1", stack.ports[name])]}, (name, published)
        else:
            # No Redis (6379 is taken on this machine, and needs no outside door) and no
            # instance behind nginx is reachable from the host.
            assert published == {}, (name, published)


async def board_of(port: int, timeout: float = 20.0) -> dict[str, Any]:
    """GET /quotes once the board holds quotes and the feed is live."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, raw = http_get(f"http://127.0.0.1:{port}/quotes")
        body = orjson.loads(raw) if status == 200 else {"status": status}
        if body.get("feed") == "live" and body.get("quotes"):
            return body
        await asyncio.sleep(0.2)
    pytest.fail(f"no live board on :{port} within {timeout:.0f}s: {body}")


@pytest.mark.timeout(LIVE_TIMEOUT_S)
async def test_quotes_on_every_published_port(stack: Stack) -> None:
    for name, port in stack.ports.items():
        board = await board_of(port)
        symbols = {q["symbol"] for q in board["quotes"]}
        async with connect(f"ws://127.0.0.1:{port}/ws?symbols=*") as ws:
            welcome = await recv(ws)
            assert welcome["type"] == "welcome" and welcome["node"], (name, welcome)
            snapshot = await recv_type(ws, "snapshot")
            # The whole board at once, the same symbols REST showed (or more, if one
            # appeared since).
            assert symbols <= {q["symbol"] for q in snapshot["quotes"]}, name
            assert all(q["price"] > 0 for q in snapshot["quotes"]), name
            await recv_type(ws, "quotes", timeout=10)  # and it flows


def worker_nodes(stack: Stack, service: str) -> set[str]:
    """The node ids of an instance's workers, from its supervisor's worker_ready lines."""
    container = stack.container(service)
    result = stack.engine.docker("logs", container["Id"])
    nodes = set()
    for line in (result.stdout + result.stderr).splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "worker_ready":
            nodes.add(str(entry["worker_node"]))
    return nodes


@pytest.mark.timeout(LIVE_TIMEOUT_S)
async def test_nginx_spreads_clients_over_both_instances(stack: Stack) -> None:
    instance_of = {node: service for service in BEHIND_NGINX for node in worker_nodes(stack, service)}
    assert len(instance_of) == 2 * len(BEHIND_NGINX), "WORKERS=2 on each instance"
    landed: list[str] = []
    async with AsyncExitStack() as held:
        # Held open together: least_conn sends each to the instance with the fewest.
        for _ in range(6):
            ws = await held.enter_async_context(
                connect(f"ws://127.0.0.1:{stack.ports['nginx']}/ws?symbols=*"))
            welcome = await recv(ws)
            assert welcome["node"] in instance_of, (welcome["node"], instance_of)
            landed.append(instance_of[welcome["node"]])
            await recv_type(ws, "snapshot")
    counts = {service: landed.count(service) for service in BEHIND_NGINX}
    print(f"\n6 websockets through nginx: {counts}")
    assert all(counts.values()), f"every connection on one instance: {counts}"
