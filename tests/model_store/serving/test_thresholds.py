import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.config import ThresholdConfig
from model_store.serving.thresholds import decide, effective_thresholds, fit_threshold, loss_summary


def test_loss_summary_reports_cv_and_quantiles() -> None:
    losses = np.array([1.0, 2.0, 3.0, 4.0])
    summary = loss_summary(losses)
    assert summary["mean"] == 2.5 and summary["max"] == 4.0
    assert summary["cv"] == pytest.approx(np.std(losses) / 2.5)
    assert summary["q50"] == pytest.approx(2.5)


def test_base_threshold_excludes_presumed_bad_share() -> None:
    losses = np.concatenate([np.linspace(0.0, 1.0, 990), np.full(10, 50.0)])  # 1 % extreme defects
    clean = fit_threshold(losses, 0.0, ThresholdConfig(fixed_quantile=0.9))
    aware = fit_threshold(losses, 0.01, ThresholdConfig(fixed_quantile=0.9))
    assert clean.base == 50.0  # plain maximum when the lots say nothing was bad
    assert aware.base == pytest.approx(np.quantile(losses, 0.99))  # the worst 1 % is presumed defective
    assert aware.max_presumed_good == aware.base and aware.base >= aware.fixed


def test_fixed_quantile_wins_when_it_is_higher() -> None:
    # 100 losses 1..100; lots say 50 % bad: presumed-good max = q0.5 = 50.5; the fixed q0.9 = 90.1 wins
    losses = np.arange(1.0, 101.0)
    t = fit_threshold(losses, 0.5, ThresholdConfig(fixed_quantile=0.9))
    assert t.fixed == pytest.approx(90.1) and t.max_presumed_good == pytest.approx(50.5)
    assert t.base == pytest.approx(90.1)
    # lots at 0 %: the maximum (100) beats the fixed quantile
    assert fit_threshold(losses, 0.0, ThresholdConfig(fixed_quantile=0.9)).base == 100.0
    # a lot share above one half is capped at one half; NaN is no information (plain maximum)
    assert fit_threshold(losses, 0.9, ThresholdConfig(fixed_quantile=0.1)).max_presumed_good == pytest.approx(50.5)
    assert fit_threshold(losses, float("nan"), ThresholdConfig(fixed_quantile=0.1)).base == 100.0


def test_effective_threshold_exact_values() -> None:
    t = fit_threshold(np.array([1.0, 3.0]), 0.0, ThresholdConfig(cv_gain=0.1, distance_gain=0.5, margin_limit=0.5))
    assert t.base == 3.0 and t.cv == pytest.approx(0.5)  # std 1 / mean 2
    line = effective_thresholds(t, np.array([0.0, 0.2, 0.9, 100.0]))
    # 3 x (1 + 0.1*0.5 + 0.5*d), the weight capped at 0.5: 0.9 -> 0.05 + 0.45 = 0.5 exactly (the cap)
    assert line == pytest.approx([3.0 * 1.05, 3.0 * 1.15, 3.0 * 1.5, 3.0 * 1.5])


def test_decide_at_the_line() -> None:
    loss = np.array([0.1, 0.5, 1.0, 1.1])
    margin, score, anomaly = decide(loss, np.full(4, 1.0))
    assert list(anomaly) == [False, False, False, True]  # equal to the line: not anomalous
    assert np.allclose(margin, loss - 1.0) and np.allclose(score, loss)


def test_decide_excursion_term_of_the_max() -> None:
    loss = np.array([0.5, 0.5, 3.0, 0.5])
    excursion = np.array([0.0, 1.0, 2.0, 1.5])
    margin, score, anomaly = decide(loss, np.full(4, 2.0), excursion)
    # model term wins for rows 0 and 2 (0.25 vs 0; 1.5 vs 2.0 -> excursion wins row 2)
    assert score.tolist() == [0.25, 1.0, 2.0, 1.5]
    assert anomaly.tolist() == [False, False, True, True]  # an excursion ratio of exactly 1 is the line
    assert margin.tolist() == [-1.5, 0.0, 2.0, 1.0]  # max(loss, ratio x line) - line


def test_zero_threshold_does_not_divide_by_zero() -> None:
    _margin, score, anomaly = decide(np.array([0.0, 1e-9]), np.zeros(2))
    assert anomaly.tolist() == [False, True] and np.isfinite(score).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1e6), min_size=2, max_size=20), st.floats(1e-6, 1e6), st.floats(0, 1e6))
def test_decision_is_monotone_and_consistent(losses: list[float], line: float, excursion: float) -> None:
    loss = np.sort(np.asarray(losses))
    margin, score, anomaly = decide(loss, np.full(len(loss), line), np.full(len(loss), excursion))
    assert np.all(np.diff(score) >= 0)
    assert np.array_equal(anomaly, margin > 0)
    assert np.array_equal(anomaly, score > 1)


def test_loss_summary_of_a_zero_mean_and_of_small_losses() -> None:
    zero = loss_summary(np.zeros(4))
    assert zero["cv"] == 0.0 and zero["std"] == 0.0 and set(zero) >= {"mean", "std", "cv", "max", "q50", "q99.5"}
    small = loss_summary(np.array([0.25, 0.75]))  # a mean below 1 still gets its CV
    assert small["cv"] == pytest.approx(0.5)


def test_threshold_cv_of_small_and_zero_losses() -> None:
    assert fit_threshold(np.array([0.25, 0.75]), 0.0, ThresholdConfig()).cv == pytest.approx(0.5)
    assert fit_threshold(np.zeros(5), 0.0, ThresholdConfig()).cv == 0.0


def test_decide_accepts_integer_inputs() -> None:
    margin, score, anomaly = decide(np.array([1, 3]), np.array([2, 2]), np.array([0, 0]))
    assert score.tolist() == [0.5, 1.5] and margin.tolist() == [-1.0, 1.0] and anomaly.tolist() == [False, True]


def test_group_threshold_round_trips_through_the_manifest() -> None:
    from model_store.serving.thresholds import GroupThreshold

    t = fit_threshold(np.array([1.0, 2.0, 4.0]), 0.0, ThresholdConfig())
    raw = t.to_dict()
    assert raw["base"] == 4.0 and set(raw) == set(GroupThreshold.__dataclass_fields__)
    assert GroupThreshold.from_dict({k: str(v) for k, v in raw.items()}) == t  # values parsed as floats
