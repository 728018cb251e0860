"""The Python client of the PSX quote stream.

    from quote_client import QuoteClient, format_line

    async with QuoteClient("ws://127.0.0.1:8000/ws", symbols="*") as client:
        async for quote in client.quotes():
            print(format_line(quote))

Modules: `client` (QuoteClient: reconnects, resubscribes, keeps the board by seq), `tail`
(the terminal ticker, `quote-tail`). The quote model, its text form and the protocol's
vocabulary are psx-quote-core's (quote_core), which the server shares; the names a
consumer needs from it are re-exported here.
"""

from __future__ import annotations

from quote_core.protocol import ALL, Mode, Symbols
from quote_core.quote import Quote, QuoteError, normalize_symbol
from quote_core.text import TickerLine, format_line, parse_line

from .client import (
    DEFAULT_URL,
    Ack,
    AuthenticationError,
    AuthInfo,
    Feed,
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
