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


# -- the exact words, the report and the window ------------------------------------------------------
def test_describe_is_the_report() -> None:
    j = judge(np.array([1, 0, 1, 0], dtype=bool), np.array([1, 1, 1, 0], dtype=bool), np.array(["A", "B", "C", "C"], dtype=object),
              {"A": 1, "B": 3, "C": 6}, {"A": 10, "B": 10, "C": 10}, np.array(["defect", None, "false_alarm", "defect"], dtype=object))
    # bad expected: A 0.1 x 1 + B 0.3 x 1 + C 0.6 x 2 = 1.6; alarm shares (1, 0, 0.5) against (0.1, 0.3, 0.6): -0.5
    assert j.describe() == {"alarms_in_lots": 2, "bad_in_lots": 1.6, "lots": 3, "alarm_to_bad_ratio": 1.25,
                            "lot_rank_correlation": -0.5, "feedback_precision": 0.5, "feedback_recall": 0.5,
                            "answered_alarms": 2, "confirmed_defects": 2, "unscorable_share": 0.25}
    empty = replace(j, bad_in_lots=0.0, rank=None, answered_alarms=0, confirmed_defects=0)
    assert empty.describe()["alarm_to_bad_ratio"] is None and empty.describe()["lot_rank_correlation"] is None
    assert empty.describe()["feedback_precision"] is None and empty.describe()["feedback_recall"] is None
    precise = replace(j, rank=0.123456, alarms_in_lots=1, bad_in_lots=3.0)
    assert precise.describe()["lot_rank_correlation"] == 0.1235 and precise.describe()["alarm_to_bad_ratio"] == 0.3333


def test_the_reasons_word_for_word() -> None:
    served = replace(BASE, alarms_in_lots=80)
    assert decide(BASE, BASE).describe() == {"decision": "promote", "reasons": [
        "not worse on alarm volume (ratio 1.00 vs 1.00), lot agreement and feedback over 10 lots"]}
    assert decide(served, replace(BASE, alarms_in_lots=400)).reasons[0] == (
        "alarm volume: the candidate raises 400 alarms for 40 bad shots (ratio 10.00), further from the lots than the "
        "served store (80, ratio 2.00) by more than x2")
    assert decide(BASE, replace(BASE, rank=-0.5)).reasons == [
        "lot agreement: the candidate's alarm share follows the lots' bad share with rank correlation -0.50, the served "
        "store's 0.5 (at most 0.43 lower allowed over 10 lots)"]
    assert decide(replace(BASE, rank=None), replace(BASE, rank=None)).reasons == [
        "lot agreement: the candidate's alarm share follows the lots' bad share with rank correlation undefined, the "
        "served store's None (at most 0.43 lower allowed over 10 lots)"]
    assert decide(BASE, replace(BASE, confirmed_alarms=0)).reasons == [
        "feedback precision: the candidate's 0.00 against the served store's 0.50 on the operators' answers (at most 0.05 lower)"]
    assert decide(BASE, replace(BASE, answered_alarms=0, confirmed_alarms=0)).reasons[0].startswith(
        "feedback precision: the candidate's none against")
    assert decide(BASE, replace(BASE, unscorable_share=0.5)).reasons == [
        "judged share: the candidate cannot judge 50.0% of the records, the served store 2.0%"]
    assert decide(BASE, replace(BASE, lots=4)).reasons == [
        "not enough evidence yet: 4 reported lots and 40 bad shots among the canary records (5 lots and 20 bad shots needed)"]


def test_rule_edges_that_are_allowed_and_the_messages_of_those_that_are_not() -> None:
    CanaryRule(min_lots=2, min_bad=1, min_answers=1, ratio_slack=1.0, rank_slack=0.0, feedback_slack=1.0, unscorable_slack=0.0)
    with pytest.raises(ValueError, match=r"^canary min_lots >= 2, min_bad >= 1 and min_answers >= 1 are needed$"):
        CanaryRule(min_bad=0)
    with pytest.raises(ValueError, match=r"^canary ratio_slack must be at least 1, got 0.5$"):
        CanaryRule(ratio_slack=0.5)
    with pytest.raises(ValueError, match=r"^canary unscorable_slack must be in \[0, 1\], got 2$"):
        CanaryRule(unscorable_slack=2)


class _Engine:
    """A stand-in for ScoringEngine.score: fixed verdict arrays (judge_window's arithmetic is the test)."""

    def __init__(self, anomaly: list[bool], resolution: list[str]) -> None:
        self.batch = type("Batch", (), {"anomaly": np.array(anomaly), "resolution": np.array(resolution, dtype=object)})

    def score(self, records, memory, backward, explain):
        assert memory == {} and backward is False and explain is False  # online scoring, fresh memory
        assert len(records) == len(self.batch.anomaly)
        return self.batch


def test_a_window_is_judged_against_its_lots_and_latest_answers() -> None:
    import pandas as pd

    from model_store.canary import judge_window

    records = pd.DataFrame({"record_id": ["r1", "r2", "r3", "r4"], "facility": ["F1", "F1", "F2", "F2"],
                            "item": ["I", "I", "I", "I"], "lot_date": ["2026-01-01", "2026-01-01", "2026-01-01", "2026-01-02"]})
    lots = pd.DataFrame({"facility": ["F1", "F2", "F1"], "item": ["I", "I", "I"],
                         "lot_date": ["2026-01-01", "2026-01-01", "2026-01-01"], "good_qty": [8, 5, 6], "bad_qty": [2, 5, 4]})
    engine = _Engine([True, False, True, True], ["part", "part", "unscorable", "part"])
    j = judge_window(engine, records, lots, {"r1": "defect", "r3": "false_alarm"})
    # F1's two lot rows are one lot: 6 bad of 20 -> 0.3 x 2 records; F2 2026-01-01: 0.5 x 1; r4's lot is not reported
    assert j.lots == 2 and j.alarms_in_lots == 2 and j.bad_in_lots == pytest.approx(0.3 * 2 + 0.5 * 1)
    assert (j.answered_alarms, j.confirmed_alarms, j.confirmed_defects, j.caught_defects) == (2, 1, 1, 1)
    assert j.unscorable_share == pytest.approx(0.25)


def test_edges_of_judging_and_deciding() -> None:
    none = np.full(3, None, dtype=object)
    # a lot reported with no shots counts with a bad share of 0; equal bad shares leave the rank undefined
    j = judge(np.array([1, 0, 1], dtype=bool), np.ones(3, dtype=bool), np.array(["A", "B", "C"], dtype=object),
              {"A": 0, "B": 0, "C": 0}, {"A": 0, "B": 10, "C": 10}, none)
    assert j.bad_in_lots == 0.0 and j.rank is None and j.lots == 3
    empty = judge(np.zeros(0, dtype=bool), np.zeros(0, dtype=bool), np.zeros(0, dtype=object), {}, {}, np.zeros(0, dtype=object))
    assert empty.unscorable_share == 0.0 and empty.lots == 0
    thirds = replace(BASE, bad_in_lots=1 / 3, answered_alarms=3, confirmed_alarms=1, confirmed_defects=3, caught_defects=2,
                     unscorable_share=1 / 3)
    described = thirds.describe()
    assert (described["bad_in_lots"], described["feedback_precision"], described["feedback_recall"],
            described["unscorable_share"]) == (0.333, 0.3333, 0.6667, 0.3333)
    # one alarm each is still a ratio, not "silent"
    one = replace(BASE, alarms_in_lots=1)
    assert decide(one, one).decision == "promote"
    assert decide(one, replace(BASE, alarms_in_lots=4000)).decision == "refuse"  # ratio 100 is further off than 1/40, by more than x2
    single = judge(np.array([1], dtype=bool), np.ones(1, dtype=bool), np.array(["A"], dtype=object), {"A": 1}, {"A": 1},
                   np.full(1, None, dtype=object))
    assert single.bad_in_lots == 1.0  # a lot of one shot, bad
    # two lots: the rank slack is 0.10 + 1/sqrt(1)
    two = replace(BASE, lots=2, rank=0.5)
    assert decide(two, replace(two, rank=0.5 - 1.1), CanaryRule(min_lots=2)).decision == "promote"
    assert decide(two, replace(two, rank=0.5 - 1.1 - 1e-9), CanaryRule(min_lots=2)).decision == "refuse"
    # the served store's rank is shown to two decimals
    assert "the served store's 0.12 (" in decide(replace(BASE, rank=0.123), replace(BASE, rank=-0.9)).reasons[0]
