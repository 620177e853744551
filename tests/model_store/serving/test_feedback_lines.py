"""The feedback line rule (model_store/serving/feedback_lines.py): every term of the minimum, each
boundary hand-computed, and the properties that keep wrong answers from blinding a part."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.serving.drift import ALARM_PROBS
from model_store.serving.feedback_lines import TRAINED_LINE, LineBounds, alarms, decide_line, lot_floor_score

# history alarm scores at 10 % steps: the 50 % one is 3.0 (the default lot floor's)
QUANTILES = (1.2, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)
NONE: list[float] = []
WIDE = LineBounds(max_line=10.0, step=10.0)  # the target alone decides unless a test says otherwise


def fa(n: int, score: float = 2.0) -> list[float]:
    return [score] * n


def test_nothing_moves_below_the_minimum_count_of_false_alarms() -> None:
    kept = decide_line(fa(19), NONE, NONE, QUANTILES, WIDE)
    assert (kept.line, kept.bound, kept.raised) == (1.0, "trained", False)
    assert kept.reason == "19 false alarms answered, 20 needed"
    raised = decide_line(fa(20), NONE, NONE, QUANTILES, WIDE)
    assert raised.line == 2.0 and raised.bound == "target" and raised.raised


def test_the_false_alarm_share_is_inclusive_at_its_line() -> None:
    # 20 false, 20 confirmed: share exactly 0.5 -> allowed; one more confirmed -> kept
    at_line = decide_line(fa(20), [5.0] * 20, [5.0] * 20, QUANTILES, WIDE)
    assert at_line.raised and at_line.alarmed_defects == 20
    below = decide_line(fa(20), [5.0] * 21, [5.0] * 21, QUANTILES, WIDE)
    assert not below.raised and below.reason == "only 49% of the answered alarms were false (at least 50% needed)"


def test_the_target_is_the_quantile_of_the_false_alarm_scores() -> None:
    scores = [1.1 + 0.1 * k for k in range(21)]  # 1.1 ... 3.1, median 2.1
    decision = decide_line(scores, NONE, NONE, QUANTILES, WIDE)
    assert decision.bound == "target" and decision.line == pytest.approx(2.1)
    upper = decide_line(scores, NONE, NONE, QUANTILES, LineBounds(max_line=10.0, step=10.0, target_quantile=0.75))
    assert upper.line == pytest.approx(2.6)


def test_the_step_grows_with_each_full_count_of_false_alarms() -> None:
    bounds = LineBounds(step=1.25, max_line=10.0)
    assert decide_line(fa(39, 5.0), NONE, NONE, (9.0,) * 9, bounds).line == pytest.approx(1.25)
    forty = decide_line(fa(40, 5.0), NONE, NONE, (9.0,) * 9, bounds)
    assert forty.line == pytest.approx(1.5625) and forty.bound == "step"


def test_the_ceiling_holds_whatever_the_answers() -> None:
    decision = decide_line(fa(200, 50.0), NONE, NONE, (99.0,) * 9, LineBounds(step=10.0, max_line=2.0))
    assert decision.line == 2.0 and decision.bound == "ceiling"


def test_the_line_stays_strictly_below_the_confirmed_defects() -> None:
    decision = decide_line(fa(40, 5.0), NONE, [1.8, 4.0], (9.0,) * 9, LineBounds(step=10.0, max_line=10.0,
                                                                                   defect_quantile=0.0))
    assert decision.bound == "defects" and decision.line < 1.8 and decision.line == np.nextafter(1.8, -np.inf)
    assert alarms(np.array([1.8]), decision.line)[0]


def test_the_lot_floor_is_the_history_alarms_quantile() -> None:
    decision = decide_line(fa(40, 5.0), NONE, NONE, QUANTILES, LineBounds(step=10.0, max_line=10.0))
    assert decision.bound == "lots" and decision.line == 3.0  # half of the history's alarms were above 3.0
    tighter = decide_line(fa(40, 5.0), NONE, NONE, QUANTILES, LineBounds(step=10.0, max_line=10.0, lot_floor=0.9))
    assert tighter.line == 1.2  # 90 % of them kept: the 10 % quantile


@pytest.mark.parametrize("floor, expected", [(0.9, 1.2), (0.5, 3.0), (0.1, 6.0)])
def test_lot_floor_score_picks_the_matching_quantile(floor: float, expected: float) -> None:
    assert lot_floor_score(QUANTILES, floor) == expected
    assert lot_floor_score(None, floor) is None


def test_without_a_lot_reference_nothing_moves() -> None:
    decision = decide_line(fa(100, 5.0), NONE, NONE, None, WIDE)
    assert not decision.raised and "no alarm reference from the lots" in decision.reason


def test_a_bound_at_or_below_one_keeps_the_trained_line_and_names_it() -> None:
    decision = decide_line(fa(40, 5.0), NONE, [1.0], QUANTILES, WIDE)
    assert not decision.raised and decision.line == TRAINED_LINE
    assert decision.reason.startswith("the defects bound") and "at or below the trained line" in decision.reason


def test_ties_are_named_in_the_documented_order() -> None:
    # target 2.0, step 2.0 (one full count of 20 at step 2), ceiling 2.0: the target is named
    decision = decide_line(fa(20, 2.0), NONE, NONE, (9.0,) * 9, LineBounds(step=2.0, max_line=2.0))
    assert decision.line == 2.0 and decision.bound == "target"


def test_non_finite_scores_are_left_out() -> None:
    decision = decide_line(fa(19) + [math.nan, math.inf], NONE, [math.nan], QUANTILES, WIDE)
    assert decision.false_alarms == 19 and decision.defects == 0 and not decision.raised


@pytest.mark.parametrize("field, value", [("min_false_alarms", 0), ("min_false_alarm_share", 1.5),
                                          ("target_quantile", -0.1), ("defect_quantile", 2.0), ("step", 0.9),
                                          ("step", math.inf), ("max_line", 0.5), ("lot_floor", 0.55)])
def test_bounds_out_of_range_are_refused_by_name(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        LineBounds(**{field: value})


def test_bounds_round_trip_and_refuse_unknown_names() -> None:
    bounds = LineBounds(step=1.5, lot_floor=0.7)
    assert LineBounds.from_dict(bounds.to_dict()) == bounds
    with pytest.raises(ValueError, match="unknown feedback line bounds"):
        LineBounds.from_dict({"stepp": 2})


def test_alarms_never_fire_on_nan_and_use_a_strict_line() -> None:
    assert alarms(np.array([math.nan, 1.0, 1.0000001]), 1.0).tolist() == [False, False, True]


scores = st.lists(st.floats(1.0, 50.0, allow_nan=False), max_size=80)


@settings(max_examples=200, deadline=None)
@given(scores, scores, st.sampled_from([round(1 - p, 1) for p in ALARM_PROBS]))
def test_properties_of_any_answers(false_alarms: list[float], defects: list[float], floor: float) -> None:
    bounds = LineBounds(lot_floor=floor)
    decision = decide_line(false_alarms, defects, defects, QUANTILES, bounds)
    assert TRAINED_LINE <= decision.line <= bounds.max_line
    if decision.raised:
        # every confirmed defect above the line's quantile still alarms; the lots keep their share
        below = sum(1 for d in defects if d <= decision.line)
        assert below <= math.floor(bounds.defect_quantile * (len(defects) - 1)) + 1 if defects else True
        assert decision.line <= lot_floor_score(QUANTILES, floor)
        assert decision.false_alarms >= bounds.min_false_alarms
    # order does not matter: the same answers in reverse give the same line
    again = decide_line(false_alarms[::-1], defects[::-1], defects[::-1], QUANTILES, bounds)
    assert again == decision


@pytest.mark.parametrize("field, value", [("min_false_alarms", 1), ("min_false_alarm_share", 1.0),
                                          ("target_quantile", 1.0), ("defect_quantile", 0.0), ("step", 1.0),
                                          ("max_line", 1.0), ("lot_floor", 0.1), ("lot_floor", 0.9)])
def test_bounds_at_their_limits_are_allowed(field: str, value: float) -> None:
    assert getattr(LineBounds(**{field: value}), field) == value


def test_bounds_from_text_values_keep_the_count_whole() -> None:
    bounds = LineBounds.from_dict({"min_false_alarms": "25", "step": "1.5"})
    assert bounds.min_false_alarms == 25 and isinstance(bounds.min_false_alarms, int) and bounds.step == 1.5
    with pytest.raises(ValueError):
        LineBounds.from_dict({"min_false_alarms": "2.5"})


def test_reasons_are_exact() -> None:
    assert decide_line(fa(40, 5.0), NONE, NONE, None, WIDE).reason == (
        "no alarm reference from the lots for this part (too few alarms in history, or a store trained before "
        "feedback lines: retrain)")
    raised = decide_line(fa(20, 2.0), [3.0], [3.0, 4.0], QUANTILES, WIDE)
    assert raised.reason == "raised to 2 by the target bound on 20 false alarms and 1 confirmed alarms (2 confirmed defects)"


def test_a_bound_exactly_at_one_keeps_the_trained_line() -> None:
    decision = decide_line(fa(40, 1.0), NONE, NONE, QUANTILES, WIDE)  # target exactly 1
    assert decision.line == 1.0 and decision.bound == "trained" and decision.reason.startswith("the target bound (1)")


def test_scores_given_as_lists_of_ints_are_read_as_numbers() -> None:
    assert decide_line([2] * 20, [], [], QUANTILES, WIDE).line == 2.0
