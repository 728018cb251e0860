"""Least-privilege Redis: the ACL rules docker-compose.yml loads (deploy/redis/users.acl,
written out with the passwords by deploy/redis/entrypoint.sh, as in compose) on real
redis-servers, under the real publisher and service, each logged in as its own user.

Each side does its whole job as that user (quotes reach a websocket client, the snapshot
is read, the tape fills and /history answers from it, the service's probes come back so
/readyz is 200; in a cluster too, through a failover) while Redis's ACL log stays empty,
so nothing either process sends is refused. And each is refused, with NOPERM, what
belongs to the other side or to an operator.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.retry import Retry

from quote_runtime.exits import EXIT_CONFIG
from tests.redis_cluster import RedisCluster
from tests.redis_server import LAYOUT, RedisServer
from tests.service_proc import (
    ROOT,
    PublisherProcess,
    ServiceProcess,
    http_get,
    replay_file,
)
from tests.test_faults import FAST_PROBES, SYMBOLS, until
from tests.wsclient import connect, recv_type

ACL_DIR = ROOT / "deploy" / "redis"
ENTRYPOINT = ACL_DIR / "entrypoint.sh"

# The variable each user's password comes from, as docker-compose.yml sets them.
PASSWORD_VARIABLES = {
    "publisher": "REDIS_PUBLISHER_PASSWORD",
    "quotes-service": "REDIS_SERVICE_PASSWORD",
    "admin": "REDIS_ADMIN_PASSWORD",
    "replication": "REDIS_REPLICATION_PASSWORD",
}
PASSWORDS = {user: secrets.token_hex(16) for user in PASSWORD_VARIABLES}

# Shown by Redis for a command the user may not run, a key or a channel it may not touch
# (NoPermissionError), or the same refused inside a script (a plain error reply).
SCRIPT_REFUSED = re.compile(r"user executing the script can't|NOPERM", re.IGNORECASE)

OGDC_TAPE = LAYOUT.tape("OGDC")
QUOTE_CHANNEL = LAYOUT.channel(0)
PROBE_CHANNEL = LAYOUT.probe(0, "some-node")


def write_acl(out: Path, passwords: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """compose's entrypoint without a command: it only writes users.acl and acl.conf."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS")}
    env["REDIS_ACL_DIR"] = str(out)
    env.update({PASSWORD_VARIABLES[user]: p for user, p in passwords.items()})
    return subprocess.run(["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True,
                          timeout=10, check=False)


def acl_conf(workdir: Path, passwords: Mapping[str, str] = PASSWORDS) -> Path:
    result = write_acl(workdir / "acl", passwords)
    assert result.returncode == 0, result.stderr
    return workdir / "acl" / "acl.conf"


@contextmanager
def acl_server(passwords: Mapping[str, str] = PASSWORDS) -> Iterator[RedisServer]:
    """One redis-server on the rules, its config file first (as compose starts it)."""
    with tempfile.TemporaryDirectory(prefix="test-redis-acl-") as name:
        workdir = Path(name)
        conf = acl_conf(workdir, passwords)
        for _ in range(3):
            server = RedisServer(workdir, config=conf)
            if server.start():
                break
        else:
            pytest.fail(f"redis-server did not start on the ACL rules:\n{server.log()}")
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with acl_server() as started:
        yield started


def url(port: int, user: str) -> str:
    return f"redis://{user}:{PASSWORDS[user]}@127.0.0.1:{port}/0"


@contextmanager
def login(port: int, user: str, password: str | None = None) -> Iterator[redis.Redis]:
    # No retries: a refused login is the answer, not a blip.
    client = redis.Redis(host="127.0.0.1", port=port, username=user,
                         password=PASSWORDS[user] if password is None else password,
                         socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        yield client
    finally:
        client.close()


def acl_log(port: int) -> list[dict[str, Any]]:
    """What Redis refused since the last reset, as the admin sees it."""
    with login(port, "admin") as admin:
        return [{k: v for k, v in e.items() if k in ("username", "reason", "object", "context",
                                                       "count")}
                for e in admin.acl_log()]


def reset_acl_log(port: int) -> None:
    with login(port, "admin") as admin:
        admin.acl_log_reset()


def logged_in_users(port: int) -> set[str]:
    with login(port, "admin") as admin:
        return {c["user"] for c in admin.client_list()}


# The single-server profile.


async def test_publisher_and_service_each_do_their_job_as_their_own_user(
        server: RedisServer, tmp_path: Path) -> None:
    reset_acl_log(server.port)
    service = ServiceProcess({"REDIS_URL": url(server.port, "quotes-service"), **FAST_PROBES})
    publisher = PublisherProcess(url(server.port, "publisher"), rate=50,
                                 env={"REDIS_RETRY_MAX_S": "1"})
    try:
        publisher.start()
        # 200 only once a probe the service PUBLISHed came back through its subscription
        # and the publisher's quotes or heartbeats were heard.
        service.start(ready="/readyz")
        status, body = http_get(service.url + "/readyz")
        report = orjson.loads(body)
        assert status == 200 and report["redis"] == "connected", report
        assert report["probe_rtt_ms"] is not None, report
        await board_full(service)

        async with connect(service.ws_url + "?symbols=*") as ws:
            snapshot = await recv_type(ws, "snapshot", timeout=10)
            assert len(snapshot["quotes"]) == SYMBOLS  # read with HGETALL as the service
            live = await recv_type(ws, "quotes", timeout=10)  # SUBSCRIBEd, as the service
            assert live["quotes"] and all(q["seq"] >= 1 for q in live["quotes"])

        status, body = http_get(service.url + "/quotes")
        assert status == 200 and len(orjson.loads(body)["quotes"]) == SYMBOLS

        with login(server.port, "admin") as admin:
            await until(lambda: admin.xlen(OGDC_TAPE) >= 2, 10, "OGDC's tape filling")

        def history() -> list[Any]:
            status, body = http_get(service.url + "/history?symbols=OGDC")
            assert status == 200, body
            points: list[Any] = orjson.loads(body)["history"]["OGDC"]
            return points

        await until(lambda: len(history()) >= 2, 10, "/history read from the tape")

        # `publisher replay` is the other publisher: the same user, the same script.
        result = await asyncio.to_thread(
            replay_file, url(server.port, "publisher"), ROOT / "quote_sim" / "data" / "psx_ticker.txt")
        assert result.returncode == 0, result.stderr
        assert f"published {SYMBOLS}, rejected 0" in result.stderr

        # They really are logged in as themselves, and Redis refused them nothing: no
        # command, key or channel, not even one redis-py would swallow.
        assert {"publisher", "quotes-service"} <= logged_in_users(server.port)
        assert acl_log(server.port) == []
    finally:
        publisher.stop()
        service.stop()
    assert "NOPERM" not in service.log() + publisher.log()


SERVICE_REFUSED = [
    ("HSET", LAYOUT.latest(0), "OGDC", "{}"),
    ("HINCRBY", LAYOUT.seq(0), "OGDC", "1"),
    ("HDEL", LAYOUT.latest(0), "OGDC"),
    ("XADD", OGDC_TAPE, "*", "q", "{}"),
    ("XTRIM", OGDC_TAPE, "MAXLEN", "0"),
    ("DEL", LAYOUT.latest(0)),
    ("UNLINK", OGDC_TAPE),
    ("EXPIRE", LAYOUT.latest(0), "1"),
    ("EVAL", "return 1", "0"),
    ("EVALSHA", hashlib.sha1(b"return 1").hexdigest(), "0"),
    ("SCRIPT", "LOAD", "return 1"),
    ("FUNCTION", "LOAD", "#!lua name=x\nredis.register_function('x', function() end)"),
    ("FCALL", "x", "0"),
    ("MULTI",),
    # Its channels' rule lets it subscribe to the quote channels, and its probes' rule
    # publish on its probe channels only: it cannot speak for the publisher.
    ("PUBLISH", QUOTE_CHANNEL, "[]"),
    ("SPUBLISH", QUOTE_CHANNEL, "[]"),
    ("PUBLISH", "other:{0}:probe:x", "1"),
    ("HGETALL", "other:{0}:latest"),
    ("XRANGE", "other:{0}:tape:OGDC", "-", "+"),
    ("PSUBSCRIBE", "quotes:*"),
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("ACL", "WHOAMI"),
    ("ACL", "LIST"),
    ("ACL", "SETUSER", "quotes-service", "+@all"),
    ("KEYS", "*"),
    ("SCAN", "0"),
    ("INFO",),
    ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "USER", "publisher"),
    ("MONITOR",),
    ("SHUTDOWN", "NOSAVE"),
]

PUBLISHER_REFUSED = [
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("ACL", "LIST"),
    ("ACL", "SETUSER", "publisher", "+@all"),
    ("KEYS", "*"),
    ("KEYS", "other:*"),
    ("SCAN", "0"),
    ("INFO",),
    ("HSET", "other:{0}:latest", "OGDC", "{}"),
    ("HGETALL", "other:{0}:latest"),
    ("HGET", "session:1", "user"),
    ("XADD", "other:{0}:tape:OGDC", "*", "q", "{}"),
    ("DEL", LAYOUT.latest(0)),
    ("UNLINK", LAYOUT.latest(0)),
    ("RENAME", LAYOUT.latest(0), "quotes:x"),
    ("EXPIRE", LAYOUT.latest(0), "1"),
    ("EVAL", "return 1", "0"),
    ("SCRIPT", "FLUSH"),
    ("FUNCTION", "LOAD", "#!lua name=x\nredis.register_function('x', function() end)"),
    ("FUNCTION", "FLUSH"),
    ("MULTI",),
    # It publishes the quotes and listens to nothing, and a service's probe is not its own.
    ("SUBSCRIBE", QUOTE_CHANNEL),
    ("SSUBSCRIBE", QUOTE_CHANNEL),
    ("PUBLISH", PROBE_CHANNEL, "1"),
    ("PUBLISH", "other:{0}", "[]"),
    ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "USER", "quotes-service"),
    ("MONITOR",),
    ("SHUTDOWN", "NOSAVE"),
]


@pytest.mark.parametrize("command", SERVICE_REFUSED, ids=" ".join)
def test_the_service_user_cannot_write_nor_administer(
        server: RedisServer, command: tuple[str, ...]) -> None:
    with login(server.port, "quotes-service") as service, \
            pytest.raises(NoPermissionError, match="no permissions"):
        service.execute_command(*command)


@pytest.mark.parametrize("command", PUBLISHER_REFUSED, ids=" ".join)
def test_the_publisher_user_cannot_leave_its_keys_nor_administer(
        server: RedisServer, command: tuple[str, ...]) -> None:
    with login(server.port, "publisher") as publisher, \
            pytest.raises(NoPermissionError, match="no permissions"):
        publisher.execute_command(*command)


@pytest.mark.parametrize("body", [
    "return redis.call('FLUSHALL')",
    "return redis.call('KEYS', '*')",
    "return redis.call('DEL', KEYS[1])",
    "return redis.call('HSET', 'other:{0}:latest', 'OGDC', '{}')",
    "return redis.call('PUBLISH', 'quotes:{0}:probe:some-node', '1')",
])
def test_a_script_the_publisher_loads_runs_with_its_permissions(server: RedisServer,
                                                                  body: str) -> None:
    """SCRIPT LOAD takes any Lua, but each redis.call in it is checked against the user
    who runs it: no way around the rules through a script."""
    with login(server.port, "publisher") as publisher:
        sha = publisher.script_load(body)
        with pytest.raises(ResponseError, match=SCRIPT_REFUSED):
            publisher.evalsha(sha, 1, LAYOUT.latest(0))


def test_the_service_user_reads_listens_and_probes(server: RedisServer) -> None:
    with login(server.port, "publisher") as publisher:
        publisher.hset(LAYOUT.latest(0), "OGDC", '{"seq":1}')
        publisher.xadd(OGDC_TAPE, {"q": '{"seq":1}'})
    with login(server.port, "quotes-service") as service:
        assert service.ping()
        assert service.hgetall(LAYOUT.latest(0))[b"OGDC"] == b'{"seq":1}'
        assert service.xrange(OGDC_TAPE, count=1) and service.xrevrange(OGDC_TAPE, count=1)
        pubsub = service.pubsub()
        try:
            pubsub.subscribe(QUOTE_CHANNEL, PROBE_CHANNEL)
            assert service.publish(PROBE_CHANNEL, "1") == 1  # heard by its own subscription
        finally:
            pubsub.close()


def test_the_default_user_is_off_and_healthcheck_may_only_ping(server: RedisServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
        s.sendall(b"GET x\r\n")
        assert s.recv(64).startswith(b"-NOAUTH")
    with login(server.port, "default", "anything") as anonymous, \
            pytest.raises(AuthenticationError):
        anonymous.ping()
    with login(server.port, "healthcheck", "any password") as health:
        assert health.ping()
        for command in (("INFO",), ("GET", "x"), ("HGETALL", LAYOUT.latest(0)),
                        ("PUBLISH", QUOTE_CHANNEL, "[]"), ("CONFIG", "GET", "*")):
            with pytest.raises(NoPermissionError):
                health.execute_command(*command)
    with login(server.port, "replication") as replica:
        assert replica.ping()  # then PSYNC, REPLCONF: nothing else
        with pytest.raises(NoPermissionError):
            replica.get("x")
    for user, password in (("publisher", PASSWORDS["quotes-service"]), ("admin", "")):
        with login(server.port, user, password) as wrong, pytest.raises(AuthenticationError):
            wrong.ping()


# A refusal retrying cannot fix: the publisher stops on it as the service does (exit 3,
# quote_runtime/exits.py's EXIT_CONFIG), with one line naming REDIS_URL and the reason.

REFUSALS = {
    "a wrong password": ("publisher", "not-the-password", 0, "invalid username-password pair"),
    "an unknown user": ("nobody", "any", 0, "invalid username-password pair"),
    "a database that does not exist": ("publisher", None, 99, "DB index is out of range"),
    # The service's user may read but not write: HGET, the publisher's first command.
    "a command the ACL does not allow": ("quotes-service", None, 0, "no permissions"),
}


def refused_url(port: int, user: str, password: str | None, db: int) -> str:
    return f"redis://{user}:{password or PASSWORDS[user]}@127.0.0.1:{port}/{db}"


def publisher_run(redis_url: str, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LOG_"))}
    return subprocess.run([sys.executable, "-m", "publisher", *argv], cwd=ROOT, input=stdin,
                          env={**env, "REDIS_URL": redis_url, "REDIS_RETRY_MAX_S": "1"},
                          capture_output=True, text=True, timeout=15, check=False)


def the_fatal_line(result: subprocess.CompletedProcess[str], reason: str, port: int) -> str:
    """The reason is the publisher's last line, and nothing before it was a retry."""
    assert result.returncode == EXIT_CONFIG, result.stderr
    lines = result.stderr.splitlines()
    assert lines, result.stderr
    last = lines[-1]
    assert "cannot use REDIS_URL" in last and reason in last, result.stderr
    assert f"127.0.0.1:{port}" in last, last
    for word in ("retrying", "starting afresh", "Traceback"):
        assert word not in result.stderr, result.stderr
    return last


@pytest.mark.parametrize("case", list(REFUSALS))
def test_the_publisher_stops_on_a_refusal_that_retrying_cannot_fix(server: RedisServer,
                                                                     case: str) -> None:
    user, password, db, reason = REFUSALS[case]
    result = publisher_run(refused_url(server.port, user, password, db), "simulate")
    last = the_fatal_line(result, reason, server.port)
    assert orjson.loads(last)["event"] == "fatal"  # JSON: stderr is not a terminal
    assert len(result.stderr.splitlines()) <= 2  # at most `simulating ...` before it
    assert (password or PASSWORDS[user]) not in result.stderr


def test_a_replay_stops_on_a_refusal_too(server: RedisServer) -> None:
    seed = (ROOT / "quote_sim" / "data" / "psx_ticker.txt").read_text(encoding="utf-8")
    result = publisher_run(refused_url(server.port, "publisher", "wrong", 0), "replay", "-",
                           stdin=seed)
    line = the_fatal_line(result, "invalid username-password pair", server.port)
    assert line.startswith("publisher: ") and len(result.stderr.splitlines()) == 1


def compose_healthcheck() -> str:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    test = compose["services"]["redis"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL", test
    command: str = test[1]
    return command


def test_the_compose_healthcheck_passes_on_these_rules_and_only_on_a_pong(
        server: RedisServer) -> None:
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli not found: apt-get install redis-tools")
    command = compose_healthcheck()
    here = command.replace("redis-cli ", f"redis-cli -h 127.0.0.1 -p {server.port} ", 1)
    assert subprocess.run(["sh", "-c", here], timeout=10, check=False).returncode == 0
    # Without the healthcheck user it gets NOAUTH, which redis-cli may still exit 0 on.
    refused = here.replace("--user healthcheck", "--user nobody")
    assert refused != here
    assert subprocess.run(["sh", "-c", refused], timeout=10, check=False,
                          capture_output=True).returncode != 0


# How the ACL file is written.


def test_the_acl_file_holds_hashes_and_a_user_without_a_password_cannot_log_in(
        tmp_path: Path) -> None:
    passwords = {"publisher": PASSWORDS["publisher"], "quotes-service": PASSWORDS["quotes-service"]}
    result = write_acl(tmp_path, passwords)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "users.acl").read_text()
    for user, password in passwords.items():
        line = next(line for line in written.splitlines() if line.startswith(f"user {user} "))
        assert f" #{hashlib.sha256(password.encode()).hexdigest()} " in line
        assert password not in written
    assert "<REDIS_" not in written
    admin = next(line for line in written.splitlines() if line.startswith("user admin "))
    assert " resetpass " in admin and "nopass" not in admin
    conf = (tmp_path / "acl.conf").read_text().splitlines()
    assert conf == [f"aclfile {tmp_path}/users.acl"], conf  # no replication password, no masterauth
    assert "admin replication" in result.stderr  # named as those who cannot log in

    with acl_server(passwords) as started:
        for user in ("admin", "replication"):
            with login(started.port, user, "") as nobody, pytest.raises(AuthenticationError):
                nobody.ping()
        with login(started.port, "publisher") as publisher:
            assert publisher.ping()


def test_the_replication_password_makes_the_server_authenticate_to_its_primary(
        tmp_path: Path) -> None:
    result = write_acl(tmp_path, PASSWORDS)
    assert result.returncode == 0, result.stderr
    conf = (tmp_path / "acl.conf").read_text().splitlines()
    assert conf[1:] == ["masteruser replication", f"masterauth {PASSWORDS['replication']}"]


@pytest.mark.parametrize("password", ["p@ss", "a b", "x:y", "50%", "a/b", "quote'", "dollar$"])
def test_a_password_that_a_url_would_mangle_is_refused(tmp_path: Path, password: str) -> None:
    result = write_acl(tmp_path, {"publisher": password})
    assert result.returncode == 1
    assert "REDIS_PUBLISHER_PASSWORD may hold only" in result.stderr
    assert not (tmp_path / "users.acl").exists()


def test_the_compose_default_passwords_are_warned_about(tmp_path: Path) -> None:
    result = write_acl(tmp_path, {"publisher": "change-me-publisher"})
    assert result.returncode == 0
    assert "REDIS_PUBLISHER_PASSWORD is the compose default" in result.stderr


# The cluster profile: every node on the same rules.


class AclCluster(RedisCluster):
    """Six nodes (three primaries, three replicas) on the rules, formed as compose's
    redis-cluster-init job does it: `redis-cli --user admin` with REDISCLI_AUTH."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, config=acl_conf(workdir), admin=("admin", PASSWORDS["admin"]))

    def url_for(self, user: str) -> str:
        return (f"redis+cluster://{user}:{PASSWORDS[user]}@"
                + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2]))

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.settled():
                return
            time.sleep(0.1)
        pytest.fail("the cluster did not settle, or its replicas did not link to their "
                    "primaries as `replication`:\n" + self.nodes[0].log())

    def settled(self) -> bool:
        """Every live node says cluster_state:ok and every replica's link is up: a link
        needs masteruser/masterauth, since the default user is off."""
        for node in self.live():
            try:
                with login(node.port, "admin") as admin:
                    if admin.cluster("info").get("cluster_state") != "ok":
                        return False
                    info = admin.info("replication")
            except redis.RedisError:
                return False
            if info.get("role") != "master" and info.get("master_link_status") != "up":
                return False
        return True

    def owner(self, slot: int) -> RedisServer:
        with login(self.live()[0].port, "admin") as admin:
            for start, end, primary, *_ in admin.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return next(n for n in self.nodes if n.port == int(primary[1]))
        raise AssertionError(f"nobody owns slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def readyz(service: ServiceProcess) -> dict[str, Any]:
    status, body = http_get(service.url + "/readyz")
    report: dict[str, Any] = orjson.loads(body)
    report["status"] = status
    return report


async def test_a_cluster_on_the_same_rules_survives_a_failover() -> None:
    with tempfile.TemporaryDirectory(prefix="test-redis-acl-cluster-") as name:
        cluster = AclCluster(Path(name))
        try:
            cluster.start()
            await cluster_stack(cluster)
        finally:
            cluster.stop()



async def board_full(service: ServiceProcess) -> None:
    """Until the service holds the publisher's whole board: /readyz turns 200 on the first
    heartbeat heard, which may come before the board (the publisher reads its earlier state
    first, slower on a cluster), and a client connecting then gets no snapshot yet."""

    def full() -> bool:
        status, body = http_get(service.url + "/quotes")
        return status == 200 and len(orjson.loads(body)["quotes"]) == SYMBOLS

    await until(full, 10, "the whole board on the service")

async def cluster_stack(cluster: AclCluster) -> None:
    for node in cluster.nodes:
        reset_acl_log(node.port)
    publisher = PublisherProcess(cluster.url_for("publisher"), rate=50,
                                 env={"REDIS_RETRY_MAX_S": "1"})
    service = ServiceProcess({"REDIS_URL": cluster.url_for("quotes-service"), **FAST_PROBES})
    slot = int(key_slot(OGDC_TAPE.encode()))
    ogdc_channel = LAYOUT.channel(LAYOUT.partition("OGDC"))  # the tape's slot
    try:
        publisher.start()
        service.start(ready="/readyz")  # SSUBSCRIBEd, probes SPUBLISHed on every shard
        await board_full(service)
        async with connect(service.ws_url + "?symbols=*") as ws:
            assert len((await recv_type(ws, "snapshot", timeout=10))["quotes"]) == SYMBOLS
            await recv_type(ws, "quotes", timeout=10)

        # A primary dies: its replica takes over with no script loaded, so the publisher's
        # SCRIPT LOAD and CLUSTER SLOTS, and the service's CLUSTER SHARDS, run again.
        owner = cluster.owner(slot)
        with login(owner.port, "admin") as admin:
            before = admin.xlen(OGDC_TAPE)
        owner.kill()
        await until(lambda: (r := readyz(service))["status"] == 200
                    and f"127.0.0.1:{owner.port}" not in r["nodes"]
                    and not r["partitions_stale"], 20, "live again after the failover")
        promoted = cluster.owner(slot)
        assert promoted.port != owner.port

        def grown() -> bool:
            with login(promoted.port, "admin") as admin:
                return bool(admin.xlen(OGDC_TAPE) > before)

        await until(grown, 10, "OGDC's tape growing on the promoted replica")
        status, body = http_get(service.url + "/history?symbols=OGDC")
        assert status == 200 and orjson.loads(body)["history"]["OGDC"]

        # Nothing either process sent was refused, on any node, through the failover.
        for node in cluster.live():
            assert acl_log(node.port) == [], node.port

        with login(promoted.port, "quotes-service") as reader:
            assert reader.execute_command("SPUBLISH", LAYOUT.probe(LAYOUT.partition("OGDC"),
                                                                   "some-node"), "1") == 0
            for command in (("SPUBLISH", ogdc_channel, "[]"),
                            ("XADD", OGDC_TAPE, "*", "q", "{}"),
                            ("CLUSTER", "FAILOVER"), ("CLUSTER", "RESET")):
                with pytest.raises(NoPermissionError):
                    reader.execute_command(*command)
        with login(promoted.port, "publisher") as writer:
            for command in (("SSUBSCRIBE", ogdc_channel), ("CLUSTER", "SHARDS"),
                            ("CLUSTER", "FORGET", "x")):
                with pytest.raises(NoPermissionError):
                    writer.execute_command(*command)
    finally:
        publisher.stop()
        service.stop()
    assert "NOPERM" not in service.log() + publisher.log()
