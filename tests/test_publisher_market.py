"""The seed and the simulated market: pure, seeded, no sockets."""

from __future__ import annotations

import random
from itertools import count
from typing import Any

import pytest

from quote_core.quote import Quote
from quote_core.text import format_line
from quote_sim.market import BR30_MEMBERS, INDEX_MEMBERS, KSE30_MEMBERS, Market, band_ticks
from quote_sim.seed import Instrument, load_instruments, seed_text
from quote_sim.settings import SimulationSettings

INDICES = {"BR100", "BR30", "KSE100", "KSE30"}
SEED_LINES = seed_text().splitlines()


def fixed_clock() -> int:
    return 1_700_000_000_000


def make_market(seed: int = 7, **kwargs: Any) -> Market:
    return Market(load_instruments(), random.Random(seed), clock=fixed_clock, **kwargs)


def test_seed_prices_are_the_open_and_price_minus_change_the_previous_close() -> None:
    instruments = {i.symbol: i for i in load_instruments()}
    assert len(instruments) == 34
    assert instruments["OGDC"] == Instrument("OGDC", "stock", 132.87, 137.75)
    assert instruments["KSE100"] == Instrument("KSE100", "index", 70666.8, 71902.0)
    assert {s for s, i in instruments.items() if i.kind == "index"} == INDICES


def test_index_baskets_are_seed_stocks() -> None:
    stocks = {i.symbol for i in load_instruments() if i.kind == "stock"}
    assert len(KSE30_MEMBERS) == len(set(KSE30_MEMBERS)) == 15
    assert len(BR30_MEMBERS) == len(set(BR30_MEMBERS)) == 15
    assert set(KSE30_MEMBERS) <= stocks and set(BR30_MEMBERS) <= stocks
    market = make_market()
    assert set(INDEX_MEMBERS) == INDICES
    assert sorted(market.members("KSE100")) == sorted(stocks)
    assert market.members("KSE30") == list(KSE30_MEMBERS)


def test_the_opening_board_reads_exactly_as_the_seed() -> None:
    market = make_market()
    quotes = market.initial_quotes()
    assert len(SEED_LINES) == 34
    assert [format_line(q) for q in quotes] == SEED_LINES
    assert market.board_quotes() == quotes  # before the first step, the board is the open
    for q in quotes:
        assert (q.seq, q.state) == (None, None)
        assert q.kind == ("index" if q.symbol in INDICES else "stock")
        assert q.ts == fixed_clock()


def test_a_band_narrower_than_the_seeds_change_opens_at_its_edge() -> None:
    market = make_market(band_pct=2.0, band_min=0.5)
    board = {q.symbol: q for q in market.initial_quotes()}
    # OGDC opened 3.67% up: 2% of 132.87 is 2.65, so it opens locked at 135.52.
    assert market.limits("OGDC") == (130.22, 135.52)
    assert (board["OGDC"].price, board["OGDC"].state) == (135.52, "upper_lock")
    assert (board["HBL"].price, board["HBL"].state) == (112.40, None)  # -0.32%: inside


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_thirty_minutes_at_the_demo_rate_keep_the_days_shape(seed: int) -> None:
    """The session moves, but a stock that opened more than 1% up (or down) stays on its
    side of the previous close, the indices stay within half a point of their opening
    change, and no step is larger than 0.05% of the price (or one tick)."""
    quotes = round(SimulationSettings().sim_rate * 30 * 60)
    assert quotes == 36_000
    market = make_market(seed=seed)
    opening = {q.symbol: q for q in market.initial_quotes()}
    last = {s: q.price for s, q in opening.items()}
    moved = set()
    for q in market.next_quotes(quotes):
        seed_change = opening[q.symbol].change_pct
        if q.kind == "index":
            assert abs(q.change_pct - seed_change) <= 0.5, (q.symbol, q.change_pct)
            continue
        if abs(seed_change) > 1:
            assert (q.change > 0) == (seed_change > 0), (q.symbol, q.change_pct)
        step = round(abs(q.price - last[q.symbol]) * 100)
        assert 1 <= step <= max(1, last[q.symbol] * 100 * 0.0005), (q.symbol, last[q.symbol], q.price)
        last[q.symbol] = q.price
        moved.add(q.symbol)
    assert moved == {s for s, q in opening.items() if q.kind == "stock"}


def test_band_is_percent_with_a_rupee_minimum() -> None:
    assert band_ticks(137.75, 10, 1) == (12398, 15152)  # ±13.77
    assert band_ticks(4.99, 10, 1) == (399, 599)  # ±1.00, the minimum
    assert band_ticks(0.05, 10, 1) == (1, 105)  # never below 0.01


def test_next_quotes_yields_exactly_n_and_includes_indices() -> None:
    market = make_market()
    for n in (0, 1, 3, 14, 500):
        assert len(market.next_quotes(n)) == n
    kinds = [q.kind for q in market.next_quotes(1400)]
    # 10 stock updates then the 4 touched indices: 4 in 14 are indices.
    assert 350 <= kinds.count("index") <= 450


def test_stock_ticks_are_whole_paisa_inside_the_band() -> None:
    # A band far narrower than the day's moves: most stocks sit at its edges.
    market = make_market(seed=3, band_pct=0.1, band_min=0.01)
    seen_states = set()
    for q in market.next_quotes(30_000):
        if q.kind == "index":
            continue
        assert round(q.price * 100) == pytest.approx(q.price * 100, abs=1e-6)
        low, high = market.limits(q.symbol)
        assert low - 1e-9 <= q.price <= high + 1e-9
        assert q.price >= 0.01
        if q.state is not None:
            seen_states.add(q.state)
            assert q.price == pytest.approx(high if q.state == "upper_lock" else low)
    # The narrow band is hit: the lock states really occur.
    assert seen_states == {"upper_lock", "lower_lock"}


def test_steps_scale_with_the_price() -> None:
    market = make_market(seed=11, band_pct=50.0)
    last = {q.symbol: q.price for q in market.initial_quotes()}
    steps: dict[str, set[int]] = {}
    for q in market.next_quotes(20_000):
        if q.kind == "stock":
            steps.setdefault(q.symbol, set()).add(round(abs(q.price - last[q.symbol]) * 100))
            last[q.symbol] = q.price
    assert steps["WTL"] == steps["BOP"] == {1}  # Rs 1.28 and 4.99: a paisa at a time
    assert steps["OGDC"] == {1, 2, 3, 4, 5, 6}  # Rs 137.75: up to 0.05%, 6.9 paisa


def test_stocks_revert_toward_the_open_not_the_previous_close() -> None:
    far = Instrument("FAR", "stock", 100.0, 108.0)  # opened 8% up
    market = Market([far], random.Random(4), clock=fixed_clock)
    prices = [q.price for q in market.next_quotes(20_000)]
    assert abs(sum(prices) / len(prices) - 108.0) < 0.5
    assert min(prices) > 106.0 and max(prices) < 110.0


def test_penny_stock_never_falls_below_one_paisa() -> None:
    market = Market([Instrument("PENNY", "stock", 0.03, 0.01)], random.Random(1), band_min=1.0)
    prices = [q.price for q in market.next_quotes(5000) if q.kind == "stock"]
    assert min(prices) == 0.01


def test_indices_follow_their_constituents() -> None:
    """An index is its seed value times its constituents' mean move since the open."""
    market = make_market(seed=5)
    prev = {i.symbol: i.prev_close for i in load_instruments()}
    opening = {i.symbol: i.open for i in load_instruments()}
    latest = dict(opening)
    checked = 0
    for q in market.next_quotes(20_000):
        if q.kind == "stock":
            latest[q.symbol] = q.price
            continue
        members = market.members(q.symbol)
        expected = opening[q.symbol] * sum(latest[m] / opening[m] for m in members) / len(members)
        assert q.price == pytest.approx(expected, abs=0.006)
        assert q.prev_close == prev[q.symbol]
        checked += 1
    assert checked > 4000
    board = {q.symbol: q for q in market.board_quotes()}
    assert len(board) == 34
    kse30 = opening["KSE30"] * sum(
        board[m].price / opening[m] for m in KSE30_MEMBERS
    ) / len(KSE30_MEMBERS)
    assert board["KSE30"].price == pytest.approx(kse30, abs=0.006)


def test_narrow_index_moves_only_with_its_basket() -> None:
    outside = next(
        i.symbol for i in load_instruments()
        if i.kind == "stock" and i.symbol not in KSE30_MEMBERS and i.symbol not in BR30_MEMBERS
    )
    instruments = [i for i in load_instruments() if i.kind == "index" or i.symbol == outside]
    market = Market(instruments, random.Random(2), index_every=1)
    quotes = market.next_quotes(200)
    # Only the broad indices contain the lone stock, so only they are re-sent.
    assert {q.symbol for q in quotes if q.kind == "index"} == {"KSE100", "BR100"}


def test_same_seed_same_day() -> None:
    a, b = make_market(seed=42), make_market(seed=42)
    assert a.next_quotes(1000) == b.next_quotes(1000)
    assert make_market(seed=43).next_quotes(1000) != make_market(seed=42).next_quotes(1000)


def test_quotes_are_valid_and_unsequenced() -> None:
    ticks = count(1)
    market = Market(load_instruments(), random.Random(0), clock=lambda: next(ticks))
    for q in market.next_quotes(300):
        assert q.seq is None
        assert Quote.from_dict(q.to_dict()) == q


def test_resume_takes_a_restarted_publishers_prices_of_the_same_day_only() -> None:
    earlier = make_market(seed=8)
    earlier.next_quotes(3000)
    board = earlier.board_quotes()
    restarted = make_market(seed=9)
    assert restarted.resume(board) == 30
    assert restarted.board_quotes() == board  # indices follow, from the same open
    # Yesterday's quotes (another previous close) are not today's prices.
    other_day = [Quote.make(q.symbol, q.price, q.prev_close + 0.01, kind=q.kind, ts=q.ts)
                 for q in board]
    assert make_market().resume(other_day) == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"band_pct": -1}, {"band_min": -1}, {"step_pct": -1}, {"spread_pct": 0}, {"index_every": 0}],
)
def test_bad_parameters_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Market(load_instruments(), random.Random(0), **kwargs)
