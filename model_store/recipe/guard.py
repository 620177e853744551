"""The two rules that stop a recipe from recommending worse than what the floor already does.

* **History guard.** A facility/item's own history (every shot it made, all settings mixed) is
  ranked like one more setting cluster. A recommendation whose credible defect rate or whose
  point estimate is worse than the history's is no recommendation: the floor is told to keep its
  current practice, with the reason. "Worse" uses the ranking's own tolerance (a rate within it
  of another counts as the same, RecipeConfig.relative_tolerance / absolute_tolerance): without
  it, a cluster holding all but one of the item's shots would be "worse" than its own history by
  a rounding error. Equal, or within the tolerance, is not worse.
* **Spread rule.** The published exact set-point combination must lie inside its cluster's own
  spread: within the ``quantile`` radius around the centroid (maker's scaled setting space) of the
  shots the facility/item ran in that cluster. Farther out it is an outlier of the cluster (a
  rarely run nudge), and the centroid is published instead. Row-weighted, so a combination that
  holds more than ``1 - quantile`` of those shots is inside by construction.
* **Confidence.** Every answer says whether it is ``clearly_better`` than what the part ran or
  ``uncertain``, with the reason in plain words. Clearly better: the credible interval of the
  recommended setting lies entirely below the interval of the rest of the part's history (every
  shot it ran under other settings), strictly; intervals that overlap or merely touch are
  uncertain, and so is a setting that is all the part ran (nothing to compare with) or a figure
  that is unknown. The rest, not the whole history: the recommended setting's own shots are part
  of the history, so a setting that made most of them could never separate from a mix that is
  mostly itself. Since history = share * setting + (1 - share) * rest, "below the rest" is
  "below the history" as well.

Pure functions on numbers and arrays.
"""
from __future__ import annotations

import numpy as np

KEEP = "keep current practice"
RECOMMEND = "recommend"
CLEARLY_BETTER, UNCERTAIN = "clearly_better", "uncertain"
# Relative slack for "equal": the history's and a single cluster's rates come from the same counts
# through different float paths (a weighted mean of one value), so they may differ in the last bits.
EQUAL_SLACK = 1e-9


def _known(x: float | None) -> bool:
    return x is not None and bool(np.isfinite(x))


def _above(value: float, reference: float, relative: float, absolute: float) -> bool:
    limit = reference * (1 + relative) + absolute
    return value > limit + EQUAL_SLACK * max(abs(limit), 1e-12)


def worse_than_history(credible: float | None, estimate: float | None, history_credible: float | None,
                       history_estimate: float | None, relative: float = 0.0, absolute: float = 0.0) -> str | None:
    """Why the candidate is worse than the history (a sentence), or None when it is not.

    Worse: above ``history * (1 + relative) + absolute`` (the ranking's tolerance). Unknown history
    figures (None / NaN) cannot be compared and do not block a recommendation.
    """
    known = _known
    if known(credible) and known(history_credible) and _above(credible, history_credible, relative, absolute):
        return (f"its credible defect rate {credible:.2%} is above the item's own history ({history_credible:.2%}): "
                "no setting is credibly better than the current mix")
    if known(estimate) and known(history_estimate) and _above(estimate, history_estimate, relative, absolute):
        return (f"its estimated defect rate {estimate:.2%} is above the item's own history ({history_estimate:.2%}): "
                "recommending it would expect more defects, not fewer")
    return None


def _span(low: float, high: float) -> str:
    return f"{low:.2%}-{high:.2%}"


def confidence(interval: tuple[float | None, float | None], rest: tuple[float | None, float | None] | None) -> tuple[str, str]:
    """``(CLEARLY_BETTER or UNCERTAIN, the reason in plain words)``.

    ``interval``: (low, high) credible defect rate of the recommended setting; ``rest``: the same
    for the rest of the part's history, or None when the part ran nothing else. Clearly better
    only when ``high < rest low`` (strictly: touching intervals are uncertain).
    """
    low, high = interval
    if rest is None:
        return UNCERTAIN, ("not clearly better than what this part ran: it is all this part ran "
                           "(no other setting to compare it with)")
    rest_low, rest_high = rest
    if not all(_known(x) for x in (low, high, rest_low, rest_high)):
        return UNCERTAIN, "not clearly better than what this part ran: no credible defect rate to compare"
    assert low is not None and high is not None and rest_low is not None and rest_high is not None
    if high < rest_low:
        return CLEARLY_BETTER, (f"clearly better than what this part ran otherwise: its credible defect rate "
                                f"({_span(low, high)}) lies below that of the rest of its history ({_span(rest_low, rest_high)})")
    where = "lies above" if low > rest_high else "touches" if high == rest_low else "overlaps"
    return UNCERTAIN, (f"not clearly better than what this part ran: its credible defect rate ({_span(low, high)}) "
                       f"{where} that of the rest of its history ({_span(rest_low, rest_high)})")


def spread_radius(points: np.ndarray, centroid: np.ndarray, quantile: float = 0.95) -> float:
    """The ``quantile`` of the distances of ``points`` (one per shot, scaled) to ``centroid``.

    Linear interpolation between order statistics (NumPy's default); 0 for no points.
    """
    points = np.asarray(points, dtype=float).reshape(-1, len(centroid))
    if len(points) == 0:
        return 0.0
    distances = np.sqrt(((points - np.asarray(centroid, dtype=float)) ** 2).sum(axis=1))
    return float(np.quantile(distances, quantile))


def within_spread(point: np.ndarray, centroid: np.ndarray, radius: float) -> bool:
    """Whether ``point`` lies inside (or on) the sphere of ``radius`` around ``centroid``."""
    distance = float(np.sqrt(((np.asarray(point, dtype=float) - np.asarray(centroid, dtype=float)) ** 2).sum()))
    return distance <= radius * (1 + EQUAL_SLACK) + 1e-12
