"""The native load generator (bench/viewers_load.c): a drop-in for bench/fastclient.py.

Built with the system compiler as bench/native.py builds it, then run two ways: against
the real service, Redis and the per-quote publisher beside bench/fastclient.py (same
driver protocol, same JSON fields, sane ages, every board converged), and against a
scripted websocket server that sends what the service never does (7/16/64-bit lengths,
frames split byte by byte, a fragmented message with a ping inside, a `ts` outside the
quotes, keys in another order, close codes, EOF, a refused upgrade), so every branch of
its frame parser is checked against exact counts. Nothing here times anything.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from bench import native
from bench.procs import Child
from bench.report import merge_hist, percentile
from bench.viewers import SERVERS, Plan, Server, final_seqs, run_point, service_env
from tests.redis_server import redis_server
from tests.service_proc import ROOT, ChildProcess, ServiceProcess

pytestmark = pytest.mark.timeout(60)

MAX_HZ = 10.0
CONNS = 50
BOARDS = 4
STATS_KEYS = {"event", "wall_s", "cpu_s", "user_s", "sys_s", "frames", "bytes", "decoded", "aged",
              "max_age_ms", "ages", "closes", "open", "silent", "conns"}


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert shutil.which("cc"), "cc not found: bench/viewers_load.c needs a C compiler (apt-get install gcc)"
    return native.build(native.GENERATOR_SRC, tmp_path_factory.mktemp("native") / "viewers_load")


def stats_when(child: Child, ready: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    """`stop` answers without resetting, so it is polled until the window holds enough."""
    deadline = time.monotonic() + timeout
    while True:
        child.send({"cmd": "stop"})
        stats = child.recv(timeout=5)
        if ready(stats):
            return stats
        if time.monotonic() > deadline:
            pytest.fail(f"{child.name}: not enough in {timeout} s: {str(stats)[:800]}")
        time.sleep(0.2)


def quit_child(child: Child) -> int | None:
    child.send({"cmd": "quit"})
    try:
        return child.proc.wait(timeout=10)
    finally:
        child.stop(timeout=5)


# ---- against the real service -----------------------------------------------------------

def test_against_the_service_like_fastclient(generator: Path, tmp_path: Path) -> None:
    with redis_server() as rs:
        service = ServiceProcess({"REDIS_URL": rs.url, "REDIS_PARTITIONS": "1"})
        publisher = ChildProcess(["bench.publisher", "--rate", "200", "--seed", "1", "--redis", rs.url],
                                 {"REDIS_PARTITIONS": "1"}, f"publisher-native-{service.port}")
        clients: list[Child] = []
        try:
            service.start()
            argv = native.generator_argv(service.ws_url, CONNS, MAX_HZ, 5, BOARDS, binary=generator)
            clients.append(Child("viewers-native", argv, cwd=ROOT, log_dir=tmp_path, pipe=True))
            clients.append(Child("viewers-fastclient", [
                sys.executable, "-m", "bench.fastclient", "--url", service.ws_url, "--conns", "5",
                "--max-hz", f"{MAX_HZ:g}", "--decode-every", "5", "--boards", "2"],
                cwd=ROOT, log_dir=tmp_path, pipe=True))
            nat, py = clients
            connected = [c.recv(timeout=20) for c in clients]
            assert connected[0] == {**connected[0], "event": "connected", "ok": CONNS, "failed": 0,
                                    "boards": BOARDS, "errors": {}}
            assert connected[1]["ok"] == 5, connected[1]
            assert set(connected[0]) == set(connected[1])
            publisher.spawn()
            for c in clients:
                c.send({"cmd": "start"})
            stats = stats_when(nat, lambda s: s["decoded"] >= 100 and s["frames"] >= 10 * CONNS, 15)
            py_stats = stats_when(py, lambda s: s["decoded"] >= 5, 10)
            publisher.stop()
            t_stop = time.time()
            client = redis.Redis.from_url(rs.url)
            seqs = final_seqs(client)
            client.close()
            assert len(seqs) >= 30
            for c in clients:
                c.send({"cmd": "final", "seqs": seqs, "t_stop": t_stop, "deadline_s": 5.0})
            conv = [c.recv(timeout=15) for c in clients]
            codes = [quit_child(c) for c in clients]
        finally:
            for c in clients:
                c.stop(timeout=5)
            publisher.stop()
            service.stop()

    assert set(stats) == set(py_stats) == STATS_KEYS
    assert stats["event"] == "stats" and stats["conns"] == stats["open"] == CONNS
    assert stats["closes"] == {}
    assert stats["wall_s"] > 0 and stats["cpu_s"] >= 0
    assert abs(stats["cpu_s"] - stats["user_s"] - stats["sys_s"]) < 0.001
    assert stats["frames"] > 0 and stats["bytes"] > 100 * stats["frames"]
    ages = merge_hist(stats["ages"])
    assert sum(c for _, c in ages) == stats["aged"] >= stats["decoded"] >= 100
    p50 = percentile(ages, 50)
    assert p50 is not None and 0 <= p50 <= 100 + 1000 / MAX_HZ + 300, ages
    assert p50 <= stats["max_age_ms"] < 10_000
    # The same stream as fastclient's connections: per viewer, about the same frames and sizes.
    rate = stats["frames"] / stats["wall_s"] / CONNS
    py_rate = py_stats["frames"] / py_stats["wall_s"] / 5
    assert 0.5 < rate / py_rate < 2, (rate, py_rate)
    assert 0.7 < (stats["bytes"] / stats["frames"]) / (py_stats["bytes"] / py_stats["frames"]) < 1.4
    assert rate <= MAX_HZ * 1.3
    assert set(conv[0]) == set(conv[1])
    assert conv[0] == {**conv[0], "event": "converged", "boards": BOARDS, "converged": BOARDS,
                       "deadline_s": 5.0}
    assert conv[1]["converged"] == conv[1]["boards"] == 2
    assert isinstance(conv[0]["max_s"], float) and conv[0]["max_s"] <= 5.0
    assert codes == [0, 0]


def test_a_point_names_the_viewers_the_service_refused(tmp_path: Path) -> None:
    """The bench sets the per-address limits itself; with a cap put back (as a service
    run with the old default of 100 had), the point fails naming the refused viewers."""
    def capped(redis_url: str, port: int, n: int) -> dict[str, str]:
        return {**service_env(redis_url, port, n), "MAX_CONNECTIONS_PER_IP": "30"}

    env = service_env("redis://127.0.0.1:1/0", 1, 100)
    assert env["MAX_CONNECTIONS_PER_IP"] == env["MAX_CONNECTS_PER_IP_PER_S"] == "0"
    peer = Server("service", "capped", SERVERS["service"].argv, capped)
    plan = Plan(warmup_s=0.3, measure_s=1.0, procs=1, boards=2, decode_every=5)
    with redis_server() as rs:
        client = redis.Redis.from_url(rs.url)
        try:
            said: list[str] = []
            point = run_point(peer, rs.url, client, 50, MAX_HZ, plan, tmp_path, (None, None),
                              said.append)
        finally:
            client.close()
    assert point["connected"] == 50 and point["served"] == 30
    assert point["refused_closes"] == {"1008": 20}
    assert point["unserved"]["closed before the window"] == 20
    assert not point["pass"]
    assert "20 of 50 viewers refused after the upgrade (20 with 1008: a per-address cap)" \
        in point["fail_reasons"]
    assert said[-1].startswith("  service N=50 max_hz=10: 30/50 viewers served")
    assert "FAIL: 20 of 50 viewers refused" in said[-1]


# ---- against a scripted server ----------------------------------------------------------

def frame(op: int, payload: bytes, fin: bool = True, wide: bool = False, mask: bytes = b"") -> bytes:
    """A server frame; `wide`: the 64-bit length even when not needed; `mask`: masked, as
    only a client's frames should be (a client may still accept it)."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | op])
    bit = 0x80 if mask else 0
    if wide or n > 0xFFFF:
        head += bytes([127 | bit]) + struct.pack(">Q", n)
    elif n >= 126:
        head += bytes([126 | bit]) + struct.pack(">H", n)
    else:
        head += bytes([n | bit])
    if mask:
        payload = mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


def read_client_frames(sock: socket.socket, until_op: int, timeout: float) -> list[tuple[int, bool, bytes]]:
    """(opcode, masked, unmasked payload) of what the client sent, up to an `until_op` frame."""
    sock.settimeout(timeout)
    buf = b""
    out: list[tuple[int, bool, bytes]] = []
    while True:
        while len(buf) >= 2:
            masked, n = bool(buf[1] & 0x80), buf[1] & 0x7F
            at = 2
            if n == 126:
                n, at = struct.unpack(">H", buf[2:4])[0], 4
            elif n == 127:
                n, at = struct.unpack(">Q", buf[2:10])[0], 10
            key = buf[at:at + 4] if masked else b"\0\0\0\0"
            at += 4 if masked else 0
            if len(buf) < at + n:
                break
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(buf[at:at + n]))
            out.append((buf[0] & 0x0F, masked, payload))
            buf = buf[at + n:]
            if out[-1][0] == until_op:
                return out
        chunk = sock.recv(65536)
        if not chunk:
            return out
        buf += chunk


class Scripted:
    """A websocket server on 127.0.0.1 whose i-th connection gets `scripts[i]`, after `go`."""

    def __init__(self, scripts: list[Callable[[socket.socket], None]]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.scripts = scripts
        self.requests: list[bytes] = []
        self.peers: list[str] = []  # the clients' source addresses
        self.go = threading.Event()
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        self.listener.settimeout(10)
        for script in self.scripts:
            try:
                sock, peer = self.listener.accept()
                self.peers.append(peer[0])
            except OSError as exc:
                self.errors.append(exc)
                return
            t = threading.Thread(target=self._serve, args=(sock, script), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, sock: socket.socket, script: Callable[[socket.socket], None]) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                request += chunk
            self.requests.append(request)
            script(sock)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            sock.close()

    def join(self, timeout: float) -> None:
        self.acceptor.join(timeout)
        for t in self.threads:
            t.join(timeout)
        assert not self.acceptor.is_alive() and not any(t.is_alive() for t in self.threads)
        assert not self.errors, self.errors

    def close(self) -> None:
        self.listener.close()


UPGRADE = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Accept: x\r\n\r\n")


def send_split(sock: socket.socket, data: bytes, sizes: tuple[int, ...] = (1, 2, 3, 5, 8)) -> None:
    """Small writes with pauses: headers and payloads reach the client across many reads."""
    at, i = 0, 0
    while at < len(data):
        n = sizes[i % len(sizes)]
        sock.sendall(data[at:at + n])
        at, i = at + n, i + 1
        time.sleep(0.0005)


def test_framing_against_a_scripted_server(generator: Path, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    many = [{"symbol": f"S{i}", "kind": "stock", "price": 1.5, "ts": now, "seq": i + 1} for i in range(700)]
    before = [  # (payload, 64-bit length)
        # Top-level and nested `ts` must never be read as a quote's.
        (orjson.dumps({"type": "quotes", "ts": 0, "quotes": [
            {"ts": now - 5, "symbol": "AAA", "extra": {"ts": 0, "x": [1, {"ts": 0}]}, "seq": 1}]}), False),
        (orjson.dumps({"type": "heartbeat", "ts": 0}), False),
        (orjson.dumps({"type": "status", "feed": "live", "ts": 0}), False),
        # 16-bit length, keys in another order, whitespace.
        (b'{ "type" : "quotes" , "quotes" : [ ' + b" , ".join(
            b'{ "seq" : %d , "price" : 2.5 , "ts" : %d , "symbol" : "Q%d" }' % (i + 1, now, i)
            for i in range(20)) + b" ] }", False),
        (orjson.dumps({"type": "quotes", "quotes": many}), False),  # 64-bit length
        (orjson.dumps({"type": "quotes", "quotes": many[:3]}), True),  # 64-bit, small
    ]
    fragmented = orjson.dumps({"type": "quotes", "quotes": [
        {"symbol": "BBB", "ts": now, "seq": 5}, {"symbol": "AAA", "ts": now, "seq": 2}]})
    masked = orjson.dumps({"type": "quotes", "quotes": [{"symbol": "AAA", "ts": now, "seq": 1}]})
    after = [
        orjson.dumps({"type": "snapshot", "quotes": [{"symbol": "CCC", "seq": 9, "ts": 0}]}),  # board only
        orjson.dumps({"quotes": [{"symbol": "DDD", "seq": 3, "ts": now}], "type": "quotes"}),  # type last
        orjson.dumps({"type": "quotes", "quotes": [
            {"symbol": "EEE", "note": 'a "ts": 0 \\', "ts": now, "seq": 4}]}),  # escapes
    ]
    final = {"AAA": 2, "BBB": 5, "CCC": 9, "DDD": 3, "EEE": 4}
    last = orjson.dumps({"type": "quotes", "quotes": [{"symbol": s, "seq": v, "ts": now}
                                                      for s, v in final.items()]})
    texts = [p for p, _ in before] + [fragmented, masked, b"", *after, last]
    seen: dict[str, list[tuple[int, bool, bytes]]] = {}

    def refused(sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    def rich(sock: socket.socket) -> None:
        sock.sendall(UPGRADE)
        scripted.go.wait(10)
        half = len(fragmented) // 2
        stream = b"".join(frame(1, p, wide=w) for p, w in before) \
            + frame(1, fragmented[:10], fin=False) + frame(9, b"ping-1") \
            + frame(0, fragmented[10:half], fin=False) + frame(0, fragmented[half:], fin=False) \
            + frame(0, b"") + frame(1, masked, mask=b"\x01\x82\x33\xf4") + frame(1, b"") \
            + frame(1, after[0]) + frame(1, after[1]) + frame(2, b"\x00binary, not counted") \
            + frame(1, after[2]) + frame(8, struct.pack(">H", 4001) + b"bye")
        send_split(sock, stream[:400])
        sock.sendall(stream[400:])
        seen["rich"] = read_client_frames(sock, 8, 10)

    def ends_in_eof(sock: socket.socket) -> None:
        sock.sendall(UPGRADE[:20])  # the response head over two reads
        time.sleep(0.05)
        sock.sendall(UPGRADE[20:] + frame(1, b'{"type":"welcome","protocol":1}'))
        scripted.go.wait(10)
        send_split(sock, frame(1, last))
        sock.shutdown(socket.SHUT_WR)
        seen["eof"] = read_client_frames(sock, 8, 10)

    def bad_opcode(sock: socket.socket) -> None:
        sock.sendall(UPGRADE)
        scripted.go.wait(10)
        sock.sendall(frame(3, b"reserved"))
        seen["bad"] = read_client_frames(sock, 8, 10)

    scripted = Scripted([refused, rich, ends_in_eof, bad_opcode])
    argv = native.generator_argv(f"ws://127.0.0.1:{scripted.port}/ws", 4, 4, 1, 4, binary=generator)
    child = Child("viewers-scripted", [*argv, "--concurrency", "1"], log_dir=tmp_path, pipe=True)
    try:
        info = child.recv(timeout=10)
        assert info == {"event": "connected", "ok": 3, "failed": 1, "boards": 3,
                        "errors": {"WSInvalidStatusError": 1}, "connect_s": info["connect_s"]}
        child.send({"cmd": "start"})
        child.send({"cmd": "stop"})  # answered once `start` was done: the scripts begin after it
        assert child.recv(timeout=5)["frames"] == 0
        scripted.go.set()
        stats = stats_when(child, lambda s: len(s["closes"]) == 3, 10)
        scripted.join(10)
        # The third board holds nothing: the wait runs to its deadline.
        child.send({"cmd": "final", "seqs": final, "t_stop": time.time(), "deadline_s": 0.5})
        conv = child.recv(timeout=5)
        assert quit_child(child) == 0
    finally:
        child.stop(timeout=5)
        scripted.close()

    assert scripted.requests[1].startswith(b"GET /ws?symbols=*&max_hz=4 HTTP/1.1\r\n")
    request = scripted.requests[1].lower()
    assert b"upgrade: websocket\r\n" in request and b"sec-websocket-version: 13\r\n" in request
    assert stats["closes"] == {"4001": 1, "eof": 1, "protocol": 1}
    assert stats["open"] == 0 and stats["conns"] == 3
    assert stats["frames"] == len(texts)  # a fragmented message once, binary not at all
    assert stats["bytes"] == sum(len(p) for p in texts)
    assert stats["decoded"] == 9  # the quotes frames: not heartbeat, status, snapshot, empty
    assert stats["aged"] == 1 + 20 + 700 + 3 + 2 + 1 + 1 + 1 + len(final)
    assert sum(stats["ages"].values()) == stats["aged"]
    assert max(int(k) for k in stats["ages"]) < 5000, "a ts outside the quotes was read"
    assert 5 <= stats["max_age_ms"] < 5000
    # The ping's pong and the close reply: masked, as a client's frames must be.
    assert seen["rich"] == [(10, True, b"ping-1"), (8, True, struct.pack(">H", 4001))]
    assert seen["eof"] == []
    assert seen["bad"] == [(8, True, struct.pack(">H", 1002))]
    assert conv == {"event": "converged", "boards": 3, "converged": 2, "max_s": conv["max_s"],
                    "deadline_s": 0.5}


@pytest.mark.parametrize("url", ["ws://example.com:80/ws", "wss://127.0.0.1:1/ws", "ws://10.0.0.1:80/ws"])
def test_refuses_other_hosts(generator: Path, url: str) -> None:
    done = subprocess.run([str(generator), "--url", url, "--conns", "1"], capture_output=True,
                          text=True, timeout=10, check=False)
    assert done.returncode == 2 and "127.0.0.1 only" in done.stderr


def test_nothing_to_connect_to(generator: Path, tmp_path: Path) -> None:
    """A refused connect is an error of its kind; EOF on stdin ends the process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
        argv = native.generator_argv(f"ws://127.0.0.1:{s.getsockname()[1]}/ws", 3, None, 20, 1,
                                     binary=generator)
        child = Child("viewers-refused", argv, log_dir=tmp_path, pipe=True)
        try:
            info = child.recv(timeout=10)
            assert child.proc.stdin is not None
            child.proc.stdin.close()
            assert child.proc.wait(timeout=5) == 0
        finally:
            child.stop(timeout=5)
    assert info == {"event": "connected", "ok": 0, "failed": 3, "boards": 0,
                    "errors": {"ConnectionRefusedError": 3}, "connect_s": info["connect_s"]}


def test_build_is_cached_and_reports_failures(tmp_path: Path) -> None:
    src = tmp_path / "bad.c"
    src.write_text("int main(void) { return missing; }\n")
    with pytest.raises(RuntimeError, match="cc failed"):
        native.build(src, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    good = tmp_path / "good.c"
    good.write_text("int main(void) { return 0; }\n")
    out = native.build(good, tmp_path / "good")
    built = out.stat().st_mtime_ns
    assert native.build(good, out).stat().st_mtime_ns == built



# ---- the encodings of issue 24 ----------------------------------------------------------

def deflated(payload: bytes) -> bytes:
    """A text frame compressed as the service does it (RFC 7692: raw deflate, sync flush, the
    trailing 00 00 ff ff removed), RSV1 set."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    head = frame(1, data[:-4])
    return bytes([head[0] | 0x40]) + head[1:]


def test_compact_and_deflate_against_a_scripted_server(generator: Path, tmp_path: Path) -> None:
    """--encoding compact+deflate: the query and the offer, compressed and plain messages,
    compact arrays (full and delta entries, with changes) whose running time gives the ages
    and whose deltas move the boards by index; RSV1 where deflate was not negotiated is a
    protocol error."""
    now = int(time.time() * 1000)
    snapshot = orjson.dumps({"type": "snapshot", "quotes": [
        {"symbol": "AAA", "seq": 3, "ts": now - 50, "price": 1.5, "i": 0},
        {"symbol": "BBB", "seq": 7, "ts": now - 40, "price": 2.5, "i": 1}]})
    full = orjson.dumps([now - 30, {"symbol": "CCC", "seq": 2, "ts": now - 30, "price": 3, "i": 2},
                         [0, 1.51, 1, 5]])
    deltas = orjson.dumps([now - 20, [1, 2.49, 2, 0, {"volume": 12, "state": None}], [0, 1.52, 1, 3],
                           [2, 3.1, 4, -1]])
    status = orjson.dumps({"type": "status", "feed": "live"})
    final = {"AAA": 5, "BBB": 9, "CCC": 6}
    accept = UPGRADE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate; "
                             b"server_no_context_takeover; client_no_context_takeover\r\n\r\n")

    def compressed(sock: socket.socket) -> None:
        sock.sendall(accept)
        scripted.go.wait(10)
        stream = deflated(snapshot) + frame(1, full) + deflated(status) + deflated(deltas)
        send_split(sock, stream)
        seen["compressed"] = read_client_frames(sock, 8, 1)

    def not_negotiated(sock: socket.socket) -> None:
        sock.sendall(UPGRADE)
        scripted.go.wait(10)
        sock.sendall(deflated(full))
        seen["plain"] = read_client_frames(sock, 8, 10)

    seen: dict[str, list[tuple[int, bool, bytes]]] = {}
    scripted = Scripted([compressed, not_negotiated])
    argv = native.generator_argv(f"ws://127.0.0.1:{scripted.port}/ws", 2, 4, 1, 2, binary=generator,
                                 encoding="compact+deflate")
    child = Child("viewers-compact", [*argv, "--concurrency", "1"], log_dir=tmp_path, pipe=True)
    try:
        info = child.recv(timeout=10)
        assert info == {"event": "connected", "ok": 2, "failed": 0, "boards": 2, "errors": {},
                        "deflate": 1, "connect_s": info["connect_s"]}
        child.send({"cmd": "start"})
        child.send({"cmd": "stop"})
        assert child.recv(timeout=5)["frames"] == 0
        scripted.go.set()
        stats = stats_when(child, lambda s: s["frames"] == 4 and s["closes"], 10)
        child.send({"cmd": "final", "seqs": final, "t_stop": time.time(), "deadline_s": 0.5})
        conv = child.recv(timeout=5)
        assert quit_child(child) == 0
        scripted.join(10)
    finally:
        child.stop(timeout=5)
        scripted.close()

    request = scripted.requests[0].lower()
    assert request.startswith(b"get /ws?symbols=*&max_hz=4&encoding=compact http/1.1\r\n")
    assert (b"sec-websocket-extensions: permessage-deflate; server_no_context_takeover; "
            b"client_no_context_takeover\r\n") in request
    assert stats["closes"] == {"protocol": 1}  # the connection that did not negotiate it
    assert stats["compressed"] == 3
    assert stats["bytes"] == sum(len(f) - 2 for f in (deflated(snapshot), deflated(status),
                                                       deflated(deltas))) + len(full)
    assert stats["decoded"] == 2  # the compact frames; the snapshot is a board's only
    assert stats["aged"] == 2 + 3
    ages = merge_hist(stats["ages"])
    assert min(a for a, _ in ages) >= 15 and max(a for a, _ in ages) < 5000
    assert seen["plain"] == [(8, True, struct.pack(">H", 1002))]
    assert conv["converged"] == 1 and conv["boards"] == 2, conv


# ---- --reconnect (issue 25) -------------------------------------------------------------

RECONNECT_KEYS = {"per_s", "refused_by", "refusals", "max_refusals", "waiting", "connecting", "synced",
                  "last_sync", "last_live", "stale", "live", "steady", "steady_aged", "steady_max_age_ms",
                  "steady_ages", "steady_max_gap_ms", "steady_gaps"}
PER_S_KEYS = {"attempted", "opened", "admitted", "refused", "failed", "lost", "synced"}


def totals(stats: dict[str, Any]) -> dict[str, int]:
    return {kind: sum(counts) for kind, counts in stats["reconnect"]["per_s"].items()}


def test_reconnect_after_the_service_is_killed(generator: Path, tmp_path: Path) -> None:
    """--reconnect against the real service: SIGKILLed, then started again on its port
    admitting 10 connections a second, so most of the crowd is refused (1013) first and
    comes back later: every viewer is back with its snapshot and every board converges."""
    with redis_server() as rs:
        env = {"REDIS_URL": rs.url, "REDIS_PARTITIONS": "1"}
        service = ServiceProcess(env)
        publisher = ChildProcess(["bench.publisher", "--rate", "100", "--seed", "1", "--redis", rs.url],
                                 {"REDIS_PARTITIONS": "1"}, f"publisher-reconnect-{service.port}")
        child: Child | None = None
        try:
            service.start()
            publisher.spawn()
            argv = native.generator_argv(service.ws_url, CONNS, MAX_HZ, 5, BOARDS, binary=generator,
                                         reconnect=True, reconnect_cap=1.0)
            child = Child("viewers-reconnect", argv, cwd=ROOT, log_dir=tmp_path, pipe=True)
            assert child.recv(timeout=20)["ok"] == CONNS
            stats_when(child, lambda s: s["reconnect"]["synced"] == CONNS, 15)
            child.send({"cmd": "start"})
            before = stats_when(child, lambda s: s["reconnect"]["steady_aged"] >= 20, 15)
            assert service.proc is not None
            service.proc.kill()  # SIGKILL: no close frame, no drain
            service.proc.wait(timeout=5)
            stats_when(child, lambda s: totals(s)["lost"] == CONNS, 10)
            service = ServiceProcess({**env, "MAX_CONNECTS_PER_S": "10"}, port=service.port)
            service.start()
            after = stats_when(child, lambda s: s["reconnect"]["synced"] == CONNS, 40)
            publisher.stop()
            t_stop = time.time()
            client = redis.Redis.from_url(rs.url)
            seqs = final_seqs(client)
            client.close()
            child.send({"cmd": "final", "seqs": seqs, "t_stop": t_stop, "deadline_s": 5.0})
            conv = child.recv(timeout=15)
            assert quit_child(child) == 0
        finally:
            if child is not None:
                child.stop(timeout=5)
            publisher.stop()
            service.stop()

    assert set(before) == STATS_KEYS | {"reconnect"}
    rc = before["reconnect"]
    assert set(rc) == RECONNECT_KEYS and set(rc["per_s"]) == PER_S_KEYS
    assert rc["steady"] == CONNS and rc["refusals"] == {"0": CONNS}
    assert sum(c for _, c in merge_hist(rc["steady_ages"])) == rc["steady_aged"] <= before["aged"]
    assert sum(rc["steady_gaps"].values()) == CONNS
    assert totals(before) == dict.fromkeys(PER_S_KEYS, 0)

    rc = after["reconnect"]
    done = totals(after)
    assert after["open"] == CONNS and after["conns"] == CONNS  # first attempts, as without the flag
    assert rc["steady"] == 0 and rc["steady_gaps"] == {} and rc["waiting"] == rc["connecting"] == 0
    assert done["lost"] == done["admitted"] == done["synced"] == CONNS
    refused = rc["refused_by"].get("1013", 0)
    assert refused > 0 and rc["refused_by"] == {"1013": refused} == {"1013": done["refused"]}
    assert done["opened"] == CONNS + refused
    assert done["attempted"] == done["opened"] + done["failed"]
    assert sum(int(k) * n for k, n in rc["refusals"].items()) == refused
    assert sum(rc["refusals"].values()) == CONNS and rc["max_refusals"] >= 1
    assert after["closes"] == {"eof": CONNS, "1013": refused}
    assert isinstance(rc["last_sync"], float) and rc["last_sync"] <= time.time()
    assert conv["converged"] == conv["boards"] == BOARDS, conv


def test_reconnect_counts_against_a_scripted_server(generator: Path, tmp_path: Path) -> None:
    """One viewer through every way a connection ends, with exact counts: lost after its
    snapshot (1001), refused by an HTTP 503, refused after the upgrade (1013), then back with
    a snapshot, a stale and a live status, held open."""
    now = int(time.time() * 1000)
    welcome = frame(1, orjson.dumps({"type": "welcome", "protocol": 1}))

    def snapshot(seq: int) -> bytes:
        return frame(1, orjson.dumps({"type": "snapshot", "quotes": [{"symbol": "AAA", "seq": seq,
                                                                      "ts": now}]}))

    def lost(sock: socket.socket) -> None:
        sock.sendall(UPGRADE + welcome + snapshot(3))
        scripted.go.wait(10)
        sock.sendall(frame(8, struct.pack(">H", 1001)))
        read_client_frames(sock, 8, 10)

    def http_refused(sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")

    def ws_refused(sock: socket.socket) -> None:
        sock.sendall(UPGRADE + frame(8, struct.pack(">H", 1013) + b"try again later"))
        read_client_frames(sock, 8, 10)

    def back(sock: socket.socket) -> None:
        sock.sendall(UPGRADE + welcome)
        send_split(sock, frame(1, orjson.dumps({"type": "status", "feed": "stale", "ts": now}))
                   + snapshot(5) + frame(1, orjson.dumps({"type": "status", "feed": "live", "ts": now})))
        read_client_frames(sock, 8, 20)  # until the generator quits

    scripted = Scripted([lost, http_refused, ws_refused, back])
    argv = native.generator_argv(f"ws://127.0.0.1:{scripted.port}/ws", 1, None, 1, 1, binary=generator,
                                 reconnect=True, reconnect_cap=0.2, bind="127.0.0.3", bind_count=2)
    child = Child("viewers-reconnect-scripted", argv, log_dir=tmp_path, pipe=True)
    try:
        info = child.recv(timeout=10)
        assert info == {"event": "connected", "ok": 1, "failed": 0, "boards": 1, "errors": {},
                        "connect_s": info["connect_s"]}
        stats_when(child, lambda s: s["reconnect"]["synced"] == 1, 10)
        child.send({"cmd": "start"})
        child.send({"cmd": "stop"})
        assert child.recv(timeout=5)["reconnect"]["steady"] == 1
        scripted.go.set()
        stats = stats_when(child, lambda s: s["reconnect"]["live"] == 1, 15)
        child.send({"cmd": "final", "seqs": {"AAA": 5}, "t_stop": time.time(), "deadline_s": 0.5})
        conv = child.recv(timeout=5)
        assert quit_child(child) == 0
        scripted.join(10)
    finally:
        child.stop(timeout=5)
        scripted.close()

    rc = stats["reconnect"]
    assert totals(stats) == {"attempted": 3, "opened": 2, "admitted": 1, "refused": 2, "failed": 0,
                             "lost": 1, "synced": 1}
    assert rc["refused_by"] == {"http_503": 1, "1013": 1}
    assert rc["refusals"] == {"2": 1} and rc["max_refusals"] == 2
    assert (rc["synced"], rc["stale"], rc["live"], rc["steady"], rc["waiting"]) == (1, 1, 1, 0, 0)
    assert rc["last_sync"] <= rc["last_live"] <= time.time()
    assert stats["closes"] == {"1001": 1, "1013": 1}
    assert stats["open"] == 1 and stats["conns"] == 1
    assert conv["converged"] == conv["boards"] == 1
    assert len(scripted.requests) == 4 and scripted.peers == ["127.0.0.3"] * 4  # --bind
