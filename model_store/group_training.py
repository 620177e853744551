"""Train one group: scaler, model, training-loss summary, threshold, artifacts.

Runs inside a worker process (one per core), so it takes plain data in and returns a JSON-ready
manifest entry; the parent computes hashes and writes the manifest.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_store.config import TrainingConfig
from model_store.models import IFOREST, MEMAE
from model_store.serving.excursions import training_band
from model_store.serving.imputation import fill_with_means
from model_store.serving.losses import feature_errors, group_losses
from model_store.serving.scaling import MinMax, scale_clip
from model_store.serving.thresholds import fit_threshold, loss_summary


@dataclass(frozen=True)
class GroupTask:
    group_id: str
    key: dict
    kind: str
    features: tuple[str, ...]
    x: np.ndarray  # raw production values of the group's rows, NaN where missing
    lot_defect_rate: float
    lots: int
    setting_centroid: list[float]
    setting_mode: list[float]
    part_band: tuple[list[float], list[float]]  # p0.1/p99.9 of the part's whole history (all settings)
    config: TrainingConfig
    out_dir: str  # the store's staging directory


def error_scale_of(raw_errors: np.ndarray) -> np.ndarray:
    """Mean training error per feature, floored so a perfectly reconstructed field cannot explode."""
    scale = raw_errors.mean(axis=0)
    return np.maximum(scale, max(float(scale.mean()) * 0.05, 1e-6))


def loss_histogram(losses: np.ndarray, bins: int = 40) -> dict:
    """A readable histogram: bins over the bulk (up to the 99.5th percentile), the tail counted
    apart (one outlier must not squash the rest), log-spaced when the bulk spans > 2 decades."""
    losses = np.asarray(losses, dtype=float)
    losses = losses[np.isfinite(losses)]
    if len(losses) == 0:
        return {"counts": [], "edges": [], "log": False, "above": 0, "max": None}
    low, high = float(losses.min()), float(np.quantile(losses, 0.995))
    high = high if high > low else low + 1e-9
    log = low > 0 and high / low > 100
    edges = np.geomspace(low, high, bins + 1) if log else np.linspace(low, high, bins + 1)
    counts, _ = np.histogram(np.minimum(losses, high), bins=edges)
    return {"counts": counts.tolist(), "edges": edges.tolist(), "log": bool(log),
            "above": int((losses > high).sum()), "max": float(losses.max())}


def train_group(task: GroupTask) -> dict:
    started = time.perf_counter()
    cfg = task.config.model
    means = np.nanmean(task.x, axis=0)
    means = np.where(np.isnan(means), 0.0, means)
    x, _ = fill_with_means(task.x, means)
    scaler = MinMax.fit(x)
    scaled, _ = scale_clip(x, scaler)
    median = np.median(scaled, axis=0)
    group_dir = Path(task.out_dir) / "groups" / task.group_id
    group_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    fit_rows = scaled if len(scaled) <= cfg.max_train_rows else scaled[rng.choice(len(scaled), cfg.max_train_rows, replace=False)]

    training: dict = {}
    artifacts: dict[str, str] = {}
    if task.kind == IFOREST:
        from model_store.models.iforest import fit_iforest, save_iforest
        from model_store.serving.forest import ForestArrays

        forest = fit_iforest(fit_rows, cfg.iforest_trees, cfg.seed)
        save_iforest(forest, group_dir / "model.skops")
        model = ForestArrays.from_sklearn(forest)
        model.save(group_dir / "forest.npz")
        artifacts["model"] = f"groups/{task.group_id}/model.skops"
        artifacts["forward"] = f"groups/{task.group_id}/forest.npz"
    else:
        from model_store.models.keras_nets import export_forward, fit_autoencoder

        memory = (cfg.memory_items, cfg.shrink_threshold, cfg.entropy_weight) if task.kind == MEMAE else None
        keras_model, training = fit_autoencoder(
            fit_rows, memory=memory, epochs=cfg.epochs, batch_size=cfg.batch_size, patience=cfg.patience,
            validation_split=cfg.validation_split, learning_rate=cfg.learning_rate, seed=cfg.seed,
        )
        keras_model.save(group_dir / "model.keras")
        model = export_forward(keras_model)
        model.save(group_dir / "forward.npz")
        artifacts["model"] = f"groups/{task.group_id}/model.keras"
        artifacts["forward"] = f"groups/{task.group_id}/forward.npz"

    error_scale = error_scale_of(feature_errors(task.kind, model, scaled, median))
    losses, errors = group_losses(task.kind, model, scaled, median, error_scale)
    # The excursion band: what this group trained on, widened to everything its machine and part
    # produced in history (other settings of the part legitimately move cycle times and pressures).
    band_low, band_high = training_band(task.x)
    band_low = np.minimum(band_low, np.asarray(task.part_band[0], dtype=float))
    band_high = np.maximum(band_high, np.asarray(task.part_band[1], dtype=float))
    threshold = fit_threshold(losses, task.lot_defect_rate, task.config.threshold)
    histogram = loss_histogram(losses)
    training.update(
        seconds=round(time.perf_counter() - started, 3),
        fit_rows=int(len(fit_rows)),
        loss_histogram=histogram,
        feature_error_mean=errors.mean(axis=0).tolist(),
        pid=os.getpid(),
    )
    return {
        "id": task.group_id,
        "key": task.key,
        "model_kind": task.kind,
        "artifacts": artifacts,
        "rows": int(len(task.x)),
        "lots": int(task.lots),
        "lot_defect_rate": float(task.lot_defect_rate),
        "features": list(task.features),
        "scaler": scaler.to_dict(),
        "feature_means": means.tolist(),
        "feature_median_scaled": median.tolist(),
        "feature_error_scale": error_scale.tolist(),
        "feature_median_raw": np.nan_to_num(np.nanmedian(task.x, axis=0)).tolist() if len(task.x) else [],
        "feature_band": {"low": band_low.tolist(), "high": band_high.tolist()},
        "loss_summary": loss_summary(losses),
        "threshold": threshold.to_dict(),
        "setting_centroid": list(task.setting_centroid),
        "setting_mode": list(task.setting_mode),
        "training": training,
    }


def init_worker() -> None:
    """Keep each worker process to one thread: parallelism comes from the process pool."""
    os.environ["TF_NUM_INTRAOP_THREADS"] = "1"
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from model_store.models.quiet import ignore_benign_numpy_warnings, import_tensorflow

    ignore_benign_numpy_warnings()
    try:
        tf = import_tensorflow()

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except Exception:  # noqa: BLE001 - threading can only be set before TF initialises; best effort
        pass
