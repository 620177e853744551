"""Thresholds: from a group's training-loss distribution to the per-record decision line.

Kept apart from the models (as river keeps thresholding apart from scoring): every model family
yields a loss where larger means more anomalous, and this module alone decides what is too large.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_store.config import ThresholdConfig

SUMMARY_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.995, 0.999)


def loss_summary(losses: np.ndarray) -> dict[str, float]:
    """mean, std, CV, max and quantiles of a training-loss distribution."""
    losses = np.asarray(losses, dtype=float)
    mean = float(losses.mean())
    std = float(losses.std())
    summary = {"mean": mean, "std": std, "cv": std / mean if mean > 0 else 0.0, "max": float(losses.max())}
    for q in SUMMARY_QUANTILES:
        summary[f"q{q * 100:g}"] = float(np.quantile(losses, q))
    return summary


@dataclass(frozen=True)
class GroupThreshold:
    """What a group keeps to decide: its base line and the weights that may widen it."""

    base: float
    fixed: float  # the fixed-quantile threshold
    max_presumed_good: float  # the largest training loss among rows presumed good
    cv: float
    cv_gain: float
    distance_gain: float
    margin_limit: float

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, raw: dict[str, float]) -> GroupThreshold:
        return cls(**{k: float(raw[k]) for k in cls.__dataclass_fields__})


def fit_threshold(losses: np.ndarray, lot_defect_rate: float, config: ThresholdConfig) -> GroupThreshold:
    """Base threshold = max(fixed quantile, max training loss among presumed-good rows).

    A training group may hold up to 1 % defective shots (the lots say how many, not which). Taking
    the plain maximum would set the line at the worst defect in training and blind the group to
    every defect like it; so the top ``lot_defect_rate`` share of training losses is presumed bad
    and the maximum is taken over the rest. With a 0 % lot rate this is the plain maximum.
    """
    losses = np.asarray(losses, dtype=float)
    fixed = float(np.quantile(losses, config.fixed_quantile))
    share = min(max(float(lot_defect_rate), 0.0), 0.5) if np.isfinite(lot_defect_rate) else 0.0
    max_good = float(np.quantile(losses, 1.0 - share)) if share > 0 else float(losses.max())
    summary_cv = float(losses.std() / losses.mean()) if losses.mean() > 0 else 0.0
    return GroupThreshold(
        base=max(fixed, max_good),
        fixed=fixed,
        max_presumed_good=max_good,
        cv=summary_cv,
        cv_gain=config.cv_gain,
        distance_gain=config.distance_gain,
        margin_limit=config.margin_limit,
    )


def effective_thresholds(threshold: GroupThreshold, distance: np.ndarray) -> np.ndarray:
    """Per-record threshold: base widened by CV weight plus distance weight, capped by the limit.

    ``distance`` is 0 on the exact path and the scaled setting distance on the nearest path.
    """
    weight = threshold.cv_gain * threshold.cv + threshold.distance_gain * np.asarray(distance, dtype=float)
    return threshold.base * (1.0 + np.minimum(weight, threshold.margin_limit))


def decide(
    loss: np.ndarray, threshold: np.ndarray, excursion: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decision: ``score = max(loss / threshold, excursion)``, ``anomaly = score > 1``.

    ``excursion`` is the worst excursion ratio of each record (see :mod:`model_store.serving.excursions`):
    a value beyond its group's band by more than the tolerance counts whatever the model says.
    ``margin = max(loss, excursion x threshold) - threshold``: in loss units, positive exactly when
    the record is anomalous (it is ``loss - threshold`` whenever the model decides).
    A loss or ratio equal to the line is not anomalous.
    """
    loss = np.asarray(loss, dtype=float)
    threshold = np.asarray(threshold, dtype=float)
    safe = np.where(threshold > 0, threshold, np.finfo(float).tiny)
    model_score = loss / safe
    margin = loss - threshold
    score = model_score
    if excursion is not None:
        excursion = np.asarray(excursion, dtype=float)
        # (ratio - 1) x line rather than ratio x line - line: the sign then agrees with score > 1
        # exactly, in floating point too.
        wins = excursion > model_score
        score = np.where(wins, excursion, model_score)
        margin = np.where(wins, (excursion - 1.0) * safe, margin)
    return margin, score, score > 1.0
