"""Score the training history with a staged store: lot calibration, and figures for the report.

Both use the serving core (:class:`~model_store.serving.scoring.ScoringEngine`) on the canonical history,
so what the report shows is what ``moldwatch score`` and the worker do.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from model_store.calibration import fit_probability, unit_factors
from model_store.config import DriftReferenceConfig, TrainingConfig
from model_store.groups import GroupKey
from model_store.serving.drift import block_history, long_run_inflation, reference_for_part
from model_store.serving.lot_drift import lot_reference
from model_store.serving.resolution import EXACT, PART, PATHS, UNSCORABLE
from model_store.serving.scoring import ScoredBatch, ScoringEngine
from model_store.serving.store import StoreManifest

OWN_PATHS = (EXACT, PART)


def _history(data: Any) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """History in time order, its lot defect rates and lot keys (aligned); ``_position`` is each
    row's position in ``data.records``."""
    frame = data.records.reset_index(drop=True).assign(_lot_rate=data.lot_rates, _position=np.arange(len(data.records)))
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    lot = (frame["facility"].astype(str) + "|" + frame["item"].astype(str) + "|" + frame["lot_date"].astype(str)).to_numpy(dtype=object)
    return frame, frame["_lot_rate"].to_numpy(dtype=float), lot


def _calibrated_scores(batch: ScoredBatch, factors: dict[tuple[int, str], float], path_factor: dict[str, float],
                       group_code: np.ndarray) -> np.ndarray:
    """What the serving core will score once calibrated (see ScoringEngine.line_factors)."""
    factor = np.ones(len(batch))
    path = batch.resolution.astype(str)
    names, path_code = np.unique(path, return_inverse=True)
    combo = group_code * len(names) + path_code
    for code in np.unique(combo):
        g, p = int(code // len(names)), str(names[code % len(names)])
        factor[combo == code] = factors.get((g, p), path_factor.get(p, 1.0))
    return np.maximum(batch.prior_ratio / factor, np.nan_to_num(batch.excursion))


def _in_sample(frame: pd.DataFrame, batch: ScoredBatch, data: Any) -> np.ndarray:
    """Rows the judging model was trained on: its own setting group's rows, or the part pool's lots."""
    pooled = np.full(len(data.records), None, dtype=object)
    for (maker, facility, item, cluster), positions in data.part_rows.items():
        pooled[positions] = GroupKey(maker, facility, item, cluster).id
    own_pool = pooled[frame["_position"].to_numpy()]
    return (batch.resolution == EXACT) | ((batch.resolution == PART) & (own_pool == batch.group_id))


def calibrate(manifest: StoreManifest, data: Any, config: TrainingConfig, progress: Any = None) -> dict[str, Any]:
    """Fit the lot calibration (see :mod:`model_store.calibration`) on the whole history."""
    frame, lot_rate, lot = _history(data)
    enabled = PATHS
    fitted: dict[str, Any] = {}
    evidence: dict[str, float] = {}
    for _ in range(len(PATHS)):  # again without each path the lots found no evidence for, until all have some
        engine = ScoringEngine(manifest, calibrated=False, paths=enabled, conditional=False)
        batch = engine.score(frame, memory={}, backward=True, explain=False)
        ids, group_code = np.unique(np.where(batch.group_id == None, "", batch.group_id).astype(str), return_inverse=True)  # noqa: E711 - elementwise on an object array
        units = unit_factors(group_code, batch.resolution.astype(str), batch.prior_ratio, np.nan_to_num(batch.excursion),
                             lot_rate, config.threshold.calibration_min_rows, _in_sample(frame, batch, data))
        score = _calibrated_scores(batch, units.factors, units.path_factor, group_code)
        tested = tuple(p for p in enabled if p != EXACT)
        model = fit_probability(batch.resolution.astype(object), score, lot, lot_rate, tested=tested)
        fitted = {"batch": batch, "units": units, "model": model, "ids": ids, "enabled": enabled}
        evidence.update(model.evidence)
        weak = {p for p, e in model.evidence.items() if e < config.threshold.path_min_evidence}
        if not weak:
            break
        enabled = tuple(p for p in enabled if p not in weak)
    batch, units, model, ids = fitted["batch"], fitted["units"], fitted["model"], fitted["ids"]
    # A record's own setting group and its own part's pool are always used (unless their lots
    # disagree with them, above); a fallback to another setting or part needs evidence.
    used = {p for p in fitted["enabled"]
            if p in OWN_PATHS or evidence.get(p, 0.0) >= config.threshold.path_min_evidence}
    path_rows = pd.Series(batch.resolution).value_counts().to_dict()
    return {
        "method": "lot-matched lines per (group, path); DLLP bag likelihood for defect_probability",
        "units": [
            {"group_id": str(ids[g]), "path": p, "factor": f, "rows": units.rows[(g, p)],
             "expected_bad": round(units.expected[(g, p)], 3), "history_alarms": units.alarms[(g, p)],
             "history_excursions": units.excursions[(g, p)]}
            for (g, p), f in sorted(units.factors.items(), key=lambda kv: (str(ids[kv[0][0]]), kv[0][1]))
        ],
        "path_factor": units.path_factor,
        "probability": {p: list(ab) for p, ab in model.coefficients.items()},
        "paths": {
            p: {"used": p in used, "rows": int(path_rows.get(p, 0)),
                "evidence": None if p not in evidence else round(evidence[p], 3)}
            for p in PATHS
        },
        "unscorable_rows": int(path_rows.get(UNSCORABLE, 0)),
        "min_evidence": config.threshold.path_min_evidence,
    }


def score_history(manifest: StoreManifest, data: Any) -> tuple[pd.DataFrame, np.ndarray, ScoredBatch]:
    """The calibrated store on its own history in time order: (history, lot rates, verdicts)."""
    frame, lot_rate, _ = _history(data)
    return frame, lot_rate, ScoringEngine(manifest).score(frame, memory={}, backward=True, explain=False)


def drift_references(batch: ScoredBatch, config: DriftReferenceConfig, lot_date: np.ndarray | None = None,
                     lot_rate: np.ndarray | None = None) -> dict[str, Any]:
    """Each part's drift reference (:mod:`model_store.serving.drift`) from its judged history shots
    in time order, as ``manifest["drift"]``; a part with too few judged shots gets none (listed).
    With each shot's lot date and lot defect rate, a referenced part also gets its alarms-against-
    lots reference (``lots``, :mod:`model_store.serving.lot_drift`) when it has enough lots."""
    judged = batch.resolution != UNSCORABLE
    histories, too_few = {}, []
    table = pd.DataFrame({"facility": batch.facility, "item": batch.item, "score": batch.score, "anomaly": batch.anomaly})
    lots: dict[tuple[str, str], dict[str, Any]] = {}
    if lot_date is not None and lot_rate is not None:
        per_lot = pd.DataFrame({"facility": batch.facility, "item": batch.item, "lot_date": lot_date,
                                "alarm": np.asarray(batch.score, dtype=float) > 1.0,  # the store's own line
                                "expected": np.asarray(lot_rate, dtype=float)})[judged & np.isfinite(lot_rate)]
        sums = per_lot.groupby(["facility", "item", "lot_date"], sort=True)[["alarm", "expected"]].sum()
        for (facility, item), sub in sums.groupby(level=[0, 1], sort=True):
            reference = lot_reference(sub["alarm"].to_numpy(), sub["expected"].to_numpy(), config.min_reference_lots)
            if reference is not None:
                lots[(str(facility), str(item))] = reference.to_dict()
    for (facility, item), sub in table[judged].groupby(["facility", "item"], sort=True):
        history = block_history(sub["score"].to_numpy(dtype=float), sub["anomaly"].to_numpy(dtype=bool),
                                config.block, config.min_reference_blocks)
        if history is None:
            too_few.append({"facility": str(facility), "item": str(item), "judged": int(len(sub))})
        else:
            histories[(str(facility), str(item))] = history
    pit_inflation = long_run_inflation((h.pit_means for h in histories.values()), config.inflation_batch)
    count_inflation = long_run_inflation((h.counts for h in histories.values()), config.inflation_batch)
    parts = [{"facility": facility, "item": item, **reference_for_part(h, pit_inflation, count_inflation).to_dict(),
              **({"lots": lots[(facility, item)]} if (facility, item) in lots else {})}
             for (facility, item), h in histories.items()]
    return {"method": "block CUSUMs of alarm rate and score level against the calibrated history (model_store.serving.drift)",
            "block": config.block, "min_reference_blocks": config.min_reference_blocks,
            "inflation_batch": config.inflation_batch, "pit_inflation": round(pit_inflation, 4),
            "count_inflation": round(count_inflation, 4), "parts": parts, "unreferenced": too_few}


def history_figures(frame: pd.DataFrame, lot_rate: np.ndarray, batch: ScoredBatch) -> dict[str, Any]:
    """The calibrated store on its own history (:func:`score_history`), per group and per path:
    rows, lot defect rate (row-weighted) and alarm rate — the report shows one against the other."""
    keys = frame[["maker", "facility", "item", "cluster"]]
    scored = batch.resolution != UNSCORABLE
    table = pd.DataFrame({
        "own_group": [GroupKey(m, f, i, int(c)).id if isinstance(i, str) and c >= 0 else None
                      for m, f, i, c in keys.itertuples(index=False)],
        "judged_by": batch.group_id, "path": batch.resolution, "lot_rate": lot_rate, "anomaly": batch.anomaly,
        "scored": scored, "probability": batch.defect_probability,
    })
    per_group = {}
    for own, sub in table[table["own_group"].notna()].groupby("own_group"):
        done = sub[sub["scored"]]
        per_group[own] = {
            "rows": int(len(sub)), "scored": int(len(done)),
            "lot_defect_rate": float(np.nanmean(sub["lot_rate"])) if sub["lot_rate"].notna().any() else None,
            "alarm_rate": float(done["anomaly"].mean()) if len(done) else None,
            "mean_defect_probability": float(np.nanmean(done["probability"])) if done["probability"].notna().any() else None,
            "paths": {str(k): int(v) for k, v in done["path"].value_counts().items()},
        }
    per_path = {}
    for path, sub in table.groupby("path"):
        per_path[str(path)] = {
            "rows": int(len(sub)),
            "lot_defect_rate": float(np.nanmean(sub["lot_rate"])) if sub["lot_rate"].notna().any() else None,
            "alarm_rate": float(sub["anomaly"].mean()) if path != UNSCORABLE else None,
        }
    return {"groups": per_group, "paths": per_path,
            "alarm_rate": float(batch.anomaly[scored].mean()) if scored.any() else None,
            "lot_defect_rate": float(np.nanmean(lot_rate[scored])) if np.isfinite(lot_rate[scored]).any() else None}
