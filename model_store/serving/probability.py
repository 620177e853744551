"""Defect probability from a score: the lot-calibrated logistic model fitted by
:mod:`model_store.calibration`, evaluated with NumPy alone."""
from __future__ import annotations

from dataclasses import dataclass

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
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def log_score(score: np.ndarray) -> np.ndarray:
    score = np.asarray(score, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log(np.where(score > 0, score, np.nan))
    return np.clip(x, -LOG_SCORE_CLIP, LOG_SCORE_CLIP)
