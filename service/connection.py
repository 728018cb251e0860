"""One websocket client: a reader loop for commands, and writes of what its outbox holds.

Starlette locks nothing, so each connection has exactly one reader and one writer at a time
(starlette/websockets.py, 1.10). The reader must always run: it reads pongs and notices a peer that
left. Writes take one of two paths. Whenever the socket takes data and nothing is in
flight, what is due is written straight to uvicorn's transport (uvicorn_private.py) by
whoever made it due (the fan-out, a command's reply): no task, no wake-up, no await per
frame, which is most of a frame's cost otherwise (bench/viewers.py). Otherwise (the peer
is behind and the transport paused, a close is due, or the server is not uvicorn) a sender
task sends it through ASGI under the send timeout, so one stalled peer holds nothing but
its own task, and exits once the direct path is open again.

What a websocket shares with an SSE stream (the token's expiry, heartbeats, the send
timeout, the close, the outbox) is its `Session` (session.py); this module holds what only
a websocket does: commands read off the socket, frames written to it, a close frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect

from quote_core.quote import now_ms

from . import protocol
from .auth import Authenticator, AuthError, TierName, token_of
from .limits import RateLimiter
from .outbox import Writer
from .protocol import (
    BAD_REQUEST,
    FRAME_TOO_LARGE,
    RATE_LIMITED,
    Auth,
    Ping,
    ProtocolError,
    Subscribe,
)
from .session import Session
from .settings import Settings
from .tiers import Tier
from .uvicorn_private import (
    abort,
    deflate_negotiated,
    direct_writes,
    forget_handshake,
    server_send,
)
from .wire import text_of, wire_of

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger("service.connection")


async def serve_websocket(websocket: WebSocket, registry: Registry,
                          tiers: Mapping[TierName, Tier], settings: Settings,
                          auth: Authenticator) -> None:
    """`/ws`, past the origin and address checks (app.py's WebApp): admission, then the
    connection until it ends."""
    client = websocket.client
    refusal = registry.admit(client.host if client else "?")
    if refusal is not None:
        await websocket.accept()
        if registry.draining:  # accepted just before the listener closed: go elsewhere
            await websocket.close(protocol.CLOSE_GOING_AWAY, "server shutting down")
        else:
            await websocket.close(protocol.CLOSE_TRY_AGAIN, "try again later")
        return
    connection = Connection(websocket, tiers, settings, auth)
    registry.add(connection)
    try:
        await connection.serve()
    finally:
        registry.remove(connection)


class Connection(Session):
    """One websocket client: a Session read from and written to through its socket."""

    __slots__ = ("_direct_open", "_writer", "auth", "limiter", "tiers", "websocket")

    RENEW = 'send {"op": "auth", "token": ...} with a fresh one'

    def __init__(self, websocket: WebSocket, tiers: Mapping[TierName, Tier], settings: Settings,
                 auth: Authenticator) -> None:
        grant = auth.anonymous
        send = server_send(websocket.scope)
        # The connection is in its grant's tier (service/tiers.py).
        super().__init__(tiers[grant.tier if grant is not None else "realtime"], settings, grant,
                         encoding=websocket.query_params.get("encoding"),
                         deflate=deflate_negotiated(send))
        self.websocket = websocket
        self.tiers = tiers
        self.auth = auth
        self.limiter = RateLimiter(settings.max_client_msgs_per_s)
        # What the group's lane writes through (outbox.py): uvicorn's transport's own
        # methods, and whether it takes a write now (uvicorn_private.py). Looked up once.
        direct = direct_writes(send)
        self._writer: Writer | None = None if direct is None else direct[0]
        self._direct_open: Callable[[], bool] = _never if direct is None else direct[1]

    @property
    def peer(self) -> str:
        client = self.websocket.client
        return f"{client.host}:{client.port}" if client else "?"

    # Subscriber

    def wake(self) -> None:
        """Something is due: write it now if the socket takes it, else leave it to the
        sender task (started if none runs). Frames stay in order: nothing is written here
        while the sender holds any."""
        if self._sender is None:
            writer = self._writer
            if writer is not None and self.closing is None and self._direct_open():
                # uvicorn's transport takes it now: write what is due as wire bytes, and
                # if it all left at once, let the group write the next frames itself.
                write, _, buffered = writer
                outbox = self.outbox
                shared = outbox.take_shared()
                if shared is not None:
                    write(shared.wire)
                else:
                    for frame in outbox.take():
                        write(wire_of(frame))
                if not buffered():
                    outbox.enter_lane(self, writer)
                return
            self._sender = asyncio.get_running_loop().create_task(self._send_loop())
            return
        self._resume()

    def _abandon(self, sender: asyncio.Task[None]) -> None:
        """Its handler sends the close frame if the socket takes it soon, else aborts."""
        sender.cancel()

    # Lifetime

    async def serve(self) -> None:
        await self.websocket.accept()
        forget_handshake(server_send(self.websocket.scope))
        token = token_of(self.websocket)
        if token is not None:
            try:
                self.grant = self.auth.verify(token)
            except AuthError as exc:  # before anything is sent: no quote leaks
                await self._refuse(str(exc))
                return
            self.use(self.tiers[self.grant.tier])
        self.join()
        try:
            if self.grant is not None:
                self._subscribe_from_query()
            self.wake()
            # The reader runs in this task, the only one a connection keeps. Whatever ends
            # the connection (peer gone, close sent, transport aborted) ends the reader
            # too, since uvicorn then delivers websocket.disconnect.
            try:
                await self._read_loop()
            finally:
                sender = self._sender
                if sender is not None:
                    if self.closing is None:
                        sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
        finally:
            self.hub.remove(self)

    def _subscribe_from_query(self) -> None:
        """`?symbols=` subscribes as a subscribe without an id would; `?max_hz=` sets the
        rate (alone, for the subscribes to come). Anything invalid gets an error frame and
        changes nothing; the connection goes on."""
        params = self.websocket.query_params
        raw = params.get("symbols")
        raw_hz = params.get("max_hz")
        if raw is None and raw_hz is None:
            return
        try:
            max_hz = None if raw_hz is None else protocol.parse_query_max_hz(raw_hz)
            symbols = None if raw is None else protocol.parse_query_symbols(
                raw, self.settings.max_symbols)
            if symbols is not None:
                assert self.grant is not None
                self.hub.subscribe(self, None, symbols, max_hz, entitled=self.grant.symbols)
            elif max_hz is not None:
                self.hub.set_rate(self, max_hz)
        except ProtocolError as exc:
            self.hub.stats[f"error_{exc.code}"] += 1
            self.outbox.put_control(exc.frame())

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        while self.closing is None:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            verdict = self.limiter.check(loop.time())
            if verdict == "close":
                self.close(protocol.CLOSE_RATE_LIMITED, "message flood")
                log.warning("closing %s: message flood", self.peer)
                return
            try:
                if verdict == "limited":
                    raise ProtocolError(
                        RATE_LIMITED, f"at most {settings.max_client_msgs_per_s} messages/s"
                    )
                text = message.get("text")
                if text is None:
                    raise ProtocolError(BAD_REQUEST, "binary frames are not accepted; send JSON text")
                if len(text) > settings.max_frame_bytes and (
                    len(text.encode()) > settings.max_frame_bytes
                ):
                    raise ProtocolError(
                        FRAME_TOO_LARGE, f"frames are limited to {settings.max_frame_bytes} bytes"
                    )
                recovery = self._handle(protocol.parse_command(
                    text, max_symbols=settings.max_symbols))
                if recovery is not None:
                    # Its ack comes once the tape is read: the next command waits for it,
                    # so replies keep the order of requests.
                    await recovery
            except ProtocolError as exc:
                self.hub.stats[f"error_{exc.code}"] += 1
                self.reply(exc.frame())

    def _handle(self, command: protocol.Command) -> asyncio.Task[None] | None:
        if isinstance(command, Auth):
            self._authenticate(command)
            return None
        grant = self.grant
        if grant is None:
            self.deny('authentication required: send {"op": "auth", "token": ...} first')
            return None
        if isinstance(command, Ping):
            self.reply(protocol.pong(command.id, now_ms()))
        elif isinstance(command, Subscribe):
            return self.hub.subscribe(self, command.id, command.symbols, command.max_hz,
                                      mode=command.mode, since=command.since,
                                      entitled=grant.symbols)
        else:
            self.hub.unsubscribe(self, command.id, command.symbols)
        return None

    def _authenticate(self, command: Auth) -> None:
        """A token as a message: the first one, or a fresh one before the last expires.
        One that does not pass closes the connection, as it would on the URL."""
        try:
            grant = self.auth.verify(command.token)
        except AuthError as exc:
            self.deny(str(exc))
            return
        # The first token (tokens always carry `exp`; ANONYMOUS's grant has none).
        first = self.grant is None or self.grant.exp is None
        if not first and self.grant is not None and grant.tier != self.grant.tier:
            self.deny("a token may not change the tier of a connection: reconnect with it")
            return
        self.grant = grant
        self.expired_at = None
        moved = first and self.tiers[grant.tier] is not self.tier
        if moved:
            # The first token moves the connection to its tier's hub; what it held as
            # an anonymous client is dropped there and the URL's subscription redone.
            self.hub.remove(self)
            self.use(self.tiers[grant.tier])
            self.hub.add(self)
        mine = self.hub.subscriptions(self)
        if mine != protocol.ALL and grant.symbols != protocol.ALL and mine - grant.symbols:
            self.hub.unsubscribe(self, None, mine - grant.symbols)  # no longer covered
        mine = self.hub.subscriptions(self)
        everything = mine == protocol.ALL
        self.reply(protocol.auth_ack(
            command.id, self.hub.board.keys() if everything else mine, all=everything,
            tier=grant.tier, entitled=grant.symbols, sub=grant.sub,
            expires=None if grant.exp is None else int(grant.exp * 1000),
            delay_s=self.tier.delay_s))
        if self.grant is not None and (moved or (first and self.auth.anonymous is None)):
            self._subscribe_from_query()

    async def _refuse(self, reason: str) -> None:
        """Close at once with 1008, before the hub knows the connection."""
        self.hub.stats["auth_refused"] += 1
        log.warning("refusing %s: %s", self.peer, reason,
                    extra={"event": "client_refused", "code": protocol.CLOSE_POLICY})
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self.websocket.close(protocol.CLOSE_POLICY, reason)

    async def _send_loop(self) -> None:
        """Send through ASGI what could not be written at once, then the close if one is
        due; ends when the direct path can take over. No timer per send or per wait:
        heartbeats and send timeouts are the sweeper's job (Session.check)."""
        websocket = self.websocket
        outbox = self.outbox
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not outbox and self.closing is None:
                    if self._direct_open():
                        return
                    await self._due()
                frames = outbox.take()
                if frames:
                    self.sending_since = loop.time()
                    for frame in frames:
                        await websocket.send_text(text_of(frame))
                    self._sent(loop.time())
                if self.closing is not None and not outbox:
                    await self._close_or_abort(*self.closing)
                    return
        except asyncio.CancelledError:
            # Cancelled with a close due: a send stalled (Session._stalled); otherwise
            # the connection is over.
            if self.closing is not None:
                await self._close_or_abort(*self.closing)
                return
            raise
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        finally:
            if self._sender is asyncio.current_task():
                self._sender = None

    async def _close_or_abort(self, code: int, reason: str) -> None:
        """Send the close frame if the socket takes it soon; a peer that stopped reading
        never will, so then drop the connection rather than hold its buffers."""
        try:
            async with asyncio.timeout(min(1.0, self.settings.send_timeout_s)):
                await self.websocket.close(code, reason)
        except TimeoutError:
            # ASGI has no abort; with another server the kernel's TCP_USER_TIMEOUT ends
            # the connection instead.
            abort(server_send(self.websocket.scope))
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass


def _never() -> bool:
    """The direct path's check off uvicorn: never open, everything takes the ASGI path."""
    return False
