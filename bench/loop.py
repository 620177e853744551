"""Closing the loop, measured (issue 21): drift watch on plants that change and plants that do not.

Per plant of the proving ground: train a store on the first half of its lot days (as
``moldwatch train`` would: the store carries its drift references), score the second half in
time order with the serving core, and run the worker's drift rules
(:mod:`model_store.serving.drift`, the same code the worker runs on acknowledged verdicts) over
the verdicts:

- **unchanged**: the plant as generated. Every flag is counted against the watched part-months
  (a part-month = one watched part over 30 days of the scored span). On the project's simulator
  these are false drift alarms; the independent generator ``forge`` plays wear and heater faults
  that last hours, so some of its flags are real episodes (the alarm rate of the flagged parts is
  reported beside each flag to judge).
- **changed**: one change of :mod:`model_store.simulate.changes` (sensor recalibration, heater
  ageing, mold swap, new part) applied to one watched part from the middle of the scored span, on
  the ``--parts`` watched parts with the most shots after that point, one at a time. Reported: the
  shots of that part from the change to its first flag (any detector), or missed; a new part has
  no reference by construction and is reported by its unreferenced verdicts.

    .venv/bin/python bench/loop.py                              # every plant, results in bench/results/loop.json
    .venv/bin/python bench/loop.py --plants sim_default --parts 1  # quick look
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result
from bench.peers import FORGE, SIMULATED, load_plant, split_by_day
from model_store.canonical import canonical_lots, canonical_records
from model_store.config import TrainingConfig
from model_store.serving.drift import DriftConfig, DriftWatch, references_from_manifest
from model_store.serving.scoring import ScoringEngine
from model_store.serving.store import open_store
from model_store.simulate.changes import CHANGES, apply_change, plan_change
from model_store.store_training import train_store

PLANTS = ("sim_default", "sim_seed5", *FORGE)
TRAIN_SHARE = 0.5
DAYS = 60  # the project's simulator: 30 days trained, 30 watched


def _plant(name: str, args: argparse.Namespace) -> tuple[Any, Any, pd.DataFrame, pd.DataFrame, pd.Series]:
    """A plant of the proving ground: (plant, schema, canonical records, canonical lots, per-shot truth)."""
    plant = load_plant(name, args.shots) if name not in SIMULATED else _simulated(name, args.shots)
    schema = plant.schema
    truth = plant.labels.set_index("record_id")["defect"]
    return plant, schema, canonical_records(plant.records, schema), canonical_lots(plant.lots, schema), truth


def _watch(engine: ScoringEngine, frame: pd.DataFrame, config: DriftConfig) -> tuple[DriftWatch, list, Any]:
    batch = engine.score(frame, memory={}, backward=False, explain=False)
    watch = DriftWatch(references_from_manifest(engine.manifest.raw.get("drift")), config)
    events = watch.observe_many(batch.facility, batch.item, batch.score, batch.anomaly)
    return watch, events, batch


def run_plant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    plant, schema, records, lots, _ = _plant(name, args)
    train, test = split_by_day(records, TRAIN_SHARE)
    test = test.sort_values("timestamp", kind="stable").reset_index(drop=True)
    report: dict[str, Any] = {"generator": plant.generator, "shots": len(records), "train_shots": len(train),
                              "test_shots": len(test)}
    config = DriftConfig()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        train_store(train, lots, schema, store, TrainingConfig(workers=args.workers), report=False)
        engine = ScoringEngine(open_store(store))
        span_days = (pd.to_datetime(test["timestamp"]).max() - pd.to_datetime(test["timestamp"]).min()) / pd.Timedelta(days=1)
        watch, events, batch = _watch(engine, test, config)
        part_months = len(watch.parts) * span_days / 30.0
        flags = []
        for index, part, detector in events:
            mine = (batch.facility == part[0]) & (batch.item == part[1])
            flags.append({"facility": part[0], "item": part[1], "detector": detector, "at": str(test["timestamp"].iloc[index]),
                          "alarm_rate_scored": round(float(batch.anomaly[mine].mean()), 5),
                          "alarm_rate_reference": round(watch.parts[part].reference.alarm_rate, 5)})
        report["unchanged"] = {"watched_parts": len(watch.parts), "scored_days": round(span_days, 2),
                               "part_months": round(part_months, 2), "flags": flags,
                               "flags_per_part_month": round(len(flags) / part_months, 3) if part_months else None,
                               "unreferenced_verdicts": watch.unreferenced_shots}
        print(f"[{name}] unchanged: {len(watch.parts)} watched parts, {part_months:.1f} part-months, {len(flags)} flags", flush=True)

        middle = pd.to_datetime(test["timestamp"]).iloc[len(test) // 2]
        after = test[pd.to_datetime(test["timestamp"]) >= middle]
        counts = after.groupby(["facility", "item"]).size()
        targets = [p for p in counts.sort_values(ascending=False).index if tuple(p) in watch.parts][: args.parts]
        rng = np.random.default_rng(args.seed)
        report["changed"] = {}
        for kind in CHANGES:
            rows = []
            for (facility, item), size in [(t, z) for t in targets for z in (args.size if kind != "new_part" else [1.0])]:
                change = plan_change(kind, train, schema, str(facility), str(item), middle, rng, size=size)
                changed, touched = apply_change(test, change)
                watch_c, events_c, batch_c = _watch(engine, changed, config)
                part = (change.facility, change.new_item or change.item)
                first = next(((i, d) for i, p, d in events_c if p == (change.facility, change.item) and touched[i]), None)
                row: dict[str, Any] = {"change": change.describe(), "size": size, "shots_after_change": int(touched.sum()),
                                       "alarm_rate_unchanged": round(float(batch.anomaly[touched].mean()), 5),
                                       "alarm_rate_changed": round(float(batch_c.anomaly[touched].mean()), 5),
                                       "flags_on_part": [d for i, p, d in events_c if p == (change.facility, change.item)]}
                if kind == "new_part":
                    row["unreferenced_verdicts"] = watch_c.unreferenced_shots
                    row["detected"] = watch_c.unreferenced_shots > 0
                    row["shots_to_detection"] = 1 if row["detected"] else None
                elif first is None:
                    row.update(detected=False, shots_to_detection=None)
                else:
                    row.update(detected=True, detector=first[1], shots_to_detection=int(touched[: first[0] + 1].sum()))
                others = [(p, d) for i, p, d in events_c if p != part and p != (change.facility, change.item)]
                row["other_parts_flags"] = len(others)
                rows.append(row)
                print(f"[{name}] {kind:<21} x{size:g} {facility}/{item}: "
                      + (f"flagged after {row['shots_to_detection']} shots" if row["detected"] else "missed")
                      + f" of {row['shots_after_change']} (alarm rate {row['alarm_rate_unchanged']:.4f} -> "
                        f"{row['alarm_rate_changed']:.4f}, flags on the part {row['flags_on_part']})", flush=True)
            report["changed"][kind] = rows
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def _days(records: pd.DataFrame, lo: float, hi: float) -> pd.DataFrame:
    """The records of the lot days between the ``lo`` and ``hi`` shares of the plant's days."""
    days = sorted(records["lot_date"].astype(str).unique())
    pick = set(days[int(round(len(days) * lo)): int(round(len(days) * hi))])
    return records[records["lot_date"].astype(str).isin(pick)].sort_values("timestamp", kind="stable").reset_index(drop=True)


def _changed_plant(records: pd.DataFrame, history: pd.DataFrame, schema: Any, start: pd.Timestamp, seed: int,
                   size: float) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Every part with history recalibrated (one sensor each, ``size`` sd) from ``start``."""
    rng = np.random.default_rng(seed)
    out, described = records, []
    for facility, item in history.groupby(["facility", "item"]).size().index:
        change = plan_change("sensor_recalibration", history, schema, str(facility), str(item), start, rng, size=size)
        out, _ = apply_change(out, change)
        described.append(change.describe())
    return out, described


def _corrupted(records: pd.DataFrame, lots: pd.DataFrame, schema: Any, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Training data broken as a plant's export breaks: two production fields of every maker swapped
    (a column mapping changed) and the lots' bad counts shuffled among lots (a broken lot join)."""
    rng = np.random.default_rng(seed)
    out = records.copy()
    for fields in {tuple(f.production) for f in schema.makers.values()}:
        a, b = [str(f) for f in rng.choice([f for f in fields if f in out.columns], size=2, replace=False)]
        out[[a, b]] = out[[b, a]].to_numpy()
    broken = lots.copy()
    broken["bad_qty"] = rng.permutation(broken["bad_qty"].to_numpy())
    return out, broken, "two production fields of every maker swapped; lots' bad counts shuffled among lots"


def run_canary(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Serve a store trained before a plant-wide change; retrain after it (a window across the
    change), and once more on corrupted data; the canary rule judges both candidates on the days
    after their training window, and F1 on the days after that says whether it chose right."""
    from bench._common import detection_metrics
    from model_store.canary import CanaryRule, decide, judge_window

    t0 = time.perf_counter()
    plant, schema, records, lots, truth = _plant(name, args)
    before = _days(records, 0.0, 0.4)
    change_at = pd.to_datetime(_days(records, 0.5, 1.0)["timestamp"]).min()
    changed, changes = _changed_plant(records, before, schema, change_at, args.seed, args.canary_size)
    window = _days(changed, 0.25, 0.75)  # the retrain: the latest days, across the change
    fresh = _days(changed, 0.5, 0.75)  # a store trained from scratch on the changed plant
    canary_days, evaluation = _days(changed, 0.75, 0.85), _days(changed, 0.85, 1.0)
    bad_window, bad_lots, how = _corrupted(window, lots, schema, args.seed)
    labels = truth.loc[evaluation["record_id"]].to_numpy().astype(int)
    report: dict[str, Any] = {"generator": plant.generator, "change": f"sensor recalibration of every part "
                              f"({len(changes)}), {args.canary_size:g} sd, from {change_at}", "corruption": how}
    config = TrainingConfig(workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        stores = {"served": (before, lots), "candidate": (window, lots), "corrupted": (bad_window, bad_lots),
                  "from_scratch": (fresh, lots)}
        engines = {}
        for role, (rows, lot_rows) in stores.items():
            train_store(rows, lot_rows, schema, Path(tmp) / role, config, report=False)
            engines[role] = ScoringEngine(open_store(Path(tmp) / role))
            print(f"[{name}] canary: {role} trained on {len(rows):,} shots", flush=True)
        judged = {role: judge_window(engines[role], canary_days, lots, {}) for role in ("served", "candidate", "corrupted")}
        rule = CanaryRule()
        decisions = {role: decide(judged["served"], judged[role], rule) for role in ("candidate", "corrupted")}
        f1 = {}
        for role, engine in engines.items():
            batch = engine.score(evaluation, memory={}, backward=False, explain=False)
            f1[role] = detection_metrics(labels, batch.anomaly, batch.score)
        report.update({
            "canary_records": len(canary_days), "evaluation_records": len(evaluation),
            "judged": {role: j.describe() for role, j in judged.items()},
            "decisions": {role: d.describe() for role, d in decisions.items()},
            "f1": {role: round(m["f1"], 4) for role, m in f1.items()},
            "f1_candidate_over_scratch": round(f1["candidate"]["f1"] / f1["from_scratch"]["f1"], 3)
            if f1["from_scratch"]["f1"] else None,
        })
    for role, d in decisions.items():
        print(f"[{name}] canary: {role} -> {d.decision}: {'; '.join(d.reasons)[:300]}", flush=True)
    print(f"[{name}] canary: F1 on the later days " + ", ".join(f"{k} {v:.3f}" for k, v in report["f1"].items()), flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


FEEDBACK_FALSE_ALARMS = 50  # the target's "after an operator marks 50 false alarms on a unit"


def simulated_operator(score: np.ndarray, defect: np.ndarray, alarm_quantiles: Any, answer_share: float, flip: float,
                       rng: np.random.Generator, bounds: Any) -> dict[str, Any]:
    """An operator who walks to a share of the part's alarms in time order and answers (``flip`` of
    the answers wrong); the part's line is recomputed after every answer, as a frequently run
    ``moldwatch lines update`` would. Stops once ``FEEDBACK_FALSE_ALARMS`` false alarms were marked."""
    from model_store.serving.feedback_lines import TRAINED_LINE, decide_line

    line, decision = TRAINED_LINE, None
    marked_false, marked_alarmed_defect = [], []
    for i in range(len(score)):
        if not score[i] > line or rng.random() >= answer_share:
            continue
        says_defect = bool(defect[i]) if rng.random() >= flip else not bool(defect[i])
        (marked_alarmed_defect if says_defect else marked_false).append(score[i])
        decision = decide_line(np.array(marked_false), np.array(marked_alarmed_defect), np.array(marked_alarmed_defect),
                               alarm_quantiles, bounds)
        line = decision.line
        if len(marked_false) >= FEEDBACK_FALSE_ALARMS:
            return {"line": line, "bound": decision.bound, "marked_false_alarms": len(marked_false),
                    "marked_defects": len(marked_alarmed_defect), "answered_until_shot": i + 1}
    return {"line": line, "bound": decision.bound if decision else "trained", "marked_false_alarms": len(marked_false),
            "marked_defects": len(marked_alarmed_defect), "answered_until_shot": len(score)}


def run_feedback(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Per part of the watched span: its shots in time order, the first half answered by a simulated
    operator (truthful, then with ``--flip`` of the answers wrong), the line that left, judged on the
    part's second half: false-alarm rate among good shots and recall among defects, before / after."""
    from model_store.serving.feedback_lines import LineBounds

    t0 = time.perf_counter()
    plant, schema, records, lots, truth = _plant(name, args)
    train, test = split_by_day(records, TRAIN_SHARE)
    test = test.sort_values("timestamp", kind="stable").reset_index(drop=True)
    bounds = LineBounds()
    units = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        train_store(train, lots, schema, store, TrainingConfig(workers=args.workers), report=False)
        engine = ScoringEngine(open_store(store))
        references = references_from_manifest(engine.manifest.raw.get("drift"))
        batch = engine.score(test, memory={}, backward=False, explain=False)
    defect = truth.reindex(test["record_id"].to_numpy()).to_numpy(dtype=float) > 0
    score = np.nan_to_num(np.asarray(batch.score, dtype=float), nan=-np.inf)
    facility, item = np.asarray(batch.facility, dtype=object), np.asarray(batch.item, dtype=object)
    for part, reference in sorted(references.items()):
        rows = np.flatnonzero((facility == part[0]) & (item == part[1]) & np.isfinite(score))
        feed, evaluation = rows[: len(rows) // 2], rows[len(rows) // 2:]
        if np.count_nonzero((score[feed] > 1.0) & ~defect[feed]) * args.answer_share < FEEDBACK_FALSE_ALARMS:
            continue  # the part does not give an operator 50 false alarms to mark in this period
        good, bad = evaluation[~defect[evaluation]], evaluation[defect[evaluation]]
        unit: dict[str, Any] = {"facility": part[0], "item": part[1], "feedback_shots": int(len(feed)),
                                "evaluation_good": int(len(good)), "evaluation_defects": int(len(bad)),
                                "false_alarms_before": int(np.count_nonzero(score[good] > 1.0)),
                                "caught_before": int(np.count_nonzero(score[bad] > 1.0))}
        for run, flip in (("truthful", 0.0), ("flipped", args.flip)):
            rng = np.random.default_rng([args.seed, len(units)])
            answered = simulated_operator(score[feed], defect[feed], reference.alarm_quantiles, args.answer_share, flip,
                                          rng, bounds)
            line = answered["line"]
            unit[run] = {**answered, "false_alarms_after": int(np.count_nonzero(score[good] > line)),
                         "caught_after": int(np.count_nonzero(score[bad] > line))}
        units.append(unit)
        t, f = unit["truthful"], unit["flipped"]
        print(f"[{name}] feedback {part[0]}/{part[1]}: line {t['line']:.3f} ({t['bound']}; flipped {f['line']:.3f}), "
              f"false alarms {unit['false_alarms_before']} -> {t['false_alarms_after']} of {len(good)}, caught "
              f"{unit['caught_before']} -> {t['caught_after']} (flipped {f['caught_after']}) of {len(bad)}", flush=True)
    return {"generator": plant.generator, "units": units, "seconds": round(time.perf_counter() - t0, 1),
            "bounds": bounds.to_dict(), "answer_share": args.answer_share, "flip": args.flip}


def summarise_feedback(plants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pooled over the units (parts) that gave the operator 50 false alarms: false alarms on the
    evaluation halves after / before, recall after / before, per run; and the unit-level spread."""
    summary: dict[str, Any] = {}
    units = [u for p in plants.values() for u in p["units"]]
    for run in ("truthful", "flipped"):
        mine = [u for u in units if u[run]["marked_false_alarms"] >= FEEDBACK_FALSE_ALARMS]
        fa_before = sum(u["false_alarms_before"] for u in mine)
        fa_after = sum(u[run]["false_alarms_after"] for u in mine)
        bad = sum(u["evaluation_defects"] for u in mine)
        caught_before = sum(u["caught_before"] for u in mine)
        caught_after = sum(u[run]["caught_after"] for u in mine)
        per_unit = [1 - u[run]["false_alarms_after"] / u["false_alarms_before"] for u in mine if u["false_alarms_before"]]
        units_detail = [unit_outcome(u, run) for u in mine]
        summary[run] = {
            "units": len(mine), "raised": sum(1 for u in mine if u[run]["line"] > 1.0),
            "bounds_that_set_the_line": {b: sum(1 for u in mine if u[run]["bound"] == b)
                                         for b in sorted({u[run]["bound"] for u in mine})},
            "false_alarms_before": fa_before, "false_alarms_after": fa_after,
            "false_alarm_reduction": round(1 - fa_after / fa_before, 4) if fa_before else None,
            "median_unit_false_alarm_reduction": round(float(np.median(per_unit)), 4) if per_unit else None,
            "evaluation_defects": bad, "recall_before": round(caught_before / bad, 4) if bad else None,
            "recall_after": round(caught_after / bad, 4) if bad else None,
            "recall_drop_points": round(100 * (caught_before - caught_after) / bad, 2) if bad else None,
            "recall_kept_share": round(caught_after / caught_before, 4) if caught_before else None,
            # the target is worded per unit: each unit's false alarms -50 % with its recall -5 points at most
            "per_unit": {
                "meeting_both": sum(1 for o in units_detail if o["false_alarm_reduction"] is not None
                                    and o["false_alarm_reduction"] >= 0.5 and o["recall_drop_points"] <= 5.0),
                "false_alarms_halved": sum(1 for o in units_detail if o["false_alarm_reduction"] is not None
                                           and o["false_alarm_reduction"] >= 0.5),
                "recall_drop_over_5_points": sum(1 for o in units_detail if o["recall_drop_points"] > 5.0),
                "median_recall_drop_points": round(float(np.median([o["recall_drop_points"] for o in units_detail])), 2)
                if units_detail else None,
                "max_recall_drop_points": max((o["recall_drop_points"] for o in units_detail), default=None),
                "recall_kept_below_80_percent": sum(1 for o in units_detail if o["recall_kept_share"] is not None
                                                    and o["recall_kept_share"] < 0.8),
                "units": units_detail,
            },
        }
    return summary


def unit_outcome(unit: dict[str, Any], run: str) -> dict[str, Any]:
    """One unit's figures as the target words them: its false-alarm reduction, its recall drop in
    points of its own defects, and the share of its caught defects still caught."""
    after = unit[run]
    before_fa, before_caught, defects = unit["false_alarms_before"], unit["caught_before"], unit["evaluation_defects"]
    return {"facility": unit["facility"], "item": unit["item"],
            "false_alarm_reduction": round(1 - after["false_alarms_after"] / before_fa, 4) if before_fa else None,
            "recall_drop_points": round(100 * (before_caught - after["caught_after"]) / defects, 2) if defects else 0.0,
            "recall_kept_share": round(after["caught_after"] / before_caught, 4) if before_caught else None}


def _simulated(name: str, shots: int) -> Any:
    from bench.plants import ProvingPlant
    from model_store.simulate import SimulationConfig, simulate

    knobs = SIMULATED[name]
    plant = simulate(SimulationConfig(shots=shots, days=DAYS, **knobs))
    return ProvingPlant(name, "moldwatch-simulate", plant.records, plant.lots, plant.schema,
                        plant.labels[["record_id", "defect"]], {"knobs": knobs, "shots": shots})


def summarise(plants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flags per part-month on the unchanged plants, per generator; per change kind and size, how
    many were flagged and after how many shots. A changed part the unchanged run flagged too is
    left out of the detection figures (its flag cannot be told from the change's): counted apart."""
    summary: dict[str, Any] = {}
    for generator in sorted({p["generator"] for p in plants.values()}):
        mine = [p for p in plants.values() if p["generator"] == generator]
        months = sum(p["unchanged"]["part_months"] for p in mine)
        flags = sum(len(p["unchanged"]["flags"]) for p in mine)
        summary[generator] = {"part_months": round(months, 2), "flags": flags,
                              "flags_per_part_month": round(flags / months, 3) if months else None}
    for kind in CHANGES:
        sizes = sorted({r["size"] for p in plants.values() for r in p["changed"].get(kind, [])})
        for size in sizes:
            rows, already = [], 0
            for p in plants.values():
                flagged = {(f["facility"], f["item"]) for f in p["unchanged"]["flags"]}
                for r in p["changed"].get(kind, []):
                    if r["size"] != size:
                        continue
                    if kind != "new_part" and (r["change"]["facility"], r["change"]["item"]) in flagged:
                        already += 1
                    else:
                        rows.append(r)
            found = [r["shots_to_detection"] for r in rows if r["detected"]]
            moved = [r for r in rows if r["alarm_rate_changed"] > 1.5 * r["alarm_rate_unchanged"] + 0.002]
            summary[f"{kind} x{size:g}"] = {
                "changes": len(rows), "detected": len(found),
                "median_shots_to_detection": float(np.median(found)) if found else None,
                "max_shots_to_detection": max(found) if found else None,
                "alarm_rate_moved": len(moved),  # the change moved the part's alarm rate (> 1.5x + 0.2 points)
                "detected_where_alarm_rate_moved": sum(1 for r in moved if r["detected"]),
                "left_out_already_flagged": already}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plants", default=",".join(PLANTS))
    parser.add_argument("--shots", type=int, default=300_000, help="shots of the project's simulator plants (60 days)")
    parser.add_argument("--parts", type=int, default=3, help="watched parts changed per change kind and plant")
    parser.add_argument("--size", default="1,3", help="change sizes, in the part's own history standard deviations (comma-separated)")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--out", default="loop")
    parser.add_argument("--summarise", action="store_true", help="recompute the summaries of the results file (drift, "
                        "feedback) from its per-plant records, and print them; runs nothing")
    parser.add_argument("--part", default="drift,canary,feedback", help="drift, canary, feedback (comma-separated)")
    parser.add_argument("--answer-share", type=float, default=1.0, help="share of a part's alarms the operator answers")
    parser.add_argument("--flip", type=float, default=0.10, help="share of the operator's answers that are wrong")
    parser.add_argument("--canary-size", type=float, default=3.0, help="the plant-wide sensor recalibration, in sd")
    args = parser.parse_args()
    if args.summarise:
        from bench._common import RESULTS

        path = RESULTS / f"{args.out}.json"
        payload = json.loads(path.read_text())
        if "drift" in payload:
            payload["drift"]["summary"] = summarise(payload["drift"]["plants"])
            print(json.dumps(payload["drift"]["summary"], indent=1))
        if "feedback" in payload:
            payload["feedback"]["summary"] = summarise_feedback(payload["feedback"]["plants"])
            print(json.dumps({run: {k: v for k, v in figures.items() if k != "per_unit"} | {
                "per_unit": {k: v for k, v in figures["per_unit"].items() if k != "units"}}
                for run, figures in payload["feedback"]["summary"].items()}, indent=1))
        path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
        return
    args.size = [float(z) for z in str(args.size).split(",")]
    from bench._common import RESULTS

    existing = RESULTS / f"{args.out}.json"
    payload = {k: v for k, v in json.loads(existing.read_text()).items() if k in ("drift", "canary", "feedback")} \
        if existing.exists() else {}
    parts = args.part.split(",")
    if "drift" in parts:
        plants = {}
        for name in args.plants.split(","):
            plants[name] = run_plant(name, args)
            write_result(f"{args.out}_partial", {"plants": plants})
        payload["drift"] = {"plants": plants, "summary": summarise(plants),
                            "config": {"drift": DriftConfig().__dict__, "train_share": TRAIN_SHARE, "sim_days": DAYS,
                                       "shots": args.shots, "parts": args.parts, "size": args.size, "seed": args.seed}}
        print(json.dumps(payload["drift"]["summary"], indent=1))
    if "canary" in parts:
        payload["canary"] = {"plants": {}, "config": {"canary_size": args.canary_size, "seed": args.seed,
                                                      "shots": args.shots}}
        for name in args.plants.split(","):
            payload["canary"]["plants"][name] = run_canary(name, args)
            write_result(f"{args.out}_partial", payload)
    if "feedback" in parts:
        plants = {}
        for name in args.plants.split(","):
            plants[name] = run_feedback(name, args)
            write_result(f"{args.out}_partial", {**payload, "feedback": {"plants": plants}})
        payload["feedback"] = {"plants": plants, "summary": summarise_feedback(plants),
                               "config": {"shots": args.shots, "seed": args.seed, "train_share": TRAIN_SHARE,
                                          "answer_share": args.answer_share, "flip": args.flip,
                                          "marked_false_alarms": FEEDBACK_FALSE_ALARMS}}
        print(json.dumps(payload["feedback"]["summary"], indent=1))
    path = write_result(args.out, payload)
    (RESULTS / f"{args.out}_partial.json").unlink(missing_ok=True)
    print(f"written {path}")


if __name__ == "__main__":
    main()
