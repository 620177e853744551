"""Detection quality: moldwatch's per-group models against global baselines, on later days.

Simulate a plant, train on the early days, score the later days, compare with the per-shot
ground truth (which training never sees). Baselines use the same training rows (the normal
groups), the same scaling, the same loss and the same threshold rule, so the only difference is
the grouping: one model per maker (features differ by maker) instead of one per setting group.

    .venv/bin/python bench/detection.py            # default simulation (~500k shots)
    .venv/bin/python bench/detection.py --shots 150000 --days 15
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import detection_metrics, write_result  # noqa: E402
from model_store.config import TrainingConfig  # noqa: E402
from model_store.groups import TRAIN  # noqa: E402
from model_store.imputation import fill_with_means  # noqa: E402
from model_store.models import AUTOENCODER, IFOREST, MEMAE  # noqa: E402
from model_store.scaling import MinMax, scale_clip  # noqa: E402
from model_store.schema import canonical_lots, canonical_records  # noqa: E402
from model_store.scoring import ScoringEngine  # noqa: E402
from model_store.store import open_store  # noqa: E402
from model_store.thresholds import decide, effective_thresholds, fit_threshold  # noqa: E402
from model_store.training import prepare, train_store  # noqa: E402


def split_by_day(records: pd.DataFrame, train_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    days = sorted(records["lot_date"].unique())
    cut = days[train_days - 1]
    return records[records["lot_date"] <= cut].reset_index(drop=True), records[records["lot_date"] > cut].reset_index(drop=True)


def global_baselines(train: pd.DataFrame, lots: pd.DataFrame, test: pd.DataFrame, schema, config: TrainingConfig) -> dict[str, dict]:
    """One model per maker and family, trained on the same normal-group rows as moldwatch."""
    from model_store.models.iforest import fit_iforest, iforest_loss
    from model_store.models.keras_nets import export_forward, fit_autoencoder

    data = prepare(train, lots, schema, config)
    keys = ["maker", "facility", "item", "cluster"]
    normal = data.records.merge(data.groups[data.groups["role"] == TRAIN][keys], on=keys, how="inner")
    rates = data.groups[data.groups["role"] == TRAIN]
    results: dict[str, dict] = {}
    m = config.model
    for family in (IFOREST, AUTOENCODER, MEMAE):
        score = np.zeros(len(test))
        predicted = np.zeros(len(test), dtype=bool)
        started = time.perf_counter()
        for maker, fields in schema.makers.items():
            rows = normal[normal["maker"] == maker]
            target = np.flatnonzero((test["maker"] == maker).to_numpy())
            if rows.empty or len(target) == 0:
                continue
            x = rows[list(fields.production)].to_numpy(dtype=float)
            means = np.nan_to_num(np.nanmean(x, axis=0))
            x, _ = fill_with_means(x, means)
            scaler = MinMax.fit(x)
            xs, _ = scale_clip(x, scaler)
            rng = np.random.default_rng(m.seed)
            fit = xs if len(xs) <= m.max_train_rows * 4 else xs[rng.choice(len(xs), m.max_train_rows * 4, replace=False)]
            if family == IFOREST:
                model = fit_iforest(fit, m.iforest_trees, m.seed)
                loss_fn = lambda s, model=model: iforest_loss(model, s)  # noqa: E731
            else:
                memory = (m.memory_items, m.shrink_threshold, m.entropy_weight) if family == MEMAE else None
                keras_model, _ = fit_autoencoder(fit, memory=memory, epochs=m.epochs, batch_size=m.batch_size, patience=m.patience,
                                                 validation_split=m.validation_split, learning_rate=m.learning_rate, seed=m.seed)
                net = export_forward(keras_model)
                loss_fn = lambda s, net=net: np.abs(s - net(s)).mean(axis=1)  # noqa: E731
            rate = float(np.average(rates[rates["maker"] == maker]["lot_defect_rate"], weights=rates[rates["maker"] == maker]["rows"]))
            threshold = fit_threshold(loss_fn(xs), rate, config.threshold)
            xt, _ = fill_with_means(test.iloc[target][list(fields.production)].to_numpy(dtype=float), means)
            st, _ = scale_clip(xt, scaler)
            loss = loss_fn(st)
            _, s, anomaly = decide(loss, effective_thresholds(threshold, np.zeros(len(loss))))
            score[target], predicted[target] = s, anomaly
        results[f"global_{family}"] = {"score": score, "predicted": predicted, "seconds": time.perf_counter() - started}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--shots", type=int, default=500_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--train-days", type=int, default=21)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--out", default="detection")
    args = parser.parse_args()

    from model_store.simulate import SimulationConfig, simulate

    t0 = time.perf_counter()
    plant = simulate(SimulationConfig(seed=args.seed, shots=args.shots, days=args.days))
    records = canonical_records(plant.records, plant.schema)
    lots = canonical_lots(plant.lots, plant.schema)
    truth = plant.labels.set_index("record_id")
    train, test = split_by_day(records, args.train_days)
    print(f"simulated {len(records):,} shots in {time.perf_counter() - t0:.0f}s; train {len(train):,}, test {len(test):,}", flush=True)

    config = TrainingConfig(workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        train_store(train, lots, plant.schema, Path(tmp) / "store", config, report=False)
        train_seconds = time.perf_counter() - t1
        engine = ScoringEngine(open_store(Path(tmp) / "store"))
        test_sorted = test.sort_values("timestamp", kind="stable").reset_index(drop=True)
        batch = engine.score(test_sorted, memory={}, backward=False)
    labels = truth.loc[test_sorted["record_id"], "defect"].to_numpy().astype(int)
    causes = truth.loc[test_sorted["record_id"], "cause"].to_numpy()
    print(f"trained moldwatch in {train_seconds:.0f}s", flush=True)

    systems = {"moldwatch": {"score": np.nan_to_num(batch.score), "predicted": batch.anomaly, "seconds": train_seconds}}
    baselines = global_baselines(train, lots, test_sorted, plant.schema, config)
    systems.update(baselines)
    report: dict = {"systems": {}}
    for name, result in systems.items():
        metrics = detection_metrics(labels, result["predicted"], result["score"])
        metrics["recall_by_cause"] = {
            str(c): float(result["predicted"][causes == c].mean()) for c in sorted(set(causes)) if c != "none"
        }
        metrics["train_seconds"] = round(result["seconds"], 1)
        report["systems"][name] = metrics
        print(f"{name:<22} F1 {metrics['f1']:.3f}  P {metrics['precision']:.3f}  R {metrics['recall']:.3f}  "
              f"AUROC {metrics['auroc']:.3f}  PR-AUC {metrics['pr_auc']:.3f}", flush=True)
    best_name = max(baselines, key=lambda n: report["systems"][n]["f1"])
    best = report["systems"][best_name]["f1"]
    ours = report["systems"]["moldwatch"]["f1"]
    paths = pd.Series(batch.resolution).value_counts().to_dict()
    report.update(
        simulation={"seed": args.seed, "shots": len(records), "days": args.days, "train_days": args.train_days,
                    "test_shots": len(test), "test_defect_share": float(labels.mean())},
        resolution_paths={k: int(v) for k, v in paths.items()},
        recall_by_resolution={k: float(batch.anomaly[(batch.resolution == k) & (labels == 1)].mean()) if ((batch.resolution == k) & (labels == 1)).any() else None for k in paths},
        best_global_baseline=best_name,
        f1_ratio_vs_best_global=round(ours / best, 3) if best > 0 else None,
        target="moldwatch F1 >= 1.20 x best global baseline F1",
        target_met=bool(best > 0 and ours >= 1.2 * best),
    )
    path = write_result(args.out, report)
    print(f"F1 ratio vs best global ({best_name}): {report['f1_ratio_vs_best_global']} -> {path}")


if __name__ == "__main__":
    main()
