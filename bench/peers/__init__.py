"""The servers the benchmark runs: the project's service and its peers.

Every one listens on 127.0.0.1:PORT, subscribes to the Redis channel `quotes:{0}` (the
benchmark runs with one partition) and sends
each message to every client as `{"type":"quotes","quotes":[...]}` (socket.io: the event
`quotes` with the array), so one load client drives them all.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import revs
from quote_bus.layout import Layout

ROOT = Path(__file__).resolve().parent.parent.parent
NODE_DIR = Path(__file__).resolve().parent / "node"

# The benchmark runs one partition: every server benchmarked reads one channel.
BENCH_LAYOUT = Layout(partitions=1)


@dataclass(frozen=True)
class Peer:
    key: str
    label: str
    how: str  # one line: what runs
    sio: bool = False
    node_script: str | None = None
    python_modules: tuple[str, ...] = field(default_factory=tuple)
    # ws path the load client connects to
    path: str = "/ws?symbols=*"
    # Extra environment (the service's variants: LOOP, WORKERS).
    env: tuple[tuple[str, str], ...] = ()
    # Processes that each hold a Redis subscription (the start waits for all of them).
    subscribers: int = 1
    # False: more than one serving process, so no core can be given to it alone; it runs
    # on every CPU (the load side stays on its own), see harness.start_server.
    pinned: bool = True
    # The source the service runs from: the working tree, or a commit (`service@REV`).
    tree: revs.Tree = revs.WORKING

    @property
    def cwd(self) -> Path:
        return self.tree.root

    def unavailable(self) -> str | None:
        """Why this peer cannot start here, or None."""
        for module in self.python_modules:
            if importlib.util.find_spec(module) is None:
                return f"Python package {module!r} is not installed (pip install -r bench/requirements.txt)"
        if self.node_script is not None:
            if shutil.which("node") is None:
                return "node is not on PATH"
            if not (NODE_DIR / "node_modules").is_dir():
                return "bench/peers/node/node_modules is missing (cd bench/peers/node && npm ci)"
        return None

    def command(self, port: int, redis_url: str) -> tuple[list[str], dict[str, str]]:
        # One partition, so every server reads the same one channel (REDIS_CHANNEL for
        # the peers, REDIS_PARTITIONS for ours); the cluster scenario sets its own.
        env = {"REDIS_URL": redis_url, "PORT": str(port), "HOST": "127.0.0.1",
               "REDIS_PARTITIONS": "1", "REDIS_CHANNEL": BENCH_LAYOUT.channel(0)}
        if self.key.startswith("service"):
            # As deployed (`service`: one process, LOOP=auto, which is uvloop when it is
            # installed). Connection-rate admission raised so the idle crowd's connect is
            # not throttled (the default is 1000/s; with WORKERS it is per worker).
            return [sys.executable, "-m", "service"], {
                **env, "MAX_CONNECTS_PER_S": "100000", "MAX_CONNECTIONS": "20000",
                "LOOP": "auto", "WORKERS": "1", **dict(self.env), **self.tree.env()}
        if self.key == "broadcaster":
            # uvicorn's defaults, only the address given.
            return [sys.executable, "-m", "uvicorn", "bench.peers.broadcaster_app:app",
                    "--host", "127.0.0.1", "--port", str(port)], env
        if self.key == "websockets":
            return [sys.executable, str(ROOT / "bench" / "peers" / "websockets_app.py"),
                    "--port", str(port), "--redis", redis_url,
                    "--channel", BENCH_LAYOUT.channel(0)], env
        assert self.node_script is not None
        return ["node", str(NODE_DIR / self.node_script)], env

    @property
    def url_path(self) -> str:
        return "/socket.io/?EIO=4&transport=websocket" if self.sio else self.path


PEERS: dict[str, Peer] = {p.key: p for p in [
    Peer("service", "this service", "python -m service (Starlette on uvicorn, one process, "
         "LOOP=auto: uvloop)"),
    Peer("service-asyncio", "this service, asyncio loop",
         "python -m service with LOOP=asyncio (the standard library's event loop)",
         env=(("LOOP", "asyncio"),)),
    Peer("service-2w", "this service, 2 workers",
         "python -m service with WORKERS=2: a supervisor and 2 SO_REUSEPORT workers, each "
         "with its own Redis subscription (LOOP=auto); on both CPUs, not pinned",
         env=(("WORKERS", "2"),), subscribers=2, pinned=False),
    Peer("broadcaster", "Starlette + broadcaster",
         "uvicorn defaults, encode/broadcaster 0.3.1 Redis backend, one subscription per client",
         python_modules=("broadcaster", "anyio")),
    Peer("websockets", "websockets.broadcast()",
         "websockets library server, redis-py pub/sub, broadcast() to all",
         python_modules=("websockets",)),
    Peer("node-ws", "Node ws", "ws WebSocketServer, node-redis subscriber, send to each client",
         node_script="ws_peer.js"),
    Peer("socketio", "Node socket.io", "socket.io + @socket.io/redis-adapter, io.emit()",
         sio=True, node_script="socketio_peer.js"),
    Peer("uws", "uWebSockets.js", "@trufflesuite/uws-js-unofficial native, app.publish()",
         node_script="uws_peer.js"),
]}

PYTHON_PEERS = ("service", "broadcaster", "websockets")
# The service's own variants (LOOP, WORKERS): not peers, the same code configured otherwise.
SERVICE_VARIANTS = ("service", "service-asyncio", "service-2w")


def resolve(spec: str) -> Peer:
    """A peer by key, or `VARIANT@REV`: that service variant (service, service-asyncio,
    service-2w) as of git revision REV (bench/revs.py), keyed and labelled with its short
    sha. KeyError for an unknown key, revs.RevError for a revision that does not resolve."""
    base, rev = revs.split(spec)
    if rev is None:
        return PEERS[spec]
    if base not in SERVICE_VARIANTS:
        raise KeyError(f"only {', '.join(SERVICE_VARIANTS)} take @REV, not {base!r}")
    tree = revs.export(rev)
    peer = PEERS[base]
    return replace(peer, key=f"{base}@{tree.short}", label=f"{peer.label} @ {tree.short}",
                   how=f"{peer.how}; the tree of commit {tree.short} ({tree.root})", tree=tree)
