"""How moldwatch compares: PyOD and River side by side on the plants of bench/detection.py, and ablations.

Per plant (bench.detection.PLANTS): simulate, train on the early days (lots only), score the later
days, compare with the per-shot truth. Peers train on the same rows moldwatch trains on (the normal
setting groups), once per maker ("global") and once per moldwatch setting group ("group"; a test
record whose group was not trained falls back to its maker's global model):

- PyOD IForest and ECOD, thresholded by PyOD itself (``contamination`` = the training days' lot
  defect rate, what a user knows); PyOD's AutoEncoder needs torch, which PyPI ships only with
  its CUDA stack (several GB): not run, see the README.
- River HalfSpaceTrees per maker, warmed on the training rows, then online over the test days in
  time order (score, then learn if not flagged) behind its QuantileFilter (q = 1 - contamination).
- A per-group sklearn IsolationForest with a plain p99 line over its training scores.

Peers see production fields filled with the training means and MinMax-scaled without clip.
Reported per method: precision, recall, F1 at its own line, best-threshold F1, AUROC, PR-AUC,
false alarms per 1,000 normal shots, the excursion-suite recall (normal scored test shots, one
production field pushed 1, 3 and 10 spans beyond the judging group's range, or to 0; the same
pushed shots for every method) and scoring records/s on one core (scoring call only, same rows).

Ablations retrain or rescore moldwatch with one part taken out (TrainingConfig / engine knobs):
see ABLATIONS. Mean and spread over the plants; results in bench/results/peers.json, a plot in
bench/results/peers.png, and the README table with --markdown.

    .venv/bin/python bench/peers.py                      # three plants side by side, 40k shots each
    .venv/bin/python bench/peers.py --plants default --ablations none --jobs 1   # quick look
    .venv/bin/python bench/peers.py --markdown           # README table and plot from peers.json
    .venv/bin/python bench/peers.py --merge              # results file from a cut-short run's partials

40k shots per plant (bench/detection.py uses 500k) because the nine ablations retrain moldwatch
seven times per plant. ECOD note: PyOD's ECOD.decision_function recomputes its ECDFs over the
training rows plus the whole scored batch, so its figures are for one batch of all test days.
"""
from __future__ import annotations

import os

# "One core": every BLAS / OpenMP / numba pool single-threaded, set before numpy loads. Training
# still uses moldwatch's process pool (--workers).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import RESULTS, detection_metrics, write_result  # noqa: E402
from bench.detection import EXCURSION_PUSHES, PLANTS, split_by_day  # noqa: E402
from model_store.config import TrainingConfig  # noqa: E402
from model_store.groups import PART_CLUSTER, TRAIN  # noqa: E402
from model_store.serving.scaling import MinMax  # noqa: E402
from model_store.schema import canonical_lots, canonical_records  # noqa: E402
from model_store.serving.scoring import ScoredBatch, ScoringEngine  # noqa: E402
from model_store.serving.store import open_store  # noqa: E402
from model_store.training import prepare, train_store  # noqa: E402

KEYS = ["maker", "facility", "item", "cluster"]
NEVER = 10**9  # a row count no group reaches


# -- ablations --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ablation:
    name: str
    what: str
    overrides: dict[str, Any]  # TrainingConfig.with_overrides; empty = reuse the full store
    calibrated: bool = True
    drop_gaps: bool = False  # train and score only records without a gap
    no_clip: bool = False  # MinMax without clip at scoring


# Ordered cheapest first (the first two rescore the full store; the rest retrain), so that a run
# cut short still has the cheap ones (each plant's partial result is written as it goes).
ABLATIONS: tuple[Ablation, ...] = (
    Ablation("no_lot_calibration", "ScoringEngine(calibrated=False): prior lines", {}, calibrated=False),
    Ablation("minmax_no_clip", "scaled inputs not clipped to [0, 1] at scoring", {}, no_clip=True),
    Ablation("all_iforest", "IsolationForest for every group",
             {"model.autoencoder_min_rows": NEVER, "model.memae_min_rows": NEVER}),
    Ablation("no_cv_weight", "threshold.cv_gain = 0", {"threshold.cv_gain": 0.0}),
    Ablation("no_distance_weight", "threshold.distance_gain = 0", {"threshold.distance_gain": 0.0}),
    Ablation("no_imputation", "records with any gap dropped (train) and left unjudged (test)", {"_": None}, drop_gaps=True),
    Ablation("no_setting_clusters", "one setting cluster per maker: groups are (facility, item)",
             {"grouping.min_clusters": 1, "grouping.max_clusters": 1}),
    Ablation("all_autoencoder", "AutoEncoder for every group", {"model.autoencoder_min_rows": 0, "model.memae_min_rows": NEVER}),
    Ablation("all_memae", "MemAE for every group", {"model.autoencoder_min_rows": 0, "model.memae_min_rows": 0}),
)


def _unclipped(x: np.ndarray, scaler: MinMax) -> tuple[np.ndarray, np.ndarray]:
    scaled = (x - scaler.minimum) / scaler.span
    return scaled.astype(np.float32), (scaled < 0.0) | (scaled > 1.0)


def _score_engine(engine: ScoringEngine, frame: pd.DataFrame, no_clip: bool) -> ScoredBatch:
    """Offline scoring as bench/detection.py does it; ``no_clip`` swaps the runtime's scaler for
    the length of the call (the lead's code is untouched; training rows are inside their own
    scaler's range, so the clip only matters at scoring)."""
    import model_store.serving.runtime as runtime

    original = runtime.scale_clip
    if no_clip:
        runtime.scale_clip = _unclipped
    try:
        return engine.score(frame, memory={}, backward=False)
    finally:
        runtime.scale_clip = original


# -- peers ------------------------------------------------------------------------------------
@dataclass
class Fitted:
    """One peer model on one maker's or group's features: ``score`` (larger = worse) and ``flag``."""

    means: np.ndarray
    scaler: MinMax
    score: Callable[[np.ndarray], np.ndarray]
    line: float

    def matrix(self, raw: np.ndarray) -> np.ndarray:
        x = np.where(np.isnan(raw), self.means, raw)
        return (x - self.scaler.minimum) / self.scaler.span


def _fit_matrix(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, MinMax]:
    means = np.nan_to_num(np.nanmean(raw, axis=0))
    x = np.where(np.isnan(raw), means, raw)
    scaler = MinMax.fit(x)
    return (x - scaler.minimum) / scaler.span, means, scaler


def _fit_pyod(kind: str, x: np.ndarray, contamination: float, seed: int) -> tuple[Callable, float]:
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest

    model = IForest(n_estimators=100, contamination=contamination, random_state=seed, n_jobs=1) if kind == "iforest" \
        else ECOD(contamination=contamination, n_jobs=1)
    model.fit(x)
    return model.decision_function, float(model.threshold_)


def _fit_iforest_p99(x: np.ndarray, seed: int) -> tuple[Callable, float]:
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(n_estimators=100, random_state=seed, n_jobs=1).fit(x)
    score = lambda s: -model.score_samples(s)  # noqa: E731
    return score, float(np.quantile(score(x), 0.99))


class BatchPeer:
    """A batch detector trained per maker and optionally per setting group (maker fallback)."""

    def __init__(self, fit: Callable[[np.ndarray], tuple[Callable, float]], per_group: bool):
        self.fit_one, self.per_group = fit, per_group
        self.makers: dict[str, Fitted] = {}
        self.groups: dict[tuple, Fitted] = {}

    def _fit(self, raw: np.ndarray) -> Fitted:
        x, means, scaler = _fit_matrix(raw)
        score, line = self.fit_one(x)
        return Fitted(means, scaler, score, line)

    def fit(self, normal: pd.DataFrame, production: dict[str, list[str]], cap: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        unique = normal.drop_duplicates("record_id")
        for maker, fields in production.items():
            rows = unique[unique["maker"] == maker]
            if rows.empty:
                continue
            if len(rows) > cap:
                rows = rows.iloc[np.sort(rng.choice(len(rows), cap, replace=False))]
            self.makers[maker] = self._fit(rows[fields].to_numpy(dtype=float))
        if self.per_group:
            for key, rows in normal.groupby(KEYS, sort=False):
                rows = rows if len(rows) <= cap else rows.iloc[np.sort(rng.choice(len(rows), cap, replace=False))]
                self.groups[key] = self._fit(rows[production[key[0]]].to_numpy(dtype=float))

    def score(self, frame: pd.DataFrame, keys: pd.DataFrame, production: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Scores as ratio to each model's line (so > 1 = flagged, comparable across models)."""
        score = np.zeros(len(frame))
        # as moldwatch resolves: the exact setting group, then the part's pooled group, then the maker
        which = [(self.groups.get(k) or self.groups.get((*k[:3], PART_CLUSTER))) if self.per_group else None
                 for k in keys[KEYS].itertuples(index=False, name=None)]
        models: dict[int, Fitted] = {}
        assignment = np.full(len(frame), -1)
        for r, (fitted, maker) in enumerate(zip(which, keys["maker"])):
            fitted = fitted or self.makers.get(maker)
            if fitted is not None:
                models.setdefault(id(fitted), fitted)
                assignment[r] = id(fitted)
        for ident, fitted in models.items():
            rows = np.flatnonzero(assignment == ident)
            maker = keys["maker"].iloc[rows[0]]
            raw = frame.iloc[rows][production[maker]].to_numpy(dtype=float)
            s = np.asarray(fitted.score(fitted.matrix(raw)), dtype=float)
            # decision_function may be negative (IForest): shift so that the line maps to 1
            score[rows] = _ratio(s, fitted.line)
        return score, score > 1.0


def _ratio(s: np.ndarray, line: float) -> np.ndarray:
    """Monotone map of a score onto 'line = 1' whatever the sign of the line."""
    return 1.0 + (s - line) / max(abs(line), 1e-12)


class RiverPeer:
    """River HalfSpaceTrees per maker behind a QuantileFilter: warmed on training rows, then online."""

    def __init__(self, q: float, seed: int, warm_rows: int):
        self.q, self.seed, self.warm_rows = q, seed, warm_rows
        self.makers: dict[str, tuple[Any, np.ndarray, MinMax]] = {}

    def fit(self, normal: pd.DataFrame, production: dict[str, list[str]], *_: Any) -> None:
        from river import anomaly

        for maker, fields in production.items():
            rows = normal.drop_duplicates("record_id")
            rows = rows[rows["maker"] == maker].sort_values("timestamp", kind="stable").tail(self.warm_rows)
            if rows.empty:
                continue
            x, means, scaler = _fit_matrix(rows[fields].to_numpy(dtype=float))
            model = anomaly.QuantileFilter(anomaly.HalfSpaceTrees(seed=self.seed), q=self.q)
            for vector in x:
                model.learn_one(dict(enumerate(vector.tolist())))
            self.makers[maker] = (model, means, scaler)

    def score(self, frame: pd.DataFrame, keys: pd.DataFrame, production: dict[str, list[str]], learn: bool = True) -> tuple[np.ndarray, np.ndarray]:
        score = np.zeros(len(frame))
        flagged = np.zeros(len(frame), dtype=bool)
        for maker, (model, means, scaler) in self.makers.items():
            rows = np.flatnonzero((keys["maker"] == maker).to_numpy())
            raw = frame.iloc[rows][production[maker]].to_numpy(dtype=float)
            x = (np.where(np.isnan(raw), means, raw) - scaler.minimum) / scaler.span
            detector = model if learn else copy.deepcopy(model)
            for r, vector in zip(rows, x):
                point = dict(enumerate(vector.tolist()))
                s = detector.score_one(point)
                line = detector.quantile.get()
                flagged[r] = detector.classify(s)
                score[r] = s / line if line else s
                if learn:  # online: learn what it did not flag (the filter's protection), track the quantile
                    if not flagged[r]:
                        detector.anomaly_detector.learn_one(point)
                    detector.quantile.update(s)
        return score, flagged


# -- one plant --------------------------------------------------------------------------------
def _push_frames(engine: ScoringEngine, test: pd.DataFrame, batch: ScoredBatch, labels: np.ndarray, shots: int, seed: int) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """bench.detection's excursion pushes on one shared sample of normal scored test shots."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero((labels == 0) & (batch.resolution != "unscorable"))
    rows = rng.choice(pool, min(shots, len(pool)), replace=False)
    choices = []
    for r in rows:
        group = engine.group(batch.group_id[r])
        j = int(rng.integers(len(group.features)))
        choices.append((group.features[j], float(group.scaler.maximum[j]), float(group.scaler.span[j])))
    frames = {}
    for name, spans in EXCURSION_PUSHES:
        pushed = test.iloc[rows].copy().reset_index(drop=True)
        for k, (field, top, span) in enumerate(choices):
            pushed.loc[k, field] = 0.0 if spans is None else top + spans * span
        frames[name] = (pushed, rows)
    return frames


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _summary(labels: np.ndarray, predicted: np.ndarray, score: np.ndarray, seconds: float, excursion: dict[str, float]) -> dict:
    m = detection_metrics(labels, predicted, score)
    normal = labels == 0
    m["false_alarms_per_1000_normal"] = float(1000 * predicted[normal].mean()) if normal.any() else None
    m["excursion_recall"] = excursion
    pushed = [v for k, v in excursion.items() if k != "to 0"]
    m["excursion_recall_beyond_range"] = float(np.mean(pushed)) if pushed else None
    m["records_per_second"] = float(len(labels) / seconds) if seconds > 0 else None
    return m


def run_plant(name: str, knobs: dict, args: argparse.Namespace, ablations: list[Ablation]) -> dict:
    from model_store.simulate import SimulationConfig, simulate

    t0 = time.perf_counter()
    plant = simulate(SimulationConfig(shots=args.shots, days=args.days, **knobs))
    records = canonical_records(plant.records, plant.schema)
    lots = canonical_lots(plant.lots, plant.schema)
    truth = plant.labels.set_index("record_id")
    train, test = split_by_day(records, args.train_days)
    test = test.sort_values("timestamp", kind="stable").reset_index(drop=True)
    labels = truth.loc[test["record_id"], "defect"].to_numpy().astype(int)
    seed = int(knobs.get("seed", 0))
    schema = plant.schema
    production = {m: list(f.production) for m, f in schema.makers.items()}
    print(f"[{name}] simulated {len(records):,} shots in {time.perf_counter() - t0:.0f}s; train {len(train):,}, test {len(test):,}", flush=True)
    config = TrainingConfig(workers=args.workers)
    report: dict = {"systems": {}, "ablations": {}, "simulation": {
        "name": name, **knobs, "shots": len(records), "days": args.days, "train_days": args.train_days,
        "test_shots": len(test), "test_defect_share": float(labels.mean())}}
    with tempfile.TemporaryDirectory() as tmp:
        stores: dict[str, Path] = {}

        def store_for(key: str, cfg: TrainingConfig, rows: pd.DataFrame) -> tuple[Path, float]:
            path = Path(tmp) / key
            _, seconds = _timed(lambda: train_store(rows, lots, schema, path, cfg, report=False))
            stores[key] = path
            return path, seconds

        path, train_seconds = store_for("full", config, train)
        engine = ScoringEngine(open_store(path))
        _score_engine(engine, test.iloc[:2000], False)  # warm the group cache: load once, as a worker does
        batch, seconds = _timed(lambda: _score_engine(engine, test, False))
        frames = _push_frames(engine, test, batch, labels, args.excursion_shots, seed)
        keys = pd.DataFrame({"maker": batch.maker, "facility": batch.facility, "item": batch.item, "cluster": batch.cluster})
        excursion = {k: float(_score_engine(engine, f, False).anomaly.mean()) for k, (f, _) in frames.items()}
        ours = _summary(labels, batch.anomaly, np.nan_to_num(batch.score), seconds, excursion)
        ours["train_seconds"] = round(train_seconds, 1)
        report["systems"]["moldwatch"] = ours
        _line(name, "moldwatch", ours)

        # the peers: the same normal-group rows moldwatch trained on
        normal = _training_rows(train, lots, schema, config)
        train_lots = lots[lots["lot_date"].isin(set(train["lot_date"].astype(str)))]
        contamination = _lot_rate(train_lots)
        report["contamination"] = contamination
        peers: dict[str, Any] = {
            "pyod_iforest_global": BatchPeer(lambda x: _fit_pyod("iforest", x, contamination, seed), per_group=False),
            "pyod_iforest_group": BatchPeer(lambda x: _fit_pyod("iforest", x, contamination, seed), per_group=True),
            "pyod_ecod_global": BatchPeer(lambda x: _fit_pyod("ecod", x, contamination, seed), per_group=False),
            "pyod_ecod_group": BatchPeer(lambda x: _fit_pyod("ecod", x, contamination, seed), per_group=True),
            "iforest_p99_group": BatchPeer(lambda x: _fit_iforest_p99(x, seed), per_group=True),
            "river_hst": RiverPeer(1.0 - contamination, seed, args.river_warm_rows),
        }
        for peer_name, peer in peers.items():
            _, fit_seconds = _timed(lambda: peer.fit(normal, production, args.peer_cap, seed))
            if isinstance(peer, RiverPeer):
                excursion_state = copy.deepcopy(peer)  # pushes judged by the state after the training days
            (score, flagged), seconds = _timed(lambda: peer.score(test, keys, production))
            excursion = {}
            for k, (f, rows) in frames.items():
                sub_keys = keys.iloc[rows].reset_index(drop=True)
                if isinstance(peer, RiverPeer):
                    excursion[k] = float(excursion_state.score(f, sub_keys, production, learn=False)[1].mean())
                else:
                    excursion[k] = float(peer.score(f, sub_keys, production)[1].mean())
            m = _summary(labels, flagged, score, seconds, excursion)
            m["train_seconds"] = round(fit_seconds, 1)
            report["systems"][peer_name] = m
            _line(name, peer_name, m)

        _partial(args, name, report)
        # ablations
        for ablation in ablations:
            t = time.perf_counter()
            rows = train
            if ablation.drop_gaps:
                rows = train[~_has_gap(train, schema)].reset_index(drop=True)
            cfg = config.with_overrides({k: v for k, v in ablation.overrides.items() if k != "_"})
            store = path if not ablation.overrides else store_for(ablation.name, cfg, rows)[0]
            variant = ScoringEngine(open_store(store), calibrated=ablation.calibrated)
            judged = ~_has_gap(test, schema) if ablation.drop_gaps else np.ones(len(test), dtype=bool)
            result = _score_engine(variant, test[judged].reset_index(drop=True), ablation.no_clip)
            predicted, score = np.zeros(len(test), dtype=bool), np.zeros(len(test))
            predicted[judged], score[judged] = result.anomaly, np.nan_to_num(result.score)
            excursion = {}
            for k, (f, _) in frames.items():
                ok = ~_has_gap(f, schema) if ablation.drop_gaps else np.ones(len(f), dtype=bool)
                flagged = np.zeros(len(f), dtype=bool)
                flagged[ok] = _score_engine(variant, f[ok].reset_index(drop=True), ablation.no_clip).anomaly
                excursion[k] = float(flagged.mean())
            m = _summary(labels, predicted, score, 1.0, excursion)
            m.pop("records_per_second")
            m["f1_delta"] = m["f1"] - ours["f1"]
            m["best_f1_delta"] = (m["best_f1"] or 0) - (ours["best_f1"] or 0)
            m["judged_share"] = float(judged.mean())
            m["seconds"] = round(time.perf_counter() - t, 1)
            report["ablations"][ablation.name] = m
            _partial(args, name, report)
            print(f"[{name}] ablation {ablation.name:<20} F1 {m['f1']:.3f} ({m['f1_delta']:+.3f})  best {m['best_f1'] or 0:.3f}  "
                  f"AUROC {m['auroc'] or 0:.3f}  excursions {m['excursion_recall_beyond_range'] or 0:.2f}  {m['seconds']:.0f}s", flush=True)
    return report


def _training_rows(train: pd.DataFrame, lots: pd.DataFrame, schema, config: TrainingConfig) -> pd.DataFrame:
    """The rows moldwatch trains on, keyed like its groups: each normal setting group's rows, and
    each part's pooled cleanest lots (cluster = PART_CLUSTER; a plant with dirty lots has few clean
    settings and leans on these)."""
    data = prepare(train, lots, schema, config)
    trained = data.groups[(data.groups["role"] == TRAIN) & (data.groups["cluster"] != PART_CLUSTER)][KEYS]
    frames = [data.records.merge(trained, on=KEYS, how="inner")]
    for key, positions in data.part_rows.items():
        frames.append(data.records.iloc[positions].assign(cluster=PART_CLUSTER))
    return pd.concat(frames, ignore_index=True)


def _partial(args: argparse.Namespace, name: str, report: dict) -> None:
    """Each plant's result so far (--merge builds the results file from these if a run is cut short)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}-{name}.partial.json").write_text(json.dumps(report, default=float))


def _has_gap(frame: pd.DataFrame, schema) -> np.ndarray:
    """Records with any item, setting or production value missing (their own maker's fields)."""
    gap = frame["item"].isna().to_numpy() | frame["maker"].isna().to_numpy()
    for maker, fields in schema.makers.items():
        rows = (frame["maker"] == maker).to_numpy()
        cols = [*fields.settings, *fields.production]
        gap[rows] |= frame.loc[rows, cols].isna().any(axis=1).to_numpy()
    return gap


def _lot_rate(lots: pd.DataFrame) -> float:
    """The training days' overall lot defect rate: the contamination a PyOD or River user would set."""
    bad, total = float(lots["bad_qty"].sum()), float(lots["good_qty"].sum() + lots["bad_qty"].sum())
    return float(min(max(bad / total if total else 0.01, 1e-3), 0.5))


def _line(plant: str, system: str, m: dict) -> None:
    print(f"[{plant}] {system:<22} F1 {m['f1']:.3f} (best {m['best_f1'] or 0:.3f})  P {m['precision']:.3f}  R {m['recall']:.3f}  "
          f"AUROC {m['auroc'] or 0:.3f}  PR-AUC {m['pr_auc'] or 0:.3f}  FA/1k {m['false_alarms_per_1000_normal']:.1f}  "
          f"exc {m['excursion_recall_beyond_range'] or 0:.2f}  {m['records_per_second'] or 0:,.0f} rec/s", flush=True)


# -- summary, table, plot ---------------------------------------------------------------------
FIGURES = ("precision", "recall", "f1", "best_f1", "auroc", "pr_auc", "false_alarms_per_1000_normal",
           "excursion_recall_beyond_range", "records_per_second")


def _spread(values: list[float | None]) -> dict[str, float | None]:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def summarise(plants: dict[str, dict]) -> dict:
    systems = list(next(iter(plants.values()))["systems"])
    # a run cut short (--merge) may hold some ablations on some plants only: summarise the common ones
    ablations = [a for a in next(iter(plants.values()))["ablations"] if all(a in p["ablations"] for p in plants.values())]
    out: dict = {"systems": {}, "ablations": {}}
    for s in systems:
        out["systems"][s] = {f: _spread([p["systems"][s].get(f) for p in plants.values()]) for f in FIGURES}
    for a in ablations:
        out["ablations"][a] = {f: _spread([p["ablations"][a].get(f) for p in plants.values()])
                               for f in ("f1", "f1_delta", "best_f1_delta", "auroc", "excursion_recall_beyond_range")}
    peers = [s for s in systems if s != "moldwatch"]
    beats = {n: all(p["systems"]["moldwatch"]["f1"] > p["systems"][s]["f1"] for s in peers) for n, p in plants.items()}
    out["targets"] = {
        "moldwatch_f1_beats_every_peer_on_every_plant": all(beats.values()),
        "per_plant": beats,
        "throughput_10x_pyod_autoencoder": None,  # not measured: PyOD's AutoEncoder needs torch (see README)
    }
    return out


def markdown(payload: dict) -> str:
    s = payload["summary"]
    plants = list(payload["plants"])

    def fmt(x: dict, digits: int = 3) -> str:
        if x["mean"] is None:
            return "–"
        return f"{x['mean']:.{digits}f} ± {x['std']:.{digits}f}"

    lines = [f"Plants: {', '.join(plants)}; {payload['settings']['shots']:,} shots each (mean ± std over the plants).", "",
             "| method | F1 at own line | per plant | precision | recall | best-threshold F1 | AUROC | PR-AUC | false alarms / 1k normal | excursion recall | records/s (1 core) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in s["systems"].items():
        per_plant = " / ".join(f"{payload['plants'][p]['systems'][name]['f1']:.2f}" for p in plants)
        rps = m["records_per_second"]
        lines.append(f"| {name} | {fmt(m['f1'])} | {per_plant} | {fmt(m['precision'], 2)} | {fmt(m['recall'], 2)} | "
                     f"{fmt(m['best_f1'])} | {fmt(m['auroc'])} | {fmt(m['pr_auc'])} | "
                     f"{fmt(m['false_alarms_per_1000_normal'], 1)} | {fmt(m['excursion_recall_beyond_range'], 2)} | "
                     f"{rps['mean']:,.0f} |")
    if s["ablations"]:
        lines += ["", "| ablation (moldwatch without …) | F1 | F1 delta | per plant | best-threshold F1 delta | excursion recall |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, m in s["ablations"].items():
            per_plant = " / ".join(f"{payload['plants'][p]['ablations'][name]['f1_delta']:+.3f}" for p in plants)
            name = f"{name} ({payload['ablations'].get(name, '')})"
            lines.append(f"| {name} | {fmt(m['f1'])} | {m['f1_delta']['mean']:+.3f} | {per_plant} | "
                         f"{m['best_f1_delta']['mean']:+.3f} | {fmt(m['excursion_recall_beyond_range'], 2)} |")
    return "\n".join(lines)


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = payload["summary"]["systems"]
    names = list(s)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    y = np.arange(len(names))
    for ax, figure, label in ((axes[0], "f1", "F1 at own line"), (axes[1], "auroc", "AUROC")):
        means = [s[n][figure]["mean"] or 0 for n in names]
        lo = [(s[n][figure]["mean"] or 0) - (s[n][figure]["min"] or 0) for n in names]
        hi = [(s[n][figure]["max"] or 0) - (s[n][figure]["mean"] or 0) for n in names]
        ax.barh(y, means, xerr=[lo, hi], color=["#c0392b" if n == "moldwatch" else "#7f8c8d" for n in names])
        ax.set_yticks(y, names if ax is axes[0] else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{label} (bars: min-max over plants)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plants", default=",".join(PLANTS), help=f"comma-separated, from {sorted(PLANTS)}")
    parser.add_argument("--shots", type=int, default=40_000, help="per plant (bench/detection.py uses 500k; reduced so that peers and nine ablations fit)")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--train-days", type=int, default=21)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--excursion-shots", type=int, default=300, help="normal scored test shots pushed per excursion kind")
    parser.add_argument("--peer-cap", type=int, default=50_000, help="training rows per peer model at most (subsampled)")
    parser.add_argument("--river-warm-rows", type=int, default=10_000, help="last training rows per maker River learns before the test days")
    parser.add_argument("--ablations", default="all", help=f"'all', 'none' or comma-separated from {[a.name for a in ABLATIONS]}")
    parser.add_argument("--out", default="peers")
    parser.add_argument("--jobs", type=int, default=3, help="plants run side by side in this many processes (each trains with one worker)")
    parser.add_argument("--markdown", action="store_true", help="print the README table from the results file and redraw its plot")
    parser.add_argument("--merge", action="store_true", help="build the results file from the plants' partial results (a run cut short)")
    args = parser.parse_args()
    if args.markdown:
        payload = json.loads((RESULTS / f"{args.out}.json").read_text())
        plot(payload, RESULTS / f"{args.out}.png")
        print(markdown(payload))
        return
    names = args.plants.split(",")
    for name in names:
        if name not in PLANTS:
            parser.error(f"unknown plant {name!r}; choose from {sorted(PLANTS)}")
    chosen = [] if args.ablations == "none" else list(ABLATIONS) if args.ablations == "all" else \
        [a for a in ABLATIONS if a.name in args.ablations.split(",")]
    started = time.perf_counter()
    if args.merge:
        plants = {n: json.loads(p.read_text()) for n in names if (p := RESULTS / f"{args.out}-{n}.partial.json").exists()}
    elif args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        args.workers = 1  # no process pool inside a pool worker
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {n: pool.submit(run_plant, n, PLANTS[n], args, chosen) for n in names}
            plants = {n: f.result() for n, f in futures.items()}
    else:
        plants = {n: run_plant(n, PLANTS[n], args, chosen) for n in names}
    payload = {"plants": plants, "summary": summarise(plants), "ablations": {a.name: a.what for a in ABLATIONS},
               "settings": {"shots": args.shots, "days": args.days, "train_days": args.train_days,
                            "excursion_shots": args.excursion_shots, "peer_cap": args.peer_cap,
                            "river_warm_rows": args.river_warm_rows, "jobs": args.jobs,
                            "seconds": None if args.merge else round(time.perf_counter() - started)}}
    path = write_result(args.out, payload)
    plot(payload, RESULTS / f"{args.out}.png")
    print(markdown(payload))
    print(f"-> {path} ({payload['settings']['seconds']} s)")
    for name in names:  # the partial files are scratch once the results file holds them
        (RESULTS / f"{args.out}-{name}.partial.json").unlink(missing_ok=True)

if __name__ == "__main__":
    main()
