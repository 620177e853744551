"""Which exact set-point combination of the recommended cluster to publish.

A setting cluster is a region of the maker's whole setting space, so for one facility/item it can
hold several distinct recipes (a standard one, a variant, one-step operator nudges). Default: the
most used exact combination. When two or more combinations each have enough shots
(``min_rows``), they are ranked with the cluster rule (:func:`.ranking.rank_clusters`, other
clusters of the facility/item kept as their own units so lot counts are split correctly) and the
most used among the lowest credible rates wins; with no clear difference that is again the most
used one. Continuous "settings" (every shot its own combination) fall back to the most used.

Controller-driven fields: a set point that takes many values in the cluster, none of them on
more than a fifth of its shots (an adaptive hold pressure, a mould temperature unit that hunts),
is no operator's choice. Combinations are then told apart by the other fields and by which
stretch of such a field's values a shot lies in: its distinct values sorted, a new stretch starts
after a gap of more than WANDER_GAP times the median gap (a recipe 10 degrees cooler is another
stretch; hunting by tenths is not). Every shot that agrees on those is one variant, and a variant
publishes its most used exact combination. Without this, the variant whose wandering field
happened to repeat a value most often would win "most used", not the variant run most (on forge,
a cluster holding four recipes of one part published its worst).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from model_store.recipe.config import RecipeConfig
from model_store.recipe.ranking import rank_clusters, recommend
from model_store.recipe.window import DIGITS

MOST_USED, EVIDENCE = "most used", "lowest credible defect rate"
# A field is controller-driven (wandering) in a cluster when it takes more than WANDER_VALUES
# distinct values there and its most common value holds less than WANDER_MODE_SHARE of the shots.
WANDER_VALUES, WANDER_MODE_SHARE, WANDER_GAP = 10, 0.2, 10.0
CENTROID = "cluster centre (the exact combination lies outside the cluster's spread)"


@dataclass(frozen=True)
class Combination:
    values: dict[str, float | None]  # field -> set point (empty when no row has every field)
    rows: int  # shots of this combination (of its variant, when a field wanders: see the module doc)
    share: float  # of the cluster's shots with every setting field known
    chosen_by: str  # MOST_USED or EVIDENCE
    most_used: dict[str, float | None]
    mask: np.ndarray  # over the pair's rows: the shots with this combination
    # Its own credible rate and estimate when it was ranked against the cluster's other combinations
    # (chosen by evidence); None otherwise (then the cluster's figures stand for it).
    credible: float | None = None
    estimate: float | None = None
    # How many combinations (each with >= min_rows shots) the choice was made among: the pick's
    # test against the history is corrected for them (:mod:`.gate`). 1 when there was no choice.
    options: int = 1


def wandering_fields(rounded: np.ndarray) -> np.ndarray:
    """Per column of ``rounded`` (one row per shot): whether the field wanders (see the module doc)."""
    out = np.zeros(rounded.shape[1], dtype=bool)
    for j in range(rounded.shape[1]):
        _, counts = np.unique(rounded[:, j], return_counts=True)
        out[j] = len(counts) > WANDER_VALUES and counts.max() < WANDER_MODE_SHARE * len(rounded[:, j])
    return out


def stretches(values: np.ndarray) -> np.ndarray:
    """Per value, the index of its stretch: sorted distinct values split where a gap exceeds
    WANDER_GAP times the median gap between neighbours."""
    unique = np.unique(values)
    if len(unique) < 3:
        return np.searchsorted(unique, values)
    gaps = np.diff(unique)
    starts = np.concatenate([[0], np.cumsum(gaps > WANDER_GAP * np.median(gaps))])
    return starts[np.searchsorted(unique, values)]


def variants(rounded: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group shots (rows of ``rounded``) into variants: equal on every field that does not wander,
    and in the same stretch of every field that does.

    Returns (per variant: its most used exact combination, per shot: its variant, per variant: shots).
    With no wandering field every exact combination is its own variant.
    """
    wander = wandering_fields(rounded)
    keys = rounded.copy()
    for j in np.flatnonzero(wander):
        keys[:, j] = stretches(rounded[:, j])
    _, variant, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    variant = variant.ravel()
    combos = np.empty((len(counts), rounded.shape[1]))
    for v in range(len(counts)):
        unique, tally = np.unique(rounded[variant == v], axis=0, return_counts=True)
        combos[v] = unique[int(np.argmax(tally))]
    return combos, variant, counts


def _as_dict(fields: list[str], values: np.ndarray) -> dict[str, float | None]:
    return {f: (round(float(v), DIGITS) if np.isfinite(v) else None) for f, v in zip(fields, values)}


def choose_combination(
    pair_shots: pd.DataFrame,
    settings: pd.DataFrame,
    cluster: int,
    lots: pd.DataFrame | None,
    config: RecipeConfig,
    use_predicted: bool = True,
) -> Combination:
    """``pair_shots``: one facility/item's pseudo-labelled shots (ranking columns); ``settings``: their set points."""
    fields = list(settings.columns)
    n = len(pair_shots)
    in_cluster = (pair_shots["cluster"] == cluster).to_numpy()
    complete = settings.notna().all(axis=1).to_numpy() & in_cluster
    if not complete.any():
        return Combination({}, 0, 0.0, MOST_USED, {}, np.zeros(n, dtype=bool))
    rounded = np.round(settings.to_numpy(float)[complete], DIGITS)
    unique, inverse, counts = variants(rounded)
    combo = np.full(n, -1)
    combo[complete] = inverse
    top = int(np.argmax(counts))
    most_used = _as_dict(fields, unique[top])
    chosen, chosen_by = top, MOST_USED
    options = int((counts >= config.min_rows).sum())
    if options >= 2:
        m = len(unique)
        # Units for the ranking: each combination of the cluster, every other cluster as a whole,
        # and the cluster's shots with a gap in their set points as one more unit.
        unit = np.where(combo >= 0, combo, np.where(in_cluster, m, m + 1 + pair_shots["cluster"].to_numpy()))
        pair = (str(pair_shots["facility"].iloc[0]), str(pair_shots["item"].iloc[0]))
        table = rank_clusters(pair_shots.assign(cluster=unit), lots, config, predicted_pairs={pair} if use_predicted else set())
        table = recommend(table[table["cluster"] < m], config)
        picked = table[table["recommended"]]
        usual = table[table["cluster"] == top]
        if len(picked) and int(picked["cluster"].iloc[0]) != top and len(usual) and not (
                float(picked["credible_rate"].iloc[0]) < float(usual["credible_low"].iloc[0])):
            picked = picked.iloc[:0]  # not clearly better than the most used one: the most used stays
        if len(picked):
            chosen = int(picked["cluster"].iloc[0])
            chosen_by = MOST_USED if chosen == top else EVIDENCE
            if chosen_by == EVIDENCE:
                credible, estimate = float(picked["credible_rate"].iloc[0]), float(picked["defect_rate"].iloc[0])
                return Combination(_as_dict(fields, unique[chosen]), int(counts[chosen]), float(counts[chosen] / counts.sum()),
                                   chosen_by, most_used, combo == chosen, credible, estimate, options)
    return Combination(
        _as_dict(fields, unique[chosen]), int(counts[chosen]), float(counts[chosen] / counts.sum()), chosen_by, most_used, combo == chosen,
        options=max(1, options),
    )


def use_centroid(combo: Combination, centroid: dict[str, float | None]) -> Combination:
    """Publish the cluster centre instead of ``combo`` (no shot ran it exactly: rows 0, empty mask)."""
    return Combination(dict(centroid), 0, 0.0, CENTROID, combo.most_used, np.zeros_like(combo.mask), options=combo.options)


def combination_json(combo: Combination) -> dict[str, Any]:
    return {"exact": combo.values, "exact_rows": combo.rows, "exact_share": round(combo.share, DIGITS), "chosen_by": combo.chosen_by,
            "most_used": combo.most_used}
