"""bench/loop.py's feedback summary: the target is worded per unit, so each unit is judged alone."""
from __future__ import annotations

from typing import Any

from bench.loop import summarise_feedback, unit_outcome


def _unit(fa_before: int, caught_before: int, defects: int, fa_after: int, caught_after: int) -> dict[str, Any]:
    after = {"line": 1.2, "bound": "defects", "marked_false_alarms": 50, "marked_defects": 3,
             "false_alarms_after": fa_after, "caught_after": caught_after}
    return {"facility": "F1", "item": "P1", "evaluation_good": 1000, "evaluation_defects": defects,
            "false_alarms_before": fa_before, "caught_before": caught_before, "truthful": after, "flipped": after}


def test_a_unit_is_judged_on_its_own_defects() -> None:
    # 100 -> 50 false alarms: exactly halved; 20 of 40 defects caught -> 18: 2 of 40 = 5 points, kept 90 %
    outcome = unit_outcome(_unit(100, 20, 40, 50, 18), "truthful")
    assert outcome == {"facility": "F1", "item": "P1", "false_alarm_reduction": 0.5, "recall_drop_points": 5.0,
                       "recall_kept_share": 0.9}


def test_pooled_figures_can_meet_the_target_while_no_unit_does() -> None:
    # a large unit that moves nothing and a small one that halves its false alarms but loses 8 of 22
    # defects: pooled the recall falls by under 5 points, the small unit alone by 36
    big, small = _unit(1000, 400, 600, 1000, 400), _unit(100, 14, 22, 50, 6)
    summary = summarise_feedback({"plant": {"units": [big, small]}})["truthful"]
    assert summary["recall_drop_points"] == round(100 * 8 / 622, 2) < 5
    per_unit = summary["per_unit"]
    assert per_unit["meeting_both"] == 0  # the small unit halves its false alarms but drops 36.36 points
    assert per_unit["false_alarms_halved"] == 1
    assert per_unit["recall_drop_over_5_points"] == 1
    assert per_unit["max_recall_drop_points"] == 36.36
    assert per_unit["recall_kept_below_80_percent"] == 1  # 6 of 14 kept: 43 %


def test_the_boundary_counts_as_met() -> None:
    per_unit = summarise_feedback({"plant": {"units": [_unit(100, 20, 40, 50, 18)]}})["truthful"]["per_unit"]
    assert per_unit["meeting_both"] == 1  # -50 % and -5 points exactly: on the line is met
    assert per_unit["recall_kept_below_80_percent"] == 0
