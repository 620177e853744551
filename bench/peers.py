"""How moldwatch compares, on the whole proving ground: PyOD and River side by side, and ablations.

Plants (bench/plants): the project's simulator (three configurations), the independently written
generator ``forge`` (three), and the public labelled sets found under data/public (two, skipped
with a note when absent). Per plant: train on the early lot days (lots only), score the later
days, compare with the per-shot truth. Peers:

- PyOD IForest, ECOD and COPOD per maker ("global") and per moldwatch setting group ("group", on
  the normal groups' rows as moldwatch's groups train; a record of an untrained group falls back
  to its maker's model), thresholded by PyOD itself (``contamination`` = the training days' lot
  defect rate, what a user knows);
- a sklearn IsolationForest per setting group and one per (machine, part) on all that part's
  training rows, each with a plain p99 line over its training scores;
- River HalfSpaceTrees per maker, warmed on the training rows, then online over the test days
  (score, then learn if not flagged) behind its QuantileFilter (q = 1 - contamination).

Peers see production fields filled with the training means and MinMax-scaled without clip.
Reported per method: precision, recall, F1 at its own line, best-threshold F1, AUROC, PR-AUC,
false alarms per 1,000 normal shots, alarm rate / true defect share, the excursion-suite recall
(normal scored test shots, one production field pushed 1, 3 and 10 of its part's training
ranges beyond that range, or to 0; the same pushed shots for every method) and scoring
records/s on one core (scoring call only). moldwatch also: coverage (judged share of the shots
with at least half their production fields measured) and the Brier score of defect_probability
against a constant (the training days' lot defect rate).

Ablations rescore the same store with one part of the setting-conditioned scorer changed (units
refitted in memory on the same training rows): see ABLATIONS. Results in bench/results/peers.json,
a plot in bench/results/peers.png, the README table with --markdown.

    .venv/bin/python bench/peers.py                                   # the whole proving ground
    .venv/bin/python bench/peers.py --plants forge_a --ablations none  # quick look
    .venv/bin/python bench/peers.py --markdown                        # README table and plot from peers.json
    .venv/bin/python bench/peers.py --merge                           # results file from a cut-short run's partials

ECOD / COPOD note: PyOD's decision_function recomputes the ECDFs over the training rows plus the
whole scored batch (transductive), so their figures are for one batch of all test days.
"""
from __future__ import annotations

import os

# "One core": every BLAS / OpenMP / numba pool single-threaded, set before numpy loads. Training
# still uses moldwatch's process pool (--workers).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import RESULTS, detection_metrics, write_result
from bench.detection import EXCURSION_PUSHES
from bench.plants import ProvingPlant
from model_store.canonical import canonical_lots, canonical_records
from model_store.conditional_fit import fit_conditional
from model_store.config import TrainingConfig
from model_store.groups import PART_CLUSTER, TRAIN
from model_store.serving.scaling import MinMax
from model_store.serving.scoring import ScoredBatch, ScoringEngine
from model_store.serving.store import open_store
from model_store.store_training import prepare, train_store

KEYS = ["maker", "facility", "item", "cluster"]
PART_KEYS = ["maker", "facility", "item"]
TRAIN_SHARE = 0.7  # the first 70 % of a plant's lot days train, the rest are scored


# -- the proving ground -----------------------------------------------------------------------
SIMULATED = {
    # the project's own simulator (model_store.simulate): the default plant, another seed, and a
    # differently configured one (two more settings per part, dirtier lots, more drifts and spikes)
    "sim_default": {"seed": 11},
    "sim_seed5": {"seed": 5},
    "sim_variant": {"seed": 23, "extra_settings": 2, "defect_scale": 2.0, "heater_drifts_per_100k": 15.0,
                    "sensor_spike_rate": 0.0015},
}
FORGE = ("forge_a", "forge_b", "forge_c")  # bench/plants/forge.py, written without reading the simulator
PUBLIC = {"public_polenta": "polenta_road_lens", "public_lab": "lab_setting_changes"}  # bench/plants/public.py
PLANTS = (*SIMULATED, *FORGE, *PUBLIC)


def load_plant(name: str, shots: int) -> ProvingPlant:
    if name in SIMULATED:
        from model_store.simulate import SimulationConfig, simulate

        knobs = SIMULATED[name]
        plant = simulate(SimulationConfig(shots=shots, days=30, **knobs))
        return ProvingPlant(name, "moldwatch-simulate", plant.records, plant.lots, plant.schema,
                            plant.labels[["record_id", "defect"]], {"knobs": knobs, "shots": shots})
    if name in FORGE:
        from bench.plants.forge import forge_named

        return forge_named(name)
    from bench.plants.public import load_public

    return load_public(PUBLIC[name])


# -- ablations --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ablation:
    name: str
    what: str
    conditional: dict[str, Any]  # ConditionalConfig overrides (units refitted in memory)
    combine: str | None = None  # the engine's combine rule instead of the store's
    engine: tuple[tuple[str, Any], ...] = ()  # engine settings instead of the store's (name, value)


ABLATIONS: tuple[Ablation, ...] = (
    Ablation("groups_decide", "the seed's setting groups decide; the conditional scorer judges only what no group can", {},
             combine="groups"),
    Ablation("max_of_both", "either the groups or the conditional scorer alarms (max of the two scores)", {}, combine="max"),
    Ablation("part_slopes", "each part's own linear slopes on its set points", {"part_slopes": True}),
    Ablation("quadratic", "squares and pairwise products of the set points in the response", {"quadratic": True}),
    Ablation("no_logs", "positive fields modelled in their own units, not logs", {"log_positive": False}),
    Ablation("raw_tails", "the part's raw-value tails added to the residual evidence", {"raw_weight": 1.0}),
    Ablation("residual_squares", "residual evidence z^2/2 instead of ECDF tails", {"residual_evidence": "squares"}),
    Ablation("maker_lines", "one line per maker (no per-part calibration units)", {"min_calibration_rows": 10**9}),
    Ablation("no_baseline", "residuals judged as they are (no running per-part baseline)", {"baseline_halflife": 0.0}),
    Ablation("lasting_always", "at a setting the part ran, every raw and residual excursion alarms without the neighbour check",
             {"lasting_excursion_ratio": 1.0}),
    Ablation("lasting_never", "every excursion must also stand out from the part's last shots", {"lasting_excursion_ratio": 1e12}),
    Ablation("group_excursions", "the setting groups' own excursion bands alarm beside the conditional scorer", {},
             engine=(("group_excursions", True),)),
    Ablation("no_group_excursions", "the setting groups' own excursion bands do not alarm", {},
             engine=(("group_excursions", False),)),
    Ablation("no_level_shift", "the running baseline walks to a lasting offset a clipped step a shot (no level-shift rule)",
             {"baseline_shift_run": 0}),
    Ablation("no_new_part_follow", "a part the history never had is not followed (its baseline walks from the first shot)",
             {"follow_new_parts": False}),
    Ablation("lasting_full_ratio", "an excursion that alarms only because it lasts scores its whole ratio", {"lasting_at_line": False}),
)


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
    from pyod.models.copod import COPOD
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest

    if kind == "iforest":
        model: Any = IForest(n_estimators=100, contamination=contamination, random_state=seed, n_jobs=1)
    elif kind == "ecod":
        model = ECOD(contamination=contamination, n_jobs=1)
    else:
        model = COPOD(contamination=contamination, n_jobs=1)
    model.fit(x)
    return model.decision_function, float(model.threshold_)


def _fit_iforest_p99(x: np.ndarray, seed: int) -> tuple[Callable, float]:
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(n_estimators=100, random_state=seed, n_jobs=1).fit(x)
    score = lambda s: -model.score_samples(s)
    return score, float(np.quantile(score(x), 0.99))


class BatchPeer:
    """A batch detector trained per maker, per setting group or per (machine, part); a record whose
    group or part was not trained falls back to its maker's model."""

    def __init__(self, fit: Callable[[np.ndarray], tuple[Callable, float]], per: str):
        self.fit_one, self.per = fit, per
        self.makers: dict[str, Fitted] = {}
        self.units: dict[tuple, Fitted] = {}

    def _fit(self, raw: np.ndarray) -> Fitted:
        x, means, scaler = _fit_matrix(raw)
        score, line = self.fit_one(x)
        return Fitted(means, scaler, score, line)

    def fit(self, rows: pd.DataFrame, production: dict[str, list[str]], cap: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        unique = rows.drop_duplicates("record_id")
        for maker, fields in production.items():
            sub = unique[unique["maker"] == maker]
            if sub.empty:
                continue
            if len(sub) > cap:
                sub = sub.iloc[np.sort(rng.choice(len(sub), cap, replace=False))]
            self.makers[maker] = self._fit(sub[fields].to_numpy(dtype=float))
        if self.per == "maker":
            return
        keys = KEYS if self.per == "group" else PART_KEYS
        for key, sub in rows[rows["item"].notna()].groupby(keys, sort=False):
            if len(sub) < 50:  # a model of a few dozen rows is noise; the maker's judges
                continue
            sub = sub if len(sub) <= cap else sub.iloc[np.sort(rng.choice(len(sub), cap, replace=False))]
            self.units[key] = self._fit(sub[production[key[0]]].to_numpy(dtype=float))

    def _unit(self, key: tuple) -> Fitted | None:
        if self.per == "group":  # as moldwatch's groups resolve: the setting group, then the part's pool
            return self.units.get(key) or self.units.get((*key[:3], PART_CLUSTER))
        if self.per == "part":
            return self.units.get(key[:3])
        return None

    def score(self, frame: pd.DataFrame, keys: pd.DataFrame, production: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Scores as ratio to each model's line (so > 1 = flagged, comparable across models)."""
        score = np.zeros(len(frame))
        models: dict[int, Fitted] = {}
        assignment = np.full(len(frame), -1)
        for r, key in enumerate(keys[KEYS].itertuples(index=False, name=None)):
            fitted = self._unit(key) or self.makers.get(key[0])
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

    def score(self, frame: pd.DataFrame, keys: pd.DataFrame, production: dict[str, list[str]],
              learn: bool = True) -> tuple[np.ndarray, np.ndarray]:
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
def split_by_day(records: pd.DataFrame, share: float = TRAIN_SHARE) -> tuple[pd.DataFrame, pd.DataFrame]:
    days = sorted(records["lot_date"].astype(str).unique())
    cut = days[max(1, min(len(days) - 1, int(round(len(days) * share)))) - 1]
    text = records["lot_date"].astype(str)
    return records[text <= cut].reset_index(drop=True), records[text > cut].reset_index(drop=True)


def _part_ranges(train: pd.DataFrame, production: dict[str, list[str]]) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """Per (maker, facility, item): each production field's training min and max."""
    out = {}
    for key, rows in train.groupby(PART_KEYS, sort=False):
        x = rows[production[key[0]]].to_numpy(dtype=float)
        out[key] = (np.nanmin(x, axis=0), np.nanmax(x, axis=0))
    return out


def _push_frames(test: pd.DataFrame, batch: ScoredBatch, labels: np.ndarray, ranges: dict, production: dict[str, list[str]],
                 shots: int, seed: int) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """The excursion suite on one shared sample of normal judged test shots of known parts: one
    field pushed 1, 3 and 10 of its part's training ranges beyond that range's top, or to 0."""
    rng = np.random.default_rng(seed)
    keys = list(zip(batch.maker.tolist(), batch.facility.tolist(), batch.item.tolist()))
    known = np.array([k in ranges for k in keys], dtype=bool)
    pool = np.flatnonzero((labels == 0) & (batch.resolution != "unscorable") & known)
    rows = rng.choice(pool, min(shots, len(pool)), replace=False) if len(pool) else np.zeros(0, dtype=int)
    choices = []
    for r in rows:
        fields = production[keys[r][0]]
        low, high = ranges[keys[r]]
        j = int(rng.integers(len(fields)))
        span = float(high[j] - low[j]) if np.isfinite(high[j] - low[j]) and high[j] > low[j] else max(abs(float(high[j])), 1.0)
        choices.append((fields[j], float(high[j]), span))
    frames = {}
    for name, spans in EXCURSION_PUSHES:
        pushed = test.iloc[rows].copy().reset_index(drop=True)
        for k, (field, top, span) in enumerate(choices):
            pushed.loc[k, field] = 0.0 if spans is None else top + spans * span
        frames[name] = (pushed, rows)
    return frames


def _beyond_tolerance(engine: ScoringEngine, test: pd.DataFrame, frames: dict[str, tuple[pd.DataFrame, np.ndarray]],
                      production: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Per push kind: whether each pushed value lies beyond its part's raw band by more than the
    store's own tolerance for it (the excursion rule's raw test: ratio > 1). False where the store
    has no raw band for the part or no conditional unit for the maker (the rule then judges on the
    residual alone, and the push is not counted as beyond a tolerance)."""
    from model_store.serving.conditional import part_keys

    out: dict[str, np.ndarray] = {}
    for kind, (pushed, rows) in frames.items():
        original = test.iloc[rows].reset_index(drop=True)
        beyond = np.zeros(len(pushed), dtype=bool)
        for k in range(len(pushed)):
            maker = pushed.at[k, "maker"]
            unit = engine.conditional_units.get(maker)
            if unit is None:
                continue
            fields = list(unit.features)
            changed = [f for f in production[maker] if f in fields and not np.array_equal(
                np.asarray([pushed.at[k, f]], dtype=float), np.asarray([original.at[k, f]], dtype=float), equal_nan=True)]
            key = part_keys(np.array([pushed.at[k, "facility"]], dtype=object), np.array([str(pushed.at[k, "item"])], dtype=object))
            table = unit.raw_set.lookup([str(key[0])])
            if not changed or table[0] < 0:
                continue
            ratio = unit.raw_set.band_ratios(table, pushed.loc[[k], fields].to_numpy(dtype=float))
            beyond[k] = bool(ratio[0, fields.index(changed[0])] > 1.0)
        out[kind] = beyond
    return out


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


def _tolerance_recall(flagged: dict[str, np.ndarray], beyond: dict[str, np.ndarray]) -> dict[str, Any]:
    """The target's own figure: of the pushes beyond their part's raw tolerance, the share that
    alarms, per push kind and pooled (with how many pushes each holds)."""
    per_kind = {k: {"pushes": int(beyond[k].sum()), "recall": float(flagged[k][beyond[k]].mean()) if beyond[k].any() else None}
                for k in flagged}
    hits = sum(int(flagged[k][beyond[k]].sum()) for k in flagged)
    total = sum(int(beyond[k].sum()) for k in flagged)
    return {"excursion_recall_by_tolerance": per_kind, "excursion_pushes_beyond_tolerance": total,
            "excursion_recall_beyond_tolerance": hits / total if total else None}


def _with_evidence(test: pd.DataFrame, schema) -> np.ndarray:
    """Shots with at least half of their maker's production fields measured."""
    out = np.zeros(len(test), dtype=bool)
    for maker, fields in schema.makers.items():
        rows = (test["maker"] == maker).to_numpy()
        if rows.any():
            out[rows] = test.loc[rows, list(fields.production)].notna().mean(axis=1).to_numpy() >= 0.5
    return out


def _ours(batch: ScoredBatch, labels: np.ndarray, seconds: float, excursion: dict[str, float], evidence: np.ndarray,
          prior: float) -> dict:
    m = _summary(labels, batch.anomaly, np.nan_to_num(batch.score), seconds, excursion)
    judged = batch.resolution != "unscorable"
    m["coverage"] = float(judged[evidence].mean()) if evidence.any() else None
    m["paths"] = {str(k): int(v) for k, v in pd.Series(batch.resolution).value_counts().items()}
    p = batch.defect_probability
    ok = np.isfinite(p)
    m["brier"] = float(np.mean((p[ok] - labels[ok]) ** 2)) if ok.any() else None
    m["brier_constant"] = float(np.mean((prior - labels[ok]) ** 2)) if ok.any() else None
    m["probability_rows"] = int(ok.sum())
    return m


def _engine_variant(engine: ScoringEngine, data: Any, schema, config: TrainingConfig, ablation: Ablation) -> ScoringEngine:
    """The same store's engine with the conditional units refitted under the ablation's overrides."""
    variant = copy.copy(engine)
    variant.conditional_units = dict(engine.conditional_units)
    if ablation.combine:
        variant.combine = ablation.combine
    for name, value in ablation.engine:
        setattr(variant, name, value)
    if ablation.conditional:
        cfg = config.with_overrides({f"conditional.{k}": v for k, v in ablation.conditional.items()}).conditional
        for maker, fields in schema.makers.items():
            rows = np.flatnonzero((data.records["maker"] == maker).to_numpy())
            if len(rows) == 0:
                continue
            fitted = fit_conditional(maker, fields.production, fields.settings, data.records.iloc[rows], data.lot_rates[rows], cfg)
            if fitted is not None:
                variant.conditional_units[maker] = fitted.unit
    return variant


def run_plant(name: str, args: argparse.Namespace, ablations: list[Ablation]) -> dict:
    t0 = time.perf_counter()
    plant = load_plant(name, args.shots)
    schema = plant.schema
    records = canonical_records(plant.records, schema)
    lots = canonical_lots(plant.lots, schema)
    truth = plant.labels.set_index("record_id")["defect"]
    train, test = split_by_day(records)
    test = test.sort_values("timestamp", kind="stable").reset_index(drop=True)
    labels = truth.loc[test["record_id"]].to_numpy().astype(int)
    seed = int(plant.notes.get("seed", plant.notes.get("knobs", {}).get("seed", 0)) or 0)
    production = {m: list(f.production) for m, f in schema.makers.items()}
    print(f"[{name}] {plant.generator}: {len(records):,} shots loaded in {time.perf_counter() - t0:.0f}s; train {len(train):,}, "
          f"test {len(test):,} ({labels.mean():.2%} defective)", flush=True)
    config = TrainingConfig(workers=args.workers)
    train_lots = lots[lots["lot_date"].astype(str).isin(set(train["lot_date"].astype(str)))]
    contamination = _lot_rate(train_lots)
    report: dict = {"systems": {}, "ablations": {}, "plant": {
        "name": name, "generator": plant.generator, "notes": {k: v for k, v in plant.notes.items() if isinstance(v, (int, float, str))},
        "shots": len(records), "train_shots": len(train), "test_shots": len(test), "test_defect_share": float(labels.mean()),
        "train_lot_defect_rate": contamination}}
    ranges = _part_ranges(train, production)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        _, train_seconds = _timed(lambda: train_store(train, lots, schema, path, config, report=False))
        engine = ScoringEngine(open_store(path))
        engine.score(test.iloc[:2000], memory={}, backward=False)  # warm the group cache: load once, as a worker does
        batch, seconds = _timed(lambda: engine.score(test, memory={}, backward=False))
        frames = _push_frames(test, batch, labels, ranges, production, args.excursion_shots, seed)
        flagged = {k: engine.score(f, memory={}, backward=False).anomaly for k, (f, _) in frames.items()}
        excursion = {k: float(a.mean()) for k, a in flagged.items()}
        ours = _ours(batch, labels, seconds, excursion, _with_evidence(test, schema), contamination)
        ours.update(_tolerance_recall(flagged, _beyond_tolerance(engine, test, frames, production)))
        ours["train_seconds"] = round(train_seconds, 1)
        report["systems"]["moldwatch"] = ours
        _line(name, "moldwatch", ours)

        keys = pd.DataFrame({"maker": batch.maker, "facility": batch.facility, "item": batch.item, "cluster": batch.cluster})
        data = prepare(train, lots, schema, config)
        normal = _training_rows(data)
        peers: dict[str, Any] = {
            "pyod_iforest_global": BatchPeer(lambda x: _fit_pyod("iforest", x, contamination, seed), per="maker"),
            "pyod_iforest_group": BatchPeer(lambda x: _fit_pyod("iforest", x, contamination, seed), per="group"),
            "pyod_ecod_global": BatchPeer(lambda x: _fit_pyod("ecod", x, contamination, seed), per="maker"),
            "pyod_ecod_group": BatchPeer(lambda x: _fit_pyod("ecod", x, contamination, seed), per="group"),
            "pyod_copod_global": BatchPeer(lambda x: _fit_pyod("copod", x, contamination, seed), per="maker"),
            "pyod_copod_group": BatchPeer(lambda x: _fit_pyod("copod", x, contamination, seed), per="group"),
            "iforest_p99_group": BatchPeer(lambda x: _fit_iforest_p99(x, seed), per="group"),
            "iforest_p99_part": BatchPeer(lambda x: _fit_iforest_p99(x, seed), per="part"),
            "river_hst": RiverPeer(1.0 - contamination, seed, args.river_warm_rows),
        }
        for peer_name, peer in peers.items():
            rows = data.records if getattr(peer, "per", None) == "part" else normal
            _, fit_seconds = _timed(lambda: peer.fit(rows, production, args.peer_cap, seed))  # noqa: B023 - timed at once, inside the iteration
            if isinstance(peer, RiverPeer):
                excursion_state = copy.deepcopy(peer)  # pushes judged by the state after the training days
            (score, flagged), seconds = _timed(lambda: peer.score(test, keys, production))  # noqa: B023 - timed at once, inside the iteration
            excursion = {}
            for k, (f, rows_) in frames.items():
                sub_keys = keys.iloc[rows_].reset_index(drop=True)
                if isinstance(peer, RiverPeer):
                    excursion[k] = float(excursion_state.score(f, sub_keys, production, learn=False)[1].mean())
                else:
                    excursion[k] = float(peer.score(f, sub_keys, production)[1].mean())
            m = _summary(labels, flagged, score, seconds, excursion)
            m["train_seconds"] = round(fit_seconds, 1)
            report["systems"][peer_name] = m
            _line(name, peer_name, m)
        _partial(args, name, report)

        for ablation in ablations:
            t = time.perf_counter()
            variant = _engine_variant(engine, data, schema, config, ablation)
            result = variant.score(test, memory={}, backward=False, explain=False)
            excursion = {k: float(variant.score(f, memory={}, backward=False, explain=False).anomaly.mean())
                         for k, (f, _) in frames.items()}
            m = _ours(result, labels, 1.0, excursion, _with_evidence(test, schema), contamination)
            m.pop("records_per_second")
            for figure in ("f1", "auroc", "pr_auc"):
                m[f"{figure}_delta"] = (m[figure] or 0) - (ours[figure] or 0)
            m["seconds"] = round(time.perf_counter() - t, 1)
            report["ablations"][ablation.name] = m
            _partial(args, name, report)
            print(f"[{name}] ablation {ablation.name:<18} F1 {m['f1']:.3f} ({m['f1_delta']:+.3f})  AUROC {m['auroc'] or 0:.3f} "
                  f"({m['auroc_delta']:+.3f})  PR-AUC {m['pr_auc'] or 0:.3f} ({m['pr_auc_delta']:+.3f})  {m['seconds']:.0f}s", flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def _training_rows(data: Any) -> pd.DataFrame:
    """The rows moldwatch's setting groups train on, keyed like its groups: each normal setting
    group's rows, each part's pooled cleanest lots (cluster = PART_CLUSTER), and every row of a
    maker with neither."""
    trained = data.groups[(data.groups["role"] == TRAIN) & (data.groups["cluster"] != PART_CLUSTER)][KEYS]
    frames = [data.records.merge(trained, on=KEYS, how="inner")]
    for positions in data.part_rows.values():
        frames.append(data.records.iloc[positions].assign(cluster=PART_CLUSTER))
    rows = pd.concat(frames, ignore_index=True)
    # A maker none of whose groups is clean enough (every lot dirty): its peers learn from all its
    # rows, as a user of PyOD would, rather than not at all.
    bare = sorted(set(data.records["maker"].dropna()) - set(rows["maker"].dropna()))
    return pd.concat([rows, data.records[data.records["maker"].isin(bare)]], ignore_index=True) if bare else rows


def _partial(args: argparse.Namespace, name: str, report: dict) -> None:
    """Each plant's result so far (--merge builds the results file from these if a run is cut short)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}-{name}.partial.json").write_text(json.dumps(report, default=float))


def _lot_rate(lots: pd.DataFrame) -> float:
    """The training days' overall lot defect rate: the contamination a PyOD or River user would set."""
    bad, total = float(lots["bad_qty"].sum()), float(lots["good_qty"].sum() + lots["bad_qty"].sum())
    return float(min(max(bad / total if total else 0.01, 1e-3), 0.5))


def _line(plant: str, system: str, m: dict) -> None:
    print(f"[{plant}] {system:<22} F1 {m['f1']:.3f} (best {m['best_f1'] or 0:.3f})  P {m['precision']:.3f}  R {m['recall']:.3f}  "
          f"AUROC {m['auroc'] or 0:.3f}  PR-AUC {m['pr_auc'] or 0:.3f}  FA/1k {m['false_alarms_per_1000_normal']:.1f}  "
          f"exc {m['excursion_recall_beyond_range'] or 0:.2f}  {m['records_per_second'] or 0:,.0f} rec/s", flush=True)


# -- summary, table, plot ---------------------------------------------------------------------
FIGURES = ("precision", "recall", "f1", "best_f1", "auroc", "pr_auc", "false_alarms_per_1000_normal", "alarm_to_defect_ratio",
           "excursion_recall_beyond_range", "records_per_second")
OURS = ("coverage", "brier", "brier_constant")


def _spread(values: list[float | None]) -> dict[str, float | None]:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def plant_targets(plant: dict) -> dict[str, Any]:
    """The issue's targets on one plant: F1 >= 1.1x, AUROC and PR-AUC >= the best peer's (each
    peer at its own line), coverage >= 99 %, alarm rate 0.5-2x the defect share, excursion recall
    100 %, Brier <= the constant's."""
    ours = plant["systems"]["moldwatch"]
    peers = {n: m for n, m in plant["systems"].items() if n != "moldwatch"}

    def best(figure: str) -> tuple[str, float]:
        name = max(peers, key=lambda n: peers[n].get(figure) or 0.0)
        return name, float(peers[name].get(figure) or 0.0)

    out: dict[str, Any] = {}
    for figure, factor in (("f1", 1.1), ("auroc", 1.0), ("pr_auc", 1.0)):
        name, value = best(figure)
        out[figure] = {"ours": ours.get(figure), "best_peer": name, "best_peer_value": value,
                       "met": (ours.get(figure) or 0.0) >= factor * value}
    ratio = ours.get("alarm_to_defect_ratio")
    out["coverage"] = {"ours": ours.get("coverage"), "met": (ours.get("coverage") or 0.0) >= 0.99}
    out["alarm_rate"] = {"ratio": ratio, "met": ratio is not None and 0.5 <= ratio <= 2.0}
    recall = ours.get("excursion_recall_beyond_tolerance")
    out["excursions"] = {"recall": recall, "pushes": ours.get("excursion_pushes_beyond_tolerance"),
                         "recall_beyond_range": ours.get("excursion_recall_beyond_range"), "met": (recall or 0) >= 1.0}
    brier, constant = ours.get("brier"), ours.get("brier_constant")
    out["brier"] = {"ours": brier, "constant": constant, "met": brier is not None and constant is not None and brier <= constant}
    return out


def summarise(plants: dict[str, dict]) -> dict:
    systems = list(next(iter(plants.values()))["systems"])
    # a run cut short (--merge) may hold some ablations on some plants only: summarise the common ones
    ablations = [a for a in next(iter(plants.values()))["ablations"] if all(a in p["ablations"] for p in plants.values())]
    out: dict = {"systems": {}, "ablations": {}}
    for s in systems:
        out["systems"][s] = {f: _spread([p["systems"][s].get(f) for p in plants.values()])
                             for f in FIGURES + (OURS if s == "moldwatch" else ())}
    for a in ablations:
        out["ablations"][a] = {f: _spread([p["ablations"][a].get(f) for p in plants.values()])
                               for f in ("f1", "f1_delta", "auroc", "auroc_delta", "pr_auc", "pr_auc_delta", "alarm_to_defect_ratio",
                                         "excursion_recall_beyond_range")}
    targets = {n: plant_targets(p) for n, p in plants.items()}
    out["targets"] = {"per_plant": targets,
                      "all_met": {k: all(t[k]["met"] for t in targets.values()) for k in next(iter(targets.values()))}}
    return out


def markdown(payload: dict) -> str:
    plants = list(payload["plants"])

    def cell(m: dict, figure: str, digits: int = 3) -> str:
        v = m.get(figure)
        return "–" if v is None else f"{v:.{digits}f}"

    lines = []
    for figure, label in (("f1", "F1 at own line"), ("auroc", "AUROC"), ("pr_auc", "PR-AUC"),
                          ("alarm_to_defect_ratio", "alarm rate / defect share")):
        lines += [f"**{label}** per plant", "", "| method | " + " | ".join(plants) + " |", "| --- |" + " --- |" * len(plants)]
        for name in payload["plants"][plants[0]]["systems"]:
            row = [cell(payload["plants"][p]["systems"].get(name, {}), figure, 2 if figure == "alarm_to_defect_ratio" else 3)
                   for p in plants]
            lines.append(f"| {name} | " + " | ".join(row) + " |")
        lines.append("")
    t = payload["summary"]["targets"]["per_plant"]
    lines += ["**moldwatch against the targets** (met / missed)", "", "| target | " + " | ".join(plants) + " |",
              "| --- |" + " --- |" * len(plants)]
    for key, label in (("f1", "F1 >= 1.1x best peer"), ("auroc", "AUROC >= best peer"), ("pr_auc", "PR-AUC >= best peer"),
                       ("coverage", "coverage >= 99 %"), ("alarm_rate", "alarm rate 0.5-2x"),
                       ("excursions", "excursion recall beyond the tolerance 100 %"),
                       ("brier", "Brier <= constant")):
        lines.append(f"| {label} | " + " | ".join("met" if t[p][key]["met"] else "**missed**" for p in plants) + " |")
    s = payload["summary"]
    if s["ablations"]:
        lines += ["", "| ablation | F1 delta | AUROC delta | PR-AUC delta | alarm ratio | excursion recall |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, m in s["ablations"].items():
            lines.append(f"| {name}: {payload['ablations'].get(name, '')} | {m['f1_delta']['mean']:+.3f} | "
                         f"{m['auroc_delta']['mean']:+.3f} | "
                         f"{m['pr_auc_delta']['mean']:+.3f} | {m['alarm_to_defect_ratio']['mean'] or 0:.2f} | "
                         f"{m['excursion_recall_beyond_range']['mean'] or 0:.2f} |")
    return "\n".join(lines)


def plot(payload: dict, path: Path) -> None:
    """Per plant, each method's AUROC and PR-AUC (moldwatch red): where it wins and where it does not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plants = list(payload["plants"])
    names = list(payload["plants"][plants[0]]["systems"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(plants) + 2.2), dpi=80, sharey=True)
    y = np.arange(len(plants))
    height = 0.8 / len(names)
    colours = plt.get_cmap("tab10")
    for ax, figure, label in ((axes[0], "f1", "F1 at own line"), (axes[1], "auroc", "AUROC"), (axes[2], "pr_auc", "PR-AUC")):
        for k, name in enumerate(names):
            values = [payload["plants"][p]["systems"].get(name, {}).get(figure) or 0.0 for p in plants]
            colour = "#c0392b" if name == "moldwatch" else colours(k % 10)
            ax.barh(y + k * height, values, height=height, color=colour, label=name if ax is axes[0] else None,
                    edgecolor="black" if name == "moldwatch" else None, linewidth=0.6)
        ax.set_xlabel(label, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y + 0.4 - height / 2, plants, fontsize=8)
    axes[0].invert_yaxis()
    fig.legend(loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plants", default=",".join(PLANTS), help=f"comma-separated, from {list(PLANTS)}")
    parser.add_argument("--shots", type=int, default=200_000, help="shots per simulated plant of the project's simulator")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--excursion-shots", type=int, default=300, help="normal judged test shots pushed per excursion kind")
    parser.add_argument("--peer-cap", type=int, default=50_000, help="training rows per peer model at most (subsampled)")
    parser.add_argument("--river-warm-rows", type=int, default=10_000,
                        help="last training rows per maker River learns before the test days")
    parser.add_argument("--ablations", default="all", help=f"'all', 'none' or comma-separated from {[a.name for a in ABLATIONS]}")
    parser.add_argument("--out", default="peers")
    parser.add_argument("--jobs", type=int, default=1, help="plants run side by side in this many processes (each trains with one worker)")
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
            parser.error(f"unknown plant {name!r}; choose from {list(PLANTS)}")
    skipped: dict[str, str] = {}
    for name in [n for n in names if n in PUBLIC]:
        from bench.plants.public import available

        if PUBLIC[name] not in available():
            skipped[name] = f"data/public/{PUBLIC[name]} is absent (see bench/plants/public.py for where it comes from)"
            print(f"[{name}] skipped: {skipped[name]}", flush=True)
    names = [n for n in names if n not in skipped]
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
            futures = {n: pool.submit(run_plant, n, args, chosen) for n in names}
            plants = {n: f.result() for n, f in futures.items()}
    else:
        plants = {n: run_plant(n, args, chosen) for n in names}
    payload = {"plants": plants, "skipped": skipped, "summary": summarise(plants), "ablations": {a.name: a.what for a in ABLATIONS},
               "settings": {"shots": args.shots, "train_share": TRAIN_SHARE, "excursion_shots": args.excursion_shots,
                            "peer_cap": args.peer_cap, "river_warm_rows": args.river_warm_rows, "jobs": args.jobs,
                            "seconds": None if args.merge else round(time.perf_counter() - started)}}
    path = write_result(args.out, payload)
    plot(payload, RESULTS / f"{args.out}.png")
    print(markdown(payload))
    print(f"-> {path} ({payload['settings']['seconds']} s)")
    for name in names:  # the partial files are scratch once the results file holds them
        (RESULTS / f"{args.out}-{name}.partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
