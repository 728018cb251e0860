"""The seed's text form in Python: every seed line back from its numbers, and the edges."""

from __future__ import annotations

import pytest

from quote_core.quote import Quote, QuoteError
from quote_core.text import format_line, parse_line
from tests.service_proc import ROOT

SEED = (ROOT / "quote_sim" / "data" / "psx_ticker.txt").read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("line", SEED)
def test_every_seed_line_is_reproduced_from_its_numbers(line: str) -> None:
    parsed = parse_line(line)
    quote = Quote.make(parsed.symbol, parsed.price, parsed.prev_close, kind=parsed.kind)
    assert format_line(quote) == line


@pytest.mark.parametrize(
    ("symbol", "kind", "price", "prev", "line"),
    [
        ("HBL", "stock", 112.40, 112.76, "HBL 112.40 Decreased By ▼ -0.36 (-0.32%)"),
        ("SSGC", "stock", 10.54, 10.54, "SSGC 10.54 No Change ▼ 0.00 (0%)"),
        ("KSE100", "index", 1234567.89, 1200000.0, "KSE100 1,234,568 Increased By 34567.9 (2.88%)"),
        ("KSE30", "index", 23000.0, 23595.0, "KSE30 23,000 Decreased By -595 (-2.52%)"),
        # An index change that shows as 0 reads as no change, and reads back.
        ("BR30", "index", 24786.04, 24786.0, "BR30 24,786 No Change 0 (0%)"),
    ],
)
def test_edges(symbol: str, kind: str, price: float, prev: float, line: str) -> None:
    text = format_line(Quote.make(symbol, price, prev, kind=kind))
    assert text == line
    parse_line(text)


@pytest.mark.parametrize(
    "line",
    [
        "OGDC 137.75 Increased By ▲ 4.88 (99%)",
        "OGDC 137.75 Decreased By ▼ 4.88 (3.67%)",
        "OGDC 137.75 Increased By ▼ 4.88 (3.67%)",
        "OGDC 1,137.75 Increased By ▲ 4.88 (0.43%)",
        "OGDC 4.00 Increased By ▲ 4.88 (3.67%)",
    ],
)
def test_contradictory_lines_are_refused(line: str) -> None:
    with pytest.raises(QuoteError):
        parse_line(line)
