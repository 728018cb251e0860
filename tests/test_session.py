"""The per-client logic both transports share (service/session.py), without sockets: what
the sweeper's `check(now)` does about heartbeats, a stuck send and an expired token, and
the close, driven through a real Hub with a Session that only records what it was asked."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from service import protocol
from service.auth import Grant
from service.hub import Hub
from service.session import Session
from service.settings import Settings
from service.tiers import Tier

SETTINGS = Settings(heartbeat_s=5, send_timeout_s=2, token_grace_s=3)
T0 = 1000.0  # the loop time the session starts at
NO_TOKEN = Grant()  # ANONYMOUS=realtime: everything, never expires


class Probe(Session):
    """A Session whose transport only counts wakes and the sends it had to give up."""

    __slots__ = ("abandoned", "wakes")

    def __init__(self, grant: Grant | None = NO_TOKEN) -> None:
        super().__init__(Tier(Hub(max_symbols=10)), SETTINGS, grant, now=T0)
        self.wakes = 0
        self.abandoned: list[asyncio.Task[None]] = []

    @property
    def peer(self) -> str:
        return "192.0.2.7:5000"

    def wake(self) -> None:
        self.wakes += 1

    def _abandon(self, sender: asyncio.Task[None]) -> None:
        self.abandoned.append(sender)

    def due(self) -> list[dict[str, Any]]:
        """The frames due, as JSON (and so no longer due)."""
        return [orjson.loads(f if isinstance(f, str) else f.text) for f in self.outbox.take()]


def test_joining_queues_the_welcome_and_the_hub_knows_it() -> None:
    session = Probe()
    session.join()
    assert session in session.hub.members
    welcome, status = session.due()  # the feed is stale until the hub hears it
    assert welcome["type"] == "welcome" and welcome["heartbeat_s"] == 5
    assert (status["type"], status["feed"]) == ("status", "stale")


def test_a_heartbeat_comes_after_heartbeat_s_of_silence_only() -> None:
    session = Probe()
    session.check(T0 + SETTINGS.heartbeat_s - 0.1)
    assert not session.outbox and session.wakes == 0
    session.check(T0 + SETTINGS.heartbeat_s)
    assert [f["type"] for f in session.due()] == ["heartbeat"] and session.wakes == 1
    # Whatever was written meanwhile, even where the session did not see it (a direct
    # write takes from the outbox), counts as not silent.
    session.reply(protocol.pong(1, 1))
    session.due()
    session.check(T0 + 2 * SETTINGS.heartbeat_s)  # taken since the last look: dated now
    assert not session.outbox
    session.check(T0 + 3 * SETTINGS.heartbeat_s - 0.1)
    assert not session.outbox
    session.check(T0 + 3 * SETTINGS.heartbeat_s)
    assert [f["type"] for f in session.due()] == ["heartbeat"]


def test_no_heartbeat_while_something_is_due_or_a_close_is() -> None:
    session = Probe()
    session.reply(protocol.pong(1, 1))
    session.check(T0 + 10 * SETTINGS.heartbeat_s)
    assert [f["type"] for f in session.due()] == ["pong"]
    session.close(protocol.CLOSE_GOING_AWAY, "server shutting down")
    session.check(T0 + 20 * SETTINGS.heartbeat_s)
    assert not session.outbox


def test_a_write_written_by_the_sender_dates_the_silence() -> None:
    session = Probe()
    session.sending_since = T0 + 1
    session.check(T0 + 1 + SETTINGS.send_timeout_s)  # in flight, not stuck yet
    assert session.closing is None and not session.outbox
    session._sent(T0 + 2)
    session.check(T0 + 2 + SETTINGS.heartbeat_s - 0.1)
    assert not session.outbox
    session.check(T0 + 2 + SETTINGS.heartbeat_s)
    assert [f["type"] for f in session.due()] == ["heartbeat"]


async def test_a_send_stuck_past_the_timeout_closes_the_client_as_a_slow_consumer() -> None:
    session = Probe()
    sender = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    session._sender = sender
    try:
        session.sending_since = T0
        session.check(T0 + SETTINGS.send_timeout_s)
        assert session.closing is None and session.abandoned == []
        session.check(T0 + SETTINGS.send_timeout_s + 0.1)
        assert session.closing == (protocol.CLOSE_SLOW_CONSUMER, "slow consumer")
        assert session.abandoned == [sender] and session.sending_since is None
        assert session.hub.stats["slow_consumer_closed"] == 1
        session.check(T0 + 10 * SETTINGS.send_timeout_s)  # once
        assert session.abandoned == [sender] and session.hub.stats["slow_consumer_closed"] == 1
    finally:
        sender.cancel()


async def test_a_stuck_final_write_is_given_up_too_keeping_the_reason() -> None:
    """A close already due (draining) whose last write never ends: the client is still
    dropped, and the first reason stays."""
    session = Probe()
    sender = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    session._sender = sender
    try:
        session.close(protocol.CLOSE_GOING_AWAY, "server shutting down")
        session.sending_since = T0
        session.check(T0 + SETTINGS.send_timeout_s + 0.1)
        assert session.abandoned == [sender]
        assert session.closing == (protocol.CLOSE_GOING_AWAY, "server shutting down")
    finally:
        sender.cancel()


def test_no_sender_nothing_to_give_up() -> None:
    session = Probe()
    session.sending_since = T0
    session.check(T0 + 10 * SETTINGS.send_timeout_s)
    assert session.closing is None and session.abandoned == []


def test_an_expired_token_gets_an_error_then_the_close_after_the_grace() -> None:
    session = Probe(Grant(exp=time.time() - 1))
    session.check(T0 + 1)
    (error,) = session.due()
    assert error == {"type": "error", "code": "token_expired",
                     "message": "token expired: reconnect with a fresh one within 3s"}
    assert session.closing is None and session.wakes == 1
    session.check(T0 + 1 + SETTINGS.token_grace_s - 0.1)
    assert session.closing is None and not session.outbox
    session.check(T0 + 1 + SETTINGS.token_grace_s)
    assert session.closing == (protocol.CLOSE_POLICY, "token expired")
    assert session.hub.stats["auth_refused"] == 1


def test_a_fresh_token_within_the_grace_keeps_the_client() -> None:
    session = Probe(Grant(exp=time.time() - 1))
    session.check(T0)
    session.due()
    session.grant, session.expired_at = Grant(exp=time.time() + 3600), None  # as auth does
    session.check(T0 + 10 * SETTINGS.token_grace_s)
    assert session.closing is None


def test_a_token_that_has_not_expired_changes_nothing() -> None:
    session = Probe(Grant(exp=time.time() + 3600))
    session.check(T0 + 1)
    assert not session.outbox and session.closing is None and session.expired_at is None


def test_no_token_where_one_is_due_is_closed_after_the_grace_without_an_error() -> None:
    session = Probe(None)  # ANONYMOUS=deny: nothing until a token comes
    session.check(T0)
    assert not session.outbox
    session.check(T0 + SETTINGS.token_grace_s)
    assert session.closing == (protocol.CLOSE_POLICY, "no token came")


def test_the_first_close_wins_and_an_overflow_closes_with_4008() -> None:
    session = Probe()
    session.overflow("64 control frames unsent")
    assert session.closing == (protocol.CLOSE_SLOW_CONSUMER, "slow consumer")
    assert session.wakes == 1
    session.close(protocol.CLOSE_GOING_AWAY, "server shutting down")
    assert session.closing == (protocol.CLOSE_SLOW_CONSUMER, "slow consumer")
    assert session.wakes == 1
