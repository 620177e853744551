"""Recipes from a store and a history: pseudo-labels -> ranking -> recommended setting and window.

No file I/O here: :func:`compute_recipes` takes canonical frames and a verified store manifest and
returns a :class:`RecipeResult`; :mod:`.output`, :mod:`.report` and :mod:`.mongo` write it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import pandas as pd

from model_store.errors import DataError
from model_store.recipe.combination import EVIDENCE, choose_combination, combination_json, use_centroid
from model_store.recipe.config import RecipeConfig
from model_store.recipe.guard import KEEP, RECOMMEND, spread_radius, within_spread, worse_than_history
from model_store.recipe.pseudo_labels import pseudo_label
from model_store.recipe.ranking import PAIR, rank_clusters
from model_store.recipe.window import centroid_raw, operating_window
from model_store.serving.scoring import ScoringEngine
from model_store.serving.clusters import scale_settings
from model_store.serving.store import StoreManifest

Progress = Callable[[str, int, int], None]
RECIPE_FORMAT = 1


@dataclass
class RecipeResult:
    """Everything one run produced: per-pair recipes, the full ranking, and what was skipped why."""

    model_version: str
    schema_hash: str
    config: RecipeConfig
    recipes: list[dict[str, Any]]
    clusters: pd.DataFrame  # the ranking, one row per (facility, item, maker, cluster)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings other than "skipped" (those are in ``skipped``)
    records: int = 0
    labels: pd.DataFrame | None = None  # the pseudo-labels, one row per ranked record (not serialised)
    windows: dict[tuple[str, str], dict[int, dict[str, Any]]] = field(default_factory=dict)  # per pair, per cluster
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    # Facility/items where no setting is credibly better than their own history: "keep current practice".
    kept: list[dict[str, Any]] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """One line per skipped facility or facility/item, then the other notes."""
        skips = [
            f"{s['facility']}/{s['item']}: {s['rows']:,} records skipped: {s['reason']}" if s["item"] is not None
            else f"facility {s['facility']}: {s['rows']:,} records skipped: {s['reason']}"
            for s in self.skipped
        ]
        return skips + self.notes

    def to_json(self) -> dict[str, Any]:
        """The recipes.json document (also what :class:`RecipeBook` and the MongoDB adapter read)."""
        return {
            "format": RECIPE_FORMAT,
            "model_version": self.model_version,
            "schema_hash": self.schema_hash,
            "created_at": self.created_at,
            "records": self.records,
            "config": self.config.to_dict(),
            "rule": RULE,
            "recipes": self.recipes,
            "keep_current_practice": self.kept,
            "skipped": self.skipped,
            "warnings": self.warnings,
            "clusters": clusters_json(self.clusters),
        }


RULE = (
    "Per facility/item, every setting cluster gets a credible defect rate: the weighted mean of the upper bounds "
    "of its pseudo-label anomaly rate and its lot defect rate (lots split between clusters by EM), each a "
    "{interval} interval at {confidence:.0%} widened by day-to-day dispersion. Clusters with at least {min_rows} "
    "shots whose credible rate is within {relative_tolerance:.0%} (+{absolute_tolerance:.2%}) of the lowest are "
    "candidates; the candidate with the most production is recommended, unless its credible rate or its estimate is "
    "above the facility/item's own history (then: keep current practice). The published exact combination lies within "
    "the {spread_quantile:.0%} radius (around the cluster centre) of the shots the facility/item ran in the cluster, else the "
    "cluster centre is published."
)


def describe_rule(config: RecipeConfig) -> str:
    return RULE.format(**config.to_dict())


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return round(value, 6) if np.isfinite(value) else None


def clusters_json(table: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in table.to_dict("records"):
        out.append(
            {
                k: (int(v) if isinstance(v, (np.integer,)) else bool(v) if isinstance(v, (bool, np.bool_)) else
                    _num(v) if isinstance(v, (float, np.floating)) else v)
                for k, v in row.items()
            }
        )
    return out


def _trained_pairs(manifest: StoreManifest) -> tuple[set[str], set[tuple[str, str]]]:
    facilities, pairs = set(), set()
    for entry in manifest.groups:
        key = entry["key"]
        facilities.add(str(key["facility"]))
        pairs.add((str(key["facility"]), str(key["item"])))
    return facilities, pairs


def _check_compatible(records: pd.DataFrame, manifest: StoreManifest, trained: set[str]) -> None:
    makers = set(records["maker"].dropna().astype(str)) | {manifest.raw.get("facility_maker", {}).get(f) for f in records["facility"].unique()}
    if not makers & set(manifest.setting_models):
        raise DataError(
            f"records: no record belongs to a maker the store {manifest.root} was trained for "
            f"({', '.join(sorted(manifest.setting_models))}); records and store come from different plants"
        )
    if not set(records["facility"].astype(str)) & trained:
        raise DataError(
            f"records: none of their {records['facility'].nunique()} facilities has a trained group in the store "
            f"{manifest.root}; records and store come from different plants (or retrain the store on them)"
        )


def compute_recipes(
    records: pd.DataFrame,
    lots: pd.DataFrame | None,
    manifest: StoreManifest,
    config: RecipeConfig | None = None,
    progress: Progress | None = None,
    engine: ScoringEngine | None = None,
    labels: pd.DataFrame | None = None,
) -> RecipeResult:
    """Pseudo-label ``records`` (canonical) with the store, rank every setting cluster, build recipes.

    Facilities without any trained group are skipped with a warning (the store knows nothing of
    them). ``labels``: the pseudo-labels of a previous result on the same records and store (its
    ``labels``), to rank again under another config without scoring the history again. Raises
    :class:`DataError` when nothing at all can be recommended.
    """
    config = config or RecipeConfig()
    if records is None or len(records) == 0:
        raise DataError("records: empty history; recipes need the production records the store should label")
    facilities, pairs = _trained_pairs(manifest)
    _check_compatible(records, manifest, facilities)
    notes: list[str] = []
    skipped: list[dict[str, Any]] = []
    known = records["facility"].astype(str).isin(facilities).to_numpy()
    if config.lots_only_facilities and lots is not None and len(lots):
        covered = records["facility"].astype(str).isin(set(lots["facility"].astype(str))).to_numpy()
        if (~known & covered).any():
            notes.append(f"{records.loc[~known & covered, 'facility'].nunique()} facilities without a trained group: ranked on lot counts only")
        known = known | covered
    for facility, n in records.loc[~known, "facility"].astype(str).value_counts().sort_index().items():
        skipped.append({"facility": facility, "item": None, "rows": int(n), "reason": "the store has no trained group for this facility"})
    history = records.loc[known].reset_index(drop=True)

    if labels is None or len(labels) != len(history):
        labels = pseudo_label(history, engine or ScoringEngine(manifest), progress=progress)
    if progress:
        progress("recipe", 0, 1)
    table = rank_clusters(labels, lots, config, predicted_pairs=pairs)
    for (facility, item), n in labels[labels["cluster"] < 0].groupby(["facility", "item"], dropna=False).size().items():
        notes.append(f"{facility}/{item}: {n:,} records without known set points were not ranked")
    untrained = sorted({(f, i) for f, i in zip(table["facility"], table["item"])} - pairs)
    if untrained:
        notes.append(f"{len(untrained)} facility/items have no trained group of their own: ranked on lot counts only "
                     f"(pseudo-labels from another item's model say more about the item than about its quality)")
    result = RecipeResult(manifest.model_version, manifest.schema_hash, config, [], table, skipped=skipped, notes=notes,
                          records=len(records), labels=labels)
    _build_recipes(result, history, labels, lots, manifest, pairs)
    if progress:
        progress("recipe", 1, 1)
    if not result.recipes and not result.kept:
        reasons = "; ".join(sorted({s["reason"] for s in skipped})) or "no setting cluster qualifies"
        raise DataError(f"nothing can be recommended: {reasons}")
    return result


def _pair_history(history_rate: pd.Series, weights: pd.Series) -> float | None:
    ok = history_rate.notna()
    return float(np.average(history_rate[ok], weights=weights[ok])) if ok.any() and weights[ok].sum() > 0 else None


def _history_ranking(labels: pd.DataFrame, lots: pd.DataFrame | None, config: RecipeConfig,
                     pairs: set[tuple[str, str]]) -> pd.DataFrame:
    """Each facility/item's whole history ranked as one unit (same evidence, intervals and blend)."""
    one = labels.assign(cluster=np.where(labels["cluster"].to_numpy() >= 0, 0, -1))
    return rank_clusters(one, lots, config, predicted_pairs=pairs).set_index(PAIR)


class _Spread:
    """Per (facility, item, cluster): the p-quantile distance of the shots it ran in that cluster to the
    cluster's centroid (scaled setting space). Row-weighted on purpose: a combination holding more than
    1 - quantile of those shots is inside by construction; only a rarely run outlier can fall outside."""

    def __init__(self, manifest: StoreManifest, quantile: float):
        self._manifest, self._quantile = manifest, quantile
        self._radius: dict[tuple[str, str, int], float] = {}

    def radius(self, pair: tuple[str, str], maker: str, cluster: int, settings: pd.DataFrame) -> float:
        """``settings``: the pair's set points in this cluster (raw units, the maker's fields)."""
        key = (*pair, cluster)
        if key not in self._radius:
            model = self._manifest.setting_models[maker]
            values = settings[list(model.fields)].dropna().to_numpy(float)
            self._radius[key] = spread_radius(scale_settings(values, model), model.centroids[cluster], self._quantile)
        return self._radius[key]

    def within(self, maker: str, cluster: int, exact: dict[str, float | None], radius: float) -> bool:
        model = self._manifest.setting_models[maker]
        point = np.array([np.nan if exact.get(f) is None else exact[f] for f in model.fields], dtype=float)
        if not np.isfinite(point).all():
            return False
        return within_spread(scale_settings(point, model), model.centroids[cluster], radius)


def _build_recipes(
    result: RecipeResult, history: pd.DataFrame, labels: pd.DataFrame, lots: pd.DataFrame | None,
    manifest: StoreManifest, predicted_pairs: set[tuple[str, str]],
) -> None:
    config = result.config
    schema = manifest.schema
    # Normal = a model scored the shot and did not flag it (an unscorable shot is no evidence of good production).
    normal = labels["scored"].to_numpy(bool) & ~labels["anomaly"].to_numpy(bool)
    pair_rows = labels[labels["cluster"] >= 0].groupby(["facility", "item"]).indices
    whole = _history_ranking(labels, lots, config, predicted_pairs) if len(result.clusters) else None
    spread = _Spread(manifest, config.spread_quantile)
    for (facility, item), ranking in result.clusters.groupby(PAIR, sort=True):
        maker = str(ranking["maker"].iloc[0])
        fields = schema.makers[maker]
        rows = pair_rows[(facility, item)]
        pair_labels = labels.iloc[rows]
        production = history.iloc[rows][list(fields.production)]
        cluster_of = pair_labels["cluster"].to_numpy()
        pair_normal = normal[rows] if config.window_normal_only else None

        def window_of(mask: np.ndarray) -> dict[str, Any]:
            return operating_window(production[mask], None if pair_normal is None else pair_normal[mask])

        windows = {int(c): window_of(cluster_of == c) for c in ranking["cluster"]}
        result.windows[(facility, item)] = windows
        picked = ranking[ranking["recommended"]]
        if picked.empty:
            result.skipped.append({
                "facility": facility, "item": item, "rows": int(ranking["rows"].sum()),
                "reason": f"no setting cluster with at least {config.min_rows} shots and a credible defect rate",
            })
            continue
        best = picked.iloc[0]
        cluster = int(best["cluster"])
        history_rate = _pair_history(ranking["defect_rate"], ranking["rows"])
        lot_rows = ranking[ranking["lot_parts"] > 0]
        estimate = _num(best["defect_rate"])
        own = whole.loc[(facility, item)] if whole is not None and (facility, item) in whole.index else None
        own = own.iloc[0] if isinstance(own, pd.DataFrame) else own
        history_credible = _num(own["credible_rate"]) if own is not None else None
        history_doc = {
            "rows": int(ranking["rows"].sum()),
            "clusters": int(len(ranking)),
            "defect_rate": _num(history_rate),
            "credible": history_credible,
            "lot_defect_rate": _num(_pair_history(lot_rows["lot_rate"], lot_rows["lot_parts"])),
            # From the unrounded figures: equal rates give 0, not a rounding artefact of -6e-6.
            "expected_reduction": _num(1 - float(best["defect_rate"]) / history_rate) if history_rate and estimate is not None else None,
        }
        set_points = history.iloc[rows][list(fields.settings)]
        combo = choose_combination(pair_labels, set_points, cluster, lots, config,
                                   use_predicted=(facility, item) in predicted_pairs)
        # What is published is the combination: judged by its own figures when it was ranked on them.
        own_credible = combo.credible if combo.credible is not None else _num(best["credible_rate"])
        own_estimate = combo.estimate if combo.estimate is not None else estimate
        reason = worse_than_history(own_credible, own_estimate, history_credible, _num(history_rate),
                                    config.relative_tolerance, config.absolute_tolerance)
        if reason is not None:
            result.kept.append({
                "facility": facility, "item": item, "maker": maker, "model_version": result.model_version,
                "action": KEEP, "reason": f"best-supported setting cluster {cluster}: {reason}",
                "considered": {"setting_cluster": cluster, "estimate": _num(own_estimate), "credible": _num(own_credible),
                               "rows": int(best["rows"]), "exact": combo.values},
                "history": {k: v for k, v in history_doc.items() if k != "expected_reduction"},
                "window": window_of(np.ones(len(rows), dtype=bool)),
            })
            continue
        model = manifest.setting_models[maker]
        centroid = centroid_raw(model.centroids[cluster], model.minimum, model.scale, fields.settings)
        radius = spread.radius((facility, item), maker, cluster, set_points[cluster_of == cluster])
        if combo.values and not spread.within(maker, cluster, combo.values, radius):
            combo = use_centroid(combo, centroid)
        # The window of the published combination when it has enough shots of its own, else of the cluster.
        window = windows[cluster]
        if combo.chosen_by == EVIDENCE and combo.rows >= config.min_rows:
            window = window_of(combo.mask)
        result.recipes.append(
            {
                "facility": facility,
                "item": item,
                "maker": maker,
                "model_version": result.model_version,
                "action": RECOMMEND,
                "setting_cluster": cluster,
                "basis": str(best["basis"]),
                "production": {
                    "rows": int(best["rows"]), "lots": int(best["lots"]), "days": int(best["days"]),
                    "share": _num(best["share"]), "first_day": best["first_day"], "last_day": best["last_day"],
                },
                "defect_rate": {
                    "estimate": estimate,
                    "credible": _num(best["credible_rate"]),
                    "predicted": _num(best["predicted_rate"]),
                    "predicted_interval": [_num(best["predicted_low"]), _num(best["predicted_high"])],
                    "lot": _num(best["lot_rate"]),
                    "lot_interval": [_num(best["lot_low"]), _num(best["lot_high"])] if best["lot_parts"] > 0 else None,
                },
                "history": history_doc,
                "setting": {
                    "fields": list(fields.settings),
                    **combination_json(combo),
                    "centroid": centroid,
                    "spread_radius": _num(radius),
                },
                "window": window,
            }
        )
