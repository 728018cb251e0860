"""One client, whatever carries it: what a websocket (connection.py) and an SSE stream
(sse.py) have in common, written once.

A `Session` is the hub's subscriber: it holds the outbox the hub fills, the grant its token
gave and that token's expiry, when it last wrote and whether a write is stuck, and the
close that is due. `check(now)`, called by the registry's sweeper about every second, is
all its timekeeping: the token's expiry (an error at once, the close after TOKEN_GRACE_S),
heartbeats after HEARTBEAT_S of silence, and a write stuck past SEND_TIMEOUT_S. No timer
per client or per frame: at a hundred thousand frames a second those cost a third of the
process (bench/).

The transports subclass it and add what only they know: how to write what is due
(`wake`), how a stalled write is given up (`_abandon`), how a client renews its token
(`RENEW`), and how their lifetime runs. Both write through one task at a time, the
session's `_sender`, which waits for `wake` on `_due()` when nothing is due.
"""

from __future__ import annotations

import asyncio
import logging
import time

from quote_core.quote import now_ms
from quote_runtime.node import NODE_ID

from . import protocol
from .auth import Grant
from .outbox import Outbox
from .protocol import Encoding, ProtocolError
from .settings import Settings
from .tiers import Tier
from .wire import Frame

log = logging.getLogger("service.session")


class Session:
    """One client's state as the hub, the sweeper and the registry see it (sans I/O: the
    transports do the writing)."""

    # Slots, a bare future instead of Events, and a sender task only while one is needed:
    # memory per client is what decides how many idle clients a process holds.
    __slots__ = ("_bad_encoding", "_sender", "_taken", "_waiter", "closing", "encoding",
                 "expired_at", "grant", "hub", "last_sent", "outbox", "sending_since",
                 "settings", "tier")

    # How the `token_expired` error tells the client to renew its token.
    RENEW = "reconnect with a fresh one"

    def __init__(self, tier: Tier, settings: Settings, grant: Grant | None,
                 now: float | None = None, *, encoding: str | None = None,
                 deflate: bool = False) -> None:
        self.use(tier)
        self.settings = settings
        # What the client may see (None: nothing yet, its token must come first), and
        # since when (loop time) its token has been expired.
        self.grant = grant
        self.expired_at: float | None = None
        # The encoding the client asked for (`?encoding=`; None: it did not ask, and its
        # welcome does not say). One it names wrongly: protocol 1, and an error after the
        # welcome. `deflate`: the websocket negotiated permessage-deflate.
        self._bad_encoding: ProtocolError | None = None
        self.encoding: Encoding | None = None
        if encoding is not None:
            try:
                self.encoding = protocol.parse_query_encoding(encoding)
            except ProtocolError as exc:
                self.encoding = "json"
                self._bad_encoding = exc
        self.outbox = Outbox(form=(self.encoding == "compact", deflate))
        # (code, reason) once the client is to be closed: the first reason wins.
        self.closing: tuple[int, str] | None = None
        self._waiter: asyncio.Future[None] | None = None
        # The task writing what could not be written at once (None: none runs).
        self._sender: asyncio.Task[None] | None = None
        # Since when (loop time) a write has been in flight, and when one last ended.
        self.sending_since: float | None = None
        self.last_sent = asyncio.get_running_loop().time() if now is None else now
        # outbox.frames_taken when last looked: writes the session does not see (the
        # websocket's direct ones, its group's lane) still date the last write.
        self._taken = 0

    @property
    def peer(self) -> str:
        """The client's address, for the log."""
        raise NotImplementedError

    @property
    def who(self) -> str:
        """The client as log lines name it."""
        return self.peer

    # Subscriber (hub.py)

    def wake(self) -> None:
        """Something is due in the outbox: write it, at once if the transport takes it."""
        raise NotImplementedError

    def overflow(self, reason: str) -> None:
        if self.closing is None:  # counted by the hub
            log.warning("closing %s as a slow consumer: %s", self.who, reason,
                        extra={"event": "client_closed", "code": protocol.CLOSE_SLOW_CONSUMER})
        self.close(protocol.CLOSE_SLOW_CONSUMER, "slow consumer")

    # What the service does with every client (sweeper, draining)

    def close(self, code: int, reason: str) -> None:
        """Close after what is already due; the first reason wins."""
        if self.closing is None:
            self.closing = (code, reason)
            self.outbox.leave_lane()
            self.wake()

    def check(self, now: float) -> None:
        """Called about every second by the sweeper: the token's expiry; a heartbeat after
        `heartbeat_s` of silence; a write stuck past `send_timeout_s` ends the client (the
        peer stopped reading: its buffers must not grow, nor its task live on)."""
        if self.closing is None:
            self._check_token(now)
        taken = self.outbox.frames_taken
        if taken != self._taken:  # something was written since the last look
            self._taken = taken
            self.last_sent = now
        since = self.sending_since
        if since is not None:
            if now - since > self.settings.send_timeout_s:
                self._stalled()
        elif (self.closing is None and not self.outbox
              and now - self.last_sent >= self.settings.heartbeat_s):
            self.outbox.put_control(protocol.heartbeat(now_ms()))
            self.last_sent = now
            self.wake()

    def _check_token(self, now: float) -> None:
        """A token that expired: an error at once, the close after TOKEN_GRACE_S unless a
        fresh one comes. No token at all (ANONYMOUS=deny): closed as soon."""
        grant = self.grant
        if grant is not None and (grant.exp is None or time.time() < grant.exp):
            return
        grace = self.settings.token_grace_s
        if self.expired_at is None:
            self.expired_at = now
            if grant is not None:
                self.reply(protocol.error(protocol.TOKEN_EXPIRED,
                                          f"token expired: {self.RENEW} within {grace:g}s"))
        elif now - self.expired_at >= grace:
            self.deny("token expired" if grant is not None else "no token came")

    def _stalled(self) -> None:
        """A write in flight past the send timeout: the client is closed as a slow
        consumer, and the transport gives the write up (`_abandon`)."""
        sender = self._sender
        if sender is None or sender.done():
            return
        self.hub.stats["slow_consumer_closed"] += 1
        log.warning("closing %s: a send took over %ss", self.who, self.settings.send_timeout_s,
                    extra={"event": "client_closed", "code": protocol.CLOSE_SLOW_CONSUMER})
        self.closing = self.closing or (protocol.CLOSE_SLOW_CONSUMER, "slow consumer")
        self.give_up()

    def give_up(self) -> None:
        """End a write in flight (a stalled one, or one the process cannot wait for as it
        stops: the close frame waits behind it): the client is closed, or aborted if even
        the close frame is not taken."""
        sender = self._sender
        if sender is not None and not sender.done():
            self.sending_since = None
            self._abandon(sender)

    def _abandon(self, sender: asyncio.Task[None]) -> None:
        """End the sender stuck in a write (and with it the connection)."""
        raise NotImplementedError

    # For the transports

    def use(self, tier: Tier) -> None:
        """Serve the client from this tier (service/tiers.py) and its hub, kept beside it
        because the fan-out reaches the hub on every frame."""
        self.tier = tier
        self.hub = tier.hub

    def join(self) -> None:
        """Join the hub and queue what every client starts with: welcome, then the feed's
        state if it is stale. The caller leaves the hub (`hub.remove`) however it ends."""
        self.hub.add(self)
        self.outbox.put_control(welcome(self.settings, self.tier.delay_s, self.encoding))
        if self._bad_encoding is not None:
            self.hub.stats[f"error_{self._bad_encoding.code}"] += 1
            self.outbox.put_control(self._bad_encoding.frame())
            self._bad_encoding = None
        self.hub.greet(self)

    def reply(self, frame: str | Frame) -> None:
        """Queue a frame for this client alone, and write it."""
        self.hub.queue_frame(self, frame)

    def deny(self, reason: str) -> None:
        """Close with 1008 (policy): a token refused or expired, or none where one is due."""
        self.hub.stats["auth_refused"] += 1
        log.warning("closing %s: %s", self.who, reason,
                    extra={"event": "client_closed", "code": protocol.CLOSE_POLICY})
        self.close(protocol.CLOSE_POLICY, reason)

    def _resume(self) -> None:
        """Let the sender go on if it waits in `_due`."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _due(self) -> None:
        """Wait until `wake` says something is due (or a close)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _sent(self, now: float) -> None:
        """The sender's write ended at `now`."""
        self.sending_since = None
        self.last_sent = now
        self._taken = self.outbox.frames_taken


def welcome(settings: Settings, delay_s: float | None = None,
            encoding: Encoding | None = None) -> str:
    """The first frame of every websocket and SSE stream: this worker and its limits (and,
    in the delayed tier, the delay; to a client that asked, the encoding)."""
    return protocol.welcome(
        delay_s=delay_s,
        encoding=encoding,
        node=NODE_ID,
        heartbeat_s=settings.heartbeat_s,
        max_symbols=settings.max_symbols,
        max_client_msgs_per_s=settings.max_client_msgs_per_s,
        max_frame_bytes=settings.max_frame_bytes,
        every_queue_bytes=settings.every_queue_bytes,
        max_recovery=settings.max_recovery,
    )
