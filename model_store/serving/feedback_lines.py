"""A part's alarm line moved by operator feedback, within bounds. Pure: arrays in, a line out.

A verdict's ``score`` is the larger of the tail score and the worst excursion ratio (a lasting
excursion counts just above 1: see ``excursions.lasting_rank``); the store alarms above 1.
Operators answer alarms: ``false_alarm`` (the part was good) or ``defect``. When a part's answered
alarms are mostly false, its *feedback line* rises above 1 (``anomaly = score > line or excursion >
line``: line_book.apply_lines), so that the next shots like those stop alarming — never so far that the defects the
operators confirmed stop alarming, nor so far that the part alarms less than its lots say it
should. The unit is the part (facility, item) of one store version: what operators answer and what
the lots count; a new store starts every part at 1 again (its training left the confirmed defects
out and its lines are calibrated afresh).

The line is a function of the *set* of a part's latest answers, not of their order, so every worker
replica and every rerun of ``moldwatch lines update`` computes the same line from the same answers.
Each term of the minimum is a bound (:class:`LineBounds`, all settings):

- **evidence**: nothing moves before ``min_false_alarms`` answered false alarms (one operator's bad
  morning is not a trend), nor while confirmed defects are more than ``1 - min_false_alarm_share``
  of the answered alarms (the line is catching real defects);
- **target**: the ``target_quantile`` of the answered false alarms' scores (at 0.5, the next shots
  like half of them stop alarming);
- **step**: at most ``step`` times higher per ``min_false_alarms`` answered false alarms
  (``step ** (false_alarms // min_false_alarms)``): a line rises in steps as evidence accumulates;
- **ceiling**: never above ``max_line``: a measured value more than ``max_line`` times beyond its
  tolerance always alarms, whatever the answers;
- **defects**: strictly below the ``defect_quantile`` score of the part's confirmed defects (alarmed
  or found by hand), so at most that share of known defects falls under the line — what keeps wrong
  answers (a defect marked false) from blinding a part;
- **lots**: at or below the score that ``lot_floor`` of the history's alarms exceeded (the store's
  drift reference, ``PartReference.alarm_quantiles``): the history's alarm volume is what the lots
  calibrated, and feedback may silence at most ``1 - lot_floor`` of it. A part without that
  reference (too few alarms in history, an older store) is not moved.

The line never goes below 1 (a missed defect is the drift watch's and the retraining's business,
not a lower line from a handful of answers).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np

from model_store.serving.drift import ALARM_PROBS

TRAINED_LINE = 1.0
# every term of the minimum, in the order a tie is named (the first that attains the line)
TERMS: tuple[str, ...] = ("target", "step", "ceiling", "defects", "lots")


@dataclass(frozen=True)
class LineBounds:
    min_false_alarms: int = 20
    min_false_alarm_share: float = 0.5
    target_quantile: float = 0.5
    step: float = 1.25
    max_line: float = 2.0
    defect_quantile: float = 0.05
    lot_floor: float = 0.5

    def __post_init__(self) -> None:
        if self.min_false_alarms < 1:
            raise ValueError(f"feedback lines min_false_alarms must be at least 1, got {self.min_false_alarms}")
        for name in ("min_false_alarm_share", "target_quantile", "defect_quantile"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"feedback lines {name} must be in [0, 1], got {value}")
        if not (math.isfinite(self.step) and self.step >= 1.0):
            raise ValueError(f"feedback lines step must be a number >= 1, got {self.step}")
        if not (math.isfinite(self.max_line) and self.max_line >= TRAINED_LINE):
            raise ValueError(f"feedback lines max_line must be a number >= 1, got {self.max_line}")
        if self.lot_floor not in {round(1 - p, 10) for p in ALARM_PROBS}:
            raise ValueError(f"feedback lines lot_floor must be one of 0.1, 0.2, ... 0.9 (the reference's alarm "
                             f"quantiles), got {self.lot_floor}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LineBounds:
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown feedback line bounds {sorted(unknown)}")
        values: dict[str, Any] = {k: (int(v) if k == "min_false_alarms" else float(v)) for k, v in raw.items()}
        return cls(**values)


@dataclass(frozen=True)
class LineDecision:
    """A part's line and why: ``bound`` names the term that set it (``trained`` when it stays 1)."""

    line: float
    bound: str
    reason: str
    false_alarms: int
    alarmed_defects: int
    defects: int

    @property
    def raised(self) -> bool:
        return self.line > TRAINED_LINE


def lot_floor_score(alarm_quantiles: tuple[float, ...] | list[float] | None, lot_floor: float) -> float | None:
    """The score that ``lot_floor`` of the history's alarms exceeded, or None without a reference."""
    if alarm_quantiles is None:
        return None
    index = int(round((1.0 - lot_floor) * 10)) - 1  # ALARM_PROBS are 0.1 ... 0.9
    return float(alarm_quantiles[index])


def decide_line(
    false_alarm_scores: np.ndarray, alarmed_defect_scores: np.ndarray, defect_scores: np.ndarray,
    alarm_quantiles: tuple[float, ...] | list[float] | None, bounds: LineBounds = LineBounds(),
) -> LineDecision:
    """A part's feedback line from the scores of its answered verdicts.

    ``false_alarm_scores``: alarms answered ``false_alarm``; ``alarmed_defect_scores``: alarms
    answered ``defect``; ``defect_scores``: every confirmed defect (alarmed or not). Non-finite
    scores are left out.
    """
    def finite(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        return cast("np.ndarray", values[np.isfinite(values)])

    false_alarms, alarmed, defects = finite(false_alarm_scores), finite(alarmed_defect_scores), finite(defect_scores)
    counts = (len(false_alarms), len(alarmed), len(defects))

    def kept(reason: str) -> LineDecision:
        return LineDecision(TRAINED_LINE, "trained", reason, *counts)

    if len(false_alarms) < bounds.min_false_alarms:
        return kept(f"{len(false_alarms)} false alarms answered, {bounds.min_false_alarms} needed")
    share = len(false_alarms) / (len(false_alarms) + len(alarmed))
    if share < bounds.min_false_alarm_share:
        return kept(f"only {share:.0%} of the answered alarms were false (at least "
                    f"{bounds.min_false_alarm_share:.0%} needed)")
    floor = lot_floor_score(alarm_quantiles, bounds.lot_floor)
    if floor is None:
        return kept("no alarm reference from the lots for this part (too few alarms in history, or a store "
                    "trained before feedback lines: retrain)")
    terms = {
        "target": float(np.quantile(false_alarms, bounds.target_quantile)),
        "step": bounds.step ** (len(false_alarms) // bounds.min_false_alarms),
        "ceiling": bounds.max_line,
        # strictly below: anomaly is score > line, so a defect exactly at the line would be missed
        "defects": float(np.nextafter(np.quantile(defects, bounds.defect_quantile), -np.inf)) if len(defects) else math.inf,
        "lots": floor,
    }
    line = min(terms.values())
    bound = next(name for name in TERMS if terms[name] == line)
    if line <= TRAINED_LINE:
        return kept(f"the {bound} bound ({terms[bound]:.4g}) is at or below the trained line")
    return LineDecision(line, bound, f"raised to {line:.4g} by the {bound} bound on {len(false_alarms)} false alarms "
                        f"and {len(alarmed)} confirmed alarms ({len(defects)} confirmed defects)", *counts)


def alarms(score: np.ndarray, line: float | np.ndarray) -> np.ndarray:
    """Which verdicts alarm at ``line`` (NaN scores never do)."""
    return cast("np.ndarray", np.nan_to_num(np.asarray(score, dtype=float), nan=-np.inf) > line)


__all__ = ["TRAINED_LINE", "TERMS", "LineBounds", "LineDecision", "lot_floor_score", "decide_line", "alarms"]
