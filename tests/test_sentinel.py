"""Failover under Redis Sentinel with real processes: a primary, one replica and three
sentinels; the publisher and the service on the redis+sentinel:// URL; 20 clients.

The primary is killed (SIGKILL) or frozen (SIGSTOP). The sentinels promote the replica;
the clients are told stale, then live again with a fresh snapshot, and end with the board
a fresh client gets, no seq ever going down. Each test prints what it measured (-s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Literal

import pytest

from tests.redis_sentinel import SentinelSetup, replication, sentinel_setup
from tests.service_proc import PublisherProcess, ServiceProcess, feed_stack, http_get
from tests.test_faults import FAST_PROBES, ReadyWatcher, Watcher, converged, until, watchers

CLIENTS = 20
RATE = 200


@pytest.fixture
def stack() -> Iterator[tuple[SentinelSetup, ServiceProcess, PublisherProcess]]:
    with sentinel_setup() as setup, \
            feed_stack(setup.url, RATE, FAST_PROBES, ready="/readyz") as (service, publisher):
        yield setup, service, publisher


def back_live(client: Watcher, since: float) -> float | None:
    """Seconds from `since` to the first `live` after the client's first `stale` after it."""
    stale = client.status_since(since, "stale")
    if stale is None:
        return None
    live = client.status_since(since + stale, "live")
    return None if live is None else stale + live


async def failover(stack: tuple[SentinelSetup, ServiceProcess, PublisherProcess],
                   fault: Literal["killed", "frozen"]) -> None:
    setup, service, publisher = stack
    old, (replica,) = setup.primary, setup.replicas
    async with AsyncExitStack() as exits:
        clients = await watchers(exits, service, CLIENTS)
        await asyncio.sleep(0.5)
        seq_before = {s: max(w.board[s]["seq"] for w in clients) for s in clients[0].board}

        switched = asyncio.create_task(setup.failed_over(old.port))
        exits.callback(switched.cancel)
        ready = ReadyWatcher(service)
        exits.callback(ready.stop)
        began = thawed = time.monotonic()
        if fault == "killed":
            old.kill()
        else:
            old.freeze()
        try:
            await until(lambda: all(w.status_since(began, "stale") is not None for w in clients),
                        10, f"every client told stale after the primary was {fault}")
            to_stale = max(w.status_since(began, "stale") or 0 for w in clients)

            await until(lambda: all(back_live(w, began) is not None for w in clients), 20,
                        "every client told live again after the failover")
            first_live = max(back_live(w, began) or 0 for w in clients)
            assert ready.saw(first_live - to_stale, lambda body: body["feed"] == "stale"), \
                f"/readyz never answered 503 during the outage: {ready.answers[-3:]}"
            assert all(w.snapshots[-1] >= began + (w.status_since(began, "stale") or 0)
                       for w in clients), "a fresh snapshot follows live"
            async with asyncio.timeout(10):
                to_switch = await switched - began
            await setup.agree_on(replica.port)

            await until(lambda: all(w.board[s]["seq"] > seq_before[s]
                                    for w in clients for s in seq_before), 15,
                        "every symbol moved past its seq from before the outage")
            to_moved = time.monotonic() - began
            # Live for good: the service may say live on reaching the new primary before
            # the publisher has, then stale again for the publisher's silence.
            await until(lambda: all(w.statuses[-1][1] == "live" for w in clients), 10,
                        "every client live once the publisher is back")
            to_live = max(w.statuses[-1][0] for w in clients) - began
            flaps = sum(sum(state == "live" for at, state in w.statuses if at >= began) - 1
                        for w in clients)
        finally:
            if fault == "frozen":
                old.thaw()
                thawed = time.monotonic()
        demoted = ""
        if fault == "frozen":
            # The old primary comes back as a primary of its own; the sentinels make it
            # a replica of the new one (after 8 s of it reporting the wrong role).
            await until(lambda: (info := replication(old.port)).get("role") == "slave"
                        and info.get("master_port") == replica.port, 20,
                        "the thawed primary demoted to a replica of the new one")
            demoted = f"; thawed primary demoted after {time.monotonic() - thawed:.2f}s"

        # A thawed primary's demotion may cost the publisher a moment (the service then says
        # stale for its silence); what must hold is that every client ends up live.
        await until(lambda: all(w.statuses[-1][1] == "live" for w in clients), 10,
                    "every client live after the thawed primary was demoted: "
                    f"{[w.statuses[-3:] for w in clients]}")
        assert (await asyncio.to_thread(http_get, service.url + "/readyz"))[0] == 200
        await converged(service, publisher, clients)
    print(f"\nsentinel, primary {fault}: stale after {to_stale:.2f}s, live after {to_live:.2f}s "
          f"(failover by sentinel at {to_switch:.2f}s); first live at {first_live:.2f}s, "
          f"{flaps} live-stale-live flaps over {CLIENTS} clients; every symbol past its old "
          f"seq at {to_moved:.2f}s{demoted}")


async def test_primary_killed_fails_over(
    stack: tuple[SentinelSetup, ServiceProcess, PublisherProcess],
) -> None:
    await failover(stack, "killed")


async def test_primary_frozen_fails_over(
    stack: tuple[SentinelSetup, ServiceProcess, PublisherProcess],
) -> None:
    await failover(stack, "frozen")
