"""The canary rule: may a retrained (candidate) store replace the served one? Pure logic.

Both stores judge the same recent records (what the plant produced since the candidate's
training data ends); the plant's own lots and the operators' feedback on those records say
which judged better. The candidate is promoted only when it is **not worse on any** of:

1. **alarm volume against the lots**: ``ratio = alarms / bad shots`` over the records whose lot is
   reported; the candidate's ``|ln ratio|`` may exceed the served store's by at most
   ``ln(ratio_slack)`` (x2 by default: the served store is itself suspect once drift asked for a
   retrain, and a few days of lots are noisy; what the guard must stop is a candidate off by an
   order of magnitude, or alarming on nothing);
2. **agreement with the lots**: Spearman correlation, across lots, of the lot's alarm share with
   its bad share; the candidate's may be lower by at most ``rank_slack + 1 / sqrt(lots - 1)`` (the
   second term is a rank correlation's standard error: with 10 lots, 0.43; with 100, 0.20);
3. **feedback**, when operators answered at least ``min_answers`` records: precision of the
   store's alarms among the answered records (confirmed defects / answered alarms) and recall of
   the confirmed defects, each at most ``feedback_slack`` lower;
4. **judged share**: the share of records it cannot judge at most ``unscorable_slack`` higher.

Evidence first: fewer than ``min_lots`` reported lots or ``min_bad`` bad shots among the records
is **wait** (neither promoted nor refused: let more production and lots arrive). Every reason is
a line an operator can act on.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.stats import spearmanr

Decision = Literal["promote", "refuse", "wait"]


@dataclass(frozen=True)
class CanaryRule:
    min_lots: int = 5
    min_bad: int = 20
    ratio_slack: float = 2.0
    rank_slack: float = 0.10
    min_answers: int = 20
    feedback_slack: float = 0.05
    unscorable_slack: float = 0.05

    def __post_init__(self) -> None:
        if self.min_lots < 2 or self.min_bad < 1 or self.min_answers < 1:
            raise ValueError("canary min_lots >= 2, min_bad >= 1 and min_answers >= 1 are needed")
        if not self.ratio_slack >= 1.0:
            raise ValueError(f"canary ratio_slack must be at least 1, got {self.ratio_slack}")
        for name in ("rank_slack", "feedback_slack", "unscorable_slack"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"canary {name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class Judgement:
    """What one store did on the canary records."""

    alarms_in_lots: int
    bad_in_lots: float
    lots: int
    rank: float | None  # Spearman of per-lot alarm share with bad share; None: undefined
    answered_alarms: int
    confirmed_alarms: int
    confirmed_defects: int
    caught_defects: int
    unscorable_share: float

    @property
    def ratio(self) -> float:
        return self.alarms_in_lots / self.bad_in_lots if self.bad_in_lots > 0 else math.nan

    @property
    def precision(self) -> float | None:
        return self.confirmed_alarms / self.answered_alarms if self.answered_alarms else None

    @property
    def recall(self) -> float | None:
        return self.caught_defects / self.confirmed_defects if self.confirmed_defects else None

    def describe(self) -> dict[str, Any]:
        return {"alarms_in_lots": self.alarms_in_lots, "bad_in_lots": round(self.bad_in_lots, 3), "lots": self.lots,
                "alarm_to_bad_ratio": None if math.isnan(self.ratio) else round(self.ratio, 4),
                "lot_rank_correlation": None if self.rank is None else round(self.rank, 4),
                "feedback_precision": None if self.precision is None else round(self.precision, 4),
                "feedback_recall": None if self.recall is None else round(self.recall, 4),
                "answered_alarms": self.answered_alarms, "confirmed_defects": self.confirmed_defects,
                "unscorable_share": round(self.unscorable_share, 4)}


def judge(anomaly: np.ndarray, judged: np.ndarray, lot: np.ndarray, lot_bad: Mapping[Any, float],
          lot_size: Mapping[Any, float], answer: np.ndarray) -> Judgement:
    """One store's judgement of the canary records.

    ``anomaly``/``judged`` per record; ``lot`` per record (its lot key, or None); ``lot_bad`` and
    ``lot_size`` per lot key (the plant's report: bad shots and shots made); ``answer`` per
    record: the operators' latest label ("defect", "false_alarm", "unsure") or None."""
    anomaly = np.asarray(anomaly, dtype=bool)
    judged = np.asarray(judged, dtype=bool)
    lot = np.asarray(lot, dtype=object)
    answer = np.asarray(answer, dtype=object)
    covered = np.array([k is not None and k in lot_bad for k in lot.tolist()], dtype=bool)
    keys = sorted(set(lot[covered].tolist()), key=str)
    alarms = int(np.count_nonzero(anomaly & covered))
    # Bad shots expected among the records seen: each lot's bad share times its records here
    # (a lot may be reported for more shots than reached the stream, or the other way round).
    per_lot_alarm, per_lot_bad, bad = [], [], 0.0
    for key in keys:
        members = covered & (lot == key)
        seen = int(np.count_nonzero(members))
        share = float(lot_bad[key]) / float(lot_size[key]) if float(lot_size.get(key, 0) or 0) > 0 else 0.0
        bad += share * seen
        per_lot_alarm.append(float(np.count_nonzero(anomaly & members)) / seen)
        per_lot_bad.append(share)
    rank = None
    if len(keys) >= 3 and np.ptp(per_lot_alarm) > 0 and np.ptp(per_lot_bad) > 0:
        rank = float(spearmanr(per_lot_alarm, per_lot_bad).statistic)
    labelled = np.isin(answer, ["defect", "false_alarm"])
    defects = answer == "defect"
    return Judgement(alarms, bad, len(keys), rank,
                     int(np.count_nonzero(anomaly & labelled)), int(np.count_nonzero(anomaly & defects)),
                     int(np.count_nonzero(defects)), int(np.count_nonzero(anomaly & defects)),
                     float(1.0 - judged.mean()) if len(judged) else 0.0)


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reasons: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"decision": self.decision, "reasons": self.reasons}


def decide(served: Judgement, candidate: Judgement, rule: CanaryRule = CanaryRule()) -> Verdict:
    """The canary rule (module doc): promote, refuse (with every failed reason) or wait."""
    if candidate.lots < rule.min_lots or candidate.bad_in_lots < rule.min_bad:
        return Verdict("wait", [f"not enough evidence yet: {candidate.lots} reported lots and {candidate.bad_in_lots:.0f} "
                                f"bad shots among the canary records ({rule.min_lots} lots and {rule.min_bad} bad shots needed)"])
    reasons = []
    c_off = abs(math.log(candidate.ratio)) if candidate.alarms_in_lots > 0 else math.inf
    s_off = abs(math.log(served.ratio)) if served.alarms_in_lots > 0 and served.bad_in_lots > 0 else math.inf
    # 1e-12: "at most x slack" holds at exactly x slack, whichever way the logarithms round
    if math.isinf(c_off) or c_off > s_off + math.log(rule.ratio_slack) + 1e-12:
        reasons.append(f"alarm volume: the candidate raises {candidate.alarms_in_lots} alarms for {candidate.bad_in_lots:.0f} "
                       f"bad shots (ratio {candidate.ratio:.2f}), further from the lots than the served store "
                       f"({served.alarms_in_lots}, ratio {served.ratio:.2f}) by more than x{rule.ratio_slack:g}")
    rank_slack = rule.rank_slack + 1.0 / math.sqrt(max(candidate.lots - 1, 1))
    if candidate.rank is None or (served.rank is not None and candidate.rank < served.rank - rank_slack):
        shown = "undefined" if candidate.rank is None else f"{candidate.rank:.2f}"
        reasons.append(f"lot agreement: the candidate's alarm share follows the lots' bad share with rank correlation "
                       f"{shown}, the served store's {served.rank if served.rank is None else round(served.rank, 2)} "
                       f"(at most {rank_slack:.2f} lower allowed over {candidate.lots} lots)")
    answered = max(served.answered_alarms, candidate.answered_alarms)
    if answered >= rule.min_answers:
        for name in ("precision", "recall"):
            mine, theirs = getattr(candidate, name), getattr(served, name)
            if theirs is not None and (mine is None or mine < theirs - rule.feedback_slack):
                reasons.append(f"feedback {name}: the candidate's {'none' if mine is None else f'{mine:.2f}'} against the "
                               f"served store's {theirs:.2f} on the operators' answers (at most {rule.feedback_slack:g} lower)")
    if candidate.unscorable_share > served.unscorable_share + rule.unscorable_slack:
        reasons.append(f"judged share: the candidate cannot judge {candidate.unscorable_share:.1%} of the records, the "
                       f"served store {served.unscorable_share:.1%}")
    if reasons:
        return Verdict("refuse", reasons)
    return Verdict("promote", [f"not worse on alarm volume (ratio {candidate.ratio:.2f} vs {served.ratio:.2f}), lot "
                               f"agreement and feedback over {candidate.lots} lots"])


def judge_window(engine: Any, records: Any, lots: Any, answers: Mapping[str, str]) -> Judgement:
    """One store's judgement of canonical ``records`` (time order) against canonical ``lots`` and
    the operators' latest answers by record id (the serving core, as ``moldwatch score`` runs it)."""
    from model_store.lots import LOT_KEYS, lot_defect_rates

    batch = engine.score(records, memory={}, backward=False, explain=False)
    totals = lot_defect_rates(lots)
    key = lambda f, i, d: f"{f}\x1f{i}\x1f{d}"
    lot_bad = {key(*k): float(b) for k, b in zip(totals[LOT_KEYS].itertuples(index=False), totals["bad_qty"])}
    lot_size = {key(*k): float(g + b) for k, g, b in zip(totals[LOT_KEYS].itertuples(index=False), totals["good_qty"],
                                                          totals["bad_qty"])}
    lot = np.array([key(*k) for k in records[LOT_KEYS].astype(str).itertuples(index=False)], dtype=object)
    answer = np.array([answers.get(str(r)) for r in records["record_id"].tolist()], dtype=object)
    return judge(batch.anomaly, batch.resolution != "unscorable", lot, lot_bad, lot_size, answer)


__all__ = ["CanaryRule", "Judgement", "Verdict", "judge", "decide", "judge_window"]
