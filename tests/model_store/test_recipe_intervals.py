"""Rate intervals of the recipe ranking, pinned to known values.

Wilson: the published score intervals of Newcombe (1998), "Two-sided confidence intervals for the
single proportion", Statistics in Medicine 17:857-872, table I (method 3), to 4 decimals.
Jeffreys: quantiles of Beta(k + 1/2, n - k + 1/2) from scipy.stats at test time, and for n = 1 a
closed form solved by bisection here (no scipy), so a wrong tail cannot hide behind the library.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.recipe.config import BETA, WILSON
from model_store.recipe.intervals import beta_interval, pearson_dispersion, rate_interval, wilson_interval

# (k, n, lower, upper): Newcombe 1998, table I, "score method without continuity correction"
NEWCOMBE = [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)]


# -- Wilson ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("k, n, lower, upper", NEWCOMBE)
def test_wilson_matches_newcombes_published_intervals(k, n, lower, upper):
    low, high = wilson_interval(np.array([k]), np.array([n]))
    assert round(float(low[0]), 4) == lower and round(float(high[0]), 4) == upper


def test_wilson_by_hand_for_5_of_10():
    # z = 1.959964, p = 0.5: centre 0.5, half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/(4n²))
    z = 1.959963984540054
    half = z / (1 + z * z / 10) * math.sqrt(0.25 / 10 + z * z / 400)
    low, high = wilson_interval(np.array([5]), np.array([10]))
    assert low[0] == pytest.approx(0.5 - half, abs=1e-12) and high[0] == pytest.approx(0.5 + half, abs=1e-12)
    assert round(0.5 - half, 4) == 0.2366


def test_wilson_confidence_moves_the_ends():
    low90, high90 = wilson_interval(np.array([81]), np.array([263]), confidence=0.90)
    low99, high99 = wilson_interval(np.array([81]), np.array([263]), confidence=0.99)
    assert (round(float(low90[0]), 4), round(float(high90[0]), 4)) == (0.2633, 0.3566)
    assert low99[0] < 0.2553 < low90[0] and high90[0] < 0.3662 < high99[0]


def test_wilson_ends_are_exact_at_zero_and_all():
    low, high = wilson_interval(np.array([0, 10, 0]), np.array([10, 10, 0]))
    assert low.tolist()[0] == 0.0 and round(float(high[0]), 4) == 0.2775  # 0 of 10
    assert round(float(low[1]), 4) == 0.7225 and high.tolist()[1] == 1.0  # 10 of 10: the mirror image
    assert (low[2], high[2]) == (0.0, 1.0)  # nothing seen, nothing known


def test_wilson_for_one_trial_by_hand():
    # n = 1: 0 of 1 has upper z²/(1+z²); 1 of 1 has lower 1/(1+z²) (centre ± half in closed form)
    z2 = 1.959963984540054**2
    low, high = wilson_interval(np.array([0, 1]), np.array([1, 1]))
    assert low[0] == 0.0 and high[0] == pytest.approx(z2 / (1 + z2), abs=1e-12)
    assert low[1] == pytest.approx(1 / (1 + z2), abs=1e-12) and high[1] == 1.0
    assert round(float(high[0]), 4) == 0.7935


def test_no_trials_means_nothing_known_whatever_k_says():
    # fractional lot attribution can leave a defect count on zero effective parts
    for interval in (wilson_interval, beta_interval):
        low, high = interval(np.array([0.0, 1.0]), np.array([0.0, 0.0]))
        assert low.tolist() == [0.0, 0.0] and high.tolist() == [1.0, 1.0], interval.__name__


def test_no_trials_raise_no_numpy_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wilson_interval(np.array([0.0, 0.0, 3.0]), np.array([0.0, 5.0, 0.0]))
        beta_interval(np.array([0.0, 0.0]), np.array([0.0, 5.0]))


def test_wilson_takes_fractional_and_broadcast_counts():
    low, high = wilson_interval(np.array([2.5, 5.0]), 10.0)
    whole_low, whole_high = wilson_interval(np.array([5]), np.array([10]))
    assert low[1] == whole_low[0] and high[1] == whole_high[0]
    assert 0.0 < low[0] < 0.25 < high[0] < whole_high[0]


# -- Jeffreys -------------------------------------------------------------------------------------
def _bisect(cdf, target: float) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < target else (lo, mid)
    return (lo + hi) / 2


def test_jeffreys_for_one_trial_by_hand():
    # Beta(1/2, 3/2) has CDF F(x) = (2/pi) * (asin(sqrt(x)) + sqrt(x (1 - x))).
    def cdf(x: float) -> float:
        return 2 / math.pi * (math.asin(math.sqrt(x)) + math.sqrt(x * (1 - x)))

    upper_0_of_1 = _bisect(cdf, 0.975)  # two-sided 95 %: 2.5 % in each tail
    low, high = beta_interval(np.array([0, 1]), np.array([1, 1]))
    assert low[0] == 0.0 and high[0] == pytest.approx(upper_0_of_1, abs=1e-9)
    assert round(upper_0_of_1, 4) == 0.8533
    # 1 of 1 is the mirror image: Beta(3/2, 1/2)
    assert low[1] == pytest.approx(1 - upper_0_of_1, abs=1e-9) and high[1] == 1.0


@pytest.mark.parametrize("confidence", [0.95, 0.90, 0.99])
@pytest.mark.parametrize("k, n", [(81, 263), (15, 148), (1, 29), (5, 10), (3.5, 40.25)])
def test_jeffreys_matches_scipy_beta_quantiles(k, n, confidence):
    from scipy.stats import beta

    tail = (1 - confidence) / 2
    low, high = beta_interval(np.array([k]), np.array([n]), confidence)
    assert low[0] == pytest.approx(beta.ppf(tail, k + 0.5, n - k + 0.5), abs=1e-12)
    assert high[0] == pytest.approx(beta.ppf(1 - tail, k + 0.5, n - k + 0.5), abs=1e-12)


def test_jeffreys_ends_at_zero_all_and_nothing():
    low, high = beta_interval(np.array([0, 20, 0]), np.array([20, 20, 0]))
    assert (low[0], low[2], high[1], high[2]) == (0.0, 0.0, 1.0, 1.0)
    assert 0.0 < high[0] < 0.2 and 0.8 < low[1] < 1.0


def test_jeffreys_with_more_successes_than_trials_is_still_an_interval():
    # fractional lot attribution can round k a hair above n; the interval must stay inside [0, 1]
    low, high = beta_interval(np.array([10.000001]), np.array([10.0]))
    assert 0.0 < low[0] < 1.0 and high[0] == 1.0


# -- both -----------------------------------------------------------------------------------------
def test_rate_interval_dispatches_by_method_and_refuses_others():
    k, n = np.array([15]), np.array([148])
    assert [a.tolist() for a in rate_interval(k, n, 0.9, WILSON)] == [a.tolist() for a in wilson_interval(k, n, 0.9)]
    assert [a.tolist() for a in rate_interval(k, n, 0.9, BETA)] == [a.tolist() for a in beta_interval(k, n, 0.9)]
    assert [a.tolist() for a in rate_interval(k, n, 0.95)] == [a.tolist() for a in wilson_interval(k, n)]
    with pytest.raises(ValueError, match="unknown interval method 'normal'"):
        rate_interval(k, n, 0.95, "normal")


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
       st.sampled_from([0.8, 0.9, 0.95, 0.99]), st.sampled_from([wilson_interval, beta_interval]))
def test_intervals_hold_the_rate_and_widen_with_confidence(case, confidence, interval):
    k, n = case
    low, high = interval(np.array([k]), np.array([n]), confidence)
    wider_low, wider_high = interval(np.array([k]), np.array([n]), min(0.999, confidence + 0.049))
    assert 0.0 <= low[0] <= k / n <= high[0] <= 1.0
    assert wider_low[0] <= low[0] and high[0] <= wider_high[0]
    if 0 < k < n:
        assert low[0] > 0.0 and high[0] < 1.0


# -- dispersion -----------------------------------------------------------------------------------
def test_pearson_dispersion_by_hand():
    # units of 10 at a fitted rate of 0.5: (2-5)²/2.5 + (8-5)²/2.5 = 7.2 on 2 units - 1 rate = 1 df
    assert pearson_dispersion(np.array([2, 8]), np.array([10, 10]), np.array([0.5, 0.5]), 1) == pytest.approx(7.2)
    # three units, two rates fitted: (1-2)²/1.6 + (3-2)²/1.6 + (5-5)²/2.5 = 1.25 on 1 df
    assert pearson_dispersion(np.array([1, 3, 5]), np.array([10, 10, 10]), np.array([0.2, 0.2, 0.5]), 2) == pytest.approx(1.25)


def test_pearson_dispersion_counts_single_shot_units():
    # units of one shot each at 0.5: (1-0.5)²/0.25 + (0-0.5)²/0.25 = 2 on 2 units - 1 rate
    assert pearson_dispersion(np.array([1, 0]), np.array([1, 1]), np.array([0.5, 0.5]), 1) == pytest.approx(2.0)


def test_pearson_dispersion_never_narrows_and_needs_a_degree_of_freedom():
    assert pearson_dispersion(np.array([5, 5]), np.array([10, 10]), np.array([0.5, 0.5]), 1) == 1.0  # chi² 0
    assert pearson_dispersion(np.array([2, 8]), np.array([10, 10]), np.array([0.5, 0.5]), 2) == 1.0  # 0 df
    assert pearson_dispersion(np.array([]), np.array([]), np.array([]), 0) == 1.0


def test_pearson_dispersion_ignores_units_without_trials_or_with_a_certain_rate():
    base = pearson_dispersion(np.array([2, 8]), np.array([10, 10]), np.array([0.5, 0.5]), 1)
    with_noise = pearson_dispersion(np.array([2, 8, 0, 0, 4]), np.array([10, 10, 0, 5, 4]),
                                    np.array([0.5, 0.5, 0.3, 0.0, 1.0]), 1)
    assert with_noise == base
