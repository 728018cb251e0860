"""A primary, its replicas and the sentinels watching them: private redis-servers on free
ports for failover tests, built on RedisServer (stopped by PID, never touching 6379).

Sentinel rewrites its config file, so each sentinel gets its own in the workdir.
`sentinel_setup()` yields them started and agreed: every sentinel knows the replicas and
the other sentinels, and every replica's link to the primary is up.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis

from tests.redis_server import RedisServer

MASTER = "m"
READY_TIMEOUT_S = 20.0


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)


def replication(port: int) -> dict[str, Any]:
    """INFO replication of the server on that port; empty if it does not answer."""
    client = _client(port)
    try:
        return dict(client.info("replication"))
    except redis.RedisError:
        return {}
    finally:
        client.close()


class SentinelSetup:
    def __init__(self, workdir: Path, *, replicas: int = 1, sentinels: int = 3, quorum: int = 2,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> None:
        self.workdir = workdir
        # Any data server may become the primary, and a primary waits 5 s by default
        # before a full sync in case more replicas come.
        data = ["--repl-diskless-sync-delay", "0"]
        self.primary = RedisServer(self._dir("primary"), args=data)
        self.replicas = [
            RedisServer(self._dir(f"replica{i}"),
                        args=[*data, "--replicaof", "127.0.0.1", str(self.primary.port)])
            for i in range(replicas)
        ]
        self.sentinels: list[RedisServer] = []
        for i in range(sentinels):
            path = self._dir(f"sentinel{i}")
            config = path / "sentinel.conf"
            config.write_text(
                "sentinel resolve-hostnames no\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} {quorum}\n"
                f"sentinel down-after-milliseconds {MASTER} {down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            self.sentinels.append(RedisServer(path, args=["--sentinel"], config=config))

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir()
        return path

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER}"

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replicas, *self.sentinels]

    def start(self) -> None:
        """Primary, then replicas (linked), then sentinels, then wait until they agree:
        a sentinel learns the replicas from the primary's INFO and its peers from hello
        messages (every 2 s) through the primary."""
        for server in (self.primary, *self.replicas):
            if not server.start():
                pytest.fail(f"redis-server on {server.port} did not start:\n{server.log()}")
        self._until(lambda: all(replication(r.port).get("master_link_status") == "up"
                                for r in self.replicas), "every replica's link to the primary up")
        for sentinel in self.sentinels:
            if not sentinel.start():
                pytest.fail(f"sentinel on {sentinel.port} did not start:\n{sentinel.log()}")
        self._until(self._agreed, "every sentinel knows the replicas and the other sentinels")

    def _agreed(self) -> bool:
        for sentinel in self.sentinels:
            client = _client(sentinel.port)
            try:
                replicas = client.sentinel_slaves(MASTER)
                peers = cast(list[dict[str, Any]], client.sentinel_sentinels(MASTER))
            except redis.RedisError:
                return False
            finally:
                client.close()
            if len(peers) != len(self.sentinels) - 1 or len(replicas) != len(self.replicas):
                return False
            if any(r["is_sdown"] or r.get("master-link-status") != "ok" for r in replicas):
                return False
        return True

    def _until(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not check():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {s.log_path}\n{s.log()}" for s in self.servers)
                pytest.fail(f"not within {READY_TIMEOUT_S}s: {what}\n{logs}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Every server, even if one of them fails to stop."""
        errors = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    async def master_ports(self) -> list[int | None]:
        """The primary's port as each sentinel names it now (None: no answer)."""
        async def ask(port: int) -> int | None:
            client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5,
                                    socket_connect_timeout=0.5)
            try:
                addr = cast("tuple[str, int] | None",
                            await client.sentinel_get_master_addr_by_name(MASTER))
                return int(addr[1]) if addr else None
            except redis.RedisError:
                return None
            finally:
                await client.aclose()

        return list(await asyncio.gather(*(ask(s.port) for s in self.sentinels)))

    async def agree_on(self, port: int, timeout: float = 10.0) -> None:
        """Until every sentinel names `port` as the primary (the leader of a failover
        tells the others through hello messages, every 2 s)."""
        deadline = time.monotonic() + timeout
        while (ports := await self.master_ports()) != [port] * len(self.sentinels):
            if time.monotonic() > deadline:
                pytest.fail(f"the sentinels name {ports} as the primary, not {port}, "
                            f"after {timeout}s")
            await asyncio.sleep(0.1)

    async def failed_over(self, old_port: int) -> float:
        """Wait for the first sentinel to name a primary other than `old_port`; the
        monotonic time it was seen. Cancel it to stop waiting."""
        while True:
            ports = await self.master_ports()
            if any(p is not None and p != old_port for p in ports):
                return time.monotonic()
            await asyncio.sleep(0.05)


@contextmanager
def sentinel_setup(**options: Any) -> Iterator[SentinelSetup]:
    """A started, agreed SentinelSetup (see its options), every server stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="test-sentinel-") as workdir:
        setup = SentinelSetup(Path(workdir), **options)
        try:
            setup.start()
            yield setup
        finally:
            setup.stop()
