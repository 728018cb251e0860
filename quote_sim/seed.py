"""The instruments of the simulated market, read from the seed's ticker lines.

The seed is a board in mid-session: each line's price is where the simulated session
opens, and its price minus its change is the previous close, so the first board reads
exactly as the seed. The copy ships inside the package so that nothing reads outside it
at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from quote_core.text import parse_line

SEED_RESOURCE = "data/psx_ticker.txt"


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    kind: str  # "stock" or "index"
    prev_close: float
    open: float  # where the session starts: the seed's price


def seed_text() -> str:
    return resources.files("quote_sim").joinpath(SEED_RESOURCE).read_text(encoding="utf-8")


def parse_instruments(text: str) -> list[Instrument]:
    """Raises quote_core.quote.QuoteError naming the line if the seed is damaged: a broken
    seed is a packaging bug, not something to skip quietly."""
    instruments: list[Instrument] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            parsed = parse_line(line)
        except ValueError as exc:
            raise type(exc)(f"seed line {number}: {exc}") from exc
        instruments.append(Instrument(parsed.symbol, parsed.kind, parsed.prev_close, parsed.price))
    return instruments


def load_instruments() -> list[Instrument]:
    return parse_instruments(seed_text())
