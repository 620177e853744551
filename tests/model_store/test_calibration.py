"""Lot calibration: matched factors and the bag-likelihood fit, at their boundaries."""
import numpy as np
import pytest

from model_store.calibration import fit_probability, matched_factor, unit_factors
from model_store.serving.probability import ProbabilityModel


def test_matched_factor_picks_the_order_statistic() -> None:
    ratio = np.array([0.5, 0.9, 1.2, 2.0, 3.0])
    # 2 expected bad shots -> the line at the 3rd largest: exactly two ratios lie strictly above it
    assert matched_factor(ratio, 2.0) == 1.2
    assert (ratio > matched_factor(ratio, 2.0)).sum() == 2
    # rounding to whole shots: 1.49 -> 1, 1.5 -> 2
    assert matched_factor(ratio, 1.49) == 2.0
    assert matched_factor(ratio, 1.5) == 1.2
    # no budget: the largest ratio (nothing above the line)
    assert matched_factor(ratio, 0.0) == 3.0
    # a budget beyond the rows: the smallest ratio
    assert matched_factor(ratio, 99.0) == 0.5


def test_forced_alarms_use_up_the_budget() -> None:
    ratio = np.array([0.5, 0.9, 1.2, 2.0, 3.0])
    assert matched_factor(ratio, 3.0, forced_alarms=1) == 1.2  # 2 left for the model
    assert matched_factor(ratio, 3.0, forced_alarms=5) == 3.0  # excursions exceed the lots: nothing more
    assert np.isnan(matched_factor(np.array([]), 1.0))


def test_unit_factors_match_the_lots_per_unit() -> None:
    rng = np.random.default_rng(0)
    n = 1000
    group = np.r_[np.zeros(n, int), np.ones(n, int), np.full(50, 2)]
    path = np.array(["exact"] * n + ["part"] * n + ["exact"] * 50, dtype=object)
    ratio = rng.random(2 * n + 50) * 2
    rate = np.r_[np.full(n, 0.01), np.full(n, 0.05), np.full(50, 0.02)]
    excursion = np.zeros(2 * n + 50)
    excursion[n:n + 10] = 5.0  # ten gross excursions in the part unit
    units = unit_factors(group, path, ratio, excursion, rate, min_rows=200)
    assert set(units.factors) == {(0, "exact"), (1, "part")}  # the 50-row unit is too small
    assert units.alarms[(0, "exact")] == 10  # 1 % of 1000
    assert units.alarms[(1, "part")] == 50  # 5 % of 1000, ten of them excursions
    assert units.expected[(1, "part")] == pytest.approx(50.0)
    assert units.rows[(2, "exact")] == 50
    # the typical factor of a path is its row-weighted median (one unit each here)
    assert units.path_factor == {"exact": units.factors[(0, "exact")], "part": units.factors[(1, "part")]}


def test_rows_without_lots_are_not_counted() -> None:
    units = unit_factors(np.zeros(300, int), np.array(["exact"] * 300, dtype=object), np.linspace(0, 1, 300),
                         np.zeros(300), np.r_[np.full(250, 0.02), np.full(50, np.nan)], min_rows=260)
    assert units.factors == {} and units.rows[(0, "exact")] == 250


def _bags(rng: np.random.Generator, informative: bool) -> tuple:
    """Lots of 200 shots; per-shot truth from a score the lots never see shot by shot."""
    lots, n = 120, 200
    score = np.exp(rng.normal(0, 1, lots * n))
    p_true = 1 / (1 + np.exp(-(-4.0 + 1.5 * np.log(score)))) if informative else np.full(lots * n, 0.03)
    defect = rng.random(lots * n) < p_true
    lot = np.repeat(np.arange(lots), n)
    # lots differ in how their shots score (a drifting process), so the bags carry signal
    shift = np.repeat(rng.normal(0, 0.8, lots), n)
    score = score * np.exp(shift)
    p_true = 1 / (1 + np.exp(-(-4.0 + 1.5 * np.log(score)))) if informative else p_true
    defect = rng.random(lots * n) < p_true
    rate = (np.bincount(lot, weights=defect) / n)[lot]
    return score, lot, rate, defect


def test_bag_fit_recovers_a_slope_from_lot_counts_alone() -> None:
    score, lot, rate, _ = _bags(np.random.default_rng(1), informative=True)
    path = np.array(["exact"] * len(score), dtype=object)
    model = fit_probability(path, score, lot, rate)
    a, b = model.coefficients["exact"]
    assert b == pytest.approx(1.5, abs=0.5) and a == pytest.approx(-4.0, abs=1.0)
    p = model.predict(path, score)
    assert p.sum() == pytest.approx(rate.sum(), rel=0.1)  # expected defects track the lots


def test_uninformative_path_has_no_evidence_and_an_informative_one_has() -> None:
    rng = np.random.default_rng(2)
    score_a, lot_a, rate_a, _ = _bags(rng, informative=True)
    score_b, lot_b, rate_b, _ = _bags(rng, informative=False)
    path = np.array(["exact"] * len(score_a) + ["maker"] * len(score_b), dtype=object)
    model = fit_probability(path, np.r_[score_a, score_b], np.r_[lot_a, lot_b + 10_000], np.r_[rate_a, rate_b],
                            tested=("exact", "maker"))
    assert model.evidence["exact"] > 50
    assert model.evidence["maker"] < 3.84


def test_predict_leaves_unknown_paths_and_missing_scores_empty() -> None:
    model = ProbabilityModel({"exact": (0.0, 1.0)}, {}, 0.0)
    p = model.predict(np.array(["exact", "exact", "part"], dtype=object), np.array([1.0, np.nan, 1.0]))
    assert p[0] == pytest.approx(0.5) and np.isnan(p[1]) and np.isnan(p[2])
    # monotone in score
    q = model.predict(np.array(["exact"] * 3, dtype=object), np.array([0.5, 1.0, 4.0]))
    assert np.all(np.diff(q) > 0)


def test_fit_without_usable_rows_is_empty() -> None:
    model = fit_probability(np.array(["unscorable"], dtype=object), np.array([1.0]), np.array([0]), np.array([0.1]))
    assert model.coefficients == {}


def test_units_are_matched_on_rows_the_model_did_not_train_on() -> None:
    # 300 training rows with tiny ratios, 300 new rows with larger ones; the lots say 1 % bad
    ratio = np.r_[np.linspace(0.1, 0.5, 300), np.linspace(1.0, 3.0, 300)]
    group, path = np.zeros(600, int), np.array(["part"] * 600, dtype=object)
    in_sample = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    rate = np.full(600, 0.01)
    fresh = unit_factors(group, path, ratio, np.zeros(600), rate, min_rows=300, in_sample=in_sample)
    assert fresh.rows[(0, "part")] == 300 and fresh.expected[(0, "part")] == pytest.approx(3.0)
    assert fresh.factors[(0, "part")] == pytest.approx(np.linspace(1.0, 3.0, 300)[-4])  # 3 above it
    # too few new rows (301 needed): every row counts
    every = unit_factors(group, path, ratio, np.zeros(600), rate, min_rows=301, in_sample=in_sample)
    assert every.rows[(0, "part")] == 600 and every.factors[(0, "part")] == pytest.approx(np.linspace(1.0, 3.0, 300)[-7])


def test_unit_size_boundary_order_and_excursion_line() -> None:
    # a small unit sorts before a large one: the small one is skipped, the large one still matched
    group = np.r_[np.zeros(10, int), np.ones(100, int)]
    path = np.array(["exact"] * 110, dtype=object)
    ratio = np.linspace(0.0, 1.0, 110) + 0.01
    excursion = np.zeros(110)
    excursion[10] = 1.0  # exactly the line: not forced
    excursion[11] = 1.5  # beyond: forced
    units = unit_factors(group, path, ratio, excursion, np.full(110, 0.05), min_rows=100)
    assert set(units.factors) == {(1, "exact")}  # exactly min_rows rows is enough
    assert units.excursions[(1, "exact")] == 1
    assert units.alarms[(1, "exact")] == 5  # 5 % of 100, one of them the excursion


def test_a_unit_whose_line_would_be_zero_is_not_calibrated() -> None:
    units = unit_factors(np.zeros(200, int), np.array(["exact"] * 200, dtype=object), np.zeros(200), np.zeros(200),
                         np.full(200, 0.01), min_rows=100)
    assert units.factors == {} and units.path_factor == {}


def test_bag_objective_gradient_matches_finite_differences() -> None:
    from scipy.optimize import check_grad

    from model_store.calibration import bag_objective

    rng = np.random.default_rng(5)
    n = 400
    column = rng.integers(0, 2, n)
    slope_column = np.zeros(n, dtype=np.int64)
    x = rng.normal(0, 1, n)
    bag = rng.integers(0, 20, n)
    share = rng.uniform(0.01, 0.2, 20)
    for theta in (np.array([-3.0, -2.0, 1.5]), np.array([0.5, -1.0, 0.2])):
        f = lambda t: bag_objective(t, column, slope_column, x, bag, share, 2)[0]
        g = lambda t: bag_objective(t, column, slope_column, x, bag, share, 2)[1]
        assert check_grad(f, g, theta) < 1e-6


def test_bag_objective_value_by_hand() -> None:
    from model_store.calibration import bag_objective

    # one bag of two rows, a = 0, b = 1, x = (0, log 3): p = (0.5, 0.75), mean 0.625; lot share 0.5
    value, _ = bag_objective(np.array([0.0, 1.0]), np.zeros(2, int), np.zeros(2, int), np.array([0.0, np.log(3.0)]),
                             np.zeros(2, int), np.array([0.5]), 1)
    assert value == pytest.approx(-(0.5 * np.log(0.625) + 0.5 * np.log(0.375)))


def test_fit_reports_the_likelihood_of_its_coefficients() -> None:
    from model_store.calibration import bag_objective

    score, lot, rate, _ = _bags(np.random.default_rng(3), informative=True)
    path = np.array(["exact"] * len(score), dtype=object)
    model = fit_probability(path, score, lot, rate, tested=("exact",))
    a, b = model.coefficients["exact"]
    x = np.clip(np.log(score), -8, 8)
    value, _ = bag_objective(np.array([a, b]), np.zeros(len(score), int), np.zeros(len(score), int), x, lot,
                             np.bincount(lot, weights=rate) / np.bincount(lot), 1)
    assert model.log_likelihood == pytest.approx(-value * len(score), rel=1e-9)
    assert model.evidence["exact"] > 3.84


def test_empty_fit_has_no_evidence_and_zero_likelihood() -> None:
    model = fit_probability(np.array(["unscorable"], dtype=object), np.array([1.0]), np.array([0]), np.array([0.1]))
    assert model.coefficients == {} and model.evidence == {} and model.log_likelihood == 0.0


def test_too_few_new_rows_keep_every_row() -> None:
    # 400 training rows but only 200 new ones (fewer than min_rows): the unit is matched on all 600
    ratio = np.r_[np.linspace(0.1, 0.5, 400), np.linspace(1.0, 3.0, 200)]
    in_sample = np.r_[np.ones(400, bool), np.zeros(200, bool)]
    units = unit_factors(np.zeros(600, int), np.array(["part"] * 600, dtype=object), ratio, np.zeros(600),
                         np.full(600, 0.01), min_rows=300, in_sample=in_sample)
    assert units.rows[(0, "part")] == 600


def test_a_zero_line_unit_does_not_stop_the_others() -> None:
    group = np.r_[np.zeros(100, int), np.ones(100, int)]
    ratio = np.r_[np.zeros(100), np.linspace(0.01, 1.0, 100)]
    units = unit_factors(group, np.array(["exact"] * 200, dtype=object), ratio, np.zeros(200), np.full(200, 0.02), min_rows=100)
    assert set(units.factors) == {(1, "exact")}


def test_path_factor_is_the_row_weighted_median() -> None:
    from model_store.calibration import _weighted_median

    # weights 1, 1, 4: half the weight (3) is reached at the third value
    assert _weighted_median([1.0, 2.0, 3.0], [1, 1, 4]) == 3.0
    assert _weighted_median([3.0, 1.0, 2.0], [1, 1, 1]) == 2.0
    assert _weighted_median([1.0, 2.0, 3.0, 4.0], [3, 1, 1, 1]) == 1.0  # cumulative 3 of 6 reached at the first


def test_evidence_is_twice_the_log_likelihood_gain_of_a_free_slope() -> None:
    from model_store.calibration import _bag_fit

    rng = np.random.default_rng(4)
    score_a, lot_a, rate_a, _ = _bags(rng, informative=True)
    score_b, lot_b, rate_b, _ = _bags(rng, informative=False)
    path = np.array(["exact"] * len(score_a) + ["maker"] * len(score_b), dtype=object)
    score, lot, rate = np.r_[score_a, score_b], np.r_[lot_a, lot_b + 10_000], np.r_[rate_a, rate_b]
    model = fit_probability(path, score, lot, rate, tested=("exact", "maker"))
    column = (path == "maker").astype(np.int64)
    _, bag = np.unique(lot, return_inverse=True)
    share = np.bincount(bag, weights=rate) / np.bincount(bag)
    x = np.clip(np.log(score), -8, 8)
    _, free = _bag_fit(column, column, x, bag, share, 2, 2)
    theta, restricted = _bag_fit(column, column, x, bag, share, 2, 2, fixed_slope=0)
    assert theta[2] == 0.0  # the restricted slope is held at 0
    assert model.evidence["exact"] == pytest.approx(2.0 * (free - restricted), rel=1e-6)
    assert model.evidence["maker"] < 1.0  # no floor: an uninformative slope gains (almost) nothing
