"""Publishing quotes to Redis: one Lua script call per partition of a batch, each all or nothing.

A batch is split by partition (quote_bus/layout.py) and each part goes out as one
script call on that partition's keys, so in a Redis Cluster every call touches one slot;
parts above MAX_BATCH go out as several calls. For each quote the script takes the
symbol's next `seq` from the partition's seq hash (HINCRBY, so two publishers never hand
out the same version), stores the quote with its seq as the symbol's latest state, appends
it to the symbol's tape (a Redis Stream, trimmed by time and length), and after the loop
publishes the part as one JSON array on the partition's channel: SPUBLISH
in a cluster, so the message stays on its shard, PUBLISH elsewhere.
The JSON is spliced as text in Lua rather than re-encoded with cjson, so every number
reaches the service exactly as orjson wrote it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, NoScriptError, RedisError, TimeoutError

from quote_bus import topology
from quote_bus.payload import decode_payload
from quote_bus.refusal import is_refusal
from quote_bus.settings import RedisSettings
from quote_core.quote import Quote
from quote_sim.sink import SinkRefused

log = logging.getLogger("publisher.redis")

# Quotes per script call. Redis runs a script without interleaving other commands, so
# a bound keeps any one call short (500 quotes is well under a millisecond of work).
MAX_BATCH = 500

# KEYS[1] = seq hash, KEYS[2] = latest hash, KEYS[3] = channel (a key too, for the slot),
# KEYS[4] = the partition's tape prefix (each symbol's tape is the prefix + symbol: one
# stream per symbol, all in the partition's slot through its hash tag)
# ARGV[1] = PUBLISH or SPUBLISH, ARGV[2] = tape length cap per symbol, ARGV[3] = tape
# retention in ms, then per quote: symbol, seq floor, quote JSON without seq
# Returns {floor_bumps, seq1, seq2, ...}.
# Redis never rolls a script back, so everything that could fail half-way (a key of the
# wrong type) is checked before the first write: a batch is published whole or not at all.
# The tape's entry ids are Redis's clock (XADD *), so it is trimmed by time with MINID on
# that same clock.
PUBLISH_SCRIPT = """
local function check(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= want and t ~= 'none' then
    return 'WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. want
  end
end
for i = 1, 2 do
  local bad = check(KEYS[i], 'hash')
  if bad then return redis.error_reply(bad) end
end
local tapes = {}
for i = 4, #ARGV, 3 do
  local tape = KEYS[4] .. ARGV[i]
  if not tapes[tape] then
    local bad = check(tape, 'stream')
    if bad then return redis.error_reply(bad) end
    tapes[tape] = true
  end
end
local out, seqs = {}, {}
local bumps = 0
local n = 0
local maxlen = ARGV[2]
for i = 4, #ARGV, 3 do
  local symbol, floor, body = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local seq = redis.call('HINCRBY', KEYS[1], symbol, 1)
  if seq <= floor then
    seq = floor + 1
    redis.call('HSET', KEYS[1], symbol, seq)
    bumps = bumps + 1
  end
  local quote = string.sub(body, 1, -2) .. ',"seq":' .. string.format('%d', seq) .. '}'
  redis.call('HSET', KEYS[2], symbol, quote)
  redis.call('XADD', KEYS[4] .. symbol, 'MAXLEN', '~', maxlen, '*', 'q', quote)
  n = n + 1
  out[n] = quote
  seqs[n + 1] = seq
end
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[3])
for tape in pairs(tapes) do
  redis.call('XTRIM', tape, 'MINID', '~', string.format('%d', cutoff))
end
seqs[1] = bumps
redis.call(ARGV[1], KEYS[3], '[' .. table.concat(out, ',') .. ']')
return seqs
"""


class RedisRefused(SinkRefused):
    """Redis said no before this publisher ever published (a wrong password or user, a
    database that does not exist, a command or key its ACL does not allow): retrying
    cannot fix that, so the publisher stops, as the service does (exit 3), instead of
    retrying for ever. After a first publish a refusal is retried (a password being
    rotated), as the service does after its first subscription."""


def connect(url: str, *, retries: int = 3, backoff_cap_s: float = 1.0) -> topology.Client:
    """from_url gets no retries unless given `retry=` (redis-py 8's asyncio Connection:
    Retry(NoBackoff(), 0) by default); these cover a blip or a quick restart, and the
    callers' own back-off covers longer outages. A frozen server holds each try for
    socket_timeout: short, so a failover is followed in seconds."""
    return topology.connect(
        url,
        retry=Retry(ExponentialWithJitterBackoff(cap=backoff_cap_s, base=0.05), retries),
        retry_on_error=[ConnectionError, TimeoutError],
        socket_connect_timeout=2.0,
        socket_timeout=2.0,
        health_check_interval=30,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def script_call(settings: RedisSettings, p: int, command: str,
                quotes: Sequence[tuple[str, int, bytes]]) -> tuple[list[str], list[bytes | str | int]]:
    """PUBLISH_SCRIPT's keys and arguments for partition `p`'s (symbol, seq floor, body)s."""
    layout = settings.layout
    keys = [layout.seq(p), layout.latest(p), layout.channel(p), layout.tape_prefix(p)]
    args: list[bytes | str | int] = [command, settings.tape_max_len,
                                     int(settings.tape_retention_s * 1000)]
    for triple in quotes:
        args += triple
    return keys, args


def wire_body(quote: Quote) -> bytes:
    """The quote's JSON without seq: the script appends the seq it assigns."""
    data = quote.to_dict()
    data.pop("seq", None)
    return orjson.dumps(data)


class RedisSink:
    def __init__(self, redis: topology.Client, settings: RedisSettings) -> None:
        self._redis = redis
        self._layout = settings.layout
        self._settings = settings
        self._cluster = isinstance(redis, RedisCluster)
        self._command = "SPUBLISH" if self._cluster else "PUBLISH"
        self._script = redis.register_script(PUBLISH_SCRIPT)
        # One cluster call at a time: redis-py 8.1's async cluster client breaks connections
        # it is setting up under concurrent calls (the heartbeat runs beside publishing).
        self._cluster_lock = asyncio.Lock()
        # Highest seq seen per symbol: the floor that keeps seq rising if Redis restarts
        # with empty memory while we run, or a promoted replica lacks the last writes.
        self._last_seq: dict[str, int] = {}
        # The last quote published per symbol: what a Redis that lost its memory gets back.
        self._latest: dict[str, Quote] = {}
        self._published = False

    async def publish(self, quotes: Sequence[Quote]) -> list[Quote]:
        """The quotes with their seq, in the order given. RedisRefused for a refusal before
        any publish ever went through."""
        try:
            out, lost = await self._publish(quotes)
            if lost:
                await self.restore(exclude={q.symbol for q in quotes})
        except Exception as exc:
            self._raise_refused(exc)
            raise
        self._published = self._published or bool(out)
        return out

    def _raise_refused(self, exc: Exception) -> None:
        """RedisRefused if retrying cannot fix `exc` (quote_bus/refusal.py decides what a
        refusal is, for the service and the publisher alike). redis-py's cluster
        client raises its own exception with the refusal as the cause."""
        cause: BaseException | None = exc
        while cause is not None and not self._published:
            if is_refusal(cause):
                raise RedisRefused(str(cause)) from exc
            cause = cause.__cause__

    async def restore(self, exclude: Collection[str] = ()) -> None:
        """Write back every symbol's last quote (seq still rising), so a Redis that came back
        empty holds the full board again, not only the symbols that ticked since."""
        board = [q for s, q in self._latest.items() if s not in exclude]
        await self._publish(board)
        if board:
            log.warning("restored the latest state of %d symbols in Redis", len(board))

    async def resume(self) -> list[Quote]:
        """The latest state Redis holds (from an earlier run), remembered as our own so
        seq continues and a lost Redis can be refilled with it. RedisRefused as `publish`.

        Also read: the single hash of the layout before partitions, and every partition of
        the count the last publisher recorded, so an upgrade or a changed REDIS_PARTITIONS
        carries every seq on. A symbol found where this layout does not put it is removed
        from there, so no service reads it twice."""
        try:
            return await self._resume()
        except Exception as exc:
            self._raise_refused(exc)
            raise

    async def _resume(self) -> list[Quote]:
        layout = self._layout
        (recorded,) = await self._each([("HGET", layout.record(), "partitions")])
        before = int(recorded) if recorded and recorded.isdigit() else layout.partitions
        found = [(None, layout.legacy_latest()),
                 *((p, layout.latest(p)) for p in range(max(before, layout.partitions)))]
        quotes: list[Quote] = []
        misplaced: list[tuple[str, str, bytes]] = []
        for (p, key), held in zip(found, await self._each([("HGETALL", k) for _, k in found]),
                                  strict=True):
            for symbol, payload in held.items():
                good, _ = decode_payload(payload)
                quotes += good
                if p is not None and layout.partition(symbol.decode()) != p:
                    misplaced += [("HDEL", key, symbol), ("HDEL", layout.seq(p), symbol)]
        for quote in sorted(quotes, key=lambda q: q.seq or 0):
            self._latest[quote.symbol] = quote
            self._last_seq[quote.symbol] = max(self._last_seq.get(quote.symbol, 0), quote.seq or 0)
        if misplaced:
            moved = {_text(command[2]) for command in misplaced}
            log.warning("REDIS_PARTITIONS went from %d to %d: moving %d symbols' state to "
                        "their new partitions", before, layout.partitions, len(moved))
            # Their new partitions have no seq for them yet: the floor is expected to act.
            await self._publish([self._latest[symbol] for symbol in sorted(moved)
                                 if symbol in self._latest], moving=True)
            await self._each(misplaced)
        await self._each([("HSET", layout.record(), "partitions", str(layout.partitions))])
        return list(self._latest.values())

    async def heartbeat(self) -> None:
        """Tell the services the publisher is alive even when no price moves: an empty
        batch on every partition's channel, so in a cluster each shard is vouched for."""
        await self._each([(self._command, self._layout.channel(p), "[]")
                          for p in range(self._layout.partitions)])

    async def _each(self, commands: Sequence[tuple[str | bytes, ...]]) -> list[Any]:
        """Commands on different partitions in one pipeline: one round trip on one server;
        in a cluster each node's commands in one round trip, the nodes at once. Every
        command is tried; the first failure is raised after."""
        if self._cluster:
            async with self._cluster_lock, self._redis.pipeline() as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
            return list(replies)
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute()

    async def _cluster_scripts(self, calls: Sequence[tuple[list[str], list[bytes | str | int]]]
                               ) -> list[Any]:
        """The script calls in one cluster pipeline: each node gets its partitions' calls in
        one round trip, the nodes at once, so a batch reaches every shard together (one
        call after another took 4 ms for 16 partitions, and the service then fanned the
        late ones out a FANOUT_INTERVAL_MS later). A node without the script (restarted,
        or a replica just promoted: the script cache is not replicated) gets it loaded,
        and only its calls are sent again. A failure is returned in its call's place."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            try:
                async with self._redis.pipeline() as pipe:
                    for i in todo:
                        keys, args = calls[i]
                        pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
                    done = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                done = [exc] * len(todo)
            for i, reply in zip(todo, done, strict=True):
                replies[i] = reply
            todo = [i for i in todo if isinstance(replies[i], NoScriptError)]
            if not todo or attempt:
                break
            await self._redis.script_load(PUBLISH_SCRIPT)  # on every primary
        return replies

    async def _publish(self, quotes: Sequence[Quote], moving: bool = False
                       ) -> tuple[list[Quote], bool]:
        """Returns the quotes with their seq in the order given, and whether Redis had lost
        state. One script call per partition's part (split again above MAX_BATCH)."""
        calls: list[tuple[list[str], list[bytes | str | int], list[int]]] = []
        by_partition = self._layout.split(range(len(quotes)), lambda i: quotes[i].symbol)
        for p, part in by_partition.items():
            for start in range(0, len(part), MAX_BATCH):
                chunk = part[start : start + MAX_BATCH]
                keys, args = script_call(self._settings, p, self._command, [
                    (quotes[i].symbol, self._last_seq.get(quotes[i].symbol, 0),
                     wire_body(quotes[i])) for i in chunk])
                calls.append((keys, args, chunk))
        # Every partition is tried, even after one failed: a shard that is down (a cluster
        # primary failing over) does not hold back the others. The failure is raised after,
        # so the caller retries the batch; what went out is remembered, so seq still rises.
        replies: list[Any]
        if self._cluster:
            async with self._cluster_lock:
                replies = await self._cluster_scripts([(keys, args) for keys, args, _ in calls])
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args, _ in calls:
                    await self._script(keys=keys, args=args, client=pipe)  # type: ignore[arg-type]
                replies = await pipe.execute(raise_on_error=False)
        bumps = 0
        seqs: list[int | None] = [None] * len(quotes)
        failure: BaseException | None = None
        for (_, _, chunk), reply in zip(calls, replies, strict=True):
            if isinstance(reply, BaseException):
                failure = failure or reply
                continue
            bumps += int(reply[0])
            for i, seq in zip(chunk, reply[1:], strict=True):
                seqs[i] = int(seq)
        out = [quote.with_seq(seq) for quote, seq in zip(quotes, seqs, strict=True)
               if seq is not None]
        for quote in out:
            self._last_seq[quote.symbol] = quote.seq  # type: ignore[assignment]
            self._latest[quote.symbol] = quote
        if failure is not None:
            raise failure
        if moving:
            return out, False
        if bumps:
            log.warning(
                "Redis had lost %d symbols' seq (restarted with empty memory, or a replica "
                "promoted before it had them); continued from the last seq this publisher saw",
                bumps,
            )
        return out, bumps > 0
