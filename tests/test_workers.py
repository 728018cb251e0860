"""WORKERS=N on one host: the restart policy (sans I/O), and the supervisor with real
processes: refusals at start, giving up on a bad REDIS_URL, orphans, draining."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import AsyncExitStack

import pytest

from quote_runtime.exits import EXIT_CONFIG
from service.supervisor import GiveUp, RestartPolicy
from tests.redis_server import free_port, redis_server
from tests.service_proc import ROOT, ServiceProcess
from tests.test_faults import until
from tests.wsclient import connect, recv_type

# The restart policy


def test_a_worker_that_ran_a_while_is_replaced_at_once() -> None:
    policy = RestartPolicy(min_uptime_s=10, max_failed_starts=3)
    for _ in range(10):
        assert policy.died(-9, uptime_s=60) == 0


def test_failed_starts_back_off_then_give_up() -> None:
    policy = RestartPolicy(min_uptime_s=10, max_failed_starts=3)
    assert policy.died(1, uptime_s=0.5) == 0.5
    assert policy.died(1, uptime_s=0.5) == 1.0
    with pytest.raises(GiveUp, match="keep dying at start"):
        policy.died(1, uptime_s=0.5)


def test_a_success_in_between_resets_the_count() -> None:
    policy = RestartPolicy(min_uptime_s=10, max_failed_starts=2)
    policy.died(1, uptime_s=1)
    policy.died(-9, uptime_s=100)
    assert policy.died(1, uptime_s=1) == 0.5


def test_a_configuration_error_is_not_retried() -> None:
    with pytest.raises(GiveUp, match="configuration error"):
        RestartPolicy().died(EXIT_CONFIG, uptime_s=100)


# The supervisor, for real


def run_service(env: dict[str, str], *args: str, timeout: float = 30
                ) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**inherited, "PORT": str(free_port()), **env})


def test_embedded_mode_refuses_more_than_one_worker() -> None:
    result = run_service({}, "--workers", "2")
    assert result.returncode == 2
    assert "WORKERS=2 needs REDIS_URL" in result.stderr
    assert "WORKERS=1" in result.stderr


def test_a_malformed_redis_url_stops_before_any_worker() -> None:
    result = run_service({"WORKERS": "2", "REDIS_URL": "redis://127.0.0.1:notaport/0"})
    assert result.returncode == 2
    assert "REDIS_URL is not a valid Redis URL" in result.stderr


def test_a_refused_redis_url_gives_up_instead_of_looping() -> None:
    """A password Redis does not take: each worker says why and exits 3 at its first
    attempt; the supervisor gives up at once, non-zero, with one clear line."""
    with redis_server(args=["--requirepass", "right"]) as server:
        url = server.url.replace("redis://", "redis://:wrong@")
        started = time.monotonic()
        result = run_service({"WORKERS": "2", "REDIS_URL": url})
        took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "cannot use REDIS_URL: redis refused the connection" in result.stderr
    assert "giving up: a worker exited with 3: a configuration error" in result.stderr
    assert result.stderr.count('"event":"start"') <= 2, "no worker was started twice"
    print(f"\nbad REDIS_URL password: gave up after {took:.2f}s")


def test_a_port_in_use_is_said_before_any_worker_starts() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with redis_server() as server:
            result = run_service({"WORKERS": "2", "REDIS_URL": server.url, "PORT": str(port)})
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert '"event":"start"' not in result.stderr


def test_workers_stop_when_the_supervisor_is_killed() -> None:
    with redis_server() as server:
        service = ServiceProcess({"WORKERS": "2", "REDIS_URL": server.url})
        service.start()
        try:
            pids = [int(str(e["worker_pid"])) for e in service.wait_workers(2)]
            assert service.proc is not None
            service.proc.kill()
            service.proc.wait(5)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.05)
            left = [p for p in pids if _alive(p)]
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            assert not left, f"workers {left} outlived their supervisor"
        finally:
            service.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_sigterm_closes_clients_with_1001_spread_over_drain_s() -> None:
    service = ServiceProcess({"DRAIN_S": "2"})
    service.start()
    closed: list[tuple[float, int | None]] = []

    async def client(exits: AsyncExitStack) -> None:
        ws = await exits.enter_async_context(connect(service.ws_url))
        await recv_type(ws, "welcome")

        async def wait_close() -> None:
            try:
                async for _ in ws:
                    pass
            except Exception:
                pass
            closed.append((time.monotonic(), ws.close_code))

        asyncio.get_running_loop().create_task(wait_close())

    try:
        async with AsyncExitStack() as exits:
            await asyncio.gather(*(client(exits) for _ in range(20)))
            assert service.proc is not None
            service.proc.send_signal(signal.SIGTERM)
            await until(lambda: len(closed) == 20, 10, "every client closed")
    finally:
        service.stop()
    assert {code for _, code in closed} == {1001}
    times = sorted(t for t, _ in closed)
    spread = times[-1] - times[0]
    # 20 closes evenly over 2 s: the last is 1.9 s after the first; a busy machine only
    # stretches that.
    assert spread >= 1.0, f"closes spread over {spread:.2f}s only"
    print(f"\nSIGTERM with DRAIN_S=2: 20 clients closed with 1001 over {spread:.2f}s")


def test_a_stop_that_hangs_is_cut_short_by_the_watchdog() -> None:
    """Whatever hangs in a shutdown, the worker still exits, so none outlives its run."""
    code = ("import time; from quote_runtime import logs; from service.server import _watchdog; "
            "logs.configure(); _watchdog(0.3); time.sleep(30)")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 1
    assert "shutdown did not finish in 0.3s; exiting now" in result.stderr
    assert time.monotonic() - started < 15


async def test_the_feed_ends_when_cancelled_as_redis_fails() -> None:
    """A shutdown's cancellation that comes as Redis fails must end the feed, not be
    taken for one more outage to retry (Python 3.11's TaskGroup lost it that way, and a
    worker's shutdown then waited for ever)."""
    from service.feeds.redis_pubsub import RedisFeed
    from service.hub import Hub
    from service.settings import Settings

    with redis_server() as server:
        hub = Hub(10)
        feed = RedisFeed(Settings(redis_url=server.url, probe_interval_s=0.2), hub)
        task = asyncio.create_task(feed.run())
        await until(lambda: feed.health.connected, 5, "subscribed")
        server.kill()
        await asyncio.sleep(0.05)  # the subscription's failure is on its way
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        await feed.aclose()


def test_a_reader_stuck_in_a_write_does_not_hold_the_stop() -> None:
    """A client that stopped reading, with its send timeout far off: on SIGTERM its close
    frame waits behind a write the kernel will not take. The stop gives that write up (the
    connection is aborted) instead of waiting for the send timeout, which the shutdown
    watchdog used to cut short with exit 1."""
    from service.server import NOTSENT_LOWAT
    from tests.test_faults import server_ended, stalled_client

    service = ServiceProcess({"SEND_TIMEOUT_S": "120", "DRAIN_S": "0", "SIM_RATE": "2000"})
    service.start()
    sock = stalled_client(service.port)
    try:
        client_port = sock.getsockname()[1]

        def write_stuck() -> bool:  # the server's side holds bytes the client did not take
            query = f"( sport = :{service.port} and dport = :{client_port} )"
            ss = subprocess.run(["ss", "-Htn", "state", "established", query],
                                capture_output=True, text=True, check=True).stdout.split()
            # Recv-Q, Send-Q: past NOTSENT_LOWAT unsent, the kernel takes no more writes.
            return len(ss) >= 2 and int(ss[1]) >= NOTSENT_LOWAT
        deadline = time.monotonic() + 20
        while not write_stuck():
            assert time.monotonic() < deadline, "the service's writes to the stalled reader never backed up"
            time.sleep(0.1)
        assert service.proc is not None
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(timeout=30) in (0, -signal.SIGTERM), service.log()
        assert service.events("close_given_up") and not service.events("stop_timeout")
        assert server_ended(sock)
    finally:
        sock.close()
        service.stop()
