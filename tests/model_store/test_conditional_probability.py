"""defect_probability of the setting-conditioned scorer (issue 16: Brier at most a constant's):
gross excursions get a probability of their own, and the curve is blended with the history's base
rate. Hand-computed boundaries of which rows are gross excursions, the blend, and the fit's
minimum of held-out excursions."""
from __future__ import annotations

import numpy as np
import pytest

from model_store.calibration import MIN_EXCURSION_ROWS, PROBABILITY_BLEND, fit_conditional_probability, gross_excursions
from model_store.serving.probability import LOG_SCORE_CLIP, ConditionalProbability, sigmoid


def test_a_gross_excursion_is_a_ratio_above_one_and_at_least_the_tail_score() -> None:
    score = np.array([0.5, 0.5, 2.0, 2.0, 3.0, np.nan, 0.2])
    excursion = np.array([1.0, np.nextafter(1.0, 2.0), 2.0, np.nextafter(2.0, 0.0), 5.0, 1.5, np.nan])
    # equal to 1: not gross (> 1 alarms); equal to the tail score: gross; one ulp below it: the tail decides;
    # a NaN tail score counts as 0; a NaN ratio as 0
    assert gross_excursions(score, excursion).tolist() == [False, True, True, False, True, True, False]


def test_predict_hand_computed() -> None:
    model = ConditionalProbability(a=-2.0, b=3.0, excursion_intercept=-1.0, base_rate=0.02, blend=0.5)
    score = np.array([1.0, np.e, 4.0, 4.0, 0.0])
    excursion = np.array([0.0, 0.0, 4.0, 1.0, 0.0])
    p = model.predict(score, excursion)
    curve = sigmoid(np.array([-2.0, -2.0 + 3.0, -1.0, -2.0 + 3.0 * np.log(4.0), -2.0 - 3.0 * LOG_SCORE_CLIP]))
    curve[2] = sigmoid(np.array(-1.0))  # the gross excursion: its own probability, whatever the ratio
    assert p == pytest.approx(0.5 * curve + 0.5 * 0.02)
    # a ratio of 1 is no excursion: the tail curve at score 4
    assert p[3] == pytest.approx(0.5 * sigmoid(np.array(-2.0 + 3.0 * np.log(4.0))) + 0.01)


def test_a_store_from_before_keeps_the_plain_curve() -> None:
    old = ConditionalProbability(a=-2.0, b=3.0)
    score = np.array([1.0, 10.0])
    assert old.predict(score, np.array([0.0, 10.0])) == pytest.approx(sigmoid(-2.0 + 3.0 * np.log(score)))


def test_the_blend_never_leaves_the_base_rate_and_the_curve() -> None:
    model = ConditionalProbability(a=-2.0, b=3.0, excursion_intercept=2.0, base_rate=0.1, blend=PROBABILITY_BLEND)
    assert PROBABILITY_BLEND == 0.5
    score = np.geomspace(1e-3, 1e3, 50)
    p = model.predict(score, np.zeros(50))
    assert (p >= 0.05).all() and (p <= 0.55).all()
    assert np.all(np.diff(p) >= 0)  # monotone in the score on the curve


def _held_out(n_gross: int, rng: np.random.Generator):
    """Lots of 100 rows: the tail score carries the defects; gross excursions are 30 % defects."""
    lots, score, excursion, rate = [], [], [], []
    for lot in range(40):
        s = rng.lognormal(-1.0, 0.6, 100)
        e = np.zeros(100)
        share = 0.02 + 0.04 * (lot % 3)
        lots += [lot] * 100
        score.append(s)
        excursion.append(e)
        rate += [share] * 100
    score, excursion = np.concatenate(score), np.concatenate(excursion)
    excursion[:n_gross] = 3.0
    return np.array(lots), score, excursion, np.array(rate, dtype=float)


@pytest.mark.parametrize("n_gross, own", [(MIN_EXCURSION_ROWS, True), (MIN_EXCURSION_ROWS - 1, False)])
def test_gross_excursions_get_their_own_intercept_from_the_minimum_on(n_gross, own) -> None:
    lot, score, excursion, rate = _held_out(n_gross, np.random.default_rng(0))
    model = fit_conditional_probability(score, excursion, lot, rate)
    assert model is not None
    assert (model.excursion_intercept is not None) == own
    assert model.base_rate == pytest.approx(rate.mean())
    assert model.blend == PROBABILITY_BLEND


def test_no_rows_with_a_score_and_a_lot_is_no_model() -> None:
    assert fit_conditional_probability(np.array([np.nan, 1.0]), np.zeros(2), np.array([0, 1]),
                                       np.array([0.1, np.nan])) is None
