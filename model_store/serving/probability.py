"""Defect probability from a score: the lot-calibrated logistic model fitted by
:mod:`model_store.calibration`, evaluated with NumPy alone."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np

# log(score) is clipped: beyond e^8 (~3,000x the line) a record is as anomalous as it gets,
# and unbounded excursion ratios must not dominate the fit.
LOG_SCORE_CLIP = 8.0


@dataclass(frozen=True)
class ProbabilityModel:
    """Per path: (a, b) of ``sigmoid(a + b log score)``, and the evidence each path's slope carries."""

    coefficients: dict[str, tuple[float, float]]
    evidence: dict[str, float]  # likelihood-ratio statistic of b against b = 0
    log_likelihood: float

    def predict(self, path: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Defect probability per record; NaN where the path has no coefficients or no score."""
        out = np.full(len(score), np.nan)
        x = log_score(score)
        for name, (a, b) in self.coefficients.items():
            rows = (path == name) & np.isfinite(x)
            out[rows] = sigmoid(a + b * x[rows])
        return out


def sigmoid(z: np.ndarray) -> np.ndarray:
    return cast("np.ndarray", 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0))))


def log_score(score: np.ndarray) -> np.ndarray:
    score = np.asarray(score, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log(np.where(score > 0, score, np.nan))
    return np.clip(x, -LOG_SCORE_CLIP, LOG_SCORE_CLIP)


@dataclass(frozen=True)
class ConditionalProbability:
    """``defect_probability`` of the setting-conditioned scorer (fitted by
    :func:`model_store.calibration.fit_conditional_probability` on held-out days and their lots).

    A record whose score is a gross excursion (its excursion ratio > 1 and at least its tail
    score) has a probability of its own, ``sigmoid(excursion_intercept)``: how often such alarms
    were defects, whatever the ratio (a value ten band widths out is not ten times likelier a
    defect than one). Every other record: ``sigmoid(a + b log score)``. Both are then blended with
    the history's base rate, ``blend x model + (1 - blend) x base_rate``: lots say how many shots
    of a day were bad, not which, so how sharp the model may be is the least known part of it.
    ``excursion_intercept`` None: excursions follow the tail curve; ``base_rate`` None: no blend
    (a store from before either).
    """

    a: float
    b: float
    excursion_intercept: float | None = None
    base_rate: float | None = None
    blend: float = 1.0

    def predict(self, score: np.ndarray, excursion: np.ndarray) -> np.ndarray:
        score = np.asarray(score, dtype=float)
        excursion = np.nan_to_num(np.asarray(excursion, dtype=float), nan=0.0)
        p = sigmoid(self.a + self.b * np.nan_to_num(log_score(score), nan=-LOG_SCORE_CLIP))
        if self.excursion_intercept is not None:
            gross = (excursion > 1.0) & (excursion >= np.nan_to_num(score, nan=0.0))
            p = np.where(gross, float(sigmoid(np.array(self.excursion_intercept))), p)
        if self.base_rate is not None:
            p = self.blend * p + (1.0 - self.blend) * self.base_rate
        return p

    def to_dict(self) -> dict[str, Any]:
        return {"excursion_intercept": self.excursion_intercept, "base_rate": self.base_rate, "blend": self.blend}
