"""A thin real Server-Sent Events client for tests: HTTP/1.1 over an asyncio socket, the
chunked body decoded, events parsed as the HTML standard's EventSource parses them (and
each event's raw lines kept, to check the exact text). Every wait is bounded."""

from __future__ import annotations

import asyncio
import codecs
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson


@dataclass
class Event:
    kind: str  # the `event:` field ("message" when absent)
    data: str
    id: str | None  # this event's own `id:` field, if it had one
    lines: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return orjson.loads(self.data)


class StreamEnded(Exception):
    """The response ended (or the connection closed) before the event waited for."""


class SseStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""  # a non-streamed answer's body
        self.retry: int | None = None
        self.last_event_id = ""  # as EventSource keeps it: the last id field seen
        self.ended = False  # the chunked body's last chunk was read
        self._pending = ""  # decoded body not yet split into lines
        self._chunked = False
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    async def _head(self) -> None:
        status = await self.reader.readline()
        if not status:
            raise StreamEnded("no answer")
        self.status = int(status.split()[1])
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        if not self._chunked:
            length = int(self.headers.get("content-length", "0"))
            self.body = await self.reader.readexactly(length)
            self.ended = True

    async def _chunk(self) -> None:
        size_line = await self.reader.readline()
        if not size_line:
            self.ended = True
            raise StreamEnded("the connection closed")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            self.ended = True
            return
        try:
            data = await self.reader.readexactly(size)
            await self.reader.readexactly(2)
        except asyncio.IncompleteReadError:
            self.ended = True
            raise StreamEnded("the connection closed within a chunk") from None
        self._pending += self._decoder.decode(data)

    async def _line(self) -> str:
        while True:
            i = self._pending.find("\n")
            if i >= 0:
                line, self._pending = self._pending[:i], self._pending[i + 1:]
                return line.removesuffix("\r")
            if self.ended:
                raise StreamEnded("the response ended")
            await self._chunk()

    async def event(self, timeout: float = 5.0) -> Event:
        """The next event dispatched (blocks of only `retry:` or comments dispatch none)."""
        async with asyncio.timeout(timeout):
            kind, id = "", None
            data: list[str] = []
            lines: list[str] = []
            while True:
                line = await self._line()
                if line == "":
                    if data:
                        return Event(kind or "message", "\n".join(data), id, lines)
                    kind, data, id, lines = "", [], None, []
                    continue
                lines.append(line)
                if line.startswith(":"):
                    continue
                name, colon, value = line.partition(":")
                if colon and value.startswith(" "):
                    value = value[1:]
                if name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)
                elif name == "id" and "\0" not in value:
                    id = self.last_event_id = value
                elif name == "retry" and value.isdigit():
                    self.retry = int(value)

    async def event_of(self, kind: str, timeout: float = 5.0) -> Event:
        """The next event of this kind, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.event(timeout)
                if event.kind == kind:
                    return event

    async def until_end(self, timeout: float = 5.0) -> list[Event]:
        """Every event up to the end of the response."""
        events = []
        async with asyncio.timeout(timeout):
            try:
                while True:
                    events.append(await self.event(timeout))
            except StreamEnded:
                return events

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(2):
                await self.writer.wait_closed()
        except (TimeoutError, OSError):
            pass

    async def __aenter__(self) -> SseStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_sse(url: str, headers: Mapping[str, str] | None = None, *,
                   method: str = "GET", recv_buffer: int = 0, timeout: float = 5.0
                   ) -> SseStream:
    """Send the request and read the answer's head (and a non-streamed body). With
    `recv_buffer`, the socket's receive buffer is that small (a slow reader's)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    async with asyncio.timeout(timeout):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if recv_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        request = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}",
                   "Accept: text/event-stream", "Cache-Control: no-cache"]
        request += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(request) + "\r\n\r\n").encode())
        stream = SseStream(reader, writer)
        try:
            await stream._head()
        except BaseException:
            await stream.close()
            raise
        return stream
