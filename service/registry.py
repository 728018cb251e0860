"""The live clients of a process, websockets and SSE streams alike: who may come in, the
sweeper that keeps their time, and how they are all closed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable

from .limits import TokenBucket
from .protocol import CLOSE_GOING_AWAY
from .session import Session
from .settings import Settings

log = logging.getLogger("service.registry")

# Why a client is turned away while the process drains.
SHUTTING_DOWN = "the server is shutting down"


class Registry:
    """Every live Session: admitted (MAX_CONNECTIONS, MAX_CONNECTS_PER_S, draining), swept
    and drained the same whatever carries it."""

    def __init__(self, settings: Settings, stats: Counter[str]) -> None:
        self.settings = settings
        # The hub's stats, where refusals are counted (metrics.py reads them).
        self.stats = stats
        self.sessions: set[Session] = set()
        self.draining = False
        self.connect_rate = TokenBucket(settings.max_connects_per_s)
        self._refusal_log = TokenBucket(1)
        self._all_closed = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None

    def admit(self, host: str) -> str | None:
        """Why a new client from `host` must go elsewhere or wait, or None. After a restart
        every client comes back at once; turning the excess away (1013, or SSE's 503)
        keeps that from becoming a storm (clients retry with jittered back-off). While
        draining: SHUTTING_DOWN, neither counted nor logged."""
        if self.draining:
            return SHUTTING_DOWN
        settings = self.settings
        now = asyncio.get_running_loop().time()
        if len(self.sessions) >= settings.max_connections:
            refusal = f"connection cap of {settings.max_connections} reached"
        elif not self.connect_rate.take(now):
            refusal = f"over {settings.max_connects_per_s} new connections/s"
        else:
            return None
        self.stats["connections_refused"] += 1
        if self._refusal_log.take(now):  # a storm of refusals is one line a second
            log.warning("refusing a connection from %s: %s", host, refusal)
        return refusal

    def add(self, session: Session) -> None:
        self.sessions.add(session)

    def remove(self, session: Session) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._all_closed.set()

    # The sweeper

    def start(self, tick: Callable[[float], None] | None = None) -> None:
        """Start the sweeper; `tick(now)` is called after each sweep (metrics)."""
        self._sweeper = asyncio.create_task(self._sweep(tick), name="sweeper")

    async def _sweep(self, tick: Callable[[float], None] | None) -> None:
        """One task walks every client for token expiry, heartbeats and stuck sends
        (Session.check), instead of a timer per client per frame."""
        settings = self.settings
        interval = min(1.0, settings.heartbeat_s / 2, settings.send_timeout_s / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for session in list(self.sessions):
                session.check(now)
            if tick is not None:
                tick(now)

    # The end

    async def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down",
                        timeout: float = 3.0) -> None:
        """Close every client with `code` before the server drops the sockets."""
        if not self.sessions:
            return
        self._all_closed.clear()
        for session in list(self.sessions):
            session.close(code, reason)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._all_closed.wait()
                return
        # Those left are stuck in a write (a slow or dead reader) with the close behind
        # it: give the write up rather than hold the stop for their send timeout.
        stuck = list(self.sessions)
        log.warning("%d clients did not take their close in %gs; giving their writes up", len(stuck),
                    timeout, extra={"event": "close_given_up", "connections": len(stuck)})
        for session in stuck:
            session.give_up()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._all_closed.wait()

    async def drain(self, seconds: float) -> None:
        """Close every client with 1001, spread evenly over `seconds` in random order, so
        they do not all come back to the other instances at the same instant."""
        self.draining = True
        clients = list(self.sessions)
        if clients:
            log.info("draining: closing %d clients with 1001 over %.1fs", len(clients), seconds,
                     extra={"event": "draining", "connections": len(clients), "drain_s": seconds})
        random.shuffle(clients)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, session in enumerate(clients):
            due = start + seconds * i / len(clients)
            if due - loop.time() > 0.01:
                await asyncio.sleep(due - loop.time())
            session.close(CLOSE_GOING_AWAY, "server shutting down")
        await self.close_all()

    async def stop(self) -> None:
        """Close every client, then stop the sweeper."""
        await self.close_all()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(BaseException):
                await sweeper
