"""Reading quotes from replay input: the seed's text form, CSV, or JSON Lines.

The format is decided line by line, so one file can mix them (a CSV header switches CSV on
for the rows after it). Nothing here validates a quote by itself: every candidate goes
through `Quote.make` / `Quote.from_dict`, and whatever they refuse becomes a `LineError`
with the line number and their reason, so one bad line costs only itself.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from quote_core.quote import Quote, QuoteError, now_ms
from quote_core.text import DECREASED, DOWN, INCREASED, NO_CHANGE, UP, parse_line

REQUIRED_COLUMNS = ("symbol", "price", "prev_close")
OPTIONAL_COLUMNS = (
    "kind", "ts", "open", "high", "low", "volume", "bid", "ask", "state",
    "change", "change_pct", "seq",
)
KNOWN_COLUMNS = frozenset(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
_NUMBER_COLUMNS = frozenset({"price", "prev_close", "open", "high", "low", "bid", "ask",
                             "change", "change_pct"})
_INTEGER_COLUMNS = frozenset({"ts", "volume"})
# seq is assigned at publish; a replayed one would only collide with the live sequence.
_IGNORED_FIELDS = ("seq",)

_TEXT_FORM_HINT = re.compile(
    "|".join(re.escape(w) for w in (INCREASED, DECREASED, NO_CHANGE, UP, DOWN))
)
_COLUMN_NAME = re.compile(r"[A-Za-z_]+")
_UNRECOGNISED = (
    "not a quote: expected a ticker line like 'OGDC 137.75 Increased By ▲ 4.88 (3.67%)', "
    "a JSON object, or a CSV row after a 'symbol,price,prev_close' header"
)


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class _Reject(Exception):
    """Internal: a line's reason for rejection, raised where it is found."""


def parse_stream(lines: Iterable[str]) -> Iterator[tuple[int, Quote | LineError]]:
    """Yield (line number, quote or error) for every line that is not blank or a comment.
    Never raises for bad input: that is what LineError is for."""
    header: tuple[str, ...] | None = None
    for number, raw in enumerate(lines, start=1):
        text = raw.strip().lstrip("\ufeff").strip() if number == 1 else raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            if text.startswith(("{", "[")):
                yield number, _from_json(text)
            elif _TEXT_FORM_HINT.search(text):
                yield number, _from_ticker_text(text)
            elif (names := _header_names(text)) is not None:
                header = None  # a bad header must not leave the old one in force
                header = _check_header(names)
            elif "," in text:
                if header is None:
                    raise _Reject(
                        "CSV row before a header (expected e.g. 'symbol,price,prev_close')"
                    )
                yield number, _from_csv_row(text, header)
            else:
                raise _Reject(_UNRECOGNISED)
        except (_Reject, QuoteError) as exc:
            yield number, LineError(number, _shorten(str(exc)))


def _shorten(reason: str, limit: int = 300) -> str:
    return reason if len(reason) <= limit else reason[:limit] + "…"


def parse_text(text: str) -> Iterator[tuple[int, Quote | LineError]]:
    return parse_stream(text.splitlines())


def _from_ticker_text(text: str) -> Quote:
    parsed = parse_line(text)
    return Quote.make(parsed.symbol, parsed.price, parsed.prev_close, kind=parsed.kind)


def _from_json(text: str) -> Quote:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _Reject(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _Reject(f"a JSON line must be one quote object, not {type(data).__name__}")
    return _quote_from_fields(data)


def _quote_from_fields(data: dict[str, Any]) -> Quote:
    for name in _IGNORED_FIELDS:
        data.pop(name, None)
    if data.get("ts") is None:
        data["ts"] = now_ms()
    return Quote.from_dict(data)


def _split_csv(text: str) -> list[str]:
    try:
        row = next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration) as exc:
        raise _Reject(f"unreadable CSV: {exc}") from None
    return [cell.strip() for cell in row]


def _header_names(text: str) -> list[str] | None:
    """A header is a row of bare words naming at least the symbol column; anything else
    is data (a row of words without 'symbol' is a bad data row, not a bad header)."""
    if "," not in text:
        return None
    names = [cell.lower() for cell in _split_csv(text)]
    if "symbol" in names and all(_COLUMN_NAME.fullmatch(n) for n in names):
        return names
    return None


def _check_header(names: list[str]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in KNOWN_COLUMNS]
    if unknown:
        known = ", ".join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
        raise _Reject(f"unknown CSV column {unknown[0]!r} (known: {known})")
    missing = [n for n in REQUIRED_COLUMNS if n not in names]
    if missing:
        raise _Reject(f"CSV header lacks column {missing[0]!r} (needs symbol, price, prev_close)")
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise _Reject(f"CSV header names column {duplicate!r} twice")
    return tuple(names)


def _from_csv_row(text: str, header: tuple[str, ...]) -> Quote:
    cells = _split_csv(text)
    if len(cells) != len(header):
        raise _Reject(f"expected {len(header)} CSV columns ({','.join(header)}), got {len(cells)}")
    data: dict[str, Any] = {}
    for name, cell in zip(header, cells, strict=True):
        if cell == "":
            if name in REQUIRED_COLUMNS:
                raise QuoteError(f"missing field {name!r}")
            continue
        data[name] = _cell_value(name, cell)
    return _quote_from_fields(data)


def _cell_value(name: str, cell: str) -> Any:
    """Text to the JSON type the column would have; Quote.from_dict judges the value."""
    if name in _INTEGER_COLUMNS:
        try:
            return int(cell)
        except ValueError:
            raise _Reject(f"{name} must be an integer, not {_shorten(cell, 40)!r}") from None
    if name in _NUMBER_COLUMNS:
        try:
            return float(cell)
        except ValueError:
            raise _Reject(f"{name} must be a number, not {_shorten(cell, 40)!r}") from None
    return cell
