import numpy as np
import pytest

from model_store.config import ThresholdConfig
from model_store.thresholds import decide, effective_thresholds, fit_threshold, loss_summary


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
    assert aware.base < 2.0  # the worst 1 % is presumed defective and not learnt as normal
    assert aware.base >= aware.fixed


def test_effective_threshold_weights_are_capped() -> None:
    t = fit_threshold(np.random.default_rng(0).gamma(2.0, 1.0, 5000), 0.0, ThresholdConfig(cv_gain=0.1, distance_gain=0.5, margin_limit=0.5))
    exact = effective_thresholds(t, np.array([0.0]))[0]
    near = effective_thresholds(t, np.array([0.2]))[0]
    far = effective_thresholds(t, np.array([100.0]))[0]
    assert t.base < exact < near < far
    assert far == pytest.approx(t.base * 1.5)


def test_decide_is_monotone_in_loss() -> None:
    loss = np.array([0.1, 0.5, 0.9, 1.1])
    margin, score, anomaly = decide(loss, np.full(4, 1.0))
    assert list(anomaly) == [False, False, False, True]
    assert np.all(np.diff(score) > 0) and np.allclose(margin, loss - 1.0)


def test_alarm_budget_raises_only_miscalibrated_lines() -> None:
    from model_store.thresholds import alarm_budget_factor

    config = ThresholdConfig(nearest_alarm_budget=3.0, nearest_min_rate=0.005)
    sane = np.linspace(0.0, 1.01, 1000)  # ~1 % of history above the line, lots say 1 %
    assert alarm_budget_factor(sane, 0.01, config) == 1.0
    flooded = np.linspace(0.5, 3.0, 1000)  # a neighbour's model that would alarm on 80 % of it
    factor = alarm_budget_factor(flooded, 0.01, config)
    assert factor > 1.0 and np.mean(flooded > factor) == pytest.approx(0.03, abs=0.002)
