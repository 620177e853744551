"""Split daily lot counts between the setting clusters that ran on the same day.

A lot is one (facility, item, day): its good and bad totals are known, not which shot made which
part. When a day ran two settings, the maximum-likelihood per-cluster defect rates under
``bad_l ~ Binomial(parts_l, sum_c share_lc * p_c)`` are found by EM (the classic mixture with
known mixing proportions): each bad part is attributed to cluster c with probability
``share_lc p_c / q_l``, each good part with ``share_lc (1 - p_c) / (1 - q_l)``. A cluster that
always ran alone gets exactly its lots' bad / parts; clusters that always ran together in the same
proportions cannot be told apart and keep the pooled rate (honestly: the data cannot rank them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ITERATIONS = 500
TOLERANCE = 1e-10  # on the rates: far below any difference the ranking could act on


@dataclass(frozen=True)
class LotAttribution:
    rate: np.ndarray  # per cluster, ML defect rate (NaN where no lot covers the cluster)
    parts: np.ndarray  # per cluster, parts attributable to it by volume share (effective trials)
    fitted: np.ndarray  # per lot, the fitted lot rate q_l
    iterations: int


def attribute_lots(shares: np.ndarray, good: np.ndarray, bad: np.ndarray) -> LotAttribution:
    """``shares``: (lots, clusters), each row the clusters' share of that lot's shots (sums to 1).

    ``good``/``bad``: (lots,) counts. Returns per-cluster ML rates and effective part counts.
    """
    shares = np.asarray(shares, dtype=float)
    good = np.asarray(good, dtype=float)
    bad = np.asarray(bad, dtype=float)
    parts_l = good + bad
    parts_c = shares.T @ parts_l
    covered = parts_c > 0
    total = parts_l.sum()
    pooled = bad.sum() / total if total > 0 else 0.0
    p = np.where(covered, pooled, np.nan)
    if total <= 0 or not covered.any():
        return LotAttribution(p, parts_c, np.full(len(parts_l), np.nan), 0)
    if bad.sum() == 0 or good.sum() == 0:  # no information to split: every cluster gets the pooled rate
        return LotAttribution(p, parts_c, np.full(len(parts_l), pooled), 0)
    pc = np.where(covered, p, 0.0)
    iterations = 0
    for iterations in range(1, MAX_ITERATIONS + 1):  # noqa: B007 - the count is reported after the loop
        q = shares @ pc
        with np.errstate(divide="ignore", invalid="ignore"):
            bad_w = np.where(q > 0, bad / q, 0.0)
            good_w = np.where(q < 1, good / (1 - q), 0.0)
        bad_c = pc * (shares.T @ bad_w)
        good_c = (1 - pc) * (shares.T @ good_w)
        denominator = bad_c + good_c
        new = np.where(denominator > 0, bad_c / np.where(denominator > 0, denominator, 1), 0.0)
        new = np.where(covered, new, 0.0)
        done = np.max(np.abs(new - pc)) < TOLERANCE
        pc = new
        if done:
            break
    return LotAttribution(np.where(covered, pc, np.nan), parts_c, shares @ pc, iterations)
