"""Excursions: band, tolerance and ratio, at their boundaries (hand-computed)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.serving.excursions import (
    ABSOLUTE_FLOOR,
    LASTING_RANK_STEP,
    MAX_RATIO,
    NEW_SETTING_FLOOR,
    RELATIVE_FLOOR,
    excursion_ratios,
    excursion_tolerance,
    lasting_rank,
    training_band,
)


def test_band_is_the_p01_p999_quantiles_ignoring_nan() -> None:
    x = np.column_stack([np.arange(1001, dtype=float), np.r_[np.arange(1000, dtype=float), np.nan]])
    low, high = training_band(x)
    assert low[0] == pytest.approx(1.0) and high[0] == pytest.approx(999.0)  # 0.001 * 1000, 0.999 * 1000
    assert low[1] == pytest.approx(0.999) and high[1] == pytest.approx(998.001)


def test_tolerance_is_a_share_of_the_band_width() -> None:
    # 25 % of a 100-wide band (25) beats 10 % of the magnitude 200 (20)
    assert excursion_tolerance(np.array([100.0]), np.array([200.0]), 0.25)[0] == pytest.approx(25.0)


def test_tolerance_floors_for_fields_that_barely_move() -> None:
    # a 4-wide band at magnitude 14: 10 % of 14 (1.4) beats 25 % of 4 (1.0)
    assert excursion_tolerance(np.array([10.0]), np.array([14.0]), 0.25)[0] == pytest.approx(RELATIVE_FLOOR * 14.0)
    # a field that never moved: the relative floor; on a setting never run: the wider one
    assert excursion_tolerance(np.array([200.0]), np.array([200.0]), 0.25)[0] == pytest.approx(20.0)
    assert excursion_tolerance(np.array([200.0]), np.array([200.0]), 0.25, NEW_SETTING_FLOOR)[0] == pytest.approx(100.0)
    # magnitude is the larger absolute edge (negative fields too)
    assert excursion_tolerance(np.array([-50.0]), np.array([-40.0]), 0.25)[0] == pytest.approx(5.0)
    # a field of zeros: the absolute floor
    assert excursion_tolerance(np.array([0.0]), np.array([0.0]), 0.25)[0] == ABSOLUTE_FLOOR


def test_equal_terms_give_that_value() -> None:
    # 25 % of 80 = 20 = 10 % of 200: both terms of the max are equal
    assert excursion_tolerance(np.array([120.0]), np.array([200.0]), 0.25)[0] == pytest.approx(20.0)


def test_ratio_boundaries() -> None:
    low, high, tol = np.array([10.0]), np.array([14.0]), np.array([1.0])
    x = np.array([[12.0], [14.0], [15.0], [15.5], [9.0], [8.0], [np.nan]])
    ratio = excursion_ratios(x, low, high, tol)[:, 0]
    # inside, on the edge, exactly one tolerance out (the line: not beyond), beyond, below
    assert ratio.tolist() == [0.0, 0.0, 1.0, 1.5, 1.0, 2.0, 0.0]


def test_unmeasured_values_are_no_evidence() -> None:
    ratio = excursion_ratios(np.array([[100.0, 100.0]]), np.zeros(2), np.ones(2), np.ones(2), np.array([[True, False]]))
    assert ratio.tolist() == [[99.0, 0.0]]


def test_infinite_value_is_the_largest_excursion() -> None:
    ratio = excursion_ratios(np.array([[np.inf], [-np.inf]]), np.zeros(1), np.ones(1), np.ones(1))
    assert ratio[:, 0].tolist() == [MAX_RATIO, MAX_RATIO]


@settings(max_examples=200, deadline=None)
@given(
    low=st.floats(-1e6, 1e6), width=st.floats(0, 1e6), value=st.floats(-1e9, 1e9), step=st.floats(0, 1e9),
)
def test_ratio_never_falls_as_a_value_moves_further_out(low: float, width: float, value: float, step: float) -> None:
    lo, hi = np.array([low]), np.array([low + width])
    tol = excursion_tolerance(lo, hi)
    for direction in (1.0, -1.0):
        edge = hi if direction > 0 else lo
        start = edge[0] + direction * abs(value)
        further = start + direction * step
        a = excursion_ratios(np.array([[start]]), lo, hi, tol)[0, 0]
        b = excursion_ratios(np.array([[further]]), lo, hi, tol)[0, 0]
        assert b >= a


def test_ratio_is_distance_over_tolerance() -> None:
    # 3 beyond the band with a tolerance of 2: ratio 1.5 (not 6)
    ratio = excursion_ratios(np.array([[17.0], [4.0]]), np.array([10.0]), np.array([14.0]), np.array([2.0]))
    assert ratio[:, 0].tolist() == [1.5, 3.0]


# -- a lasting excursion's score ---------------------------------------------------------------------
def test_lasting_rank_boundaries_hand_computed() -> None:
    ratio = np.array([1.0, np.nextafter(1.0, np.inf), np.e, np.e ** 2, MAX_RATIO, 0.5, 0.0, np.nan])
    rank = lasting_rank(ratio)
    assert rank[0] == 1.0  # equal to the line: no excursion, no alarm
    assert rank[1] > 1.0  # one ulp beyond: alarms
    assert rank[2] == pytest.approx(1.0 + LASTING_RANK_STEP) and rank[3] == pytest.approx(1.0 + 2 * LASTING_RANK_STEP)
    assert 1.02 < rank[4] < 1.03  # the largest ratio there is stays just above the line
    assert rank[5] == 0.5 and rank[6] == 0.0 and np.isnan(rank[7])  # no excursion: as it is


@given(st.floats(0.0, 1e12), st.floats(0.0, 1e12))
def test_lasting_rank_keeps_the_order_and_the_side_of_the_line(a: float, b: float) -> None:
    ra, rb = lasting_rank(np.array([a, b]))
    assert (ra > 1.0) == (a > 1.0) and (rb > 1.0) == (b > 1.0)
    if a <= b:
        assert ra <= rb
    assert ra <= max(a, 1.0 + 0.03)
