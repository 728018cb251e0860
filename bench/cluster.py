"""Three-primary Redis Cluster: sharded against classic pub/sub, and the service on it.

    python -m bench.cluster [--quick] [--out DIR] [--no-pin]

Two side-by-side comparisons in one run, on one six-node cluster (three primaries, three
replicas; tests/redis_cluster.py) on 127.0.0.1:

1. **Redis side.** The same messages at the same rate over the 16 partition channels
   `quotes:{P}`: (a) sharded, SPUBLISH to the primary owning each channel's slot, one
   SSUBSCRIBE subscriber per primary; (b) classic, PUBLISH of the same messages to the
   same nodes, one SUBSCRIBE subscriber on one node. Every message must arrive. Measured:
   the CPU seconds of all six redis-server processes over the window, per message, per
   node, and the classic/sharded ratio. The load generator and the subscribers are one
   asyncio process speaking raw RESP (pre-encoded commands, pipelined per node every
   5 ms; replies and messages parsed by hiredis and only counted).
2. **The service.** `python -m service` on the cluster, then on one redis-server, with
   the same load: N load-client connections on `/ws?symbols=*` and the project's
   `python -m publisher simulate --rate R --seed 1` (REDIS_URL selects the topology),
   a warm-up, a measured window, then convergence to the publisher's final seqs.

Pinning (2+ CPUs): in part 1 the six redis-servers share CPU 0 and the load generator
has CPU 1; in part 2 the service has CPU 0 and Redis (six nodes or one), the publisher
and the load client share CPU 1. Every process is started and stopped by PID; nothing
touches a Redis this run did not start (6379 least of all).

Writes cluster.json and cluster.md to bench/results/ (quick: bench/results/tmp/cluster-quick).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import hiredis
import orjson
import pytest
import redis as redis_sync
from redis.crc import key_slot

from bench import report
from bench.harness import machine, source_state, versions
from bench.peers import ROOT
from bench.procs import Child, Sampler, busy_pct, cpu_plan, cpu_times, port_open, raise_nofile, read_proc
from publisher.redis_sink import wire_body
from publisher.settings import Settings as PublisherSettings
from quote_bus.layout import Layout
from quote_sim.simulate import market_from_settings
from service.settings import Settings
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer, free_port

PY = sys.executable
LAYOUT = Layout()  # as deployed: 16 partitions, `quotes:{P}`
PARTITIONS = LAYOUT.partitions
CHANNELS = [LAYOUT.channel(p) for p in range(PARTITIONS)]
SLOTS = [int(key_slot(c.encode())) for c in CHANNELS]
TICK_S = 0.005  # the load generator sends what is due this often, one pipeline per node
VARIANTS = 8  # distinct payloads per partition, cycled
# What pytest.fail raises (tests/redis_*.py report a server that did not start with it).
StartError: tuple[type[BaseException], ...] = (Exception, pytest.fail.Exception)


@dataclass(frozen=True)
class Plan:
    quick: bool
    msg_rate: int  # part 1: messages/s, both modes
    msg_seconds: float
    idle_s: float  # part 1: the cluster's idle CPU measured over this long first
    clients: int  # part 2
    quote_rate: float
    warmup_s: float
    measure_s: float
    converge_s: float


FULL = Plan(False, 20_000, 10.0, 3.0, 200, 1000, 3.0, 10.0, 5.0)
QUICK = Plan(True, 2_000, 1.0, 0.5, 10, 200, 0.5, 1.0, 3.0)


class BenchError(Exception):
    """A step of the run failed: the reason, with a log's tail where there is one."""


def say(text: str) -> None:
    print(text, flush=True)


# ---- the cluster ---------------------------------------------------------------------------

def start_cluster(workdir: Path, attempts: int = 3) -> RedisCluster:
    """Six nodes joined into three primaries and three replicas, replication up
    (tests/redis_cluster.py), retried if a port was taken meanwhile."""
    last = ""
    for attempt in range(attempts):
        path = workdir / f"cluster{attempt}"
        path.mkdir()
        cluster = RedisCluster(path)
        try:
            cluster.start()
            if len(cluster.primaries()) != 3:
                raise BenchError(f"expected 3 primaries, got {cluster.primaries()}")
            return cluster
        except StartError as exc:
            last = f"{type(exc).__name__}: {exc}"
            cluster.stop()
    raise BenchError(f"the cluster did not start: {last}")


def node_client(port: int) -> redis_sync.Redis:
    return redis_sync.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=2)


def roles(cluster: RedisCluster) -> dict[int, str]:
    """port -> "primary" or "replica of PORT"."""
    out: dict[int, str] = {}
    for node in cluster.nodes:
        c = node_client(node.port)
        try:
            role = c.execute_command("ROLE")  # type: ignore[no-untyped-call]
        finally:
            c.close()
        kind = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
        out[node.port] = "primary" if kind == "master" else f"replica of {int(role[2])}"
    return out


def owners(cluster: RedisCluster) -> list[int]:
    """Partition -> the port of the primary owning its channel's slot."""
    slot_map = cluster.owners_from(cluster.nodes[0].port)
    out = []
    for slot in SLOTS:
        out.append(next(port for (a, b), port in slot_map.items() if a <= slot <= b))
    return out


def pin(pids: Sequence[int], cpus: set[int] | None) -> None:
    if cpus:
        for pid in pids:
            os.sched_setaffinity(pid, cpus)


def node_pids(cluster: RedisCluster) -> dict[int, int]:
    out = {}
    for node in cluster.nodes:
        assert node.proc is not None
        out[node.port] = node.proc.pid
    return out


def flush(ports: Sequence[int]) -> None:
    for port in ports:
        c = node_client(port)
        try:
            c.flushall()
        finally:
            c.close()


# ---- part 1: sharded against classic pub/sub -----------------------------------------------

def payloads() -> list[list[bytes]]:
    """Per partition, VARIANTS JSON arrays of two quotes of that partition's symbols (one
    where the partition has one symbol), with seq, as the publisher's script writes them
    (the simulated market, seed 1)."""
    market = market_from_settings(Settings(), seed=1)
    quotes: list[list[tuple[str, bytes]]] = [[] for _ in range(PARTITIONS)]
    seq = 0
    while min(len(q) for q in quotes) < 4 * VARIANTS:
        for quote in market.next_quotes(64):
            seq += 1
            body = wire_body(quote)
            quotes[LAYOUT.partition(quote.symbol)].append(
                (quote.symbol, body[:-1] + b',"seq":%d}' % seq))
    out = []
    for qs in quotes:
        variants = []
        for i in range(VARIANTS):
            symbol, first = qs[2 * i]
            other = next((q for s, q in qs[2 * i + 1:] if s != symbol), None)
            variants.append(b"[" + first + (b"," + other if other else b"") + b"]")
        out.append(variants)
    return out


def resp(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Link(asyncio.Protocol):
    """A raw RESP connection whose replies hiredis parses and this only counts: pub/sub
    messages of `kind` (b"smessage", b"message") apart from every other reply."""

    def __init__(self, kind: bytes | None = None) -> None:
        self.reader = hiredis.Reader()
        self.kind = kind
        self.messages = 0
        self.replies = 0
        self.errors: list[str] = []
        self.closed = False
        self.last_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        kind = self.kind
        got = 0
        while True:
            reply = reader.gets()
            if reply is False:
                break
            if type(reply) is list and reply[0] == kind:
                got += 1
            elif isinstance(reply, hiredis.ReplyError):
                self.errors.append(str(reply))
            else:
                self.replies += 1
        if got:
            self.messages += got
            self.last_at = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_link(port: int, kind: bytes | None = None) -> Link:
    loop = asyncio.get_running_loop()
    _, link = await asyncio.wait_for(
        loop.create_connection(lambda: Link(kind), "127.0.0.1", port), timeout=5)
    return link


def replies_at_least(link: Link, n: int) -> Callable[[], bool]:
    return lambda: link.replies >= n


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def pubsub_mode(mode: str, plan: Plan, owner: list[int], pids: dict[int, int],
                      bodies: list[list[bytes]], cpus: tuple[set[int] | None, set[int] | None]
                      ) -> dict[str, Any]:
    """One mode: subscribe, send plan.msg_rate × plan.msg_seconds messages paced in 5 ms
    pipelines, wait until every one arrived, and measure the nodes' CPU over it."""
    sharded = mode == "sharded"
    verb = b"SPUBLISH" if sharded else b"PUBLISH"
    primaries = sorted(set(owner))
    cmds = [[resp(verb, CHANNELS[p].encode(), body) for body in bodies[p]] for p in range(PARTITIONS)]
    subs: list[Link] = []
    pubs: dict[int, Link] = {}
    try:
        if sharded:
            for port in primaries:
                link = await open_link(port, b"smessage")
                mine = [c for p, c in enumerate(CHANNELS) if owner[p] == port]
                # One SSUBSCRIBE per channel: one command may not span slots.
                link.write(b"".join(resp(b"SSUBSCRIBE", c.encode()) for c in mine))
                subs.append(link)
                await until(replies_at_least(link, len(mine)), 10, f"SSUBSCRIBE on {port}")
            sub_nodes = primaries
        else:
            link = await open_link(primaries[0], b"message")
            link.write(resp(b"SUBSCRIBE", *(c.encode() for c in CHANNELS)))
            subs.append(link)
            await until(replies_at_least(link, PARTITIONS), 10, "SUBSCRIBE")
            sub_nodes = [primaries[0]]
        for port in primaries:
            pubs[port] = await open_link(port)
        for link in [*subs, *pubs.values()]:
            if link.errors:
                raise BenchError(f"{mode}: {link.errors[:3]}")
            link.replies = 0
        total = int(plan.msg_rate * plan.msg_seconds)
        loop = asyncio.get_running_loop()
        me = os.getpid()
        cpu0 = {port: read_proc(pid)[0] for port, pid in pids.items()}
        gen0 = read_proc(me)[0]
        times0 = cpu_times()
        t0 = loop.time()
        m0 = time.monotonic()
        sent = 0
        batches = 0
        rate = plan.msg_rate
        while sent < total:
            due = min(total, int(rate * (loop.time() - t0)) + 1)
            if due > sent:
                out: dict[int, list[bytes]] = {port: [] for port in primaries}
                for i in range(sent, due):
                    p = i % PARTITIONS
                    out[owner[p]].append(cmds[p][(i // PARTITIONS) % VARIANTS])
                for port, chunk in out.items():
                    if chunk:
                        pubs[port].write(b"".join(chunk))
                sent = due
                batches += 1
            await asyncio.sleep(TICK_S)
        send_s = time.monotonic() - m0
        drain_limit = max(10.0, plan.msg_seconds)
        with contextlib.suppress(BenchError):
            await until(lambda: sum(s.messages for s in subs) >= total
                        and sum(p.replies for p in pubs.values()) >= total, drain_limit, "delivery")
        t_end = time.monotonic()
        cpu1 = {port: read_proc(pid)[0] for port, pid in pids.items()}
        gen1 = read_proc(me)[0]
        times1 = cpu_times()
        wall = t_end - m0
        received = sum(s.messages for s in subs)
        last_at = max((s.last_at for s in subs), default=t_end)
        per_node = {port: cpu1[port] - cpu0[port] for port in pids}
        redis_cpus, load_cpus = cpus
        return {
            "mode": mode,
            "command": verb.decode(),
            "subscribers": len(subs),
            "subscriber_nodes": sub_nodes,
            "sent": sent,
            "received": received,
            "publish_replies": sum(p.replies for p in pubs.values()),
            "errors": [e for link in [*subs, *pubs.values()] for e in link.errors][:5],
            "all_delivered": received == total,
            "send_s": round(send_s, 3),
            "send_rate": round(sent / send_s) if send_s else None,
            "pipelines": batches,
            "drain_ms": round(1000 * max(0.0, last_at - (m0 + send_s)), 1),
            "wall_s": round(wall, 3),
            "redis_cpu_s": round(sum(per_node.values()), 3),
            "redis_cpu_s_per_node": {str(p): round(v, 3) for p, v in per_node.items()},
            "redis_cpu_pct_per_node": {str(p): round(100 * v / wall, 1) for p, v in per_node.items()},
            "generator_cpu_s": round(gen1 - gen0, 3),
            "redis_core_busy_pct": busy_pct(times0, times1, redis_cpus) if redis_cpus else None,
            "load_core_busy_pct": busy_pct(times0, times1, load_cpus) if load_cpus else None,
            "machine_busy_pct": busy_pct(times0, times1, None),
        }
    finally:
        for link in [*subs, *pubs.values()]:
            link.close()


def idle_cpu(pids: dict[int, int], seconds: float) -> dict[str, float]:
    """Each node's CPU seconds per second with nothing to do (cluster bus pings, cron)."""
    cpu0 = {port: read_proc(pid)[0] for port, pid in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    return {str(port): round((read_proc(pid)[0] - cpu0[port]) / wall, 5) for port, pid in pids.items()}


def redis_part(cluster: RedisCluster, plan: Plan, redis_cpus: set[int] | None,
               load_cpus: set[int] | None) -> dict[str, Any]:
    pids = node_pids(cluster)
    pin(list(pids.values()), redis_cpus)
    owner = owners(cluster)
    bodies = payloads()
    sizes = [len(b) for v in bodies for b in v]
    idle = idle_cpu(pids, plan.idle_s)
    out: dict[str, Any] = {
        "rate": plan.msg_rate,
        "seconds": plan.msg_seconds,
        "messages": int(plan.msg_rate * plan.msg_seconds),
        "payload_bytes": {"min": min(sizes), "mean": round(sum(sizes) / len(sizes)), "max": max(sizes)},
        "tick_ms": TICK_S * 1000,
        "owner_of_partition": owner,
        "roles": {str(k): v for k, v in roles(cluster).items()},
        "idle_cpu_s_per_s": idle,
        "modes": {},
    }
    for mode in ("sharded", "classic"):
        r = asyncio.run(pubsub_mode(mode, plan, owner, pids, bodies, (redis_cpus, load_cpus)))
        n = r["received"] or 1
        idle_total = sum(idle.values()) * r["wall_s"]
        r["redis_us_per_msg"] = round(1e6 * r["redis_cpu_s"] / n, 2)
        r["redis_us_per_msg_net"] = round(1e6 * max(0.0, r["redis_cpu_s"] - idle_total) / n, 2)
        r["redis_us_per_msg_per_node"] = {p: round(1e6 * v / n, 2)
                                          for p, v in r["redis_cpu_s_per_node"].items()}
        r["generator_us_per_msg"] = round(1e6 * r["generator_cpu_s"] / n, 2)
        out["modes"][mode] = r
        say(f"[redis] {mode}: {r['received']:,}/{r['sent']:,} received, "
            f"{r['send_rate']:,} msgs/s sent, Redis {r['redis_us_per_msg']} µs/msg "
            f"(net {r['redis_us_per_msg_net']}), generator {r['generator_us_per_msg']} µs/msg, "
            f"drain {r['drain_ms']} ms")
    sh, cl = out["modes"]["sharded"], out["modes"]["classic"]
    out["classic_over_sharded"] = ratio(cl["redis_us_per_msg"], sh["redis_us_per_msg"])
    out["classic_over_sharded_net"] = ratio(cl["redis_us_per_msg_net"], sh["redis_us_per_msg_net"])
    return out


def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    return round(a / b, digits) if a is not None and b else None


# ---- part 2: the service on the cluster and on one Redis ---------------------------------

def _numsub(reply: Any) -> int:
    """One channel's count from PUBSUB [SHARD]NUMSUB: redis-py pairs NUMSUB's up, not
    SHARDNUMSUB's."""
    if reply and isinstance(reply[0], tuple | list):
        return int(reply[0][1])
    return int(reply[1])


class Topo:
    """Reads of the layout's keys on either topology: partition p lives on ports[p]."""

    def __init__(self, ports: list[int], sharded: bool, all_nodes: list[int]) -> None:
        self.ports = ports
        self.sharded = sharded
        self.all_nodes = all_nodes
        self.clients = {port: node_client(port) for port in all_nodes}

    def _per_node(self, command: Any) -> list[Any]:
        """command(pipe, p) for each partition, pipelined per node; replies by partition."""
        by_node: dict[int, list[int]] = {}
        for p, port in enumerate(self.ports):
            by_node.setdefault(port, []).append(p)
        out: list[Any] = [None] * len(self.ports)
        for port, parts in by_node.items():
            pipe = self.clients[port].pipeline(transaction=False)
            for p in parts:
                command(pipe, p)
            for p, reply in zip(parts, pipe.execute(), strict=True):
                out[p] = reply
        return out

    def final_seqs(self) -> dict[str, int]:
        seqs: dict[str, int] = {}
        for held in self._per_node(lambda pipe, p: pipe.hgetall(LAYOUT.seq(p))):
            seqs.update({k.decode(): int(v) for k, v in held.items()})
        return seqs

    def published_total(self) -> int:
        return sum(int(v) for vals in self._per_node(lambda pipe, p: pipe.hvals(LAYOUT.seq(p)))
                   for v in vals)

    def subscriptions(self) -> dict[str, Any]:
        """The data channels' subscriber counts (PUBSUB SHARDNUMSUB on each channel's
        primary, or PUBSUB NUMSUB) and the pub/sub connections on every node."""
        cmd = "PUBSUB SHARDNUMSUB" if self.sharded else "PUBSUB NUMSUB"
        counts = self._per_node(lambda pipe, p: pipe.execute_command(cmd, CHANNELS[p]))
        per_channel = [_numsub(c) for c in counts]
        conns = {}
        for port in self.all_nodes:
            listing = self.clients[port].execute_command(  # type: ignore[no-untyped-call]
                "CLIENT LIST TYPE pubsub")
            text = listing.decode() if isinstance(listing, bytes) else str(listing)
            conns[str(port)] = len([line for line in text.splitlines() if line.strip()])
        return {
            "command": cmd,
            "channel_subscriptions": sum(per_channel),
            "channels_subscribed": sum(1 for c in per_channel if c),
            "pubsub_connections": sum(conns.values()),
            "pubsub_connections_per_node": conns,
        }

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


@contextlib.contextmanager
def stopping(children: list[Child]) -> Iterator[None]:
    try:
        yield
    finally:
        for child in reversed(children):
            if child.name.startswith("client"):
                with contextlib.suppress(Exception):
                    child.send({"cmd": "quit"})
            child.stop(timeout=10)


def service_run(label: str, redis_url: str, topo: Topo, plan: Plan, logs: Path,
                server_cpus: set[int] | None, other_cpus: set[int] | None) -> dict[str, Any]:
    port = free_port()
    env = {"REDIS_URL": redis_url, "REDIS_PARTITIONS": str(PARTITIONS), "REDIS_PREFIX": LAYOUT.prefix,
           "HOST": "127.0.0.1", "PORT": str(port), "MAX_CONNECTS_PER_S": "100000",
           "MAX_CONNECTIONS": "20000", "LOOP": "auto", "WORKERS": "1"}
    children: list[Child] = []
    with stopping(children):
        server = Child(f"service-{label}", [PY, "-m", "service"], env=env, cwd=ROOT, log_dir=logs,
                       cpus=server_cpus)
        children.append(server)
        deadline = time.monotonic() + 30
        while True:
            if not server.alive():
                raise BenchError(f"service on {label} exited: {server.log_tail(600)}")
            if topo.subscriptions()["channels_subscribed"] == PARTITIONS and port_open(port):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"service on {label} not subscribed and listening in 30 s: "
                                 f"{server.log_tail(600)}")
            time.sleep(0.1)
        client = Child(f"client-{label}", [PY, "-m", "bench.loadclient", "--url",
                       f"ws://127.0.0.1:{port}/ws?symbols=*", "--conns", str(plan.clients)],
                       cwd=ROOT, log_dir=logs, cpus=other_cpus, pipe=True)
        children.append(client)
        info = client.recv(timeout=90 + plan.clients / 100)
        if info["ok"] == 0:
            raise BenchError(f"no client could connect to the service on {label}: {info['errors']}")
        publisher = Child(f"publisher-{label}", [PY, "-m", "publisher", "--log-level", "WARNING",
                          "simulate", "--rate", str(plan.quote_rate), "--seed", "1"],
                          env={"REDIS_URL": redis_url, "REDIS_PARTITIONS": str(PARTITIONS),
                               "REDIS_PREFIX": LAYOUT.prefix},
                          cwd=ROOT, log_dir=logs, cpus=other_cpus)
        children.append(publisher)
        time.sleep(plan.warmup_s)
        if not server.alive() or not publisher.alive():
            raise BenchError(f"{label}: a process died in the warm-up: "
                             f"{server.log_tail(400)} {publisher.log_tail(400)}")
        seq0 = topo.published_total()
        sampler = Sampler(server.pid, cpus=(server_cpus, other_cpus))
        client.send({"cmd": "start"})
        time.sleep(plan.measure_s)
        client.send({"cmd": "stop"})
        seq1 = topo.published_total()
        srv = sampler.stop()
        subs = topo.subscriptions()
        stats = client.recv(timeout=60)
        publisher.stop()
        t_stop = time.time()
        client.send({"cmd": "final", "seqs": topo.final_seqs(), "t_stop": t_stop,
                     "deadline_s": plan.converge_s})
        conv = client.recv(timeout=plan.converge_s + 30)
        alive = server.alive()
    wall = stats["wall_s"] or 1.0
    healthy = stats["healthy"] or 1
    ages = report.merge_hist(stats["ages"])
    held = report.merge_hist(stats["held"])
    frames_per_s = stats["frames"] / wall
    cpu_per_s = srv["cpu_s"] / srv["wall_s"] if srv["wall_s"] else 0.0
    published_per_s = (seq1 - seq0) / srv["wall_s"] if srv["wall_s"] else 0.0
    return {
        "redis_url": redis_url,
        "clients": plan.clients,
        "connected": info["ok"],
        "connect_errors": info["errors"],
        "client_library": info["library"],
        "published": seq1 - seq0,
        "published_per_s": round(published_per_s, 1),
        "quotes": stats["quotes"],
        "frames": stats["frames"],
        "quotes_per_s_per_client": round(stats["quotes"] / wall / healthy, 1),
        "updates_per_s_per_client": round(stats["updates"] / wall / healthy, 1),
        "frames_per_s_per_client": round(frames_per_s / healthy, 1),
        "delivered_share": round(stats["updates"] / wall / healthy / published_per_s, 3)
        if published_per_s else None,
        "age_p50_ms": report.percentile(ages, 50),
        "age_p99_ms": report.percentile(ages, 99),
        "age_max_ms": stats["max_age_ms"] if stats["quotes"] else None,
        "held_p50_ms": report.percentile(held, 50),
        "held_p99_ms": report.percentile(held, 99),
        "service_cpu_pct": srv["cpu_pct"],
        "service_cpu_s": srv["cpu_s"],
        "service_us_per_frame": round(1e6 * cpu_per_s / frames_per_s, 2) if frames_per_s else None,
        "service_us_per_quote": round(1e6 * cpu_per_s * wall / stats["quotes"], 3)
        if stats["quotes"] else None,
        "service_rss_mb": srv["rss_max_mb"],
        "client_cpu_pct": stats["cpu_pct"],
        "server_core_busy_pct": srv["server_core_busy_pct"],
        "load_core_busy_pct": srv["load_core_busy_pct"],
        "closes": stats["closes"],
        "subscriptions": subs,
        "converged": conv,
        "service_alive_at_end": alive,
    }


def service_part(cluster: RedisCluster, plan: Plan, logs: Path, workdir: Path,
                 server_cpus: set[int] | None, other_cpus: set[int] | None) -> dict[str, Any]:
    pids = node_pids(cluster)
    pin(list(pids.values()), other_cpus)
    owner = owners(cluster)
    all_ports = [n.port for n in cluster.nodes]
    flush(sorted(set(owner)))
    out: dict[str, Any] = {"clients": plan.clients, "rate": plan.quote_rate,
                           "warmup_s": plan.warmup_s, "measure_s": plan.measure_s}
    topo = Topo(owner, True, all_ports)
    try:
        out["cluster"] = service_run("cluster", cluster.url, topo, plan, logs, server_cpus, other_cpus)
    finally:
        topo.close()
    say(f"[service] cluster: {line(out['cluster'])}")
    single = None
    for attempt in range(3):
        path = workdir / f"single{attempt}"
        path.mkdir()
        candidate = RedisServer(path)
        with contextlib.suppress(*StartError):
            if candidate.start():
                single = candidate
                break
    if single is None:
        raise BenchError("the single redis-server did not start")
    try:
        assert single.proc is not None
        pin([single.proc.pid], other_cpus)
        topo = Topo([single.port] * PARTITIONS, False, [single.port])
        try:
            out["single"] = service_run("single", single.url, topo, plan, logs, server_cpus, other_cpus)
        finally:
            topo.close()
    finally:
        single.stop()
    say(f"[service] single: {line(out['single'])}")
    c, s = out["cluster"], out["single"]
    out["cluster_over_single"] = {
        key: ratio(c[key], s[key], 3) for key in (
            "quotes_per_s_per_client", "updates_per_s_per_client", "frames_per_s_per_client",
            "age_p50_ms", "age_p99_ms", "service_cpu_pct", "service_us_per_frame",
            "service_us_per_quote")}
    return out


def line(r: dict[str, Any]) -> str:
    conv = r["converged"]
    return (f"{r['connected']}/{r['clients']} clients, {r['published_per_s']:g} quotes/s published, "
            f"{r['quotes_per_s_per_client']:g} quotes/s and {r['frames_per_s_per_client']:g} frames/s "
            f"per client, p50/p99 {r['age_p50_ms']}/{r['age_p99_ms']} ms, service CPU "
            f"{r['service_cpu_pct']}% ({r['service_us_per_frame']} µs/frame), converged "
            f"{conv['converged']}/{conv['clients']}, {r['subscriptions']['channel_subscriptions']} "
            f"channel subscriptions on {r['subscriptions']['pubsub_connections']} connection(s)")


# ---- the report ------------------------------------------------------------------------------

def _n(v: Any, unit: str = "") -> str:
    """Counts as integers; measured floats with 2 decimals below 10, 1 below 100, else none."""
    if v is None:
        return "–"
    if isinstance(v, float):
        digits = 2 if abs(v) < 10 else 1 if abs(v) < 100 else 0
        return f"{v:,.{digits}f}{unit}"
    return f"{int(v):,}{unit}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}%"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    v = data["versions"]
    pinning = data["pinning"]
    lines = ["# Three-primary Redis Cluster", ""]
    lines.append(
        f"Run {data['started']}, {data['mode']} mode, {data['duration_s']} s in all. Machine: "
        f"{m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, Python "
        f"{m['python']}, Redis {m['redis']}; redis-py {v.get('redis', '?')}, hiredis "
        f"{v.get('hiredis', '?')}, uvicorn {v.get('uvicorn', '?')}, starlette {v.get('starlette', '?')}, "
        f"picows {v.get('picows', '?')}. Source measured: {data['source']}. Load average "
        f"before/after: {data['loadavg_before']} / {data['loadavg_after']}.")
    lines.append("")
    if data["mode"] == "quick":
        lines += ["**Quick mode: a smoke test of the whole path, a second per window. It measures "
                  "nothing worth quoting** (CPU is read in 10 ms ticks; these windows hold a few "
                  "of them).", ""]
    if data.get("error"):
        lines += [f"**The run failed:** {data['error']}", ""]
    cluster = data.get("cluster_nodes")
    if cluster:
        lines += [f"The cluster: six redis-servers on 127.0.0.1 (three primaries, three replicas, "
                  f"`redis-cli --cluster create --cluster-replicas 1`), the layout's 16 partitions "
                  f"`quotes:{{0}}`…`quotes:{{15}}` spread over the primaries by slot "
                  f"({cluster}).", ""]
    r = data.get("redis")
    if r:
        sh, cl = r["modes"]["sharded"], r["modes"]["classic"]
        pb = r["payload_bytes"]
        lines += [
            "## 1. Redis: sharded against classic pub/sub in the cluster", "",
            f"{r['rate']:,} messages/s for {r['seconds']:g} s ({r['messages']:,} messages) in "
            f"each mode, the same messages in the same order: JSON arrays of one or two quotes of "
            f"the partition's symbols (simulated market, seed 1), {pb['min']}–{pb['max']} bytes, "
            f"{pb['mean']} on average, round-robin over the 16 channels. Each message goes to the "
            f"primary owning its channel's slot, pipelined: every {r['tick_ms']:g} ms what is "
            f"due goes out as one write per primary. *sharded*: SPUBLISH, one subscriber per "
            f"primary with SSUBSCRIBE of that primary's channels. *classic*: PUBLISH, one "
            f"subscriber with SUBSCRIBE of all 16 channels on one primary "
            f"({cl['subscriber_nodes'][0]}). The load generator and subscribers are one asyncio "
            f"process on raw sockets (pre-encoded RESP, replies parsed by hiredis and counted, "
            f"nothing decoded). Pinning: {pinning['part1']}. CPU is each redis-server process's "
            f"utime+stime from /proc over the window, from the first send until the last "
            f"message arrived; *net* takes off the cluster's idle CPU (bus pings, cron: "
            f"{_n(1000 * sum(r['idle_cpu_s_per_s'].values()))} ms/s for all six, measured "
            f"before) for the same time.", "",
            "| pub/sub | subscribers | sent | received | sent/s | Redis CPU s | "
            "**Redis µs/msg** | net of idle µs/msg | Redis core busy | generator µs/msg |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, label in (("sharded", "sharded (SPUBLISH/SSUBSCRIBE)"),
                           ("classic", "classic (PUBLISH/SUBSCRIBE)")):
            x = r["modes"][key]
            ok = "" if x["all_delivered"] else " **(missing)**"
            lines.append(
                f"| {label} | {x['subscribers']} | {x['sent']:,} | {x['received']:,}{ok} | "
                f"{_n(x['send_rate'])} | {_n(x['redis_cpu_s'])} | "
                f"**{_n(x['redis_us_per_msg'])}** | {_n(x['redis_us_per_msg_net'])} | "
                f"{_pct(x['redis_core_busy_pct'])} | {_n(x['generator_us_per_msg'])} |")
        lines += ["", f"**Classic / sharded: {_x(r['classic_over_sharded'])} the Redis CPU per "
                  f"message** ({_x(r['classic_over_sharded_net'])} net of idle).", "",
                  "*Redis core busy*: how busy the CPU of the six redis-servers was in the window "
                  "(everything that ran there). *generator µs/msg*: the CPU of the process that "
                  "sends and counts (all subscribers in it) per message, on its own core: where it "
                  "is below the Redis figure, the generator costs less than what it measures; "
                  "*sent/s* at the target rate says it kept the pace.", ""]
        lines += ["Per node (µs of that node's CPU per message, and its CPU in % of a core):", "",
                  "| node | role | partitions | sharded µs/msg | classic µs/msg | classic/sharded | "
                  "sharded CPU | classic CPU |", "|---|---|---|---|---|---|---|---|"]
        for port, role in r["roles"].items():
            parts = [p for p, o in enumerate(r["owner_of_partition"]) if str(o) == port]
            a = sh["redis_us_per_msg_per_node"][port]
            b = cl["redis_us_per_msg_per_node"][port]
            lines.append(f"| {port} | {role} | {len(parts) or '–'} | {_n(a)} | {_n(b)} | "
                         f"{_x(ratio(b, a))} | {_pct(sh['redis_cpu_pct_per_node'][port])} | "
                         f"{_pct(cl['redis_cpu_pct_per_node'][port])} |")
        lines += ["", "In classic pub/sub every node of the cluster receives every message over "
                  "the cluster bus, replicas included, whether or not it has a subscriber; a "
                  "sharded message goes to its slot's primary and that primary's replica only.",
                  ""]
    s = data.get("service")
    if s:
        lines += [
            "## 2. The service on the cluster against the service on one Redis", "",
            f"`python -m service` (one process, LOOP=auto, MAX_CONNECTS_PER_S=100000), "
            f"{s['clients']} load-client connections on `/ws?symbols=*` (bench/loadclient.py), "
            f"the project's publisher `python -m publisher simulate --rate {s['rate']:g} --seed 1` "
            f"(batches every 50 ms, split by partition: one script call per partition, SPUBLISH on "
            f"the cluster, PUBLISH on one server), {s['warmup_s']:g} s warm-up, {s['measure_s']:g} s "
            f"measured; first on the cluster, then on a fresh redis-server. REDIS_PARTITIONS=16 in "
            f"both. Pinning: {pinning['part2']}.", "",
            "| Redis | clients | published quotes/s | quotes/s per client | frames/s per client | "
            "p50 age ms | p99 age ms | service CPU | service µs/frame | service µs/quote | "
            "client CPU | final state | Redis subscriptions |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, label in (("single", "one server"), ("cluster", "cluster, 3 primaries")):
            x = s.get(key)
            if not x:
                continue
            conv = x["converged"]
            sub = x["subscriptions"]
            lines.append(
                f"| {label} | {x['connected']}/{x['clients']} | {_n(x['published_per_s'])} | "
                f"{_n(x['quotes_per_s_per_client'])} | {_n(x['frames_per_s_per_client'])} | "
                f"{_n(x['age_p50_ms'])} | {_n(x['age_p99_ms'])} | {_pct(x['service_cpu_pct'])} | "
                f"{_n(x['service_us_per_frame'])} | {_n(x['service_us_per_quote'])} | "
                f"{_pct(x['client_cpu_pct'])} | "
                f"{conv['converged']}/{conv['clients']} (last {_n(conv['max_s'])} s) | "
                f"{sub['channel_subscriptions']} on {sub['pubsub_connections']} "
                f"connection{'s' if sub['pubsub_connections'] != 1 else ''} |")
        q = s.get("cluster_over_single")
        if q:
            lines.append(
                f"| **cluster / one server** | | | {_x(q['quotes_per_s_per_client'])} | "
                f"{_x(q['frames_per_s_per_client'])} | {_x(q['age_p50_ms'])} | {_x(q['age_p99_ms'])} | "
                f"{_x(q['service_cpu_pct'])} | {_x(q['service_us_per_frame'])} | "
                f"{_x(q['service_us_per_quote'])} | | | |")
        lines += [
            "", "The service fans out at most once per FANOUT_INTERVAL_MS (20 ms) while quotes "
            "stream in, and at once after a quiet spell, so *frames/s per client* shows how many "
            "fan-outs each 50 ms publisher batch took. "
            "*quotes/s per client* counts quote objects received (the service conflates per "
            "symbol and coalesces per client, so fewer than published can be every update); "
            "*frames/s* counts `quotes` frames. Ages are receive time minus the quote's `ts` "
            "(publisher clock, same machine). Service CPU is % of one core (the service "
            "process and any descendant); µs/frame and µs/quote are its CPU over the "
            "frames and the quote objects all clients received. *final state*: clients "
            "holding the publisher's last seq of every symbol (read from the 16 "
            "`quotes:{P}:seq` hashes) after the publisher stopped, and when "
            "the last of them got there (negative: before the stop was seen). *Redis "
            "subscriptions*: subscribers of the 16 data channels (`PUBSUB SHARDNUMSUB` on each "
            "channel's primary, `PUBSUB NUMSUB` on the one server) on how many pub/sub "
            "connections (`CLIENT LIST TYPE pubsub` on every node); the service's probe "
            "channels are not counted in the first number.", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---- the run ---------------------------------------------------------------------------------

def clean_environment() -> None:
    """The service's and publisher's settings come from the environment: a developer's
    REDIS_URL or REDIS_PARTITIONS must not reach the children (they would inherit it)."""
    for f in (*fields(Settings), *fields(PublisherSettings)):
        os.environ.pop(f.name.upper(), None)


def run(plan: Plan, out_dir: Path, pin_cpus: bool = True,
        parts: Sequence[str] = ("redis", "service")) -> dict[str, Any]:
    clean_environment()
    nofile = raise_nofile()
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = out_dir / "logs" if plan.quick else ROOT / "bench" / "results" / "tmp" / "cluster-logs"
    first, rest = cpu_plan(pin_cpus)
    started = time.time()
    load_before = os.getloadavg()
    data: dict[str, Any] = {
        "mode": "quick" if plan.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "plan": asdict(plan),
        "machine": machine(),
        "source": source_state(),
        "versions": versions(),
        "pinning": {
            "part1": (f"the six redis-servers on CPU {sorted(first)}, the load generator and "
                      f"subscribers on CPU {sorted(rest)}") if first and rest else "none",
            "part2": (f"the service on CPU {sorted(first)}; Redis, the publisher and the load "
                      f"client on CPU {sorted(rest)}") if first and rest else "none",
        },
    }
    if rest:
        os.sched_setaffinity(0, rest)  # this process is the load generator of part 1
    say(f"bench.cluster ({data['mode']}): CPUs {first or 'any'} / {rest or 'any'}; open files {nofile}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
            workdir = Path(tmp)
            t0 = time.monotonic()
            cluster = start_cluster(workdir)
            try:
                say(f"cluster up in {time.monotonic() - t0:.1f}s: {cluster.url} "
                    f"(primaries {cluster.primaries()})")
                owner = owners(cluster)
                data["cluster_nodes"] = ", ".join(
                    f"{port}: {owner.count(port)} partitions" for port in sorted(set(owner)))
                if "redis" in parts:
                    data["redis"] = redis_part(cluster, plan, first, rest)
                if "service" in parts:
                    data["service"] = service_part(cluster, plan, logs, workdir, first, rest)
            finally:
                cluster.stop()
    except (BenchError, TimeoutError, ConnectionError, OSError, redis_sync.RedisError) as exc:
        data["error"] = f"{type(exc).__name__}: {exc}"
        say(f"failed: {data['error']}")
    data["duration_s"] = round(time.time() - started)
    data["loadavg_before"] = [round(x, 2) for x in load_before]
    data["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    (out_dir / "cluster.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    (out_dir / "cluster.md").write_text(markdown(data))
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="about 20 s: 2,000 msgs/s for 1 s, 10 clients (what the test runs)")
    parser.add_argument("--out", type=Path, help="output directory (default bench/results, "
                        "or bench/results/tmp/cluster-quick with --quick)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--only", choices=("redis", "service"),
                        help="run one part only (1: redis, 2: service)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or (ROOT / "bench" / "results" / ("tmp/cluster-quick" if args.quick else ""))
    data = run(plan, out, pin_cpus=not args.no_pin,
               parts=(args.only,) if args.only else ("redis", "service"))
    print(f"wrote {out}/cluster.md, cluster.json ({data['duration_s']} s)")
    return 1 if data.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
