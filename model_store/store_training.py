"""The offline pipeline: canonical records and lots -> a verified model store.

lots -> lot defect rates; per maker: impute state, fit setting clusters; groups and their roles;
one model per training group (in a process pool, one per core); thresholds; validation figures;
report; atomic store write.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_store.calibration import fit_conditional_probability, gross_excursions
from model_store.config import TrainingConfig
from model_store.dispatch import Dispatcher, InProcess, open_dispatcher
from model_store.errors import DataError
from model_store.fits import fit_group, fit_maker, maker_task, write_files
from model_store.group_training import GroupTask
from model_store.groups import PART_CLUSTER, TRAIN, GroupKey, cluster_rows, group_table, part_groups, slug
from model_store.history_scoring import calibrate, drift_references, history_figures, score_history
from model_store.lots import lot_defect_rates, row_lot_rates
from model_store.models import kind_for_rows
from model_store.report_settings import cluster_set_points
from model_store.schema import PlantSchema
from model_store.serving.clusters import SettingModel, scale_settings
from model_store.serving.excursions import training_band
from model_store.serving.imputation import impute_state
from model_store.serving.store import STORE_FORMAT, StoreManifest, sha256_file
from model_store.setting_clusters import fit_setting_model
from model_store.store import StoreStaging, new_model_version

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called as work advances, for a progress bar."""


@dataclass
class PreparedData:
    records: pd.DataFrame  # canonical, state imputed, with a ``cluster`` column
    setting_models: dict[str, SettingModel]
    groups: pd.DataFrame  # the group table with roles (setting groups, then each part's pooled group)
    lot_rates: np.ndarray  # per record
    part_rows: dict[tuple, np.ndarray]  # pooled group key -> row positions in ``records`` (its cleanest lots)


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
        production = [f for f in schema.makers[maker].production if f in sub.columns]
        measured = sub[production].notna().to_numpy().any(axis=1)
        if not measured.any():
            raise DataError(f"records: none of maker {maker!r}'s production fields ({', '.join(production)}) holds a value "
                            f"in its {len(sub):,} records; check the schema's maker column or constant and the makers' "
                            f"field names")
        blank = pd.Series(measured).groupby(sub["facility"].to_numpy()).any()
        if not blank.all():
            facility = str(blank.index[~blank.to_numpy()][0])
            rows = int((sub["facility"] == facility).sum())
            raise DataError(f"records: facility {facility!r} is of maker {maker!r}, but none of that maker's production "
                            f"fields ({', '.join(production)}) holds a value in its {rows:,} records; check its maker (the "
                            f"schema's maker column or constant), or leave that machine's records out")
        sub, _ = impute_state(sub, ["item", *fields], fallback={}, backward=True)
        models[maker] = fit_setting_model(maker, fields, sub[list(fields)].to_numpy(dtype=float), config.grouping, config.model.seed)
        frames.append(sub)
    imputed = pd.concat(frames).sort_index()
    imputed["cluster"], _ = cluster_rows(imputed, models)
    rates = row_lot_rates(imputed, lot_defect_rates(lots))
    if len(rates) and not np.isfinite(rates).any():
        raise DataError(no_lot_matches(imputed, lots))
    table = group_table(imputed, rates, config.grouping)
    parts, part_rows = part_groups(imputed, rates, config.grouping)
    table = pd.concat([table, parts], ignore_index=True) if len(parts) else table
    return PreparedData(imputed, models, table, rates, part_rows)


def no_lot_matches(records: pd.DataFrame, lots: pd.DataFrame) -> str:
    """Why no record found its lot: what each side names, side by side, so that a lots file of
    another period, other machine names or other dates shows at a glance."""
    def span(frame: pd.DataFrame) -> str:
        days = frame["lot_date"].dropna().astype(str)
        names = sorted(frame["facility"].dropna().astype(str).unique())
        shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return f"{days.min()} to {days.max()}, facilities {shown}" if len(days) else f"no dates, facilities {shown}"

    return (f"lots: none of the {len(lots):,} lot rows matches a record's (facility, item, lot date), so no group's "
            f"defect rate is known. Records: {span(records)}; lots: {span(lots)}. Give the lots of the same days and "
            f"machines, with the same names (the schema's 'lots:' block renames its columns)")


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
    the frame of the group that scores it (see :mod:`model_store.serving.scoring`).
    """
    out: dict[str, list[dict[str, Any]]] = {}
    frame = data.records[(data.records["cluster"] >= 0) & data.records["item"].notna()]
    for (maker, facility, item, cluster), sub in frame.groupby(["maker", "facility", "item", "cluster"]):
        if len(sub) < min_rows:
            continue
        model = data.setting_models[maker]
        production = sub[list(schema.makers[maker].production)].to_numpy(dtype=float)
        median = np.nanmedian(production, axis=0)
        band_low, band_high = training_band(production)
        settings = scale_settings(sub[list(model.fields)].to_numpy(dtype=float), model)
        settings = settings[~np.isnan(settings).any(axis=1)]
        if len(settings) == 0:
            continue
        centroid = settings.mean(axis=0)
        radius = float(np.quantile(np.sqrt(((settings - centroid) ** 2).sum(axis=1)), 0.95))
        out.setdefault(str(maker), []).append(
            {"facility": str(facility), "item": str(item), "cluster": int(cluster), "rows": int(len(sub)),
             "median": [None if np.isnan(v) else float(v) for v in median],
             "setting_centroid": [float(v) for v in centroid], "setting_radius": radius,
             "band": {"low": band_low.tolist(), "high": band_high.tolist()}}
        )
    return out


def _tasks(data: PreparedData, schema: PlantSchema, config: TrainingConfig, out_dir: Path) -> list[GroupTask]:
    tasks = []
    keyed = data.records.groupby(["maker", "facility", "item", "cluster"]).indices
    parts = data.records.groupby(["maker", "facility", "item"]).indices
    for row in data.groups[data.groups["role"] == TRAIN].itertuples():
        key = GroupKey(row.maker, row.facility, row.item, int(row.cluster))
        if int(row.cluster) == PART_CLUSTER:
            idx = data.part_rows[(row.maker, row.facility, row.item, PART_CLUSTER)]
        else:
            idx = keyed[(row.maker, row.facility, row.item, row.cluster)]
        sub = data.records.iloc[idx]
        fields = schema.makers[row.maker]
        model = data.setting_models[row.maker]
        settings = sub[list(fields.settings)].to_numpy(dtype=float)
        scaled = scale_settings(settings, model)
        scaled = scaled[~np.isnan(scaled).any(axis=1)]
        centroid = scaled.mean(axis=0) if len(scaled) else np.full(len(fields.settings), 0.5)
        combos = sub[list(fields.settings)].dropna().value_counts()
        mode = combos.index[0] if len(combos) else tuple(np.full(len(fields.settings), np.nan))
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
                setting_mode=[None if pd.isna(v) else float(v) for v in mode],
                part_band=tuple(band.tolist() for band in training_band(
                    data.records.iloc[parts[(row.maker, row.facility, row.item)]][list(fields.production)].to_numpy(dtype=float))),
                config=config,
                out_dir=str(out_dir),
            )
        )
    return sorted(tasks, key=lambda t: -len(t.x))  # biggest first: keeps the pool busy to the end


def run_tasks(tasks: list[GroupTask], dispatcher: Dispatcher, out_dir: Path, progress: Progress | None) -> list[dict]:
    """Fit every group where ``dispatcher`` runs fits; their artifacts are written here, into ``out_dir``."""
    results: list[dict] = []
    if progress:
        progress("train", 0, len(tasks))
    for _, fitted in dispatcher.map(fit_group, tasks):
        write_files(out_dir, fitted.files)
        results.append(fitted.entry)
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
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "schema_hash": schema.hash(),
        "schema": schema.to_dict(),
        "config": config.to_dict(),
        "setting_models": {m: model.to_dict() for m, model in data.setting_models.items()},
        "facility_maker": {str(k): v for k, v in facility_maker.items()},
        "facility_defaults": facility_defaults(data.records, schema),
        "setting_profiles": setting_profiles(data, schema, config.grouping.min_profile_rows),
        "setting_clusters": cluster_set_points(data.records, data.setting_models),  # the report's set points
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


def train_conditional(data: PreparedData, schema: PlantSchema, config: TrainingConfig, out_dir: Path,
                      dispatcher: Dispatcher | None = None) -> dict[str, Any]:
    """One setting-conditioned unit per maker (model_store/serving/conditional.py), written under
    ``out_dir/conditional``, and the defect probability fitted on their held-out scores and the lots."""
    dispatcher = dispatcher or InProcess()
    folder = out_dir / "conditional"
    folder.mkdir(parents=True, exist_ok=True)
    units: dict[str, Any] = {}
    scores = np.full(len(data.records), np.nan)
    excursions = np.full(len(data.records), np.nan)
    maker_rows = {maker: np.flatnonzero((data.records["maker"] == maker).to_numpy()) for maker in schema.makers}
    tasks = [maker_task(maker, f"conditional/{number:03d}-{slug(maker)}.npz",  # the number: two makers may share a slug
                        fields.production, fields.settings, data.records.iloc[maker_rows[maker]], data.lot_rates[maker_rows[maker]],
                        config.conditional)
             for number, (maker, fields) in enumerate(schema.makers.items()) if len(maker_rows[maker])]
    fitted = dict(dispatcher.map(fit_maker, tasks))
    for index, task in enumerate(tasks):  # the schema's order, whatever order the fits finished in
        result = fitted[index]
        if result.entry is None:
            continue
        write_files(out_dir, result.files)
        units[task.maker] = {**result.entry, "artifact": task.artifact}
        scores[maker_rows[task.maker]] = result.held_out_score
        excursions[maker_rows[task.maker]] = result.held_out_excursion
    lot = (data.records["facility"].astype(str) + "|" + data.records["item"].astype(str) + "|"
           + data.records["lot_date"].astype(str)).to_numpy(dtype=object)
    model = fit_conditional_probability(scores, excursions, lot, data.lot_rates)
    return {"combine": config.conditional.combine, "group_excursions": config.conditional.group_excursions, "units": units,
            "probability": [model.a, model.b] if model is not None else None,
            **({"probability_model": model.to_dict()} if model is not None else {}),
            "held_out_rows": int(np.isfinite(scores).sum()),
            "held_out_excursions": int(gross_excursions(scores, excursions)[np.isfinite(scores)].sum())}


def train_store(
    records: pd.DataFrame,
    lots: pd.DataFrame,
    schema: PlantSchema,
    store_dir: str | Path,
    config: TrainingConfig | None = None,
    progress: Progress | None = None,
    report: bool = True,
    dispatcher: Dispatcher | None = None,
    history_sample: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train every group and write the store atomically. Returns the manifest.

    ``history_sample``: how ``records`` were read from the plant's history
    (:class:`model_store.history_sample.HistorySample`), kept in the manifest's ``training``.

    ``dispatcher`` runs the group and conditional fits (:mod:`model_store.dispatch`, e.g. a Dask
    cluster); by default this process, or a pool of ``config.workers`` processes."""
    config = config or TrainingConfig()
    started = time.perf_counter()
    if progress:
        progress("prepare", 0, 1)
    data = prepare(records, lots, schema, config)
    if progress:
        progress("prepare", 1, 1)
    if dispatcher is not None:
        return _fit_and_write(data, schema, store_dir, config, progress, report, dispatcher, history_sample, started)
    # this run's own pool (or this process): closed when the run ends, its running fits ended at
    # once when the run fails or is interrupted (model_store.dispatch.open_dispatcher)
    with open_dispatcher(None, config.workers) as own:
        return _fit_and_write(data, schema, store_dir, config, progress, report, own, history_sample, started)


def _fit_and_write(data: Any, schema: PlantSchema, store_dir: str | Path, config: TrainingConfig, progress: Progress | None,
                   report: bool, dispatcher: Dispatcher, history_sample: dict[str, Any] | None, started: float) -> dict[str, Any]:
    """train_store after :func:`prepare`: the fits where ``dispatcher`` runs them, then the store."""
    with StoreStaging(store_dir) as staging:
        entries = run_tasks(_tasks(data, schema, config, staging.path), dispatcher, staging.path, progress)
        manifest = build_manifest(data, schema, config, entries, time.perf_counter() - started)
        if history_sample is not None:
            manifest["training"]["history_sample"] = history_sample
        if progress:
            progress("conditional", 0, 1)
        manifest["conditional"] = train_conditional(data, schema, config, staging.path, dispatcher)
        if not entries and not manifest["conditional"]["units"]:
            raise DataError(
                f"nothing to train: no setting group qualifies (needs >= {config.grouping.min_group_rows} rows and a lot "
                f"defect rate below {config.grouping.normal_defect_rate:.1%}) and no maker has the "
                f"{2 * config.conditional.min_calibration_rows} rows the setting-conditioned scorer needs; "
                f"check the records and lots files or relax the limits with --set")
        if progress:
            progress("conditional", 1, 1)
        artifacts = {p.relative_to(staging.path).as_posix(): sha256_file(p) for p in staging.path.rglob("*") if p.is_file()}
        staged = StoreManifest(staging.path, {**manifest, "store_format": STORE_FORMAT, "artifacts": artifacts}, schema,
                               data.setting_models)
        if progress:
            progress("calibrate", 0, 2)
        manifest["calibration"] = calibrate(staged, data, config)
        if progress:
            progress("calibrate", 1, 2)
        calibrated = StoreManifest(staging.path, {**manifest, "store_format": STORE_FORMAT, "artifacts": artifacts}, schema,
                                   data.setting_models)
        frame, lot_rate, verdicts = score_history(calibrated, data)
        manifest["history"] = history_figures(frame, lot_rate, verdicts)
        manifest["drift"] = drift_references(verdicts, config.drift, frame["lot_date"].to_numpy(dtype=object), lot_rate)
        if progress:
            progress("calibrate", 2, 2)
        manifest["training"]["seconds"] = round(time.perf_counter() - started, 2)
        if report:
            from model_store.report import write_training_report

            write_training_report(manifest, staging.path / "report.html")
        staging.commit(manifest)
    return manifest
