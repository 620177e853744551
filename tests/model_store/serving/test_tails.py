"""Tail evidence (model_store/serving/tails.py) at its boundaries, hand-computed, and its properties.

The hand-computed cases use a table whose quantiles are exactly ``100 x level`` (a uniform field on
0..100): the table's CDF at a value ``v`` inside it is then ``v / 100``.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.serving.tails import CENTRAL_TAIL, EXCESS_GAIN, TAIL_LEVELS, TailBank, TailTable, _central_spread, _knots, tail_evidence

ROWS = 1000  # history rows behind the hand-made tables: 1 / (ROWS + 1) > TAIL_LEVELS[0]


def _uniform(rows: int = ROWS) -> TailTable:
    return TailTable(TAIL_LEVELS[:, None] * 100.0, np.array([rows]))


def _one(table: TailTable, value: float) -> float:
    return float(tail_evidence(table, np.array([[value]]))[0, 0])


def test_the_levels_are_sorted_dense_in_both_tails_and_symmetric() -> None:
    assert np.all(np.diff(TAIL_LEVELS) > 0)
    assert TAIL_LEVELS[0] == pytest.approx(1e-4) and TAIL_LEVELS[-1] == pytest.approx(1 - 1e-4)
    assert np.allclose(TAIL_LEVELS, 1.0 - TAIL_LEVELS[::-1])


def test_a_value_at_the_median_carries_no_evidence() -> None:
    assert _one(_uniform(), 50.0) == 0.0


def test_the_central_half_carries_none_and_evidence_starts_at_p25_and_p75() -> None:
    table = _uniform()
    for inside in (26.0, 40.0, 60.0, 74.0):
        assert _one(table, inside) == 0.0, inside
    # exactly at the p25 / p75 boundary: two-sided tail 2 x 0.25 = CENTRAL_TAIL, -log(0.5) - log 2 = 0
    assert _one(table, 25.0) == pytest.approx(0.0, abs=1e-12)
    assert _one(table, 75.0) == pytest.approx(0.0, abs=1e-12)
    # just outside: cdf 0.24, two-sided tail 0.48, evidence log(0.5 / 0.48)
    assert _one(table, 24.0) == pytest.approx(np.log(0.5 / 0.48))
    assert _one(table, 76.0) == pytest.approx(np.log(0.5 / 0.48))
    # deeper in a tail: cdf 0.05, tail 0.1, evidence log(0.5 / 0.1) = log 5
    assert _one(table, 5.0) == pytest.approx(np.log(5.0))
    assert CENTRAL_TAIL == 0.5


def test_at_the_tables_end_and_beyond_it_evidence_grows_linearly_per_central_spread() -> None:
    table = _uniform()
    top = 100.0 * TAIL_LEVELS[-1]  # 99.99, the table's last value (level 1 - 1e-4)
    at_end = -np.log(2 * 1e-4) - np.log(1.0 / CENTRAL_TAIL)  # ~7.824
    assert _one(table, top) == pytest.approx(at_end)
    # Beyond: the tail stays at the end's, plus EXCESS_GAIN per central spread (p25..p75 = 50) of
    # distance past the end.
    for distance in (0.5, 50.0, 500.0):
        expected = at_end + EXCESS_GAIN * distance / 50.0
        assert _one(table, top + distance) == pytest.approx(expected), distance
    # 10 spreads out ranks above 1 spread out by 9 x EXCESS_GAIN, not a tie at the last level
    assert _one(table, top + 500.0) - _one(table, top + 50.0) == pytest.approx(9 * EXCESS_GAIN)
    # the low side mirrors it
    bottom = 100.0 * TAIL_LEVELS[0]
    assert _one(table, bottom - 50.0) == pytest.approx(at_end + EXCESS_GAIN)


@pytest.mark.parametrize("rows", [20, 200, 10**6])
def test_no_jump_at_the_tables_end_whatever_its_rows(rows) -> None:
    # (a first version fell by ~2.3 just past the end of a table of few rows, 1 / (rows + 1) >
    # the last level, and rose by log 2 past a long one)
    table = _uniform(rows=rows)
    top = 100.0 * TAIL_LEVELS[-1]
    assert _one(table, top + 1e-9) == pytest.approx(_one(table, top), abs=1e-6)
    assert _one(table, top + 1e-9) >= _one(table, top)


def test_a_missing_value_and_a_field_without_history_give_zero() -> None:
    table = TailTable(np.column_stack([TAIL_LEVELS * 100.0, np.full(len(TAIL_LEVELS), np.nan)]), np.array([ROWS, 0]))
    out = tail_evidence(table, np.array([[np.nan, 5.0], [1.0, 1e9]]))
    assert out[0, 0] == 0.0 and out[0, 1] == 0.0 and out[1, 1] == 0.0
    assert out[1, 0] > 0
    assert out.shape == (2, 2)


def test_a_constant_field_its_own_value_is_normal_any_change_grows_with_its_distance() -> None:
    table = TailTable.fit(np.full((ROWS, 1), 5.0))
    assert np.all(table.values == 5.0) and table.rows[0] == ROWS
    assert _one(table, 5.0) == 0.0  # mid-rank of the tie: the median itself
    # beyond its one value on either side: no spread anywhere, so 1 % of the magnitude (0.05) is
    # the unit of distance; 0.5 away is 10 units, 2 x 10 = 20 evidence
    assert _one(table, 5.5) == pytest.approx(EXCESS_GAIN * 0.5 / 0.05)
    assert _one(table, 4.5) == pytest.approx(EXCESS_GAIN * 0.5 / 0.05)
    assert _one(table, 5.0001) > _one(table, 5.0)
    # a rounding difference is not a change (the residual of a constant field carries them)
    assert _one(table, np.nextafter(5.0, 6.0)) == pytest.approx(0.0, abs=1e-9)


def test_a_plateau_of_a_discrete_field_is_read_at_its_middle() -> None:
    # 80 % of the history is exactly 10: that value is the field's usual one, not a tail
    x = np.r_[np.full(800, 10.0), np.linspace(0.0, 9.0, 100), np.linspace(11.0, 20.0, 100)][:, None]
    table = TailTable.fit(x)
    assert _one(table, 10.0) == 0.0
    assert _one(table, 0.0) > _one(table, 5.0) > 0.0


def test_fit_counts_measured_rows_and_round_trips_its_arrays() -> None:
    x = np.column_stack([np.arange(10.0), np.r_[np.arange(5.0), [np.nan] * 5]])
    table = TailTable.fit(x)
    assert table.rows.tolist() == [10, 5] and table.values.shape == (len(TAIL_LEVELS), 2)
    assert table.values[0, 1] == pytest.approx(np.quantile(np.arange(5.0), TAIL_LEVELS[0]))
    back = TailTable.from_arrays(table.to_arrays("p_"), "p_")
    assert np.array_equal(back.values, table.values) and np.array_equal(back.rows, table.rows)


# -- properties -----------------------------------------------------------------------------------
histories = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(history=histories, rounding=st.sampled_from([None, 0, 1]),
       values=st.lists(st.floats(-1e12, 1e12, allow_nan=False), min_size=1, max_size=10))
def test_evidence_is_finite_and_never_negative(history, rounding, values) -> None:
    x = np.array(history) if rounding is None else np.round(history, rounding)  # rounding: ties
    table = TailTable.fit(x[:, None])
    out = tail_evidence(table, np.array(values)[:, None])
    assert np.all(np.isfinite(out)) and np.all(out >= 0)


@settings(max_examples=80, deadline=None)
@given(history=histories, rounding=st.sampled_from([None, 0]), a=st.floats(0, 1e6), b=st.floats(0, 1e6), up=st.booleans())
def test_evidence_never_falls_as_a_value_moves_away_from_the_median(history, rounding, a, b, up) -> None:
    x = np.array(history) if rounding is None else np.round(history, rounding)
    table = TailTable.fit(x[:, None])
    median = float(np.interp(0.5, TAIL_LEVELS, table.values[:, 0]))
    near, far = sorted((a, b))
    sign = 1.0 if up else -1.0
    out = tail_evidence(table, np.array([[median + sign * near], [median + sign * far]]))
    assert out[1, 0] >= out[0, 0] - 1e-9


@settings(max_examples=60, deadline=None)
@given(history=st.lists(st.integers(-5, 5), min_size=1, max_size=60), scale=st.sampled_from([0.2, 1.0, 7.3]),
       pick=st.integers(0, 59), up=st.booleans())
def test_evidence_is_continuous_at_the_tied_values_of_a_discrete_field(history, scale, pick, up) -> None:
    # a value a rounding step off a tied table value (the residuals of a discrete field, computed
    # in another batch) must read the same evidence, or the verdict depends on the batch
    x = np.array(history, dtype=float) * scale
    table = TailTable.fit(x[:, None])
    value = x[pick % len(x)]
    nudged = np.nextafter(value, np.inf if up else -np.inf)
    out = tail_evidence(table, np.array([[value], [nudged]]))
    assert abs(out[1, 0] - out[0, 0]) < 1e-6


def _reference_evidence(table: TailTable, x: np.ndarray) -> np.ndarray:
    """The rule written out one column at a time with np.interp (what the bank vectorises)."""
    out = np.zeros(x.shape)
    for j in range(x.shape[1]):
        grid = table.values[:, j]
        if np.isnan(grid).any() or table.rows[j] == 0:
            continue
        ok = ~np.isnan(x[:, j])
        v = x[ok, j]
        knots, cdf_at = _knots(grid)
        cdf = np.interp(v, knots, cdf_at)
        tail = 2.0 * np.minimum(cdf, 1.0 - cdf)
        evidence = np.maximum(-np.log(np.maximum(tail, 1e-300)) - np.log(1.0 / CENTRAL_TAIL), 0.0)
        excess = np.maximum(v - grid[-1], 0.0) + np.maximum(grid[0] - v, 0.0)
        out[np.flatnonzero(ok), j] = evidence + EXCESS_GAIN * excess / _central_spread(grid)
    return out


value_lists = st.lists(st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(np.nan), st.just(np.inf), st.just(-np.inf)),
                       min_size=1, max_size=12)


@settings(max_examples=80, deadline=None)
@given(histories=st.lists(st.tuples(histories, histories), min_size=1, max_size=4), rounding=st.sampled_from([None, 0]),
       values=value_lists, picks=st.lists(st.integers(0, 3), min_size=12, max_size=12), empty=st.booleans())
def test_a_bank_of_tables_reads_every_row_against_its_own_table_as_the_rule_does(histories, rounding, values, picks, empty) -> None:
    tables = []
    for a, b in histories:
        a = np.array(a) if rounding is None else np.round(a, rounding)
        b = np.array(b) if rounding is None else np.round(b, rounding)
        x = np.full((max(len(a), len(b)), 2), np.nan)
        x[: len(a), 0], x[: len(b), 1] = a, b
        tables.append(TailTable.fit(x))
    if empty:  # a column with no history: no evidence from it
        tables.append(TailTable(np.full((len(TAIL_LEVELS), 2), np.nan), np.array([0, 0])))
    bank = TailBank.of(tables)
    x = np.column_stack([values, values[::-1]])
    index = np.array([picks[i] % len(tables) for i in range(len(x))])
    out = bank.evidence(index, x)
    expected = np.vstack([_reference_evidence(tables[t], x[i : i + 1]) for i, t in enumerate(index)])
    assert np.allclose(out, expected, rtol=1e-12, atol=1e-12, equal_nan=False), (out, expected)
    assert np.array_equal(np.isinf(out), np.isinf(expected))


def test_a_large_batch_is_evaluated_in_bounded_pieces_with_the_same_result() -> None:
    rng = np.random.default_rng(3)
    tables = [TailTable.fit(rng.normal(size=(500, 3)) * (t + 1)) for t in range(3)]
    bank = TailBank.of(tables)
    x, index = rng.normal(size=(5000, 3)) * 3, rng.integers(0, 3, 5000)
    whole = bank.evidence(index, x)
    object.__setattr__(bank, "CHUNK_ELEMENTS", 7 * len(TAIL_LEVELS) * 3)  # 7 rows a piece
    assert np.array_equal(bank.evidence(index, x), whole)


def test_a_bank_refuses_tables_of_another_shape() -> None:
    with pytest.raises(ValueError, match="tail table 1 has shape"):
        TailBank.of([TailTable.fit(np.zeros((5, 2))), TailTable.fit(np.zeros((5, 3)))])


def test_a_denormal_spread_is_floored_so_distances_stay_finite() -> None:
    table = TailTable.fit(np.array([[0.0], [1.1125369292536007e-308]]))
    assert np.isfinite(_one(table, 1.0)) and _one(table, 1.0) > 0
