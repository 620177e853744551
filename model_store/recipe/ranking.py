"""Rank every setting cluster of every (facility, item) by credible defect rate and volume.

Pure: takes the pseudo-labelled shots and the lot table, returns one row per
(facility, item, cluster). The rule (documented in :func:`recommend`):

1. Evidence per cluster, each a rate with an interval that shrinks small samples:
   * predicted: pseudo-label anomaly share of the shots the models scored;
   * lots: the cluster's share of each day's lot counts, split by EM (:mod:`.attribution`).
   Both intervals are widened by the facility/item's day-to-day dispersion (quasi-binomial).
2. Credible defect rate = weighted mean of the evidence's interval upper bounds
   (``predicted_weight``, ``lot_weight``). Within a facility/item a kind of evidence is used when
   any of its clusters has it; a cluster lacking it gets the uninformative [0, 1]. With
   ``evidence="lots_first"`` (the default) a facility/item that has lots is ranked on them alone;
   pseudo-labels rank only those without lots.
3. Recommended = among clusters with >= ``min_rows`` shots whose credible rate is within the
   tolerance of the lowest, the one with the most shots.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from model_store.recipe.attribution import attribute_lots
from model_store.recipe.config import LOTS_FIRST, RecipeConfig
from model_store.recipe.intervals import pearson_dispersion, rate_interval

PAIR = ["facility", "item"]
CLUSTER_KEYS = ["facility", "item", "maker", "cluster"]
SHOT_COLUMNS = ("facility", "item", "maker", "cluster", "lot_date", "day", "scored", "anomaly")


def _units(shots: pd.DataFrame) -> pd.DataFrame:
    """Counts per (facility, item, maker, cluster, lot_date): the unit of day-to-day variation."""
    frame = shots[list(SHOT_COLUMNS)].copy()
    frame["scored"] = frame["scored"].astype(bool)
    frame["anomalous"] = frame["anomaly"].astype(bool) & frame["scored"]
    return frame.groupby([*CLUSTER_KEYS, "lot_date"], as_index=False, observed=True).agg(
        rows=("scored", "size"), scored=("scored", "sum"), anomalies=("anomalous", "sum")
    )


def _volume(shots: pd.DataFrame) -> pd.DataFrame:
    return shots.groupby(CLUSTER_KEYS, as_index=False, observed=True).agg(
        rows=("lot_date", "size"), lots=("lot_date", "nunique"), days=("day", "nunique"),
        first_day=("day", "min"), last_day=("day", "max"),
    )


def _predicted(units: pd.DataFrame, table: pd.DataFrame, config: RecipeConfig) -> pd.DataFrame:
    sums = units.groupby(CLUSTER_KEYS, as_index=False).agg(scored=("scored", "sum"), anomalies=("anomalies", "sum"))
    table = table.merge(sums, on=CLUSTER_KEYS, how="left")
    with np.errstate(divide="ignore", invalid="ignore"):
        table["predicted_rate"] = np.where(table["scored"] > 0, table["anomalies"] / table["scored"], np.nan)
    table["predicted_dispersion"] = 1.0
    if config.overdispersion:
        rates = units.merge(table[[*CLUSTER_KEYS, "predicted_rate"]], on=CLUSTER_KEYS)
        phi = {  # one fitted rate per (maker, cluster): cluster numbers restart at 0 for each maker
            key: pearson_dispersion(g["anomalies"], g["scored"], g["predicted_rate"], len(set(zip(g["maker"], g["cluster"]))))
            for key, g in rates.groupby(PAIR)
        }
        table["predicted_dispersion"] = [phi.get((f, i), 1.0) for f, i in zip(table["facility"], table["item"])]
    phi = table["predicted_dispersion"].to_numpy()
    low, high = rate_interval(table["anomalies"] / phi, table["scored"] / phi, config.confidence, config.interval)
    table["predicted_low"], table["predicted_high"] = low, high
    return table


def _lots(units: pd.DataFrame, lots: pd.DataFrame | None, table: pd.DataFrame, config: RecipeConfig) -> pd.DataFrame:
    table = table.assign(lot_rate=np.nan, lot_parts=0.0, lot_defects=0.0, lot_dispersion=1.0, lot_covered_rows=0)
    if lots is None or lots.empty:
        table["lot_low"], table["lot_high"] = 0.0, 1.0
        return table
    per_lot = lots.groupby(["facility", "item", "lot_date"], as_index=False)[["good_qty", "bad_qty"]].sum()
    position = {key: i for i, key in enumerate(zip(table["facility"], table["item"], table["maker"], table["cluster"]))}
    for (facility, item), g in units.groupby(PAIR):
        joined = g.merge(per_lot, on=["facility", "item", "lot_date"], how="inner")
        if joined.empty:
            continue
        clusters = sorted(set(zip(joined["maker"], joined["cluster"])))
        column = {c: j for j, c in enumerate(clusters)}
        dates = sorted(joined["lot_date"].unique())
        row = {d: i for i, d in enumerate(dates)}
        counts = np.zeros((len(dates), len(clusters)))
        np.add.at(counts, (joined["lot_date"].map(row).to_numpy(), [column[c] for c in zip(joined["maker"], joined["cluster"])]),
                  joined["rows"].to_numpy())
        shares = counts / counts.sum(axis=1, keepdims=True)
        lot_counts = joined.drop_duplicates("lot_date").set_index("lot_date").loc[dates]
        good, bad = lot_counts["good_qty"].to_numpy(float), lot_counts["bad_qty"].to_numpy(float)
        fit = attribute_lots(shares, good, bad)
        phi = pearson_dispersion(bad, good + bad, fit.fitted, len(clusters)) if config.overdispersion else 1.0
        covered_rows = counts.sum(axis=0)
        for (maker, cluster), j in column.items():
            i = position[(facility, item, maker, cluster)]
            table.iloc[i, table.columns.get_loc("lot_rate")] = fit.rate[j]
            table.iloc[i, table.columns.get_loc("lot_parts")] = fit.parts[j]
            table.iloc[i, table.columns.get_loc("lot_defects")] = fit.rate[j] * fit.parts[j]
            table.iloc[i, table.columns.get_loc("lot_dispersion")] = phi
            table.iloc[i, table.columns.get_loc("lot_covered_rows")] = int(covered_rows[j])
    phi = table["lot_dispersion"].to_numpy()
    k = np.nan_to_num(table["lot_defects"].to_numpy(float)) / phi
    low, high = rate_interval(k, table["lot_parts"].to_numpy(float) / phi, config.confidence, config.interval)
    table["lot_low"], table["lot_high"] = low, high
    return table


def _blend(table: pd.DataFrame, config: RecipeConfig, predicted_pairs: set[tuple[str, str]] | None) -> pd.DataFrame:
    pair = list(zip(table["facility"], table["item"]))
    keys = [table["facility"], table["item"]]
    has_pred = table["scored"].fillna(0).to_numpy() > 0
    has_lot = table["lot_parts"].to_numpy() > 0
    pair_pred = pd.Series(has_pred, index=table.index).groupby(keys).transform("any").to_numpy()
    pair_lot = pd.Series(has_lot, index=table.index).groupby(keys).transform("any").to_numpy()
    if predicted_pairs is not None:
        pair_pred = pair_pred & np.array([p in predicted_pairs for p in pair], dtype=bool)
    if config.evidence == LOTS_FIRST and config.lot_weight > 0:
        pair_pred = pair_pred & ~pair_lot  # the plant's own counts where it has them
    wp = np.where(pair_pred, config.predicted_weight, 0.0)
    wl = np.where(pair_lot, config.lot_weight, 0.0)
    total = wp + wl
    usable = total > 0
    wp = np.where(usable, wp / np.where(usable, total, 1), 0.0)
    wl = np.where(usable, wl / np.where(usable, total, 1), 0.0)

    def mix(pred: str, lot: str) -> np.ndarray:
        return wp * table[pred].to_numpy(float) + wl * table[lot].to_numpy(float)

    table["basis"] = np.select([pair_pred & pair_lot, pair_pred, pair_lot], ["predicted+lots", "predicted", "lots"], "none")
    table["credible_low"] = np.where(usable, mix("predicted_low", "lot_low"), np.nan)
    table["credible_rate"] = np.where(usable, mix("predicted_high", "lot_high"), np.nan)
    # Point estimate from the evidence the cluster has (for charts and expected-gain figures).
    p = np.nan_to_num(table["predicted_rate"].to_numpy(float))
    lot = np.nan_to_num(table["lot_rate"].to_numpy(float))
    wp_own, wl_own = wp * has_pred, wl * has_lot
    own = wp_own + wl_own
    table["defect_rate"] = np.where(own > 0, (wp_own * p + wl_own * lot) / np.where(own > 0, own, 1), np.nan)
    return table


def rank_clusters(
    shots: pd.DataFrame,
    lots: pd.DataFrame | None,
    config: RecipeConfig,
    predicted_pairs: Iterable[tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """One row per (facility, item, maker, cluster) with volume, evidence, intervals, and the pick.

    ``shots`` has :data:`SHOT_COLUMNS` (``scored``: a model scored the shot; ``anomaly``: its
    pseudo-label; ``day``: calendar date). Rows with cluster < 0 or no item are ignored.
    ``lots``: facility, item, lot_date, good_qty, bad_qty (or None). ``predicted_pairs``: the
    (facility, item) whose pseudo-labels may be used (default: all).
    """
    missing = [c for c in SHOT_COLUMNS if c not in shots.columns]
    if missing:
        raise ValueError(f"shots lack columns {missing}")
    shots = shots[(shots["cluster"] >= 0) & shots["item"].notna() & shots["facility"].notna()]
    if shots.empty:
        return _empty_table()
    shots = shots.assign(cluster=shots["cluster"].astype(np.int64), facility=shots["facility"].astype(str), item=shots["item"].astype(str))
    table = _volume(shots)
    table["share"] = table["rows"] / table.groupby(PAIR)["rows"].transform("sum")
    units = _units(shots)
    table = _predicted(units, table, config)
    table = _lots(units, lots, table, config)
    table = _blend(table, config, None if predicted_pairs is None else set(predicted_pairs))
    return recommend(table, config)


def recommend(table: pd.DataFrame, config: RecipeConfig) -> pd.DataFrame:
    """Mark ``eligible``, ``candidate`` and ``recommended`` per (facility, item).

    eligible: >= ``min_rows`` shots and a credible rate. candidate: eligible and credible rate
    <= lowest * (1 + relative_tolerance) + absolute_tolerance. recommended: the candidate with the
    most shots (ties: lower credible rate, then lower cluster number).
    """
    table = table.copy()
    table["eligible"] = (table["rows"] >= config.min_rows) & table["credible_rate"].notna()
    best = table["credible_rate"].where(table["eligible"]).groupby([table["facility"], table["item"]]).transform("min")
    limit = best * (1 + config.relative_tolerance) + config.absolute_tolerance
    table["candidate"] = table["eligible"] & (table["credible_rate"] <= limit)
    table["recommended"] = False
    order = table[table["candidate"]].sort_values(["facility", "item", "rows", "credible_rate", "cluster"],
                                                  ascending=[True, True, False, True, True])
    picks = order.drop_duplicates(PAIR).index
    table.loc[picks, "recommended"] = True
    table["rank"] = (
        table.assign(_r=table["credible_rate"].fillna(np.inf))
        .groupby(PAIR)["_r"].rank(method="first").astype(int)
    )
    return table.sort_values(["facility", "item", "rank"]).reset_index(drop=True)


def _empty_table() -> pd.DataFrame:
    columns = [
        *CLUSTER_KEYS, "rows", "lots", "days", "first_day", "last_day", "share", "scored", "anomalies", "predicted_rate",
        "predicted_dispersion", "predicted_low", "predicted_high", "lot_rate", "lot_parts", "lot_defects", "lot_dispersion",
        "lot_covered_rows", "lot_low", "lot_high", "basis", "credible_low", "credible_rate", "defect_rate", "eligible",
        "candidate", "recommended", "rank",
    ]
    return pd.DataFrame({c: [] for c in columns})
