"""The Python client of the PSX quote stream, and the ideas it shares with the server.

    from quote_client import QuoteClient, format_line

    async with QuoteClient("ws://127.0.0.1:8000/ws", symbols="*") as client:
        async for quote in client.quotes():
            print(format_line(quote))

Modules: `client` (QuoteClient: reconnects, resubscribes, keeps the board by seq), `quote`
(the quote model and its validation), `ticker_text` (the seed's text form of a quote),
`protocol` (the codes and names of the wire protocol), `backoff` (jittered retry delays),
`tail` (the terminal ticker, `quote-tail`). The service and the publisher import the
shared ones from here: one implementation of each idea.

The client module (and websockets with it) is loaded on first use of one of its names, so
a process that needs only the quote model does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .protocol import ALL, Symbols
from .quote import Quote, QuoteError, normalize_symbol
from .ticker_text import TickerLine, format_line, parse_line

if TYPE_CHECKING:
    from .client import (
        DEFAULT_URL,
        Ack,
        AuthenticationError,
        AuthInfo,
        Feed,
        Mode,
        QuoteClient,
        ServerError,
        TokenSource,
        TokenUnavailable,
        Welcome,
        retry_delay,
    )

__all__ = [
    "ALL",
    "DEFAULT_URL",
    "Ack",
    "AuthInfo",
    "AuthenticationError",
    "Feed",
    "Mode",
    "Quote",
    "QuoteClient",
    "QuoteError",
    "ServerError",
    "Symbols",
    "TickerLine",
    "TokenSource",
    "TokenUnavailable",
    "Welcome",
    "format_line",
    "normalize_symbol",
    "parse_line",
    "retry_delay",
]

_FROM_CLIENT = frozenset({"DEFAULT_URL", "Ack", "AuthInfo", "AuthenticationError", "Feed", "Mode",
                          "QuoteClient", "ServerError", "TokenSource", "TokenUnavailable",
                          "Welcome", "retry_delay"})


def __getattr__(name: str) -> Any:
    if name in _FROM_CLIENT:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
