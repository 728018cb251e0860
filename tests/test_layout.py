"""The partition layout (sans I/O): stable, one slot per partition, spread over a cluster."""

from __future__ import annotations

import zlib

import pytest
from redis.crc import key_slot

from quote_bus.layout import Layout
from quote_bus.settings import RedisSettings
from quote_runtime.settings import ConfigError


def test_a_symbol_always_lands_in_the_same_partition() -> None:
    layout = Layout()
    # CRC-32, the same on every host and Python: pinned so a change cannot slip through.
    assert [layout.partition(s) for s in ("OGDC", "KSE100", "HBL")] == [9, 0, 6]
    assert layout.partition("OGDC") == zlib.crc32(b"OGDC") % 16
    assert Layout(partitions=1).partition("OGDC") == 0


def test_a_partitions_keys_and_channels_share_one_slot() -> None:
    layout = Layout("quotes", 16)
    for p in range(16):
        names = [layout.channel(p), layout.latest(p), layout.seq(p), layout.probe(p, "abc")]
        assert len({key_slot(n.encode()) for n in names}) == 1, names
    assert (layout.channel(3), layout.latest(3), layout.seq(3), layout.probe(3, "n1")) == (
        "quotes:{3}", "quotes:{3}:latest", "quotes:{3}:seq", "quotes:{3}:probe:n1")
    assert layout.legacy_latest() == "quotes:latest"


def test_the_default_partitions_reach_every_primary_of_a_three_way_cluster() -> None:
    """redis-cli --cluster create gives three primaries equal slot ranges."""
    layout = Layout()
    thirds = {key_slot(layout.channel(p).encode()) * 3 // 16384 for p in range(16)}
    assert thirds == {0, 1, 2}


def test_split_keeps_each_partitions_order() -> None:
    layout = Layout(partitions=4)
    symbols = [f"S{i}" for i in range(20)] * 2
    parts = layout.split(symbols, str)
    assert sorted(s for part in parts.values() for s in part) == sorted(symbols)
    for p, part in parts.items():
        assert part == [s for s in symbols if layout.partition(s) == p]


@pytest.mark.parametrize(("env", "message"), [
    ({"REDIS_PARTITIONS": "0"}, "REDIS_PARTITIONS must be 1-1024"),
    ({"REDIS_PARTITIONS": "5000"}, "REDIS_PARTITIONS must be 1-1024"),
    ({"REDIS_PREFIX": "a{b}"}, "REDIS_PREFIX must be a non-empty name"),
])
def test_bad_layout_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisSettings.from_env(env)
