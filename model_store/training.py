"""The offline pipeline: canonical records and lots -> a verified model store.

lots -> lot defect rates; per maker: impute state, fit setting clusters; groups and their roles;
one model per training group (in a process pool, one per core); thresholds; validation figures;
report; atomic store write.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from model_store.config import TrainingConfig
from model_store.errors import DataError
from model_store.groups import GROUP_KEYS, TRAIN, VALIDATION, GroupKey, cluster_rows, group_table
from model_store.imputation import impute_state
from model_store.lots import lot_defect_rates, row_lot_rates
from model_store.models import kind_for_rows
from model_store.schema import PlantSchema
from model_store.settings import SettingModel, fit_setting_model, scale_settings
from model_store.store import StoreManifest, StoreStaging, new_model_version, sha256_file
from model_store.trainer import GroupTask, init_worker, train_group

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called as work advances, for a progress bar."""


@dataclass
class PreparedData:
    records: pd.DataFrame  # canonical, state imputed, with a ``cluster`` column
    setting_models: dict[str, SettingModel]
    groups: pd.DataFrame  # the group table with roles
    lot_rates: np.ndarray  # per record


def prepare(records: pd.DataFrame, lots: pd.DataFrame, schema: PlantSchema, config: TrainingConfig) -> PreparedData:
    """Everything before model fitting; pure (no I/O)."""
    frames = []
    models: dict[str, SettingModel] = {}
    makers = [m for m in schema.makers if (records["maker"] == m).any()]
    if not makers:
        raise DataError("records: no row belongs to a maker of the schema")
    for maker in makers:
        fields = schema.makers[maker].settings
        sub = records[records["maker"] == maker]
        sub, _ = impute_state(sub, ["item", *fields], fallback={}, backward=True)
        models[maker] = fit_setting_model(maker, fields, sub[list(fields)].to_numpy(dtype=float), config.grouping, config.model.seed)
        frames.append(sub)
    imputed = pd.concat(frames).sort_index()
    imputed["cluster"], _ = cluster_rows(imputed, models)
    rates = row_lot_rates(imputed, lot_defect_rates(lots))
    table = group_table(imputed, rates, config.grouping)
    return PreparedData(imputed, models, table, rates)


def facility_defaults(records: pd.DataFrame, schema: PlantSchema) -> dict[str, dict[str, Any]]:
    """Each facility's usual item and most used setting combination (overall and per item)."""
    out: dict[str, dict[str, Any]] = {}
    for (maker, facility), sub in records.groupby(["maker", "facility"]):
        fields = list(schema.makers[maker].settings)
        items = sub["item"].dropna()
        entry: dict[str, Any] = {"item": str(items.mode().iloc[0]) if len(items) else None}
        combos = sub[fields].dropna()
        if len(combos):
            entry["settings"] = [float(v) for v in combos.value_counts().index[0]]
            entry["settings_by_item"] = {
                str(item): [float(v) for v in grp[fields].dropna().value_counts().index[0]]
                for item, grp in sub.groupby("item")
                if grp[fields].notna().all(axis=1).any()
            }
        out[str(facility)] = entry
    return out


def setting_profiles(data: PreparedData, schema: PlantSchema, min_rows: int) -> dict[str, list[dict[str, Any]]]:
    """Per (facility, item, setting cluster) seen in history: the median of every production field.

    The nearest-setting path uses them to move a record produced under an untrained setting into
    the frame of the group that scores it (see :mod:`model_store.scoring`).
    """
    out: dict[str, list[dict[str, Any]]] = {}
    frame = data.records[(data.records["cluster"] >= 0) & data.records["item"].notna()]
    for (maker, facility, item, cluster), sub in frame.groupby(["maker", "facility", "item", "cluster"]):
        if len(sub) < min_rows:
            continue
        model = data.setting_models[maker]
        median = np.nanmedian(sub[list(schema.makers[maker].production)].to_numpy(dtype=float), axis=0)
        settings = scale_settings(sub[list(model.fields)].to_numpy(dtype=float), model)
        settings = settings[~np.isnan(settings).any(axis=1)]
        if len(settings) == 0:
            continue
        centroid = settings.mean(axis=0)
        radius = float(np.quantile(np.sqrt(((settings - centroid) ** 2).sum(axis=1)), 0.95))
        out.setdefault(str(maker), []).append(
            {"facility": str(facility), "item": str(item), "cluster": int(cluster), "rows": int(len(sub)),
             "median": [None if np.isnan(v) else float(v) for v in median],
             "setting_centroid": [float(v) for v in centroid], "setting_radius": radius}
        )
    return out


def _tasks(data: PreparedData, schema: PlantSchema, config: TrainingConfig, out_dir: Path) -> list[GroupTask]:
    tasks = []
    keyed = data.records.groupby(["maker", "facility", "item", "cluster"]).indices
    for row in data.groups[data.groups["role"] == TRAIN].itertuples():
        key = GroupKey(row.maker, row.facility, row.item, int(row.cluster))
        idx = keyed[(row.maker, row.facility, row.item, row.cluster)]
        sub = data.records.iloc[idx]
        fields = schema.makers[row.maker]
        model = data.setting_models[row.maker]
        settings = sub[list(fields.settings)].to_numpy(dtype=float)
        centroid = np.nanmean(scale_settings(settings, model), axis=0)
        mode = sub[list(fields.settings)].dropna().value_counts().index[0]
        tasks.append(
            GroupTask(
                group_id=key.id,
                key=key.to_dict(),
                kind=kind_for_rows(len(idx), config.model.autoencoder_min_rows, config.model.memae_min_rows),
                features=fields.production,
                x=sub[list(fields.production)].to_numpy(dtype=np.float64),
                lot_defect_rate=float(row.lot_defect_rate),
                lots=int(row.lots),
                setting_centroid=[float(v) for v in centroid],
                setting_mode=[float(v) for v in mode],
                config=config,
                out_dir=str(out_dir),
            )
        )
    return sorted(tasks, key=lambda t: -len(t.x))  # biggest first: keeps the pool busy to the end


def run_tasks(tasks: list[GroupTask], workers: int, progress: Progress | None) -> list[dict]:
    results: list[dict] = []
    if progress:
        progress("train", 0, len(tasks))
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            results.append(train_group(task))
            if progress:
                progress("train", len(results), len(tasks))
        return results
    # spawn, not fork: TensorFlow's thread pools do not survive a fork.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_worker) as pool:
        futures = [pool.submit(train_group, task) for task in tasks]
        for future in as_completed(futures):
            results.append(future.result())
            if progress:
                progress("train", len(results), len(tasks))
    return results


def build_manifest(
    data: PreparedData, schema: PlantSchema, config: TrainingConfig, entries: list[dict], seconds: float
) -> dict[str, Any]:
    table = data.groups
    facility_maker = data.records.drop_duplicates("facility").set_index("facility")["maker"].astype(str).to_dict()
    return {
        "model_version": new_model_version(schema.hash()),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "schema_hash": schema.hash(),
        "schema": schema.to_dict(),
        "config": config.to_dict(),
        "setting_models": {m: model.to_dict() for m, model in data.setting_models.items()},
        "facility_maker": {str(k): v for k, v in facility_maker.items()},
        "facility_defaults": facility_defaults(data.records, schema),
        "setting_profiles": setting_profiles(data, schema, config.grouping.min_profile_rows),
        "groups": sorted(entries, key=lambda e: e["id"]),
        "group_table": _table_records(table),
        "training": {"seconds": round(seconds, 2), "records": int(len(data.records))},
    }


def _table_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for r in table.itertuples(index=False):
        rows.append(
            {
                "key": GroupKey(r.maker, r.facility, r.item, int(r.cluster)).to_dict(),
                "rows": int(r.rows),
                "lots": int(r.lots),
                "lot_defect_rate": None if pd.isna(r.lot_defect_rate) else float(r.lot_defect_rate),
                "role": r.role,
                "reason": r.reason,
            }
        )
    return rows


def validation_figures(manifest: StoreManifest, data: PreparedData) -> dict[str, dict[str, Any]]:
    """Score each validation group's rows with the trained store: loss and anomaly rate figures."""
    from model_store.scoring import ScoringEngine

    engine = ScoringEngine(manifest)
    figures: dict[str, dict[str, Any]] = {}
    keyed = data.records.groupby(["maker", "facility", "item", "cluster"]).indices
    for row in data.groups[data.groups["role"] == VALIDATION].itertuples():
        idx = keyed[(row.maker, row.facility, row.item, row.cluster)]
        batch = engine.score(data.records.iloc[idx])
        scored = np.isfinite(batch.loss)
        if not scored.any():
            continue
        figures[GroupKey(row.maker, row.facility, row.item, int(row.cluster)).id] = {
            "rows": int(len(idx)),
            "lot_defect_rate": float(row.lot_defect_rate) if pd.notna(row.lot_defect_rate) else None,
            "scored_by": sorted(set(batch.group_id[scored])),
            "loss_mean": float(batch.loss[scored].mean()),
            "loss_q95": float(np.quantile(batch.loss[scored], 0.95)),
            "anomaly_rate": float(batch.anomaly[scored].mean()),
        }
    return figures


def nearest_calibration(manifest: StoreManifest, data: PreparedData, config: TrainingConfig) -> list[dict[str, Any]]:
    """Alarm-budget factors for every untrained setting with enough history (see ThresholdConfig)."""
    from model_store.scoring import ScoringEngine
    from model_store.thresholds import alarm_budget_factor

    untrained = data.groups[data.groups["role"] != TRAIN][GROUP_KEYS]
    records = data.records.reset_index(drop=True).assign(_lot_rate=data.lot_rates)
    rows = records.merge(untrained, on=GROUP_KEYS, how="inner")
    if rows.empty:
        return []
    rows = rows.sort_values("timestamp", kind="stable").reset_index(drop=True)
    batch = ScoringEngine(manifest).score(rows, memory={}, backward=True)
    frame = pd.DataFrame({
        "facility": batch.facility, "item": batch.item, "cluster": batch.cluster, "group_id": batch.group_id,
        "path": batch.resolution, "score": batch.score,
        "rate": rows["_lot_rate"].to_numpy(),
    })
    frame = frame[frame["path"] == "nearest"]
    out = []
    for (facility, item, cluster, group_id), sub in frame.groupby(["facility", "item", "cluster", "group_id"]):
        if len(sub) < config.threshold.nearest_min_rows:
            continue
        rate = float(np.nanmean(sub["rate"])) if sub["rate"].notna().any() else float("nan")
        out.append({
            "facility": str(facility), "item": str(item), "cluster": int(cluster), "group_id": str(group_id),
            "rows": int(len(sub)), "lot_defect_rate": None if np.isnan(rate) else rate,
            "history_alarm_share": float((sub["score"] > 1.0).mean()),
            "factor": alarm_budget_factor(sub["score"].to_numpy(), rate, config.threshold),
        })
    return out


def train_store(
    records: pd.DataFrame,
    lots: pd.DataFrame,
    schema: PlantSchema,
    store_dir: str | Path,
    config: TrainingConfig | None = None,
    progress: Progress | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Train every group and write the store atomically. Returns the manifest."""
    config = config or TrainingConfig()
    started = time.perf_counter()
    if progress:
        progress("prepare", 0, 1)
    data = prepare(records, lots, schema, config)
    if progress:
        progress("prepare", 1, 1)
    if not (data.groups["role"] == TRAIN).any():
        raise DataError(
            f"no group qualifies for training (needs >= {config.grouping.min_group_rows} rows and a lot defect rate "
            f"below {config.grouping.normal_defect_rate:.1%}); check the lots file or relax the limits with --set"
        )
    workers = config.workers or os.cpu_count() or 1
    with StoreStaging(store_dir) as staging:
        entries = run_tasks(_tasks(data, schema, config, staging.path), workers, progress)
        manifest = build_manifest(data, schema, config, entries, time.perf_counter() - started)
        artifacts = {p.relative_to(staging.path).as_posix(): sha256_file(p) for p in staging.path.rglob("*") if p.is_file()}
        staged = StoreManifest(staging.path, {**manifest, "artifacts": artifacts}, schema, data.setting_models)
        if progress:
            progress("validate", 0, 1)
        manifest["validation_groups"] = validation_figures(staged, data)
        manifest["nearest_calibration"] = nearest_calibration(staged, data, config)
        if progress:
            progress("validate", 1, 1)
        manifest["training"]["seconds"] = round(time.perf_counter() - started, 2)
        if report:
            from model_store.report import write_training_report

            write_training_report(manifest, staging.path / "report.html")
        staging.commit(manifest)
    return manifest
