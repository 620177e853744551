"""Is the picked setting better than what the part already runs? The test a recommendation must pass.

The ranking picks one setting among a part's k candidates on noisy rates, so the pick is the
winner of k draws and its estimate is biased low (the winner's curse): on the forge plants 5-18 %
of the picks were truly worse than the part's history while their own figures said better. So a
pick is recommended only when the data show it is better than the **rest of the part's history**
(every shot it ran under other settings; below the rest is below the history, which mixes the two):

* **Difference, not two intervals.** The rates of the picked setting (p1) and of the rest (p0)
  are fitted together from the same units, so lots shared by both (a day that ran both settings)
  are split by EM (:mod:`.attribution`) and the covariance of the two rates comes from the
  binomial mixture's Fisher information: two settings that always ran in the same proportions
  cannot be told apart (singular information: never better).
* **Shrinkage.** Each rate gets a Beta prior centred on the part's pooled rate, worth
  ``prior_defects`` defects (``prior_defects / pooled`` parts): a setting with 0 defects in 300
  parts is not "0 %", it is pulled toward the part's own rate until its parts outweigh the prior.
* **Day-to-day dispersion.** The variance is multiplied by the Pearson dispersion of the fitted
  units (quasi-binomial, as in the ranking): shots of one day are alike, not independent trials.
  The rest is fitted per setting cluster, so a rest that mixes a good and a bad setting is not
  read as one over-dispersed rate.
* **Multiple comparisons.** The pick was chosen among ``k`` candidates, so the test is at
  Bonferroni level ``alpha / k``: better only when the upper end of the two-sided
  ``1 - alpha / k`` interval of p1 - p0 lies below 0 (strictly: touching 0 is not better).

Pure functions on arrays; the units (lots, or days of pseudo-labels) come from :mod:`.build`.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from model_store.recipe.attribution import attribute_lots
from model_store.recipe.intervals import pearson_dispersion


@dataclass(frozen=True)
class Difference:
    """The picked setting against the rest of the part's history (rates are fractions)."""

    picked: float  # shrunk rate of the picked setting
    rest: float  # shrunk rate of the rest of the history
    upper: float  # upper end of the corrected interval of picked - rest (inf: cannot be told apart)
    z: float  # the normal quantile used: two-sided 1 - alpha / k
    candidates: int  # k
    dispersion: float  # Pearson dispersion of the fitted units (>= 1), multiplying the variance

    @property
    def better(self) -> bool:
        """Shown better: the whole corrected interval of the difference lies below 0."""
        return bool(self.upper < 0.0)


def corrected_z(confidence: float, candidates: int) -> float:
    """Two-sided normal quantile at Bonferroni confidence ``1 - (1 - confidence) / candidates``."""
    alpha = (1.0 - confidence) / max(1, int(candidates))
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def shrink(defects: np.ndarray, parts: np.ndarray, pooled: float, prior_defects: float) -> tuple[np.ndarray, np.ndarray]:
    """(rates, prior parts): Beta prior centred on ``pooled`` worth ``prior_defects`` defects.

    rate = (defects + prior_defects) / (parts + prior_defects / pooled); with no defects at all in
    the part (pooled 0) there is nothing to centre on and the rates are the raw ones (0 without parts).
    """
    prior = prior_defects if pooled > 0 else 0.0
    prior_parts = prior / pooled if pooled > 0 else 0.0
    total = np.asarray(parts, float) + prior_parts
    rates = np.divide(np.asarray(defects, float) + prior, total, out=np.zeros(total.shape), where=total > 0)
    return rates, np.full(total.shape, prior_parts)


def difference(shares: np.ndarray, good: np.ndarray, bad: np.ndarray, candidates: int, confidence: float = 0.95,
               prior_defects: float = 1.0, overdispersion: bool = True, weights: np.ndarray | None = None) -> Difference:
    """Test the picked setting (column 0 of ``shares``) against the rest (the other columns).

    ``shares``: (units, 1 + m), each row the columns' share of the unit's shots (a unit is a lot:
    one facility/item and day; with pseudo-labels, one column's shots of one day, share 1 for it).
    The rest may be split into m columns (its setting clusters), each with its own rate, so a rest
    that mixes a good and a bad setting is not one over-dispersed rate; its rate is their mean
    weighted by ``weights`` (their shots; default equal), as the history mixes them.
    ``good`` / ``bad``: the unit's counts. Columns without any part are left out.
    """
    shares, good, bad = np.asarray(shares, float), np.asarray(good, float), np.asarray(bad, float)
    parts = good + bad
    load = shares.T @ parts  # parts per column
    weights = np.ones(len(load) - 1) if weights is None else np.asarray(weights, float)
    rest_weights = weights[load[1:] > 0]
    z = corrected_z(confidence, candidates)
    if not load[0] > 0 or not rest_weights.sum() > 0:
        return Difference(np.nan, np.nan, np.inf, z, candidates, 1.0)
    shares = shares[:, load > 0]
    fit = attribute_lots(shares, good, bad)
    rates, prior_parts = shrink(fit.rate * fit.parts, fit.parts, float(bad.sum() / parts.sum()), prior_defects)
    # Expected Fisher information of the binomial mixture at the shrunk rates, plus the prior's.
    q = np.clip(shares @ rates, 1e-12, 1 - 1e-12)
    information = (shares * (parts / (q * (1 - q)))[:, None]).T @ shares
    information += np.diag(np.divide(prior_parts, rates * (1 - rates), out=np.zeros(rates.shape), where=prior_parts > 0))
    phi = pearson_dispersion(bad, parts, fit.fitted, shares.shape[1]) if overdispersion else 1.0
    contrast = np.concatenate([[1.0], -rest_weights / rest_weights.sum()])
    rest = float(-contrast[1:] @ rates[1:])
    if np.linalg.matrix_rank(information) < len(information):  # always together in the same proportions: inseparable
        return Difference(float(rates[0]), rest, np.inf, z, candidates, phi)
    variance = float(contrast @ np.linalg.solve(information, contrast)) * phi
    upper = float(rates[0] - rest + z * np.sqrt(max(variance, 0.0)))
    return Difference(float(rates[0]), rest, upper, z, candidates, phi)


def not_shown_better(test: Difference) -> str | None:
    """Why the pick is not recommended (a sentence), or None when the test shows it better."""
    if test.better:
        return None
    if not np.isfinite(test.upper):
        return ("it cannot be told apart from the rest of the item's history (it never ran apart from it, or one of "
                "the two has no evidence)")
    settings_word = "setting" if test.candidates == 1 else "settings"
    return (f"not shown better than the rest of the item's history: {test.picked:.2%} against {test.rest:.2%}, and the "
            f"difference could be as high as {test.upper:+.2%} (interval corrected for {test.candidates} candidate "
            f"{settings_word})")


def difference_json(test: Difference) -> dict[str, float | int | bool | None]:
    """The test's figures as published with a recipe or a keep-current-practice row."""
    def num(x: float) -> float | None:
        return round(float(x), 6) if np.isfinite(x) else None
    return {"picked_rate": num(test.picked), "rest_rate": num(test.rest), "difference_upper": num(test.upper),
            "candidates": int(test.candidates), "z": num(test.z), "dispersion": num(test.dispersion), "better": test.better}
