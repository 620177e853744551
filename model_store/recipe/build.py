"""Recipes from a store and a history: pseudo-labels -> ranking -> recommended setting and window.

No file I/O here: :func:`compute_recipes` takes canonical frames and a verified store manifest and
returns a :class:`RecipeResult`; :mod:`.output`, :mod:`.report` and :mod:`.mongo` write it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from model_store.errors import DataError
from model_store.recipe.combination import EVIDENCE, Combination, choose_combination, combination_json, use_centroid
from model_store.recipe.config import RecipeConfig
from model_store.recipe.gate import Difference, difference, difference_json, not_shown_better
from model_store.recipe.guard import KEEP, RECOMMEND, UNCERTAIN, confidence, spread_radius, within_spread, worse_than_history
from model_store.recipe.pseudo_labels import pseudo_label
from model_store.recipe.ranking import PAIR, rank_clusters
from model_store.recipe.window import DIGITS, centroid_raw, operating_window
from model_store.serving.clusters import scale_settings
from model_store.serving.scoring import ScoringEngine
from model_store.serving.store import StoreManifest

Progress = Callable[[str, int, int], None]
RECIPE_FORMAT = 2  # 2: every recipe carries selection, confidence and confidence_reason; coverage and not_covered
RANKED = "ranked"  # selection: the ranking's pick, passed the history guard and the better-than-history test
NEXT = "next qualifying cluster"  # selection: the pick did not pass; the lowest estimate that does
FALLBACK = "most produced setting"  # selection: no setting cluster qualified; the part's most produced exact setting


@dataclass
class RecipeResult:
    """Everything one run produced: per-pair recipes, the full ranking, and what was skipped why.

    Every facility/item with history ends in exactly one of: ``recipes`` (a setting to run: the
    ranking's pick, the next qualifying cluster when the pick is worse than the part's history or
    not shown better than it (:mod:`.gate`), or the most produced setting when no cluster
    qualifies, each with its ``confidence``), ``kept`` (keep current practice: no qualifying
    cluster passes; the row says why and what was considered, and names no setting to run) or
    ``skipped`` (one row per facility/item, with the reason). :meth:`coverage` counts them; recipes.csv, the recipe book
    and MongoDB carry ``recipes`` only, recipes.json and the report carry all.
    """

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
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # Facility/items where no setting is shown better than their own history: "keep current practice".
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

    def answers(self) -> list[dict[str, Any]]:
        """Every document that names a setting to run: the recipes (what recipes.csv, the recipe book
        and MongoDB carry), then any "keep current practice" row that names one (this code writes
        none: a keep answer names no setting; a recipes.json of format 2 may hold such rows)."""
        return [*self.recipes, *(k for k in self.kept if "setting" in k)]

    def not_covered(self) -> list[dict[str, Any]]:
        """Every facility/item with history left without an answer (skipped), with the reason in plain words."""
        rows = [{"facility": s["facility"], "item": s["item"], "rows": s["rows"], "outcome": "skipped", "reason": s["reason"]}
                for s in self.skipped]
        return sorted(rows, key=lambda r: (str(r["facility"]), str(r["item"])))

    def coverage(self) -> dict[str, Any]:
        """How many facility/items with history were answered (and how), and how many were not.

        Answered (``share``) = a recipe names a setting to run (the ranking's pick, the next
        qualifying cluster when the pick is worse than the part's history or not shown better than
        it, or the most produced setting when no cluster qualifies), or a "keep current practice"
        row says why no setting is shown better (issue 18: "a recommendation or a stated reason").
        ``with_setting``: the answers that name a setting to run. Not covered: skipped (the reason
        says why).
        """
        answers, missing = self.answers(), self.not_covered()
        pairs = len(self.recipes) + len(self.kept) + len(missing)
        count = lambda key, value: sum(1 for r in answers if r.get(key) == value)
        return {
            "facility_items": pairs,
            "answered": len(self.recipes) + len(self.kept),
            "share": round((len(self.recipes) + len(self.kept)) / pairs, 6) if pairs else None,
            "with_setting": len(answers),
            "with_setting_share": round(len(answers) / pairs, 6) if pairs else None,
            "ranked": count("selection", RANKED),
            "next_qualifying": count("selection", NEXT),
            "fallback": count("selection", FALLBACK),
            "keep_current_practice": len(self.kept),
            "clearly_better": count("confidence", "clearly_better"),
            "uncertain": count("confidence", UNCERTAIN),
            "not_covered": len(missing),
        }

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
            "coverage": self.coverage(),
            "not_covered": self.not_covered(),
            "warnings": self.warnings,
            "clusters": clusters_json(self.clusters),
        }


RULE = (
    "Per facility/item, every setting cluster gets a credible defect rate: the upper bound of a {interval} interval at "
    "{confidence:.0%}, widened by day-to-day dispersion, on its lot defect rate (lots split between clusters by EM) "
    "where the facility/item has lots, else on its pseudo-label anomaly rate (evidence: {evidence}; 'blend' weighs "
    "both). Clusters with at least {min_rows} "
    "shots whose credible rate is within {relative_tolerance:.0%} (+{absolute_tolerance:.2%}) of the lowest are "
    "candidates; the candidate with the most production is recommended when its credible rate and its estimate are not "
    "above the facility/item's own history and it is shown better than the rest of that history: the two-sided "
    "{confidence:.0%} interval of the difference of the two defect rates (fitted together from the same lots, each shrunk "
    "toward the item's pooled rate by {prior_defects:g} defect's worth, widened by day-to-day dispersion, Bonferroni-corrected "
    "for the number of candidate settings) lies below 0. Otherwise the qualifying cluster with the lowest estimate that "
    "passes; if none: keep current practice, naming no setting to run. The published exact combination lies within "
    "the {spread_quantile:.0%} radius (around the cluster centre) of the shots the facility/item ran in the cluster, else the "
    "cluster centre is published. When no cluster qualifies, the facility/item's most produced exact setting is published "
    "instead. Every recipe says whether it is clearly better than what the part ran: only when its credible interval lies "
    "entirely below that of the rest of the part's history; otherwise (overlapping, touching, a fallback, or all the part "
    "ran) it is marked uncertain, with the reason."
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
        facilities.add(entry.key.facility)
        pairs.add((entry.key.facility, entry.key.item))
    return facilities, pairs


def _check_compatible(records: pd.DataFrame, manifest: StoreManifest, trained: set[str]) -> None:
    makers = set(records["maker"].dropna().astype(str)) | {manifest.contents.facility_maker.get(f) for f in records["facility"].unique()}
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

    Every facility/item with history gets a recipe, a "keep current practice" row or a skipped
    row with its reason (see :class:`RecipeResult`). Facilities without any trained group are
    ranked on their lot counts (the store's setting clusters still place their set points) and
    fall back to their most produced setting where no cluster qualifies; with
    ``config.lots_only_facilities`` False they are skipped instead, each part with the reason.
    ``labels``: the pseudo-labels of a previous result on the same records and store (its
    ``labels``, or labels of all of ``records``), to rank again under another config without scoring
    the history again. Raises
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
    if config.lots_only_facilities:
        if (~known).any():
            covered = set(lots["facility"].astype(str)) if lots is not None and len(lots) else set()
            untrained = set(records.loc[~known, "facility"].astype(str))
            notes.append(f"{len(untrained)} facilities without a trained group: ranked on lot counts only"
                         + (f" ({len(untrained - covered)} without lots either: their most produced setting, marked uncertain)"
                            if untrained - covered else ""))
        known = np.ones(len(records), dtype=bool)
    left_out = records.loc[~known]
    for (facility, item), n in left_out.groupby([left_out["facility"].astype(str), left_out["item"]], dropna=True).size().items():
        skipped.append({"facility": facility, "item": str(item), "rows": int(n),
                        "reason": "the store has no trained group for this facility"})
    history = records.loc[known].reset_index(drop=True)

    if labels is not None and len(labels) == len(records) and len(history) < len(records):
        labels = labels.loc[known].reset_index(drop=True)  # labels of every record: keep those of the ranked facilities
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
        reasons = "; ".join(sorted({s["reason"] for s in result.skipped})) or "no setting cluster qualifies"
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


def _versus_rest(pair_shots: pd.DataFrame, chosen: np.ndarray, lots: pd.DataFrame | None, config: RecipeConfig,
                 use_predicted: bool) -> tuple[tuple[float | None, float | None], tuple[float | None, float | None] | None]:
    """Credible intervals of the chosen shots and of the rest of the part's history, ranked as two units
    with the same evidence, intervals and blend as the clusters (lots split between the two by EM)."""
    ranked = pair_shots["cluster"].to_numpy() >= 0
    unit = np.where(chosen, 0, np.where(ranked, 1, -1))
    pair = (str(pair_shots["facility"].iloc[0]), str(pair_shots["item"].iloc[0]))
    table = rank_clusters(pair_shots.assign(cluster=unit), lots, config, predicted_pairs={pair} if use_predicted else set())
    interval = lambda row: (_num(row["credible_low"]), _num(row["credible_rate"]))
    own = table[table["cluster"] == 0]
    rest = table[table["cluster"] == 1]
    return (interval(own.iloc[0]) if len(own) else (None, None)), (interval(rest.iloc[0]) if len(rest) else None)


def _test_against_rest(pair_shots: pd.DataFrame, picked: np.ndarray, lots: pd.DataFrame | None, config: RecipeConfig,
                       use_predicted: bool, candidates: int) -> Difference:
    """The gate's test of the ``picked`` shots against the rest of the part's ranked shots.

    The rest is split by setting cluster (each its own rate, weighted by its shots). Units: the
    part's lots (each day's counts, split by the columns' share of its shots) where it has lots;
    else, with pseudo-labels allowed, each day's shots of each column (anomalies as defects); else
    no evidence (never shown better).
    """
    picked = np.asarray(picked, dtype=bool)
    column = np.where(picked, -1, pair_shots["cluster"].to_numpy(int))  # -1: the picked shots
    frame = pd.DataFrame({"lot_date": pair_shots["lot_date"].to_numpy(object), "column": column,
                          "scored": pair_shots["scored"].to_numpy(bool),
                          "anomaly": pair_shots["anomaly"].to_numpy(bool) & pair_shots["scored"].to_numpy(bool)})
    order = [-1, *sorted(set(column[~picked].tolist()))]
    weights = frame["column"].value_counts().reindex(order[1:]).to_numpy(float)
    facility, item = str(pair_shots["facility"].iloc[0]), str(pair_shots["item"].iloc[0])
    if lots is not None and len(lots) and config.lot_weight > 0:
        own = lots[(lots["facility"].astype(str) == facility) & (lots["item"].astype(str) == item)]
        per_lot = own.groupby("lot_date")[["good_qty", "bad_qty"]].sum()
        counts = pd.crosstab(frame["lot_date"], frame["column"]).reindex(columns=order, fill_value=0)
        counts = counts[counts.index.isin(per_lot.index)]
        if len(counts):
            shares = counts.to_numpy(float) / counts.to_numpy(float).sum(axis=1, keepdims=True)
            lot = per_lot.loc[counts.index]
            return difference(shares, lot["good_qty"].to_numpy(float), lot["bad_qty"].to_numpy(float), candidates,
                              config.confidence, config.prior_defects, config.overdispersion, weights)
    if use_predicted and config.predicted_weight > 0 and frame["scored"].any():
        days = frame[frame["scored"]].groupby(["lot_date", "column"]).agg(n=("scored", "size"), bad=("anomaly", "sum")).reset_index()
        shares = (days["column"].to_numpy()[:, None] == np.array(order)[None, :]).astype(float)
        bad = days["bad"].to_numpy(float)
        return difference(shares, days["n"].to_numpy(float) - bad, bad, candidates, config.confidence,
                          config.prior_defects, config.overdispersion, weights)
    return difference(np.zeros((0, 2)), np.zeros(0), np.zeros(0), candidates, config.confidence, config.prior_defects)


def _most_produced(settings: pd.DataFrame) -> tuple[dict[str, float | None], np.ndarray]:
    """The exact set-point combination run on the most shots (rows with every field known) and its
    mask over ``settings``; ({}, all False) when no row has every field."""
    values = settings.to_numpy(float)
    complete = np.isfinite(values).all(axis=1)
    mask = np.zeros(len(settings), dtype=bool)
    if not complete.any():
        return {}, mask
    rounded = np.round(values[complete], DIGITS)
    unique, inverse, counts = np.unique(rounded, axis=0, return_inverse=True, return_counts=True)
    top = int(np.argmax(counts))
    mask[np.flatnonzero(complete)[inverse.ravel() == top]] = True
    return {f: round(float(v), DIGITS) for f, v in zip(settings.columns, unique[top])}, mask


def _pct(value: Any) -> str:
    return "unknown" if value is None or not np.isfinite(float(value)) else f"{float(value):.2%}"


def _rate_doc(row: pd.Series | None) -> dict[str, Any]:
    if row is None:
        return {"estimate": None, "credible": None, "credible_interval": [None, None], "predicted": None,
                "predicted_interval": [None, None], "lot": None, "lot_interval": None}
    return {
        "estimate": _num(row["defect_rate"]),
        "credible": _num(row["credible_rate"]),
        "credible_interval": [_num(row["credible_low"]), _num(row["credible_rate"])],
        "predicted": _num(row["predicted_rate"]),
        "predicted_interval": [_num(row["predicted_low"]), _num(row["predicted_high"])],
        "lot": _num(row["lot_rate"]),
        "lot_interval": [_num(row["lot_low"]), _num(row["lot_high"])] if row["lot_parts"] > 0 else None,
    }


def _production_doc(row: pd.Series) -> dict[str, Any]:
    return {"rows": int(row["rows"]), "lots": int(row["lots"]), "days": int(row["days"]), "share": _num(row["share"]),
            "first_day": row["first_day"], "last_day": row["last_day"]}


def _build_recipes(
    result: RecipeResult, history: pd.DataFrame, labels: pd.DataFrame, lots: pd.DataFrame | None,
    manifest: StoreManifest, predicted_pairs: set[tuple[str, str]],
) -> None:
    config = result.config
    schema = manifest.schema
    # Normal = a model scored the shot and did not flag it (an unscorable shot is no evidence of good production).
    normal = labels["scored"].to_numpy(bool) & ~labels["anomaly"].to_numpy(bool)
    # Every facility/item with history: the scoring core's item (it imputes a missing one), else the record's.
    item_of = pd.Series(labels["item"].to_numpy(object), dtype=object).where(labels["item"].notna(), history["item"].to_numpy(object))
    keys = pd.DataFrame({"facility": labels["facility"].astype(str).to_numpy(object), "item": item_of.to_numpy(object)})
    all_rows = {(str(f), str(i)): idx for (f, i), idx in keys[keys["item"].notna()].groupby(["facility", "item"]).indices.items()}
    whole = _history_ranking(labels, lots, config, predicted_pairs) if len(result.clusters) else None
    spread = _Spread(manifest, config.spread_quantile)
    rankings = dict(iter(result.clusters.groupby(PAIR, sort=True))) if len(result.clusters) else {}
    for (facility, item) in sorted(all_rows):
        every = all_rows[(facility, item)]
        ranking = rankings.get((facility, item))
        if ranking is None or len(ranking) == 0:
            _fallback(result, history, labels, lots, manifest, facility, item, every, None, None, normal, spread,
                      "the store could not place any of its shots in a setting cluster (no maker's setting model "
                      "or no set points known)")
            continue
        rows = every[labels["cluster"].to_numpy()[every] >= 0]
        maker = str(ranking["maker"].iloc[0])
        fields = schema.makers[maker]
        pair_labels = labels.iloc[rows]
        production = history.iloc[rows][list(fields.production)]
        cluster_of = pair_labels["cluster"].to_numpy()
        pair_normal = normal[rows] if config.window_normal_only else None

        def window_of(mask: np.ndarray) -> dict[str, Any]:
            return operating_window(production[mask], None if pair_normal is None else pair_normal[mask])  # noqa: B023 - called only inside this iteration (the comprehension below)

        windows = {int(c): window_of(cluster_of == c) for c in ranking["cluster"]}
        result.windows[(facility, item)] = windows
        picked = ranking[ranking["recommended"]]
        own = whole.loc[(facility, item)] if whole is not None and (facility, item) in whole.index else None
        own = own.iloc[0] if isinstance(own, pd.DataFrame) else own
        history_rate = _pair_history(ranking["defect_rate"], ranking["rows"])
        lot_rows = ranking[ranking["lot_parts"] > 0]
        history_doc = {
            "rows": int(ranking["rows"].sum()),
            "clusters": int(len(ranking)),
            "defect_rate": _num(history_rate),
            "credible": _num(own["credible_rate"]) if own is not None else None,
            "credible_interval": [_num(own["credible_low"]), _num(own["credible_rate"])] if own is not None else [None, None],
            "lot_defect_rate": _num(_pair_history(lot_rows["lot_rate"], lot_rows["lot_parts"])),
            "expected_reduction": None,
        }
        if picked.empty:
            largest = int(ranking["rows"].max())
            _fallback(result, history, labels, lots, manifest, facility, item, rows, ranking, history_doc, normal, spread,
                      f"no setting cluster with at least {config.min_rows} shots and a credible defect rate "
                      f"(the largest has {largest:,} shots)")
            continue
        history_credible = history_doc["credible"]
        set_points = history.iloc[rows][list(fields.settings)]
        use_predicted = (facility, item) in predicted_pairs
        # The ranking's pick, judged against the part's own history; when it is worse, or not shown
        # better than the rest of the history (module gate, corrected for every candidate the pick
        # was chosen among), the next qualifying cluster by lowest estimate that passes.
        first = picked.iloc[0]
        others = ranking[ranking["eligible"] & ranking["defect_rate"].notna() & (ranking["cluster"] != first["cluster"])]
        others = others.sort_values(["defect_rate", "rows", "credible_rate", "cluster"], ascending=[True, False, True, True])
        blocked: tuple[int, str, Combination, float | None, float | None, Difference | None] | None = None
        test: Difference | None = None
        for _, best in pd.concat([picked.iloc[:1], others]).iterrows():
            cluster = int(best["cluster"])
            estimate = _num(best["defect_rate"])
            combo = choose_combination(pair_labels, set_points, cluster, lots, config, use_predicted=use_predicted)
            # What is published is the combination: judged by its own figures when it was ranked on them.
            own_credible = combo.credible if combo.credible is not None else _num(best["credible_rate"])
            own_estimate = combo.estimate if combo.estimate is not None else estimate
            reason = worse_than_history(own_credible, own_estimate, history_credible, _num(history_rate),
                                        config.relative_tolerance, config.absolute_tolerance)
            test = None
            if reason is None and config.better_than_history_test:
                tested = combo.mask if combo.rows >= config.min_rows else cluster_of == cluster
                if not tested.all():  # all the part ran: its current practice, nothing to test against
                    # Candidates: every qualifying cluster (the ranking chose among them on evidence), and
                    # the cluster's other combinations when this one was chosen on its evidence too.
                    chosen_among = combo.options if combo.chosen_by == EVIDENCE else 1
                    test = _test_against_rest(pair_labels, tested, lots, config, use_predicted, len(others) + chosen_among)
                    reason = not_shown_better(test)
            if reason is None:
                break
            if blocked is None:
                blocked = (cluster, reason, combo, own_credible, own_estimate, test)
        if reason is not None:
            assert blocked is not None
            cluster, reason, combo, own_credible, own_estimate, test = blocked
            best = first
            tried = f" (nor is any of the other {len(others)} qualifying clusters)" if len(others) else ""
            considered = {"setting_cluster": cluster, "estimate": _num(own_estimate), "credible": _num(own_credible),
                          "rows": int(best["rows"]), "exact": combo.values}
            if test is not None:
                considered["test"] = difference_json(test)
            # No setting is named to run: a setting not shown better than the mix may be truly worse
            # than it (on the bench plants a third of such "if one must be run" settings were).
            result.kept.append({
                "facility": facility, "item": item, "maker": maker, "model_version": result.model_version,
                "action": KEEP, "reason": f"best-supported setting cluster {cluster}: {reason}{tried}",
                "considered": considered,
                "history": {k: v for k, v in history_doc.items() if k != "expected_reduction"},
                "window": window_of(np.ones(len(rows), dtype=bool)),
                "confidence": UNCERTAIN,
                "confidence_reason": ("keep current practice: no setting is shown to be better than what this part runs "
                                      "(its mix of settings); changing it would be a guess"),
            })
            continue
        selection = RANKED if blocked is None else NEXT
        # From the unrounded figures: equal rates give 0, not a rounding artefact of -6e-6.
        history_doc["expected_reduction"] = (_num(1 - float(best["defect_rate"]) / history_rate)
                                             if history_rate and estimate is not None else None)
        # Sure or not: the evidence the pick was made on (the combination's shots when it was ranked on
        # them, else the cluster's) against the rest of the part's history.
        chosen = combo.mask if combo.chosen_by == EVIDENCE else cluster_of == cluster
        interval, rest = _versus_rest(pair_labels, chosen, lots, config, use_predicted)
        sure, why = confidence(interval, rest)
        if blocked is not None:
            why = (f"{why}. The ranking's pick, setting cluster {blocked[0]}, was not used: {blocked[1]}; this is the qualifying "
                   "cluster with the lowest estimate that passes")
        model = manifest.setting_models[maker]
        centroid = centroid_raw(model.centroids[cluster], model.minimum, model.scale, fields.settings)
        radius = spread.radius((facility, item), maker, cluster, set_points[cluster_of == cluster])
        if combo.values and not spread.within(maker, cluster, combo.values, radius):
            combo = use_centroid(combo, centroid)
        # The window of the published combination when it has enough shots of its own, else of the cluster.
        window = windows[cluster]
        if combo.chosen_by == EVIDENCE and combo.rows >= config.min_rows:
            window = window_of(combo.mask)
        rates = _rate_doc(best)
        rates["estimate"] = estimate
        rates["tested_interval"] = list(interval)
        rates["test"] = difference_json(test) if test is not None else None
        result.recipes.append(
            {
                "facility": facility,
                "item": item,
                "maker": maker,
                "model_version": result.model_version,
                "action": RECOMMEND,
                "selection": selection,
                "confidence": sure,
                "confidence_reason": why,
                "setting_cluster": cluster,
                "basis": str(best["basis"]),
                "production": _production_doc(best),
                "defect_rate": rates,
                "history": {**history_doc, "rest_interval": list(rest) if rest is not None else None},
                "setting": {
                    "fields": list(fields.settings),
                    **combination_json(combo),
                    "centroid": centroid,
                    "spread_radius": _num(radius),
                },
                "window": window,
            }
        )


def _fallback(
    result: RecipeResult, history: pd.DataFrame, labels: pd.DataFrame, lots: pd.DataFrame | None, manifest: StoreManifest,
    facility: str, item: str, rows: np.ndarray, ranking: pd.DataFrame | None, history_doc: dict[str, Any] | None,
    normal: np.ndarray, spread: _Spread, why: str,
) -> None:
    """No cluster qualifies: publish the part's most produced exact setting, marked uncertain, with ``why``.

    ``rows``: the part's rows in ``labels`` / ``history`` (the ranked ones when it has a ranking).
    Skipped (with the reason) when no shot has every set point recorded.
    """
    config = result.config
    makers = history.iloc[rows]["maker"].dropna().astype(str)
    maker = str(makers.mode().iloc[0]) if len(makers) else None
    if maker is None or maker not in manifest.schema.makers:
        result.skipped.append({"facility": facility, "item": item, "rows": int(len(rows)),
                               "reason": f"{why}; and the maker of its records is unknown to the plant schema"})
        return
    fields = manifest.schema.makers[maker]
    set_points = history.iloc[rows][list(fields.settings)]
    exact, mask = _most_produced(set_points)
    if not exact:
        result.skipped.append({"facility": facility, "item": item, "rows": int(len(rows)),
                               "reason": f"{why}; and no shot of it has every set point recorded, so no setting can be named"})
        return
    cluster_of = labels["cluster"].to_numpy()[rows]
    clusters = cluster_of[mask]
    cluster = int(pd.Series(clusters).mode().iloc[0]) if (clusters >= 0).any() else -1
    row = None
    if ranking is not None and cluster >= 0 and (ranking["cluster"] == cluster).any():
        row = ranking[ranking["cluster"] == cluster].iloc[0]
    shots = int(mask.sum())
    share = shots / len(rows)
    combo = Combination(exact, shots, float(shots / max(1, int((cluster_of == cluster).sum()) if cluster >= 0 else len(rows))),
                        FALLBACK, exact, mask)
    centroid: dict[str, float | None] = dict.fromkeys(fields.settings)
    radius = None
    if cluster >= 0 and maker in manifest.setting_models:
        model = manifest.setting_models[maker]
        centroid = centroid_raw(model.centroids[cluster], model.minimum, model.scale, fields.settings)
        radius = spread.radius((facility, item), maker, cluster, set_points[cluster_of == cluster])
        if not spread.within(maker, cluster, exact, radius):
            combo = use_centroid(combo, centroid)
    production = history.iloc[rows][list(fields.production)]
    in_window = (cluster_of == cluster) if row is not None else mask
    pair_normal = normal[rows] if config.window_normal_only else None
    window = operating_window(production[in_window], None if pair_normal is None else pair_normal[in_window])
    days = labels["day"].to_numpy(object)[rows][mask]
    if row is not None:
        production_doc = _production_doc(row)
    else:
        lot_dates = labels["lot_date"].to_numpy(object)[rows][mask]
        production_doc = {"rows": shots, "lots": int(pd.Series(lot_dates).nunique()), "days": int(pd.Series(days).nunique()),
                          "share": _num(share), "first_day": str(min(days)), "last_day": str(max(days))}
    if history_doc is None:
        history_doc = {"rows": int(len(rows)), "clusters": 0, "defect_rate": None, "credible": None,
                       "credible_interval": [None, None], "lot_defect_rate": None, "expected_reduction": None}
    rates = _rate_doc(row)
    history_rate = history_doc["defect_rate"]
    history_doc = {**history_doc, "rest_interval": None,
                   "expected_reduction": _num(1 - rates["estimate"] / history_rate)
                   if history_rate and rates["estimate"] is not None else None}
    rates["tested_interval"] = [None, None]
    result.recipes.append(
        {
            "facility": facility,
            "item": item,
            "maker": maker,
            "model_version": result.model_version,
            "action": RECOMMEND,
            "selection": FALLBACK,
            "confidence": UNCERTAIN,
            "confidence_reason": (f"not ranked: {why}; this is the part's most produced setting ({shots:,} shots, "
                                  f"{share:.0%} of its production), not a setting shown to be better"),
            "setting_cluster": cluster,
            "basis": str(row["basis"]) if row is not None else "none",
            "production": production_doc,
            "defect_rate": rates,
            "history": history_doc,
            "setting": {"fields": list(fields.settings), **combination_json(combo), "centroid": centroid, "spread_radius": _num(radius)},
            "window": window,
        }
    )
