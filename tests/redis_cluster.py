"""A Redis Cluster of private redis-servers for tests: six nodes on free ports (three
primaries, three replicas) joined with `redis-cli --cluster create`, built on RedisServer
(stopped by PID, never touching 6379). Each node keeps its nodes.conf in its own dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.redis_server import RedisServer, free_port

READY_TIMEOUT_S = 30.0
Address = tuple[str, int]


def client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)


def distinct_ports(n: int) -> list[int]:
    """n free ports, no two the same: free_port() alone may hand one out twice, and a
    node's ping would then be answered by another node."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class RedisCluster:
    def __init__(self, workdir: Path, nodes: int = 6, node_timeout_ms: int = 1000,
                 config: Path | None = None, admin: tuple[str, str] | None = None) -> None:
        """`config`: a file every node loads (ACL rules); `admin`: the user and password
        redis-cli forms the cluster as, when the default user is off."""
        self.admin = admin
        self.nodes: list[RedisServer] = []
        ports = distinct_ports(2 * nodes)
        for i in range(nodes):
            path = workdir / f"node{i}"
            path.mkdir()
            self.nodes.append(RedisServer(path, port=ports[2 * i], config=config, args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                # The bus is port + 10000 by default, which a free port may not have.
                "--cluster-port", str(ports[2 * i + 1]),
                # A replica promoted while its primary is gone must not wait for it.
                "--cluster-replica-validity-factor", "0",
                "--repl-diskless-sync-delay", "0"]))

    @property
    def url(self) -> str:
        """Two startup nodes, as an operator would give: the client finds the rest."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def start(self) -> None:
        for node in self.nodes:
            if not node.start():
                pytest.fail(f"cluster node did not start:\n{node.log()}")
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli not found: apt-get install redis-tools")
        user = ["--user", self.admin[0]] if self.admin else []
        env = {**os.environ, **({"REDISCLI_AUTH": self.admin[1]} if self.admin else {})}
        result = subprocess.run(
            [cli, *user, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            env=env, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            pytest.fail(f"redis-cli --cluster create failed:\n{result.stdout}\n{result.stderr}")
        self.wait_ready()

    def wait_ready(self) -> None:
        self.wait_ok()
        self.wait_replicas()

    def wait_replicas(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until every replica's link to its primary is up: a replica promoted before
        its first sync would start empty, and shard messages reach replicas only then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._linked(node.port) for node in self.live()):
                return
            time.sleep(0.1)
        pytest.fail("replicas did not link to their primaries in time")

    @staticmethod
    def _linked(port: int) -> bool:
        c = client(port)
        try:
            info = c.info("replication")
        except redis.RedisError:
            return False
        finally:
            c.close()
        return info.get("role") == "master" or info.get("master_link_status") == "up"

    def wait_ok(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until every live node says cluster_state:ok and agrees on the slot owners."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._agreed():
                return
            time.sleep(0.1)
        pytest.fail("the cluster did not settle in time:\n" + self.nodes[0].log())

    def _agreed(self) -> bool:
        maps = []
        for node in self.live():
            try:
                c = client(node.port)
                info = c.cluster("info")
                if info.get("cluster_state") != "ok":
                    return False
                maps.append(sorted(self.owners_from(node.port).items()))
            except redis.RedisError:
                return False
            finally:
                c.close()
        return bool(maps) and all(m == maps[0] for m in maps)

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def owners_from(self, port: int) -> dict[tuple[int, int], int]:
        """(first slot, last slot) -> the port of its primary, as that node sees it."""
        c = client(port)
        try:
            ranges = c.execute_command("CLUSTER SLOTS")
        finally:
            c.close()
        return {(int(r[0]), int(r[1])): int(r[2][1]) for r in ranges}

    def owner_of(self, slot: int) -> int:
        for node in self.live():
            try:
                for (start, end), port in self.owners_from(node.port).items():
                    if start <= slot <= end:
                        return port
            except redis.RedisError:
                continue
        raise AssertionError(f"no live node knows slot {slot}")

    def primaries(self) -> list[int]:
        return sorted(set(self.owners_from(self.live()[0].port).values()))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextmanager
def redis_cluster(node_timeout_ms: int = 1000) -> Iterator[RedisCluster]:
    with tempfile.TemporaryDirectory(prefix="test-cluster-") as workdir:
        cluster = RedisCluster(Path(workdir), node_timeout_ms=node_timeout_ms)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
