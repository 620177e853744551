"""The canary rule (model_store.canary): hand-computed judgements and every boundary of the decision."""
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.canary import CanaryRule, Judgement, decide, judge


def test_judge_by_hand() -> None:
    lot = np.array(["A", "A", "A", "A", "B", "B", "B", "C", "C", "C", None], dtype=object)
    anomaly = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1], dtype=bool)
    judged = np.array([1] * 10 + [0], dtype=bool)
    answer = np.array(["defect", "false_alarm", None, None, None, None, None, "false_alarm", "defect", "defect", "defect"],
                      dtype=object)
    j = judge(anomaly, judged, lot, {"A": 2, "B": 0, "C": 5}, {"A": 10, "B": 10, "C": 10}, answer)
    assert j.lots == 3 and j.alarms_in_lots == 3  # the record without a lot does not count
    assert j.bad_in_lots == pytest.approx(0.2 * 4 + 0 * 3 + 0.5 * 3)  # each lot's share x its records here
    assert j.ratio == pytest.approx(3 / 2.3)
    # per lot alarm share (1/4, 0, 2/3) against bad share (0.2, 0, 0.5): the same order -> 1
    assert j.rank == pytest.approx(1.0)
    # answered alarms: records 0 (defect), 7 (false), 8 (defect), 10 (defect, no lot: feedback still counts)
    assert (j.answered_alarms, j.confirmed_alarms) == (4, 3) and j.precision == pytest.approx(0.75)
    assert (j.confirmed_defects, j.caught_defects) == (4, 3) and j.recall == pytest.approx(0.75)  # record 9 missed
    assert j.unscorable_share == pytest.approx(1 / 11)


def test_rank_is_undefined_without_spread_or_lots() -> None:
    lot = np.array(["A", "B", "C"], dtype=object)
    flat = judge(np.zeros(3, dtype=bool), np.ones(3, dtype=bool), lot, {"A": 1, "B": 2, "C": 3}, {"A": 10, "B": 10, "C": 10},
                 np.full(3, None, dtype=object))
    assert flat.rank is None and flat.alarms_in_lots == 0 and flat.precision is None and flat.recall is None
    two = judge(np.array([1, 0], dtype=bool), np.ones(2, dtype=bool), lot[:2], {"A": 1, "B": 2}, {"A": 10, "B": 10},
                np.full(2, None, dtype=object))
    assert two.rank is None  # fewer than 3 lots


BASE = Judgement(alarms_in_lots=40, bad_in_lots=40.0, lots=10, rank=0.5, answered_alarms=40, confirmed_alarms=20,
                 confirmed_defects=20, caught_defects=18, unscorable_share=0.02)


def test_wait_until_the_evidence_is_there() -> None:
    rule = CanaryRule(min_lots=10, min_bad=40)
    assert decide(BASE, BASE, rule).decision == "promote"  # exactly at both minimums
    assert decide(BASE, replace(BASE, lots=9), rule).decision == "wait"
    verdict = decide(BASE, replace(BASE, bad_in_lots=39.9), rule)
    assert verdict.decision == "wait" and "10 lots and 40 bad shots needed" in verdict.reasons[0]


def test_alarm_volume_boundary() -> None:
    served = replace(BASE, alarms_in_lots=80)  # ratio 2: |ln| = ln 2
    at_line = replace(BASE, alarms_in_lots=160)  # ratio 4 = 2 x 2 (the default slack): |ln| = ln 2 + ln 2 exactly
    assert decide(served, at_line).decision == "promote"
    over = decide(served, replace(BASE, alarms_in_lots=161))
    assert over.decision == "refuse" and over.reasons[0].startswith("alarm volume")
    # under the lots counts the same way: ratio 0.25 = 1 / 4
    assert decide(served, replace(BASE, alarms_in_lots=10)).decision == "promote"
    assert decide(served, replace(BASE, alarms_in_lots=9)).decision == "refuse"
    # a tighter rule: x1.25
    tight = CanaryRule(ratio_slack=1.25)
    assert decide(served, replace(BASE, alarms_in_lots=100), tight).decision == "promote"  # 2.5 = 2 x 1.25
    assert decide(served, replace(BASE, alarms_in_lots=101), tight).decision == "refuse"
    # a candidate that alarms on nothing is refused, whatever the served store does
    silent = decide(replace(BASE, alarms_in_lots=0), replace(BASE, alarms_in_lots=0, rank=0.5))
    assert silent.decision == "refuse" and "alarm volume" in silent.reasons[0]


def test_lot_agreement_boundary() -> None:
    # 10 lots: slack 0.10 + 1/sqrt(9) = 0.4333...; BASE's rank 0.5 -> the line is 0.0666...
    line = 0.5 - (0.10 + 1 / 3)
    assert decide(BASE, replace(BASE, rank=line)).decision == "promote"
    assert decide(BASE, replace(BASE, rank=line - 1e-9)).decision == "refuse"
    # 101 lots: 0.10 + 0.1 = 0.2 -> 0.3 passes, just under does not
    many = replace(BASE, lots=101)
    assert decide(many, replace(many, rank=0.5 - (0.10 + 1 / 10))).decision == "promote"
    worse = decide(many, replace(many, rank=0.29))
    assert worse.decision == "refuse" and worse.reasons == [r for r in worse.reasons if r.startswith("lot agreement")]
    assert decide(BASE, replace(BASE, rank=None)).decision == "refuse"  # the candidate does not follow the lots at all
    assert decide(replace(BASE, rank=None), replace(BASE, rank=-0.9)).decision == "promote"  # nothing to compare with


def test_feedback_boundaries() -> None:
    served = replace(BASE, confirmed_alarms=20, answered_alarms=40)  # precision 0.5
    assert decide(served, replace(BASE, confirmed_alarms=18)).decision == "promote"  # 0.45 = 0.5 - 0.05
    low = decide(served, replace(BASE, confirmed_alarms=17))
    assert low.decision == "refuse" and low.reasons[0].startswith("feedback precision")
    # recall: 18/20 = 0.9; 17/20 = 0.85 is exactly 0.05 lower (passes), 16/20 does not
    assert decide(BASE, replace(BASE, caught_defects=17)).decision == "promote"
    assert decide(BASE, replace(BASE, caught_defects=16)).reasons[0].startswith("feedback recall")
    # fewer answered alarms than min_answers: feedback is not judged
    few = replace(BASE, answered_alarms=19, confirmed_alarms=19)
    assert decide(few, replace(few, answered_alarms=19, confirmed_alarms=0, caught_defects=0)).decision == "promote"
    assert decide(replace(BASE, answered_alarms=20), replace(BASE, answered_alarms=20, confirmed_alarms=0)).decision == "refuse"


def test_judged_share_boundary_and_every_reason_is_listed() -> None:
    assert decide(BASE, replace(BASE, unscorable_share=0.07)).decision == "promote"  # 0.02 + 0.05
    assert decide(BASE, replace(BASE, unscorable_share=0.0701)).decision == "refuse"
    bad = decide(BASE, replace(BASE, alarms_in_lots=400, rank=-0.5, confirmed_alarms=0, caught_defects=0, unscorable_share=0.5))
    assert [r.split(":")[0] for r in bad.reasons] == ["alarm volume", "lot agreement", "feedback precision",
                                                      "feedback recall", "judged share"]


def test_rule_refuses_nonsense_settings() -> None:
    for bad in ({"min_lots": 1}, {"ratio_slack": 0.9}, {"rank_slack": 1.5}, {"feedback_slack": -0.1}, {"min_answers": 0}):
        with pytest.raises(ValueError):
            CanaryRule(**bad)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 500), st.integers(2, 400), st.integers(5, 30), st.floats(-1, 1) | st.none())
def test_the_same_store_is_never_refused(alarms: int, bad: int, lots: int, rank: float | None) -> None:
    j = replace(BASE, alarms_in_lots=alarms, bad_in_lots=float(bad), lots=lots, rank=rank)
    verdict = decide(j, j)
    # a store judged exactly like the served one is never refused for what it shares with it,
    # except when it cannot be compared with the lots at all (no alarms, or no rank)
    assert verdict.decision in ("promote", "wait") or alarms == 0 or rank is None
    assert verdict.decision != "promote" or math.isfinite(j.ratio)
