"""Replay parsing: three formats per line, every rejection with its line and reason."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from publisher.lines import LineError, parse_stream, parse_text
from quote_core.quote import Quote
from quote_core.text import format_line

SEED = Path(__file__).resolve().parents[1] / "quote_sim" / "data" / "psx_ticker.txt"


def split(text: str) -> tuple[dict[int, Quote], dict[int, str]]:
    good: dict[int, Quote] = {}
    bad: dict[int, str] = {}
    for number, item in parse_text(text):
        if isinstance(item, LineError):
            assert item.line == number
            bad[number] = item.reason
        else:
            good[number] = item
    return good, bad


def test_every_seed_line_parses_and_round_trips() -> None:
    lines = SEED.read_text(encoding="utf-8").splitlines()
    good, bad = split("\n".join(lines))
    assert bad == {}
    assert len(good) == len(lines) == 34
    for number, quote in good.items():
        assert format_line(quote) == lines[number - 1]
        assert quote.seq is None


def test_text_form_previous_close_is_price_minus_change() -> None:
    good, _ = split(
        "HBL 112.40 Decreased By ▼ -0.36 (-0.32%)\nKSE100 71,902 Increased By 1235.2 (1.75%)"
    )
    hbl, kse = good[1], good[2]
    assert (hbl.kind, hbl.price, hbl.prev_close, hbl.change) == ("stock", 112.40, 112.76, -0.36)
    assert (kse.kind, kse.price, kse.prev_close, kse.change_pct) == ("index", 71902, 70666.8, 1.75)


def test_csv_columns_by_header_name() -> None:
    text = (
        "prev_close,symbol,price,kind,ts,volume,state\n"
        "132.87,ogdc,137.75,stock,1624435200123,1200,trading\n"
        "70666.8,KSE100,71902,index,1624435200124,,\n"
    )
    good, bad = split(text)
    assert bad == {}
    ogdc, kse = good[2], good[3]
    assert ogdc == Quote.make("OGDC", 137.75, 132.87, ts=1624435200123, volume=1200,
                              state="trading")
    assert (kse.kind, kse.price, kse.ts, kse.volume) == ("index", 71902, 1624435200124, None)


def test_csv_header_anywhere_switches_csv_on() -> None:
    text = "OGDC 137.75 Increased By ▲ 4.88 (3.67%)\nsymbol,price,prev_close\nPPL,125.05,116.3\n"
    good, bad = split(text)
    assert bad == {} and sorted(good) == [1, 3]
    assert good[3].symbol == "PPL" and good[3].kind == "stock"


def test_json_lines_ignore_seq_and_default_ts() -> None:
    text = (
        '{"symbol": "OGDC", "price": 137.75, "prev_close": 132.87, "ts": 5, "seq": 99}\n'
        '{"symbol": "KSE30", "kind": "index", "price": 23595, "prev_close": 23224}\n'
    )
    good, bad = split(text)
    assert bad == {}
    assert good[1] == Quote.make("OGDC", 137.75, 132.87, ts=5)
    assert good[1].seq is None
    assert good[2].kind == "index" and good[2].ts > 1_600_000_000_000


def test_blank_lines_and_comments_are_skipped_but_counted() -> None:
    text = "# a comment\n\n   \nOGDC 137.75 Increased By ▲ 4.88 (3.67%)\n  # indented comment\n"
    good, bad = split(text)
    assert list(good) == [4] and bad == {}


def test_byte_order_mark_and_crlf_are_tolerated() -> None:
    good, bad = split("\ufeffsymbol,price,prev_close\r\nOGDC,1.5,1.25\r\n")
    assert bad == {} and good[2].price == 1.5


MIXED = """\
# good and bad lines, every format
OGDC 137.75 Increased By ▲ 4.88 (3.67%)
OGDC,137.75,132.87
symbol,price,prev_close,kind
PPL,125.05,116.3,stock
PPL,NaN,116.3,stock
PPL,Infinity,116.3,stock
PPL,-3,116.3,stock
PPL,0,116.3,stock
<img src=x>,1,2,stock
PPL,,116.3,stock
PPL,125.05,116.3
KSE100,71902,70666.8,index
HBL 112.40 Increased By ▼ -0.36 (-0.32%)
{"symbol": "HUBC", "price": 136.5, "prev_close": 133.04}
{"symbol": "HUBC", "price": 136.5}
{"symbol": "HUBC", "price": NaN, "prev_close": 1}
just some words
{"symbol": "HUBC", "price": 1e999, "prev_close": 1}
symbol,price
TRG,60.6,59.29,stock
"""


def test_rejections_name_line_and_reason_and_spare_the_good_lines() -> None:
    good, bad = split(MIXED)
    assert sorted(good) == [2, 5, 13, 15]
    assert [good[n].symbol for n in sorted(good)] == ["OGDC", "PPL", "KSE100", "HUBC"]
    assert "CSV row before a header" in bad[3]
    assert "price must be a finite number, not nan" in bad[6]
    assert "price must be a finite number, not inf" in bad[7]
    assert "price must be positive, not -3" in bad[8]
    assert "price must be positive, not 0" in bad[9]
    assert "invalid symbol '<img src=x>'" in bad[10]
    assert "missing field 'price'" in bad[11]
    assert "expected 4 CSV columns" in bad[12] and "got 3" in bad[12]
    assert "contradicts the change -0.36" in bad[14]
    assert "missing field 'prev_close'" in bad[16]
    assert "JSON" in bad[17]  # orjson refuses NaN: not valid JSON
    assert "not a quote" in bad[18]
    assert "JSON" in bad[19]
    assert "lacks column 'prev_close'" in bad[20]
    # A bad header does not leave the previous one in force.
    assert "CSV row before a header" in bad[21]
    assert str(LineError(7, "x")) == "line 7: x"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("OGDC 137.75 Increased By ▲ 4.88", "not a ticker line"),
        ("OGDC 1,137.75 Increased By ▲ 4.88 (0.4%)", "thousands separators"),
        ("OGDC 137.75 No Change ▲ 4.88 (3.67%)", "contradicts"),
        ("OGDC 4.00 Increased By ▲ 4.88 (3.67%)", "must be positive"),
        ("[1, 2]", "one quote object, not list"),
        ('{"symbol": "OGDC", "price": "1", "prev_close": 1}', "price must be a finite number"),
        ('{"symbol": "OGDC", "price": 1, "prev_close": 1, "kind": "bond"}', "kind must be"),
        ('{"symbol": "OGDC", "price": 1, "prev_close": 1, "ts": 1.5}', "ts must be an integer"),
    ],
)
def test_single_line_rejections(line: str, reason: str) -> None:
    [(number, item)] = list(parse_stream([line]))
    assert number == 1 and isinstance(item, LineError)
    assert reason in item.reason


@pytest.mark.parametrize(
    ("header", "row", "reason"),
    [
        ("symbol,price,prev_close,colour", "OGDC,1,2,red", "unknown CSV column 'colour'"),
        ("symbol,price,prev_close,price", "OGDC,1,2,3", "names column 'price' twice"),
        ("symbol,price,prev_close,ts", "OGDC,1,2,soon", "ts must be an integer, not 'soon'"),
        ("symbol,price,prev_close,ts", "OGDC,1,2,99999999999999999999999", "ts must be an integer"),
        ("symbol,price,prev_close", "OGDC,abc,2", "price must be a number, not 'abc'"),
        ("symbol,price,prev_close", "OGDC,1e308,0.01", "out of all proportion"),
        ("symbol,price,prev_close", 'OGDC,"1,2', "unreadable CSV"),
        ("symbol,price,prev_close,state", "OGDC,1,2,sleeping", "state must be one of"),
    ],
)
def test_csv_rejections(header: str, row: str, reason: str) -> None:
    items = [item for _, item in parse_stream([header, row])]
    assert any(isinstance(i, LineError) and reason in i.reason for i in items), items


def test_long_values_are_shortened_in_reasons() -> None:
    [(_, item)] = list(parse_stream([orjson.dumps({"symbol": "A" * 5000}).decode()]))
    assert isinstance(item, LineError) and len(item.reason) < 400


_FRAGMENTS = st.sampled_from([
    "symbol,price,prev_close", "symbol,price,prev_close,kind,ts,volume,state", "symbol,price",
    "OGDC,1.5,1.25", "OGDC,1.5", "x,y,z", ",,,", '"', "{", "}", "[", "]", "{}", "null",
    '{"symbol":"A","price":1,"prev_close":2}', '"seq":', "NaN", "-Infinity", "1e400", "▲",
    "▼", "Increased By", "No Change", "Decreased By", "(1%)", "71,902", "#", " ", "\ufeff",
    "\x00", "\r", "-0", "0.001", "99999999999999999999999",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(), st.lists(_FRAGMENTS, max_size=8).map(" ".join),
                          st.lists(_FRAGMENTS, max_size=8).map(",".join))))
def test_parse_stream_never_raises(lines: list[str]) -> None:
    previous = 0
    for number, item in parse_stream(lines):
        assert previous < number <= len(lines)
        previous = number
        assert isinstance(item, (Quote, LineError))
        if isinstance(item, Quote):
            assert item.seq is None
            assert b"null" not in item.to_json()
