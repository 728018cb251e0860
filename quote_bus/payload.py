"""The quotes of one Redis message, decoded: what the service (and the publisher's own
checks) read from the channel. Server-side only, so the SDK does not ship it."""

from __future__ import annotations

import orjson

from quote_core.quote import Quote, QuoteError


def decode_payload(payload: bytes | str) -> tuple[list[Quote], list[str]]:
    """Decode one pub/sub message: a quote object or a JSON array of them, each with seq.

    Returns the good quotes and a reason for each bad one, so that one bad entry costs
    only itself; the caller counts, logs and drops the bad ones."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return [], [f"not JSON: {exc}"]
    good: list[Quote] = []
    bad: list[str] = []
    for item in data if isinstance(data, list) else [data]:
        try:
            good.append(Quote.from_dict(item, require_seq=True))
        except QuoteError as exc:
            bad.append(str(exc))
    return good, bad
