"""Peer: a server on the websockets library, fanning out with websockets.broadcast().

Written as the websockets docs' broadcast pattern ("Broadcasting" in the topics): a set
of connections, each handler waits for its connection to close, and one loop relays
every Redis message to all of them with `broadcast()`, which writes without waiting and
skips a connection whose buffer is over its high-water mark. Library defaults otherwise
(permessage-deflate is offered; the benchmark's client does not accept it).

    python bench/peers/websockets_app.py --port 8002 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio

import redis.asyncio as redis
from websockets.asyncio.server import ServerConnection, broadcast, serve

CONNECTIONS: set[ServerConnection] = set()


async def handler(websocket: ServerConnection) -> None:
    CONNECTIONS.add(websocket)
    try:
        await websocket.wait_closed()
    finally:
        CONNECTIONS.remove(websocket)


async def main(host: str, port: int, redis_url: str, channel: str) -> None:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    async with serve(handler, host, port):
        print(f"ready on ws://{host}:{port}", flush=True)
        async for message in pubsub.listen():
            if message["type"] == "message":
                broadcast(CONNECTIONS, '{"type":"quotes","quotes":' + message["data"].decode() + "}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--channel", default="quotes")
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port, args.redis, args.channel))
