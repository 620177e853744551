"""The scoring core, shared by ``moldwatch score``, ``recipe``, the benchmarks and the worker.

impute state -> setting cluster -> resolve group -> impute production -> scale (clip) -> loss
-> adaptive threshold -> margin. Vectorised per group; returns arrays (:class:`ScoredBatch`), and
:func:`model_store.verdict.to_verdicts` turns them into verdict objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from model_store.imputation import FacilityMemory, impute_state
from model_store.resolution import EXACT, NEAREST, UNSCORABLE, MakerIndex, resolve
from model_store.runtime import GroupCache, RuntimeGroup
from model_store.settings import assign_clusters, scale_settings
from model_store.store import StoreManifest
from model_store.thresholds import decide, effective_thresholds

TOP_FEATURES = 3
# A setting profile describes records whose set points lie within this many times its own 95th
# percentile spread (floored, for profiles of one exact combination): beyond that the record runs
# a different setting that merely fell into the same cluster, and aligning it would be wrong.
PROFILE_REACH = 1.5
PROFILE_MIN_RADIUS = 0.02


@dataclass
class ScoredBatch:
    """Per-record results as parallel arrays (row order = input order)."""

    maker: np.ndarray
    facility: np.ndarray
    item: np.ndarray
    cluster: np.ndarray
    group_id: np.ndarray
    resolution: np.ndarray
    distance: np.ndarray
    model_kind: np.ndarray
    loss: np.ndarray
    threshold: np.ndarray
    margin: np.ndarray
    score: np.ndarray
    anomaly: np.ndarray
    imputed: list[list[str]]
    out_of_range: list[list[str]]
    top_features: list[list[dict[str, Any]]]
    reason: np.ndarray

    def __len__(self) -> int:
        return len(self.loss)


def _empty_batch(n: int) -> ScoredBatch:
    return ScoredBatch(
        maker=np.full(n, None, dtype=object),
        facility=np.full(n, None, dtype=object),
        item=np.full(n, None, dtype=object),
        cluster=np.full(n, -1, dtype=np.int64),
        group_id=np.full(n, None, dtype=object),
        resolution=np.full(n, UNSCORABLE, dtype=object),
        distance=np.full(n, np.nan),
        model_kind=np.full(n, None, dtype=object),
        loss=np.full(n, np.nan),
        threshold=np.full(n, np.nan),
        margin=np.full(n, np.nan),
        score=np.full(n, np.nan),
        anomaly=np.zeros(n, dtype=bool),
        imputed=[[] for _ in range(n)],
        out_of_range=[[] for _ in range(n)],
        top_features=[[] for _ in range(n)],
        reason=np.full(n, None, dtype=object),
    )


class ScoringEngine:
    """Scores canonical record frames against one verified store."""

    def __init__(self, manifest: StoreManifest, cache_size: int = 2048, max_distance: float | None = None):
        self.manifest = manifest
        self.schema = manifest.schema
        self.model_version = manifest.model_version
        self.cache = GroupCache(manifest, capacity=cache_size)
        self.max_distance = max_distance
        by_maker: dict[str, list[dict]] = {m: [] for m in manifest.setting_models}
        for entry in manifest.groups:
            by_maker.setdefault(entry["key"]["maker"], []).append(entry)
        self.index = {
            maker: MakerIndex.build(entries, len(manifest.setting_models[maker].fields))
            for maker, entries in by_maker.items()
            if maker in manifest.setting_models
        }
        self.facility_maker: dict[str, str] = manifest.raw.get("facility_maker", {})
        self.alarm_budget: dict[tuple[str, str, int, str], float] = {
            (c["facility"], c["item"], int(c["cluster"]), c["group_id"]): float(c["factor"])
            for c in manifest.raw.get("nearest_calibration", [])
        }
        self.profiles: dict[tuple[str, str, int], np.ndarray] = {}
        self.profile_reach: dict[tuple[str, str, int], tuple[np.ndarray, float]] = {}
        for entries in manifest.raw.get("setting_profiles", {}).values():
            for p in entries:
                key = (p["facility"], p["item"], int(p["cluster"]))
                self.profiles[key] = np.array([np.nan if v is None else v for v in p["median"]], dtype=float)
                reach = PROFILE_REACH * max(float(p["setting_radius"]), PROFILE_MIN_RADIUS)
                self.profile_reach[key] = (np.asarray(p["setting_centroid"], dtype=float), reach)
        self.defaults: dict[str, dict[str, Any]] = manifest.raw.get("facility_defaults", {})

    def group(self, group_id: str) -> RuntimeGroup:
        return self.cache.get(group_id)

    # -- state ---------------------------------------------------------------------------------
    def _fill_makers(self, frame: pd.DataFrame) -> None:
        missing = frame["maker"].isna()
        if missing.any():
            frame.loc[missing, "maker"] = frame.loc[missing, "facility"].map(self.facility_maker)

    def _default_state(self, facility: str, item: Any, fields: tuple[str, ...]) -> tuple[Any, np.ndarray | None]:
        facility_defaults = self.defaults.get(str(facility), {})
        item = item if isinstance(item, str) else facility_defaults.get("item")
        combo = facility_defaults.get("settings_by_item", {}).get(item) or facility_defaults.get("settings")
        return item, (np.asarray(combo, dtype=float) if combo is not None and len(combo) == len(fields) else None)

    def _budget_factors(
        self, group_id: str, path: np.ndarray, facility: np.ndarray, item: np.ndarray, cluster: np.ndarray
    ) -> np.ndarray:
        """Nearest-path threshold factors from training-time calibration (1 where none)."""
        factors = np.ones(len(path))
        for i in np.flatnonzero(path == NEAREST):
            factors[i] = self.alarm_budget.get((facility[i], item[i], int(cluster[i]), group_id), 1.0)
        return factors

    def _profiled(self, facility: np.ndarray, item: np.ndarray, cluster: np.ndarray, scaled: np.ndarray) -> np.ndarray:
        """Rows whose own setting has a history profile that really describes them."""
        out = np.zeros(len(facility), dtype=bool)
        for r, key in enumerate(zip(facility, item, cluster.tolist())):
            reach = self.profile_reach.get(key)
            if reach is not None and not np.isnan(scaled[r]).any():
                out[r] = float(np.sqrt(((scaled[r] - reach[0]) ** 2).sum())) <= reach[1]
        return out

    def _alignment(
        self, group: RuntimeGroup, near: np.ndarray, profiled: np.ndarray, facility: np.ndarray, item: np.ndarray,
        cluster: np.ndarray,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Shift that moves nearest-path rows into the scoring group's frame, and which rows moved.

        A setting shifts every production value (that is why groups exist). When a record's own
        setting has a history profile, ``group median - own median`` removes that shift, so the
        group's model judges the record's deviation from *its own* setting's normal, not the
        distance between two settings. Settings never seen keep no shift (and the distance weight).
        """
        rows = np.flatnonzero(near & profiled)
        aligned = np.zeros(len(near), dtype=bool)
        target = self.profiles.get((group.key["facility"], group.key["item"], int(group.key["cluster"])))
        if len(rows) == 0 or target is None:
            return None, aligned
        shift = np.zeros((len(near), len(group.features)))
        for i in rows:
            shift[i] = np.nan_to_num(target - self.profiles[(facility[i], item[i], int(cluster[i]))])
            aligned[i] = True
        return shift, aligned

    # -- scoring -------------------------------------------------------------------------------
    def score(self, records: pd.DataFrame, memory: FacilityMemory | None = None, backward: bool = True) -> ScoredBatch:
        """Score canonical records (see :func:`model_store.schema.canonical_records`).

        ``memory`` carries each facility's last known item and settings across calls (online);
        ``backward`` also fills gaps from later rows of the same batch (offline history).
        """
        n = len(records)
        out = _empty_batch(n)
        if n == 0:
            return out
        frame = records.reset_index(drop=True).copy()
        self._fill_makers(frame)
        out.facility[:] = frame["facility"].to_numpy(dtype=object)
        out.maker[:] = frame["maker"].to_numpy(dtype=object)
        unknown_maker = ~frame["maker"].isin(list(self.index)).to_numpy()
        out.reason[unknown_maker] = "no trained model for this maker (or unknown facility with no maker)"
        for maker, index in self.index.items():
            rows = np.flatnonzero((frame["maker"] == maker).to_numpy())
            if len(rows):
                self._score_maker(maker, index, frame.iloc[rows], rows, out, memory, backward)
        return out

    def _score_maker(
        self,
        maker: str,
        index: MakerIndex,
        sub: pd.DataFrame,
        rows: np.ndarray,
        out: ScoredBatch,
        memory: FacilityMemory | None,
        backward: bool,
    ) -> None:
        setting_model = self.manifest.setting_models[maker]
        fields = setting_model.fields
        state_columns = ["item", *fields]
        sub, imputed_state = impute_state(sub, state_columns, {}, memory=memory, backward=backward)
        item = sub["item"].to_numpy(dtype=object, copy=True)  # filled below: must be writable
        settings = sub[list(fields)].to_numpy(dtype=float, copy=True)
        facility = sub["facility"].astype(str).to_numpy(dtype=object)
        # Last resort for a facility seen with no history at all: its usual item and setting.
        gaps = np.flatnonzero(pd.isna(item) | np.isnan(settings).any(axis=1))
        for r in gaps:
            default_item, default_combo = self._default_state(facility[r], item[r], fields)
            if pd.isna(item[r]) and default_item is not None:
                item[r] = default_item
                imputed_state[r, 0] = True
            if default_combo is not None:
                holes = np.isnan(settings[r])
                settings[r, holes] = default_combo[holes]
                imputed_state[r, 1:] |= holes
        out.item[rows] = item
        scaled = scale_settings(settings, setting_model)
        known = ~np.isnan(scaled).any(axis=1)
        cluster = np.full(len(rows), -1, dtype=np.int64)
        cluster[known] = assign_clusters(scaled[known], setting_model.centroids)
        out.cluster[rows] = cluster
        profiled = self._profiled(facility, item, cluster, scaled)
        resolution = resolve(index, facility, item, cluster, scaled, self.max_distance, profiled)
        out.resolution[rows] = resolution.path
        out.distance[rows] = resolution.distance
        unscorable = resolution.group < 0
        out.reason[rows[unscorable & ~known]] = "setting fields unknown and no history to impute them from"
        out.reason[rows[unscorable & known & ~profiled]] = (
            "no trained group for this facility and item, and this setting has no history to align it with "
            "another part's model; retrain the store with recent production"
        )
        out.reason[rows[unscorable & known & profiled]] = "no trained group near this setting"

        for r in np.flatnonzero(imputed_state.any(axis=1)):  # most records have no gap: skip them
            out.imputed[rows[r]] = [state_columns[j] for j in np.flatnonzero(imputed_state[r])]
        for g in np.unique(resolution.group[~unscorable]):
            local = np.flatnonzero(resolution.group == g)
            group = self.cache.get(str(index.group_ids[g]))
            shift, aligned = self._alignment(group, resolution.path[local] == NEAREST, profiled[local], facility[local], item[local], cluster[local])
            evaluation = group.evaluate(sub.iloc[local][list(group.features)].to_numpy(dtype=float), shift)
            # The distance weight widens the line for a record judged by another setting's model;
            # an aligned record is judged against its own setting's normal, so it gets none.
            unaligned_near = (resolution.path[local] == NEAREST) & ~aligned
            distance = np.where(unaligned_near, resolution.distance[local], 0.0)
            threshold = effective_thresholds(group.threshold, distance)
            if self.alarm_budget:
                threshold = threshold * self._budget_factors(group.id, resolution.path[local], facility[local], item[local], cluster[local])
            margin, score, anomaly = decide(evaluation.loss, threshold)
            target = rows[local]
            out.group_id[target] = group.id
            out.model_kind[target] = group.kind
            out.loss[target] = evaluation.loss
            out.threshold[target] = threshold
            out.margin[target] = margin
            out.score[target] = score
            out.anomaly[target] = anomaly
            features = group.features
            for i in np.flatnonzero(evaluation.imputed.any(axis=1)):
                out.imputed[target[i]] = out.imputed[target[i]] + [features[j] for j in np.flatnonzero(evaluation.imputed[i])]
            for i in np.flatnonzero(evaluation.out_of_range.any(axis=1)):
                out.out_of_range[target[i]] = [features[j] for j in np.flatnonzero(evaluation.out_of_range[i])]
            top = np.argsort(-evaluation.errors, axis=1)[:, :TOP_FEATURES]
            top_errors = np.round(np.take_along_axis(evaluation.errors, top, axis=1).astype(float), 6).tolist()
            for i, (indices, errors) in enumerate(zip(top.tolist(), top_errors)):
                out.top_features[target[i]] = [{"field": features[j], "error": e} for j, e in zip(indices, errors)]


__all__ = ["ScoringEngine", "ScoredBatch", "EXACT", "NEAREST", "UNSCORABLE"]
