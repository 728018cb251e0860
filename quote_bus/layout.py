"""Where each symbol lives in Redis: REDIS_PARTITIONS partitions, a stable hash of the symbol.

One layout for every topology (sans I/O). A partition's channel, latest-state hash, seq
hash and probe channels share one hash tag, so in a Redis Cluster all of them sit in one
slot: the publisher's script touches one slot per call and a partition moves between
nodes as a whole. On a single Redis or under Sentinel the same names are used, so a
deployment can move to a cluster without renaming anything.

    {prefix}:{P}            the partition's channel (SPUBLISH in a cluster, else PUBLISH):
                            a JSON array of quotes, `[]` as the publisher's heartbeat
    {prefix}:{P}:latest     hash: symbol -> the latest quote JSON, with seq
    {prefix}:{P}:seq        hash: symbol -> the last seq handed out
    {prefix}:{P}:probe:ID   channel: a service instance's own liveness probe
    {prefix}:{P}:tape:SYM   stream: every quote of SYM published (service/tape)
    {prefix}:layout         hash: `partitions`, the count the publisher last ran with
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Layout:
    prefix: str = "quotes"
    partitions: int = 16

    def partition(self, symbol: str) -> int:
        """CRC-32, not hash(): the same on every process, host and Python version."""
        return zlib.crc32(symbol.encode()) % self.partitions

    def channel(self, p: int) -> str:
        return f"{self.prefix}:{{{p}}}"

    def latest(self, p: int) -> str:
        return f"{self.prefix}:{{{p}}}:latest"

    def seq(self, p: int) -> str:
        return f"{self.prefix}:{{{p}}}:seq"

    def tape(self, symbol: str) -> str:
        """The symbol's tape, in its partition's slot: one stream per symbol, so the quotes
        after seq S are its last (latest seq - S) entries, found without a scan."""
        return f"{self.prefix}:{{{self.partition(symbol)}}}:tape:{symbol}"

    def tape_prefix(self, p: int) -> str:
        return f"{self.prefix}:{{{p}}}:tape:"

    def probe(self, p: int, node: str) -> str:
        return f"{self.prefix}:{{{p}}}:probe:{node}"

    def record(self) -> str:
        """Hash: the publisher notes its REDIS_PARTITIONS here, so the next one, started
        with another count, finds the state of every partition the last one wrote."""
        return f"{self.prefix}:layout"

    def legacy_latest(self) -> str:
        """The single-hash layout before partitions; read once by a publisher upgrading."""
        return f"{self.prefix}:latest"

    def split(self, items: Iterable[T], symbol_of: Callable[[T], str]) -> dict[int, list[T]]:
        """Items by partition, each partition's in their original order."""
        out: dict[int, list[T]] = {}
        for item in items:
            out.setdefault(self.partition(symbol_of(item)), []).append(item)
        return out

