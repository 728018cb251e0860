"""The tape in Redis: the streams the publisher's script appends to, read with XREVRANGE
and XRANGE through a client of its own (any topology: in a cluster each symbol's stream
is on its partition's shard, and the cluster client routes by key)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from quote_bus import topology
from quote_bus.layout import Layout
from quote_bus.payload import decode_payload

from ..settings import Settings
from . import Entry, Priced, priced

log = logging.getLogger("service.tape")


class RedisTape:
    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url is not None
        self.layout: Layout = settings.layout
        # Its own client: reads of thousands of entries must not wait behind the feed's
        # probes, nor hold up the subscription.
        self.client = topology.connect(settings.redis_url, socket_connect_timeout=2,
                                       socket_timeout=5)

    async def back(self, symbol: str, end: str, count: int) -> list[Entry]:
        rows = await self.client.xrevrange(self.layout.tape(symbol), end, "-", count=count)
        return self._entries(symbol, rows)

    async def range(self, symbol: str, start: str = "-", count: int | None = None
                    ) -> list[Entry]:
        rows = await self.client.xrange(self.layout.tape(symbol), start, "+", count=count)
        return self._entries(symbol, rows)

    async def prices(self, symbol: str, at: str, count: int, *, back: bool = False
                     ) -> list[Priced]:
        key = self.layout.tape(symbol)
        rows: Any = await (self.client.xrevrange(key, at, "-", count=count) if back
                           else self.client.xrange(key, at, "+", count=count))
        found = (priced(id.decode(), fields.get(b"q", b"")) for id, fields in rows)
        return [p for p in found if p is not None]

    async def window(self, starts: Mapping[str, str], end: str, count: int
                     ) -> dict[str, list[Entry]]:
        symbols = list(starts)
        async with self.client.pipeline(transaction=False) as pipe:
            for symbol in symbols:
                pipe.xrange(self.layout.tape(symbol), starts[symbol], end, count=count)
            replies = await pipe.execute()
        return {s: self._entries(s, rows) for s, rows in zip(symbols, replies, strict=True)}

    def _entries(self, symbol: str, rows: Any) -> list[Entry]:
        entries = []
        for id, fields in rows:
            quotes, errors = decode_payload(fields.get(b"q", b""))
            if errors or len(quotes) != 1 or quotes[0].symbol != symbol:
                log.warning("skipped a bad entry %s on the tape of %s: %s", id.decode(), symbol,
                            "; ".join(errors) or "not one quote of this symbol")
                continue
            entries.append(Entry(id.decode(), quotes[0]))
        return entries

    async def release_idle(self) -> None:
        await topology.drop_idle(self.client)

    async def aclose(self) -> None:
        client: Any = self.client
        await client.aclose()
