"""Publishing quotes to Redis: one Lua script call per batch, so a batch is all or nothing.

Batches above MAX_BATCH go out as several calls, each atomic on its own. For each quote
the script takes the symbol's next `seq` from a hash (HINCRBY, so two publishers never
hand out the same version), stores the quote with its seq as the
symbol's latest state, and after the loop PUBLISHes the whole batch as one JSON array.
The JSON is spliced as text in Lua rather than re-encoded with cjson, so every number
reaches the service exactly as orjson wrote it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, TimeoutError

from service import topology
from service.quote import Quote, decode_payload, now_ms
from service.settings import Settings

log = logging.getLogger("publisher.redis")

# Quotes per script call. Redis runs a script without interleaving other commands, so
# a bound keeps any one call short (500 quotes is well under a millisecond of work).
MAX_BATCH = 500

# KEYS[1] = seq hash, KEYS[2] = latest hash
# ARGV[1] = channel, then per quote: symbol, seq floor, quote JSON without seq
# Returns {floor_bumps, seq1, seq2, ...}.
# Redis never rolls a script back, so everything that could fail half-way (a key of the
# wrong type) is checked before the first write: a batch is published whole or not at all.
PUBLISH_SCRIPT = """
for _, key in ipairs(KEYS) do
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'hash' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a hash')
  end
end
local out, seqs = {}, {}
local bumps = 0
local n = 0
for i = 2, #ARGV, 3 do
  local symbol, floor, body = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local seq = redis.call('HINCRBY', KEYS[1], symbol, 1)
  if seq <= floor then
    seq = floor + 1
    redis.call('HSET', KEYS[1], symbol, seq)
    bumps = bumps + 1
  end
  local quote = string.sub(body, 1, -2) .. ',"seq":' .. string.format('%d', seq) .. '}'
  redis.call('HSET', KEYS[2], symbol, quote)
  n = n + 1
  out[n] = quote
  seqs[n + 1] = seq
end
seqs[1] = bumps
redis.call('PUBLISH', ARGV[1], '[' .. table.concat(out, ',') .. ']')
return seqs
"""


def connect(url: str, *, retries: int = 3, backoff_cap_s: float = 1.0) -> aioredis.Redis:
    """from_url gets no retries unless given `retry=` (FIELD-NOTES); these cover a blip or
    a quick restart, and the callers' own back-off covers longer outages."""
    return topology.connect(
        url,
        retry=Retry(ExponentialWithJitterBackoff(cap=backoff_cap_s, base=0.05), retries),
        retry_on_error=[ConnectionError, TimeoutError],
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=30,
    )


def wire_body(quote: Quote) -> bytes:
    """The quote's JSON without seq: the script appends the seq it assigns."""
    data = quote.to_dict()
    data.pop("seq", None)
    return orjson.dumps(data)


class RedisSink:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._channel = settings.redis_channel
        self._keys = [settings.redis_seq_key, settings.redis_latest_key]
        self._script = redis.register_script(PUBLISH_SCRIPT)
        self._heartbeat_channel = settings.redis_heartbeat_channel
        # Highest seq seen per symbol: the floor that keeps seq rising if Redis restarts
        # with empty memory while we run.
        self._last_seq: dict[str, int] = {}
        # The last quote published per symbol: what a Redis that lost its memory gets back.
        self._latest: dict[str, Quote] = {}

    async def publish(self, quotes: Sequence[Quote]) -> list[Quote]:
        published: list[Quote] = []
        for start in range(0, len(quotes), MAX_BATCH):
            chunk = quotes[start : start + MAX_BATCH]
            out, lost = await self._publish_chunk(chunk)
            published.extend(out)
            if lost:
                await self.restore(exclude={q.symbol for q in chunk})
        return published

    async def restore(self, exclude: Collection[str] = ()) -> None:
        """Write back every symbol's last quote (seq still rising), so a Redis that came back
        empty holds the full board again, not only the symbols that ticked since."""
        board = [q for s, q in self._latest.items() if s not in exclude]
        for start in range(0, len(board), MAX_BATCH):
            await self._publish_chunk(board[start : start + MAX_BATCH])
        if board:
            log.warning("restored the latest state of %d symbols in Redis", len(board))

    async def resume(self) -> list[Quote]:
        """The latest state Redis holds (from an earlier run), remembered as our own so
        seq continues and a lost Redis can be refilled with it."""
        quotes: list[Quote] = []
        for payload in (await self._redis.hgetall(self._keys[1])).values():
            good, _ = decode_payload(payload)
            quotes += good
        for quote in quotes:
            self._latest[quote.symbol] = quote
            self._last_seq[quote.symbol] = max(self._last_seq.get(quote.symbol, 0), quote.seq or 0)
        return quotes

    async def heartbeat(self) -> None:
        """Tell the services the publisher is alive even when no price moves."""
        await self._redis.publish(self._heartbeat_channel, str(now_ms()))

    async def _publish_chunk(self, quotes: Sequence[Quote]) -> tuple[list[Quote], bool]:
        """Returns the quotes with their seq, and whether Redis had lost state."""
        if not quotes:
            return [], False
        args: list[bytes | str | int] = [self._channel]
        for quote in quotes:
            args += [quote.symbol, self._last_seq.get(quote.symbol, 0), wire_body(quote)]
        reply = await self._script(keys=self._keys, args=args)
        bumps, seqs = int(reply[0]), [int(s) for s in reply[1:]]
        if bumps:
            log.warning(
                "Redis had lost %d symbols' seq (restarted with empty memory?); "
                "continued from the last seq this publisher saw", bumps,
            )
        out = [quote.with_seq(seq) for quote, seq in zip(quotes, seqs, strict=True)]
        for quote in out:
            self._last_seq[quote.symbol] = quote.seq  # type: ignore[assignment]
            self._latest[quote.symbol] = quote
        return out, bumps > 0
