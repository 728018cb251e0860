"""REDIS_URL's three forms, read before anything connects (sans I/O), and the one piece of
redis-py's internals the Sentinel support leans on."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedConnection
from redis.exceptions import AuthenticationError

from quote_bus import topology
from quote_bus.settings import RedisSettings
from quote_bus.topology import cluster, sentinel
from quote_runtime.settings import ConfigError
from tests.redis_server import redis_server


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0", "rediss://user:pw@host:6380/2", "unix:///run/redis.sock",
    "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/quotes",
    "rediss+sentinel://:pw@s1:26379/quotes/3?sentinel_password=spw",
    "redis+cluster://10.0.0.1:7000,10.0.0.2:7000", "rediss+cluster://u:p@cfg.example:6379",
])
def test_good_urls_pass(url: str) -> None:
    RedisSettings(redis_url=url).check()


@pytest.mark.parametrize(("url", "message"), [
    ("http://127.0.0.1:6379", "must start with redis://, rediss://, unix://, redis+sentinel://"),
    ("redis://127.0.0.1:abc/0", "is not a valid Redis URL"),
    ("redis+sentinel://10.0.0.1:26379", "needs the master's name after the sentinels"),
    ("redis+sentinel://10.0.0.1/quotes", "sentinel address '10.0.0.1' is not HOST:PORT"),
    ("redis+sentinel://h:1/quotes/x", "the database after the master's name must be a number"),
    ("redis+sentinel://h:1/quotes?password=x", "unknown option(s) password"),
    ("redis+cluster://h:1/0", "a cluster has only database 0"),
    ("redis+cluster://h:1,h", "node address 'h' is not HOST:PORT"),
    ("redis+cluster://h:1?x=1", "no options are read"),
])
def test_bad_urls_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RedisSettings(redis_url=url).check()
    assert message in str(caught.value) and str(caught.value).startswith("REDIS_URL ")


def test_a_sentinel_url_names_sentinels_master_db_and_both_passwords() -> None:
    spec = sentinel.parse("rediss+sentinel://app:s%40cret@s1:26379,[::1]:26380/prices/2"
                          "?sentinel_password=watch")
    assert spec.sentinels == [("s1", 26379), ("::1", 26380)]
    assert (spec.master, spec.db, spec.username, spec.password) == ("prices", 2, "app", "s@cret")
    assert spec.sentinel_password == "watch" and spec.ssl


def test_a_cluster_url_names_its_startup_nodes() -> None:
    spec = cluster.parse("redis+cluster://:pw@n1:7000,n2:7001")
    assert spec.nodes == [("n1", 7000), ("n2", 7001)]
    assert (spec.username, spec.password, spec.ssl) == (None, "pw", False)
    assert topology.sharded("redis+cluster://n1:7000")
    assert not topology.sharded("redis+sentinel://n1:26379/m")
    assert not topology.sharded("redis://n1:6379")


def test_logs_never_show_credentials() -> None:
    assert topology.shown("redis+sentinel://u:pw@s1:26379,s2:26379/m") == \
        "redis+sentinel://s1:26379,s2:26379/m"


async def test_sentinel_connections_ask_the_sentinels_on_every_reconnect() -> None:
    """quote_bus/topology/sentinel.py overrides SentinelManagedConnection._connect, a private
    method, to ask for the primary on each reconnect (redis/redis-py#3874). If an upgrade
    renames what it relies on, this fails instead of failovers going quietly wrong."""
    assert callable(getattr(SentinelManagedConnection, "_connect", None))
    assert callable(getattr(SentinelConnectionPool, "get_master_address", None))
    client = topology.connect("redis+sentinel://127.0.0.1:1/m")
    try:
        assert issubclass(client.connection_pool.connection_class, SentinelManagedConnection)
        assert client.connection_pool.connection_class.__module__ == sentinel.__name__
        assert client.connection_pool.is_master
    finally:
        await client.aclose()


async def test_a_cluster_that_refuses_us_everywhere_is_a_refusal_not_an_outage() -> None:
    """Every startup node says no (wrong password): the feed must see the refusal, which is
    fatal before it ever subscribed, not a ConnectionError it would retry for ever."""
    with redis_server(args=["--requirepass", "right-password"]) as server:
        spec = cluster.parse(f"redis+cluster://:wrong@127.0.0.1:{server.port}")
        with pytest.raises(AuthenticationError):
            await cluster.slot_owners(spec, [], 1.0)
