"""The engine behind the routes: the parts that live as long as the app does, and how
they start and stop.

Routes reach it through their request (`engine_of`), so each is a plain function a test
can call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from starlette.requests import HTTPConnection

from . import security
from .auth import Authenticator, TierName
from .delayed import DelayedFeed
from .feeds import QuoteSource, make_feed
from .history_cache import HistoryCache
from .hub import Hub
from .metrics import Metrics
from .registry import Registry
from .settings import Settings
from .tape import Tape, make_tape
from .tiers import DELAYED_MARK, DelayedTier, Tier

log = logging.getLogger("service.app")


def default_hz(settings: Settings) -> float | None:
    """The rate of a client that asks for none: the fan-out's, or None (no cap) at 0 ms."""
    interval = settings.fanout_interval_ms
    return 1000 / interval if interval > 0 else None


class Engine:
    """Everything with a lifetime that the routes share: the tape, the tiers and their
    hubs, the feed, the registry of live clients, tokens, the gate and the metrics.
    Started and stopped by the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Every quote of the day, shared by every process: recovery, gaps, /history.
        self.tape: Tape = make_tape(settings)
        self.hub = Hub(settings.max_symbols, default_hz=default_hz(settings), tape=self.tape,
                       max_recovery=settings.max_recovery,
                       every_queue_bytes=settings.every_queue_bytes,
                       deflate_min_bytes=settings.ws_deflate_min_bytes)
        # The delayed tier (service/delayed.py): a hub of its own, fed from the tape.
        delayed_hub = Hub(settings.max_symbols, default_hz=default_hz(settings),
                          every_queue_bytes=settings.every_queue_bytes, mark=DELAYED_MARK,
                          deflate_min_bytes=settings.ws_deflate_min_bytes)
        self.delayed = DelayedFeed(settings, self.hub, delayed_hub, self.tape)
        # A grant's tier (service/tiers.py): the hub its clients are served from.
        self.tiers: dict[TierName, Tier] = {
            "realtime": Tier(self.hub),
            "delayed": DelayedTier(delayed_hub, self.delayed, settings.delay_s)}
        # /history's cache of the tape (service/history_cache.py).
        self.history = HistoryCache(self.tape, max_len=settings.tape_max_len)
        # Websockets and SSE streams (service/registry.py): admitted, swept and drained alike.
        self.registry = Registry(settings, self.hub.stats)
        # Tokens and entitlements (service/auth.py), shared by every route.
        self.auth = Authenticator(settings)
        self.feed: QuoteSource = make_feed(settings, self.hub)
        # Redis lost: the tape's idle connections died with the feed's; close them.
        self.feed.on_lost.append(self.tape.release_idle)
        self._feed_task: asyncio.Task[None] | None = None
        self._delayed_task: asyncio.Task[None] | None = None
        self.metrics = Metrics(self)
        # Origins and connections per address (service/security.py), websockets and SSE.
        self.gate = security.Gate(settings, self.hub.stats)
        # Set when the feed cannot go on: the process exits with it (see server.py), so a
        # supervisor restarts the worker (1) or gives up on a configuration error.
        self.exit_code: int | None = None
        self.on_fatal: Callable[[], None] | None = None

    async def start(self) -> None:
        self._feed_task = asyncio.create_task(self._run_feed(), name="feed")
        self.registry.start(self.metrics.tick)
        self._delayed_task = asyncio.create_task(self.delayed.run(), name="delayed")

    async def _run_feed(self) -> None:
        from quote_runtime.exits import EXIT_CONFIG

        from .feeds.redis_edge import FeedMisconfigured

        try:
            await self.feed.run()
        except asyncio.CancelledError:
            raise
        except FeedMisconfigured as exc:
            log.error("cannot use REDIS_URL: %s; stopping", exc,
                      extra={"event": "fatal", "reason": str(exc)})
            self._fail(EXIT_CONFIG)
        except Exception:
            # Serving a feed that will never come back helps no one: end the process, so
            # the supervisor (or the orchestrator) starts a fresh one.
            log.exception("the feed task failed; stopping", extra={"event": "fatal"})
            self._fail(1)

    def _fail(self, exit_code: int) -> None:
        self.hub.set_feed("stale")
        self.exit_code = exit_code
        if self.on_fatal is not None:
            self.on_fatal()

    async def stop(self) -> None:
        await self.registry.stop()
        for task in (self._feed_task, self._delayed_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        for tier in self.tiers.values():
            await tier.hub.aclose()
        await self.feed.aclose()
        await self.tape.aclose()


def engine_of(connection: HTTPConnection) -> Engine:
    """The engine of the app serving this request or websocket."""
    engine: Engine = connection.app.state.engine
    return engine
