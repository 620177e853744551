"""Binomial rate intervals that shrink small samples, and the dispersion that widens them.

Pure array functions. Counts may be fractional: lot defects split between the settings that ran
on one day, or counts deflated by a dispersion factor, are "effective" trials.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

from model_store.recipe.config import BETA, WILSON


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def wilson_interval(k: np.ndarray, n: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of k/n. Where n == 0: [0, 1] (nothing is known)."""
    k, n = np.broadcast_arrays(np.asarray(k, dtype=float), np.asarray(n, dtype=float))
    z2 = _z(confidence) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n > 0, k / n, 0.0)
        denom = 1.0 + z2 / n
        centre = (p + z2 / (2 * n)) / denom
        half = np.sqrt(z2) / denom * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # Exact ends where the closed form only rounds to them (0 of n, n of n).
    lower = np.where((n > 0) & (k > 0), np.clip(centre - half, 0.0, 1.0), 0.0)
    upper = np.where((n > 0) & (k < n), np.clip(centre + half, 0.0, 1.0), 1.0)
    return lower, upper


def beta_interval(k: np.ndarray, n: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Jeffreys interval: quantiles of Beta(k + 1/2, n - k + 1/2); [0, 1] where n == 0."""
    from scipy.stats import beta

    k, n = np.broadcast_arrays(np.asarray(k, dtype=float), np.asarray(n, dtype=float))
    tail = (1.0 - confidence) / 2.0
    a, b = k + 0.5, np.maximum(n - k, 0.0) + 0.5
    lower = np.where(k > 0, beta.ppf(tail, a, b), 0.0)
    upper = np.where(k < n, beta.ppf(1.0 - tail, a, b), 1.0)
    lower = np.where(n > 0, lower, 0.0)
    upper = np.where(n > 0, upper, 1.0)
    return lower, upper


def rate_interval(k: np.ndarray, n: np.ndarray, confidence: float, method: str = WILSON) -> tuple[np.ndarray, np.ndarray]:
    if method == WILSON:
        return wilson_interval(k, n, confidence)
    if method == BETA:
        return beta_interval(k, n, confidence)
    raise ValueError(f"unknown interval method {method!r}")


def pearson_dispersion(k: np.ndarray, n: np.ndarray, expected: np.ndarray, fitted: int) -> float:
    """Quasi-binomial dispersion: Pearson chi-square of per-unit counts over its degrees of freedom.

    ``k``/``n`` are per unit (a cluster's shots on one day, or one lot), ``expected`` the fitted
    rate of each unit and ``fitted`` the number of rates estimated. Floored at 1 (never narrows an
    interval); 1 when there are too few units to tell.
    """
    k, n, p = (np.asarray(a, dtype=float) for a in (k, n, expected))
    ok = (n > 0) & (p > 0) & (p < 1)
    df = int(ok.sum()) - fitted
    if df < 1:
        return 1.0
    k, n, p = k[ok], n[ok], p[ok]
    chi2 = float((((k - n * p) ** 2) / (n * p * (1 - p))).sum())
    return max(1.0, chi2 / df)
