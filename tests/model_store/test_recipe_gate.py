"""The better-than-history test a pick must pass to be recommended (model_store.recipe.gate).

Every figure below is computed by hand from the formulas in the module doc: the shrunk rates, the
Fisher information of pure lots (diagonal: parts / (p (1 - p))), the Bonferroni quantile, and the
boundary where the corrected interval of the difference reaches 0.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from model_store.recipe.gate import Difference, corrected_z, difference, difference_json, not_shown_better, shrink
from model_store.recipe.intervals import pearson_dispersion

PURE = np.array([[1.0, 0.0], [0.0, 1.0]])  # lot 1: only the picked setting ran; lot 2: only the rest
GOOD, BAD = np.array([995.0, 980.0]), np.array([5.0, 20.0])  # 5 of 1,000 against 20 of 1,000


def test_bonferroni_quantile_by_hand():
    assert corrected_z(0.95, 1) == pytest.approx(1.959964, abs=1e-6)
    assert corrected_z(0.95, 2) == pytest.approx(2.241403, abs=1e-6)  # 1 - 0.05 / 2 two-sided: 0.0125 per tail
    assert corrected_z(0.95, 5) == pytest.approx(2.575829, abs=1e-6)  # 0.005 per tail
    assert corrected_z(0.90, 1) == pytest.approx(1.644854, abs=1e-6)
    assert corrected_z(0.95, 0) == corrected_z(0.95, 1)  # no candidates counts as one


def test_shrinkage_pulls_toward_the_pooled_rate_by_one_defects_worth():
    rates, prior = shrink(np.array([0.0, 10.0]), np.array([300.0, 1000.0]), 10 / 1300, 1.0)
    assert prior.tolist() == pytest.approx([130.0, 130.0])  # 1 defect at 10/1300 is 130 parts
    assert rates.tolist() == pytest.approx([1 / 430, 11 / 1130])
    two, _ = shrink(np.array([0.0]), np.array([300.0]), 0.01, 2.0)
    assert two.tolist() == pytest.approx([2 / 500])


@pytest.mark.parametrize("pooled, prior_defects", [(0.0, 1.0), (0.01, 0.0)])
def test_no_prior_without_defects_or_strength(pooled, prior_defects):
    rates, prior = shrink(np.array([0.0, 3.0, 0.0, 1.0]), np.array([300.0, 100.0, 0.0, 0.5]), pooled, prior_defects)
    assert rates.tolist() == [0.0, 0.03, 0.0, 2.0] and prior.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_shrink_takes_plain_lists():
    rates, prior = shrink([0, 10], [300, 1000], 10 / 1300, 1)
    assert rates.tolist() == pytest.approx([1 / 430, 11 / 1130]) and prior.tolist() == pytest.approx([130.0, 130.0])


def test_pure_lots_without_prior_are_the_textbook_difference():
    d = difference(PURE, GOOD, BAD, 1, prior_defects=0.0, overdispersion=False)
    sd = np.sqrt(0.005 * 0.995 / 1000 + 0.02 * 0.98 / 1000)
    assert (d.picked, d.rest) == pytest.approx((0.005, 0.02))
    assert d.upper == pytest.approx(-0.015 + 1.959964 * sd, abs=1e-7) and d.better
    assert (d.candidates, d.dispersion) == (1, 1.0) and d.z == pytest.approx(1.959964, abs=1e-6)
    lists = difference([[1, 0], [0, 1]], [995, 980], [5, 20], 1, prior_defects=0.0, overdispersion=False)
    assert lists == d  # plain lists of integers read the same


def test_pure_lots_with_the_prior_by_hand():
    d = difference(PURE, GOOD, BAD, 1, prior_defects=1.0, overdispersion=False)
    # pooled 25 / 2000: the prior is 80 parts; rates (5 + 1) / 1080 and (20 + 1) / 1080
    p0, p1 = 6 / 1080, 21 / 1080
    sd = np.sqrt(p0 * (1 - p0) / 1080 + p1 * (1 - p1) / 1080)
    assert (d.picked, d.rest) == pytest.approx((p0, p1))
    assert d.upper == pytest.approx(p0 - p1 + 1.959964 * sd, abs=1e-7)


@pytest.mark.parametrize("candidates, better", [(20, True), (21, False)])
def test_more_candidates_widen_the_interval_past_zero(candidates, better):
    # -0.015 + z * 0.0049573 crosses 0 at z = 3.0259: k = 20 gives 3.0233 (just below 0), k = 21 gives 3.0381.
    d = difference(PURE, GOOD, BAD, candidates, prior_defects=0.0, overdispersion=False)
    assert d.better is better and abs(d.upper) < 1e-4 and d.candidates == candidates


def test_the_line_itself_is_not_better():
    assert not Difference(0.01, 0.01, 0.0, 1.96, 1, 1.0).better  # the interval touches 0
    assert Difference(0.01, 0.02, -1e-12, 1.96, 1, 1.0).better
    assert not Difference(0.01, 0.02, float("inf"), 1.96, 1, 1.0).better


def test_a_worse_pick_is_never_better():
    d = difference(PURE, GOOD[::-1], BAD[::-1], 1, prior_defects=0.0, overdispersion=False)
    assert d.upper > 0.015 and not d.better


def test_day_to_day_dispersion_widens_by_its_square_root():
    shares = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    bad = np.array([0.0, 10.0, 2.0, 30.0, 10.0, 20.0])
    good = 1000.0 - bad
    plain = difference(shares, good, bad, 1, prior_defects=0.0, overdispersion=False)
    wide = difference(shares, good, bad, 1, prior_defects=0.0)
    fitted = shares @ np.array([12 / 3000, 60 / 3000])
    phi = pearson_dispersion(bad, good + bad, fitted, 2)
    assert phi > 1 and wide.dispersion == pytest.approx(phi)
    diff = 12 / 3000 - 60 / 3000
    assert (wide.upper - diff) == pytest.approx((plain.upper - diff) * np.sqrt(phi))


def test_mixed_days_are_split_and_their_covariance_counts():
    # Day 1 ran 3/4 picked, day 2 1/4 picked: EM separates the two, with less certainty than pure lots.
    shares = np.array([[0.75, 0.25], [0.25, 0.75]])
    bad = np.array([0.75 * 1000 * 0.005 + 0.25 * 1000 * 0.02, 0.25 * 1000 * 0.005 + 0.75 * 1000 * 0.02])
    mixed = difference(shares, 1000 - bad, bad, 1, prior_defects=0.0, overdispersion=False)
    pure = difference(PURE, GOOD, BAD, 1, prior_defects=0.0, overdispersion=False)
    assert (mixed.picked, mixed.rest) == pytest.approx((0.005, 0.02), abs=1e-6)
    # Information of the mixture: sum over days of parts / (q (1 - q)) s s^T; the contrast's variance by hand.
    q = shares @ np.array([0.005, 0.02])
    info = sum(1000 / (qi * (1 - qi)) * np.outer(s, s) for qi, s in zip(q, shares))
    var = np.array([1, -1]) @ np.linalg.inv(info) @ np.array([1, -1])
    assert mixed.upper == pytest.approx(-0.015 + 1.959964 * np.sqrt(var), abs=1e-6)
    assert mixed.upper > pure.upper


def test_settings_that_always_ran_together_cannot_be_told_apart():
    same = np.array([[0.5, 0.5], [0.5, 0.5]])
    d = difference(same, GOOD, BAD, 2, prior_defects=0.0, overdispersion=False)
    assert d.upper == float("inf") and not d.better
    # EM keeps the pooled rate for both (25 of 2,000); the other figures are reported as for any test.
    assert (d.picked, d.rest) == pytest.approx((25 / 2000, 25 / 2000)) and d.candidates == 2 and d.dispersion == 1.0
    assert d.z == pytest.approx(2.241403, abs=1e-6)


def test_the_default_prior_is_one_defect():
    assert difference(PURE, GOOD, BAD, 1) == difference(PURE, GOOD, BAD, 1, 0.95, 1.0, True)


def test_a_defect_free_setting_without_prior_is_exact_not_infinite():
    # 0 of 1,000 against 20 of 1,000 with no prior: the picked rate is 0 (its variance 0, not a division by 0).
    d = difference(PURE, np.array([1000.0, 980.0]), np.array([0.0, 20.0]), 1, prior_defects=0.0, overdispersion=False)
    assert d.picked == 0.0 and d.upper == pytest.approx(-0.02 + 1.959964 * np.sqrt(0.02 * 0.98 / 1000), abs=1e-7)


def test_an_all_defective_rest_is_exact_not_infinite():
    d = difference(PURE, np.array([995.0, 0.0]), np.array([5.0, 1000.0]), 1, prior_defects=0.0, overdispersion=False)
    assert d.rest == 1.0 and d.upper == pytest.approx(0.005 - 1.0 + 1.959964 * np.sqrt(0.005 * 0.995 / 1000), abs=1e-7)


def test_a_prior_of_one_part_still_counts():
    # 5 of 10 against 10 of 20: pooled 0.5, so half a defect is 1 part; both rates 0.5.
    d = difference(PURE, np.array([5.0, 10.0]), np.array([5.0, 10.0]), 1, prior_defects=0.5, overdispersion=False)
    assert (d.picked, d.rest) == pytest.approx((0.5, 0.5))
    assert d.upper == pytest.approx(1.959964 * np.sqrt(0.25 / 11 + 0.25 / 21), abs=1e-6)


@pytest.mark.parametrize("shares", [np.array([[1.0, 0.0], [1.0, 0.0]]), np.zeros((0, 2))])
def test_no_rest_or_no_units_is_never_better(shares):
    good, bad = GOOD[: len(shares)], BAD[: len(shares)]
    d = difference(shares, good, bad, 3)
    assert d.upper == float("inf") and not d.better and d.candidates == 3
    assert np.isnan(d.picked) and np.isnan(d.rest) and d.dispersion == 1.0
    assert d.z == pytest.approx(NormalDist().inv_cdf(1 - 0.05 / 3 / 2))


def test_units_without_parts_are_ignored():
    shares = np.vstack([PURE, [[0.5, 0.5]]])
    with_empty = difference(shares, np.append(GOOD, 0.0), np.append(BAD, 0.0), 1, overdispersion=False)
    assert with_empty == difference(PURE, GOOD, BAD, 1, overdispersion=False)


def test_reasons_in_plain_words():
    assert not_shown_better(Difference(0.005, 0.02, -0.001, 1.96, 1, 1.0)) is None
    assert not_shown_better(Difference(0.005, 0.006, 0.0042, 2.39, 3, 1.0)) == (
        "not shown better than the rest of the item's history: 0.50% against 0.60%, and the difference could be as "
        "high as +0.42% (interval corrected for 3 candidate settings)")
    assert not_shown_better(Difference(0.005, 0.006, float("inf"), 2.39, 3, 1.0)) == (
        "it cannot be told apart from the rest of the item's history (it never ran apart from it, or one of the two "
        "has no evidence)")


def test_published_figures():
    assert difference_json(Difference(0.0051234567, 0.02, float("inf"), 1.959964, 2, 1.5)) == {
        "picked_rate": 0.005123, "rest_rate": 0.02, "difference_upper": None, "candidates": 2, "z": 1.959964,
        "dispersion": 1.5, "better": False}
    assert difference_json(Difference(float("nan"), 0.02, -0.001, 1.96, 1, 1.0))["picked_rate"] is None
    assert difference_json(Difference(0.01, 0.02, -0.001, 1.96, 1, 1.0))["better"] is True


def test_the_rest_split_by_cluster_is_their_shot_weighted_mean():
    # Picked 5 of 1,000; the rest two clusters on their own days: 10 of 1,000 and 40 of 1,000, weighted 3 : 1.
    shares = np.eye(3)
    good, bad = np.array([995.0, 990.0, 960.0]), np.array([5.0, 10.0, 40.0])
    d = difference(shares, good, bad, 1, prior_defects=0.0, overdispersion=False, weights=np.array([3.0, 1.0]))
    rest = 0.75 * 0.01 + 0.25 * 0.04
    variance = 0.005 * 0.995 / 1000 + 0.75**2 * 0.01 * 0.99 / 1000 + 0.25**2 * 0.04 * 0.96 / 1000
    assert (d.picked, d.rest) == pytest.approx((0.005, rest))
    assert d.upper == pytest.approx(0.005 - rest + 1.959964 * np.sqrt(variance), abs=1e-7)
    equal = difference(shares, good, bad, 1, prior_defects=0.0, overdispersion=False)  # default: equal weights
    assert equal.rest == pytest.approx(0.025)


def test_a_rest_cluster_without_any_unit_is_left_out_of_the_mean():
    shares = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # the third column never ran on a lot
    d = difference(shares, GOOD, BAD, 1, prior_defects=0.0, overdispersion=False, weights=np.array([1.0, 9.0]))
    assert d.rest == pytest.approx(0.02) and d.upper == pytest.approx(
        difference(PURE, GOOD, BAD, 1, prior_defects=0.0, overdispersion=False).upper)


def test_a_picked_column_without_any_unit_is_never_better():
    shares = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert difference(shares, GOOD, BAD, 1).upper == float("inf")
