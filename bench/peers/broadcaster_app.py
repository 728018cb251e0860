"""Peer: Starlette + encode/broadcaster on uvicorn, written as broadcaster's README does.

Run with uvicorn's defaults, as a Python user would first deploy it:

    REDIS_URL=redis://127.0.0.1:6379 uvicorn bench.peers.broadcaster_app:app --port 8001

Each client gets its own `broadcast.subscribe()` and a loop that sends every message it
receives, wrapped as the project's `{"type":"quotes","quotes":[...]}` frame (the message
is the publisher's JSON array, spliced as text, never decoded).

Changes from the README, all needed for it to deliver at all here:
- Starlette 1.x removed `on_startup`/`on_shutdown`; the connect/disconnect go in
  `lifespan=` instead.
- broadcaster 0.3.1's Redis backend sets its listener's "ready" event *before* it sends
  SUBSCRIBE; the listener wakes during that await, finds redis-py 8's PubSub not yet
  subscribed, so `listen()` ends at once, the event is cleared and nothing is ever
  delivered. Here that happened on every start (the held subscription below was
  expected to be enough; measured, it was not). Workaround: a three-line
  backend subclass, passed through Broadcast's public `backend=` argument, that sets
  "ready" after SUBSCRIBE.
- Concurrent first subscribers of a channel overwrite each other's queues, so some
  clients silently get nothing (seen here with redis-py 8.1). Workaround: hold one drained
  subscription from startup, so no client is ever the channel's first subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import anyio
from broadcaster import Broadcast
from broadcaster._backends.redis import RedisBackend
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

CHANNEL = os.environ.get("REDIS_CHANNEL", "quotes")


class SubscribedRedisBackend(RedisBackend):
    """Workaround: ready only once SUBSCRIBE went out (see the module docstring)."""

    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)
        self._ready.set()


broadcast = Broadcast(backend=SubscribedRedisBackend(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")))


async def quotes_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    async with anyio.create_task_group() as task_group:

        async def run_receiver() -> None:
            async for _ in websocket.iter_text():
                pass
            task_group.cancel_scope.cancel()

        task_group.start_soon(run_receiver)
        await quotes_sender(websocket)


async def quotes_sender(websocket: WebSocket) -> None:
    async with broadcast.subscribe(channel=CHANNEL) as subscriber:
        async for event in subscriber:
            await websocket.send_text('{"type":"quotes","quotes":' + event.message + "}")


async def _drain(subscriber: object) -> None:
    async for _ in subscriber:  # type: ignore[attr-defined]
        pass


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    await broadcast.connect()
    # The workaround (see the module docstring): one subscription for the app's lifetime.
    async with broadcast.subscribe(channel=CHANNEL) as keeper:
        drain = asyncio.create_task(_drain(keeper))
        try:
            yield
        finally:
            drain.cancel()
    await broadcast.disconnect()


app = Starlette(routes=[WebSocketRoute("/ws", quotes_ws)], lifespan=lifespan)
