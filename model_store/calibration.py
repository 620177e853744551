"""Lot calibration: the lots are weak labels, and they set the alarm lines and defect probabilities.

A plant keeps one quality truth: per (facility, item, day) lot, how many shots were bad. That is
learning from label proportions (LLP): each lot is a bag with a known defect share, never which
shot. Two things are learnt from the whole history (every group, dirty ones included):

1. **Lines.** Every (group, path) unit — the records a group judges through one resolution path —
   gets a factor on its prior base line such that the alarms it raises on history equal the bad
   shots its lots report (the sum of each record's lot defect rate). Excursions count as alarms
   first. Units with too little history take their path's typical (median) factor. The original
   shape stays: ``line = base x factor x (1 + min(cv_gain x CV + distance_gain x distance, limit))``;
   the CV weight is constant within a group, so the matched factor absorbs it.
2. **Defect probability.** ``p = sigmoid(a_path + b log(score))`` where ``score`` is loss /
   line (or the excursion ratio, whichever is larger): one slope ``b >= 0`` shared by every path, an
   intercept per path, both maximising the bag likelihood of the lots (DLLP, Ardehaly & Culotta 2017: each lot's mean predicted probability
   against its reported share, weighted by its size). A fallback path whose slope does not explain
   the lots better than a constant (likelihood-ratio statistic below ``min_evidence``) is reported
   as carrying no evidence, and is not used.

Pure functions: arrays in, arrays out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from model_store.serving.probability import ConditionalProbability, ProbabilityModel, log_score, sigmoid

PROBABILITY_FLOOR = 1e-6


def matched_factor(ratio: np.ndarray, expected_alarms: float, forced_alarms: int = 0) -> float:
    """Factor ``f`` on the prior line so that ``#(ratio > f) + forced_alarms`` equals the expected alarms.

    ``ratio``: loss / prior line of the records that only the model can flag (excursions are the
    ``forced_alarms``). The budget left, rounded to whole shots, picks the order statistic: with
    budget ``k`` the line sits at the (k+1)-th largest ratio, so exactly ``k`` records (ties aside)
    lie strictly above it. No budget left: the largest ratio (nothing above the line).
    """
    ratio = np.sort(np.asarray(ratio, dtype=float)[np.isfinite(ratio)])[::-1]
    if len(ratio) == 0:
        return float("nan")
    budget = int(np.floor(max(float(expected_alarms) - forced_alarms, 0.0) + 0.5))
    return float(ratio[min(budget, len(ratio) - 1)])


@dataclass(frozen=True)
class UnitFactors:
    factors: dict[tuple[int, str], float]  # (group, path) -> factor, units with enough history
    path_factor: dict[str, float]  # path -> typical factor (median over its units, row-weighted)
    expected: dict[tuple[int, str], float]  # expected bad shots per unit (sum of lot rates)
    alarms: dict[tuple[int, str], int]  # alarms on history at the matched line
    rows: dict[tuple[int, str], int]
    excursions: dict[tuple[int, str], int]  # of which gross excursions (alarms whatever the line)


def unit_factors(
    group: np.ndarray, path: np.ndarray, ratio: np.ndarray, excursion: np.ndarray, lot_rate: np.ndarray, min_rows: int,
    in_sample: np.ndarray | None = None,
) -> UnitFactors:
    """Matched factors for every (group, path) unit with at least ``min_rows`` rows covered by lots.

    ``ratio`` = loss / prior line, ``excursion`` = the worst excursion ratio (> 1 is an alarm
    whatever the line), ``lot_rate`` = the record's lot defect rate (NaN: no lot covers it).
    ``in_sample`` marks rows the judging model was trained on: a model fits its own rows more
    closely than new production, so a unit with at least ``min_rows`` other rows is matched on
    those alone (a line matched on training rows would alarm too often on new shots).
    """
    covered = np.isfinite(lot_rate) & np.isfinite(ratio)
    if in_sample is not None:
        keys_all = np.char.add(np.char.add(group.astype(str), "|"), path.astype(str))
        fresh = covered & ~in_sample
        for key in np.unique(keys_all[fresh]):
            unit = keys_all == key
            if (fresh & unit).sum() >= min_rows:
                covered = covered & ~(unit & in_sample)
    factors: dict[tuple[int, str], float] = {}
    expected: dict[tuple[int, str], float] = {}
    alarms: dict[tuple[int, str], int] = {}
    rows: dict[tuple[int, str], int] = {}
    excursions: dict[tuple[int, str], int] = {}
    by_path: dict[str, list[tuple[float, int]]] = {}
    keys = np.char.add(np.char.add(group.astype(str), "|"), path.astype(str))
    for key in np.unique(keys[covered]):
        members = np.flatnonzero(covered & (keys == key))
        g, p = key.split("|", 1)
        unit = (int(g), p)
        rows[unit] = len(members)
        if len(members) < min_rows:
            continue
        forced = excursion[members] > 1.0
        want = float(lot_rate[members].sum())
        factor = matched_factor(ratio[members][~forced], want, int(forced.sum()))
        if not np.isfinite(factor) or factor <= 0:
            continue
        factors[unit] = factor
        expected[unit] = want
        alarms[unit] = int(forced.sum() + (ratio[members][~forced] > factor).sum())
        excursions[unit] = int(forced.sum())
        by_path.setdefault(p, []).append((factor, len(members)))
    path_factor = {p: _weighted_median([f for f, _ in v], [w for _, w in v]) for p, v in by_path.items()}
    return UnitFactors(factors, path_factor, expected, alarms, rows, excursions)


def _weighted_median(values: list[float], weights: list[int]) -> float:
    order = np.argsort(values)
    v, w = np.asarray(values, dtype=float)[order], np.asarray(weights, dtype=float)[order]
    cumulative = np.cumsum(w)
    return float(v[np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def bag_objective(
    theta: np.ndarray, column: np.ndarray, slope_column: np.ndarray, x: np.ndarray, bag: np.ndarray, share: np.ndarray,
    paths: int,
) -> tuple[float, np.ndarray]:
    """Negative DLLP bag log likelihood per row, and its gradient in ``theta = [a..., b...]``.

    Each bag (lot) contributes ``size x (share log mean + (1 - share) log(1 - mean))`` where
    ``mean`` is its rows' mean predicted probability.
    """
    slopes = len(theta) - paths
    bags = len(share)
    size = np.bincount(bag, minlength=bags).astype(float)
    total = size.sum()
    a, b = theta[:paths], theta[paths:]
    p = sigmoid(a[column] + b[slope_column] * x)
    mean = np.clip(np.bincount(bag, weights=p, minlength=bags) / np.maximum(size, 1), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    loglik = float((size * (share * np.log(mean) + (1 - share) * np.log1p(-mean))).sum())
    # d(-loglik)/dp_i = -(share/mean - (1-share)/(1-mean)) for the row's bag (size cancels 1/size)
    dp = -(share / mean - (1 - share) / (1 - mean))[bag]
    dz = dp * p * (1 - p)
    grad = np.concatenate([np.bincount(column, weights=dz, minlength=paths),
                           np.bincount(slope_column, weights=dz * x, minlength=slopes)])
    return -loglik / total, grad / total


def _bag_fit(
    column: np.ndarray, slope_column: np.ndarray, x: np.ndarray, bag: np.ndarray, share: np.ndarray, paths: int,
    slopes: int, fixed_slope: int | None = None,
) -> tuple[np.ndarray, float]:
    """Maximise the DLLP bag likelihood of ``sigmoid(a[column] + b[slope_column] x)``.

    Returns the parameters ``[a_0 .. a_{paths-1}, b_0 .. b_{slopes-1}]`` and the log likelihood;
    ``fixed_slope`` holds that slope at 0 (the restricted model of a likelihood-ratio test).
    """
    size = np.bincount(bag, minlength=int(bag.max()) + 1).astype(float)
    total = size.sum()

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        return bag_objective(theta, column, slope_column, x, bag, share, paths)

    prior = float(np.clip((share * size).sum() / total, 1e-4, 0.5))
    theta0 = np.r_[np.full(paths, np.log(prior / (1 - prior))), np.ones(slopes)]
    bounds = [(-30.0, 30.0)] * paths + [(0.0, 30.0)] * slopes
    if fixed_slope is not None:
        theta0[paths + fixed_slope] = 0.0
        bounds[paths + fixed_slope] = (0.0, 0.0)
    result = minimize(objective, theta0, jac=True, method="L-BFGS-B", bounds=bounds)
    return result.x, float(-result.fun * total)


def fit_probability(
    path: np.ndarray, score: np.ndarray, lot: np.ndarray, lot_rate: np.ndarray, tested: tuple[str, ...] = ()
) -> ProbabilityModel:
    """Fit per-path coefficients on every record with a score and a lot; ``tested`` paths also get
    their likelihood-ratio evidence (the fit again with that path's slope held at 0)."""
    x = log_score(score)
    ok = np.isfinite(x) & np.isfinite(lot_rate) & (path != "unscorable")
    names = sorted(set(path[ok].tolist()))
    if not names:
        return ProbabilityModel({}, {}, 0.0)
    column = np.searchsorted(np.array(names, dtype=object), path[ok]).astype(np.int64)
    _, bag = np.unique(np.asarray(lot)[ok], return_inverse=True)
    share = np.bincount(bag, weights=lot_rate[ok]) / np.bincount(bag)
    # Evidence: each tested path's own slope against none, everything else free.
    evidence: dict[str, float] = {}
    if tested:
        _, free = _bag_fit(column, column, x[ok], bag, share, len(names), len(names))
        for name in tested:
            if name in names:
                _, restricted = _bag_fit(column, column, x[ok], bag, share, len(names), len(names), fixed_slope=names.index(name))
                evidence[name] = max(0.0, 2.0 * (free - restricted))
    # Prediction: one slope shared by every path (the score is relative to each path's calibrated
    # line, so it means the same everywhere) and an intercept per path. Lots of clean groups barely
    # vary, and a slope of their own would not be identified from them.
    theta, loglik = _bag_fit(column, np.zeros_like(column), x[ok], bag, share, len(names), 1)
    coefficients = {name: (float(theta[k]), float(theta[len(names)])) for k, name in enumerate(names)}
    return ProbabilityModel(coefficients, evidence, loglik)


# The setting-conditioned scorer's probability (see ConditionalProbability).
MIN_EXCURSION_ROWS = 30  # held-out gross excursions for a probability of their own
PROBABILITY_BLEND = 0.5  # weight of the fitted curve beside the base rate


def gross_excursions(score: np.ndarray, excursion: np.ndarray) -> np.ndarray:
    """Rows whose verdict is a gross excursion: ratio > 1 and at least the tail score."""
    excursion = np.nan_to_num(np.asarray(excursion, dtype=float), nan=0.0)
    return (excursion > 1.0) & (excursion >= np.nan_to_num(np.asarray(score, dtype=float), nan=0.0))


def fit_conditional_probability(
    score: np.ndarray, excursion: np.ndarray, lot: np.ndarray, lot_rate: np.ndarray,
    min_excursion_rows: int = MIN_EXCURSION_ROWS, blend: float = PROBABILITY_BLEND,
) -> ConditionalProbability | None:
    """Fit on held-out rows (``score``: tail score, NaN where none; ``excursion``: worst ratio):
    the verdict's score is ``fmax(score, excursion)``; gross excursions get an intercept of their
    own (slope 0) when at least ``min_excursion_rows`` held-out rows are one, every other row
    ``a + b log score``, both by the lots' bag likelihood (DLLP) in one fit. The base rate is the
    mean lot defect rate of the rows with a lot. None without rows to fit."""
    score = np.asarray(score, dtype=float)
    verdict = np.fmax(score, np.nan_to_num(np.asarray(excursion, dtype=float), nan=0.0))
    x = log_score(verdict)
    ok = np.isfinite(score) & np.isfinite(x) & np.isfinite(lot_rate)
    if not ok.any():
        return None
    gross = gross_excursions(score, excursion) & ok
    own = int(gross.sum()) >= min_excursion_rows
    column = (gross[ok] & own).astype(np.int64)  # 0: the tail curve, 1: gross excursions
    paths = 2 if own else 1
    _, bag = np.unique(np.asarray(lot, dtype=object)[ok], return_inverse=True)
    share = np.bincount(bag, weights=lot_rate[ok]) / np.bincount(bag)
    # the excursion path's x is 0 (its slope column is the tail's, which x = 0 leaves out)
    theta, _ = _bag_fit(column, np.zeros_like(column), np.where(column == 1, 0.0, x[ok]), bag, share, paths, 1)
    base = float(np.mean(lot_rate[np.isfinite(lot_rate)]))
    return ConditionalProbability(float(theta[0]), float(theta[paths]), float(theta[1]) if own else None, base, blend)
