"""Scale benchmarks (issue 20): a large simulated plant as a Parquet dataset, training's aggregates
out of core (pyarrow vs DuckDB), and the in-memory training baseline.

    .venv/bin/python bench/scale.py aggregates --shots 4000000 --facilities 60 --days 60
        simulate (streamed) -> prepared pieces (canonical, imputed, clustered; setup, timed apart)
        -> the group table, facility defaults and per-setting profiles by three engines, each in
        a process of its own (wall time, peak RSS): pyarrow pieces (model_store/aggregates.py),
        DuckDB SQL over the prepared Parquet files, and the in-memory functions on one frame;
        results cross-checked; bench/results/scale_aggregates.json
    .venv/bin/python bench/scale.py baseline --shots 1000000 2000000
        `moldwatch train` as today (whole history in memory): wall time and peak RSS of the
        process tree per size; bench/results/scale_baseline.json
    .venv/bin/python bench/scale.py bounded --shots 10000000 50000000 --max-rows 400000
        a year-scale plant streamed to a Parquet dataset, then `moldwatch train --max-rows` on it
        (two reads in pieces, whole lots kept: model_store/history_sample.py): wall time, peak RSS
        of the process tree, time per million shots of history; bench/results/scale_bounded.json
    .venv/bin/python bench/scale.py sample_quality --shots 600000 --shares 1 0.5 0.25
        what --max-rows costs in detection: train on the early days whole and on samples of whole
        lots (the same rule), score the same later days; bench/results/scale_sample_quality.json
    .venv/bin/python bench/scale.py cluster --shots 150000 --modes in-process local:2
        the same training in-process, on a local Dask cluster (`train --cluster local:2`) or a
        process pool (pool:2), on the same data, each in a process of its own: wall time per stage,
        peak RSS of the driver and of every worker process; bench/results/scale_cluster.json

DuckDB is not a dependency of moldwatch: the DuckDB engine imports it from --duckdb-path (e.g. a
``pip install --target DIR duckdb``) or the environment, and is skipped when absent.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import RESULTS, PeakMemory, write_result

MOLDWATCH = [sys.executable, "-m", "service"]
GROUP_KEYS = ["maker", "facility", "item", "cluster"]
ENGINES = ["pyarrow", "duckdb", "duckdb_limited", "memory"]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# --- setup: the plant and its prepared pieces ---------------------------------------------------


def _remembered(marker: Path) -> dict[str, Any] | None:
    return {**json.loads(marker.read_text()), "reused": True} if marker.exists() else None


def make_plant(out: Path, shots: int, days: int, facilities: int, items: int, seed: int) -> dict[str, Any]:
    if (out / "records").is_dir():
        return _remembered(out.parent / "plant_setup.json") or {"reused": True}
    command = MOLDWATCH + ["simulate", "--out", str(out), "--format", "parquet-dataset", "--shots", str(shots),
                           "--days", str(days), "--facilities", str(facilities), "--items", str(items), "--seed", str(seed)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with PeakMemory(process.pid) as memory:
        output, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"simulate failed:\n{output[-3000:]}")
    made = {"command": " ".join(command[2:]), "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(memory.peak / 2**20)}
    (out.parent / "plant_setup.json").write_text(json.dumps(made))
    return made


def prepare_pieces(plant: Path, work: Path, rows: int) -> dict[str, Any]:
    """Canonical, imputed (forward across pieces, per maker), clustered pieces as Parquet files:
    what the out-of-core pipeline will hand the aggregates. Setting models: fitted on the first
    pieces' set points (the in-memory path fits on all; the bench compares engines on the same
    clusters, so any fit will do)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from model_store.canonical import canonical_lots, canonical_records
    from model_store.config import TrainingConfig
    from model_store.groups import cluster_rows
    from model_store.loaders import iter_table
    from model_store.schema import load_schema
    from model_store.serving.imputation import impute_state
    from model_store.setting_clusters import fit_setting_model

    prepared = work / "prepared"
    if prepared.is_dir():
        return _remembered(work / "prepare_setup.json") or {"reused": True}
    started = time.perf_counter()
    schema = load_schema(plant / "schema.yaml")
    config = TrainingConfig()
    sample: dict[str, list[np.ndarray]] = {m: [] for m in schema.makers}
    for number, piece in enumerate(iter_table(plant / "records", rows=rows)):
        if number >= 3:
            break
        frame = canonical_records(piece, schema)
        for maker, fields in schema.makers.items():
            sample[maker].append(frame.loc[frame["maker"] == maker, list(fields.settings)].to_numpy(dtype=float))
    models = {m: fit_setting_model(m, schema.makers[m].settings, np.vstack(v), config.grouping, config.model.seed)
              for m, v in sample.items() if sum(len(x) for x in v)}
    (work / "setting_models.json").write_text(json.dumps({m: model.to_dict() for m, model in models.items()}))
    memory: dict[str, dict] = {m: {} for m in schema.makers}
    prepared.mkdir(parents=True)
    total = 0
    for number, piece in enumerate(iter_table(plant / "records", rows=rows)):
        frame = canonical_records(piece, schema)
        parts = []
        for maker, fields in schema.makers.items():
            sub = frame[frame["maker"] == maker]
            if len(sub):
                sub, _ = impute_state(sub, ["item", *fields.settings], fallback={}, memory=memory[maker], backward=True)
                parts.append(sub)
        frame = pd.concat(parts).sort_index()
        frame["cluster"], _ = cluster_rows(frame, models)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), prepared / f"part-{number:05d}.parquet")
        total += len(frame)
    lots = canonical_lots(pd.read_csv(plant / "lots.csv"), schema)
    lots.to_parquet(work / "lots.parquet", index=False)
    made = {"seconds": round(time.perf_counter() - started, 1), "rows": total}
    (work / "prepare_setup.json").write_text(json.dumps(made))
    return made


# --- the engines (each run in a process of its own) ------------------------------------------------


def _context(work: Path) -> tuple[Any, dict, Any]:
    from model_store.config import TrainingConfig
    from model_store.schema import load_schema
    from model_store.serving.clusters import SettingModel

    schema = load_schema(work / "plant" / "schema.yaml")
    models = {m: SettingModel.from_dict(d) for m, d in json.loads((work / "setting_models.json").read_text()).items()}
    return schema, models, TrainingConfig()


def engine_pyarrow(work: Path, rows: int, buckets: int) -> dict[str, Any]:

    from model_store.aggregates import HistoryAggregates, lot_rates_of, profiles_from_spill, spill_by_group
    from model_store.loaders import iter_table

    schema, models, config = _context(work)
    rates = lot_rates_of(iter_table(work / "lots.parquet", rows=rows))
    agg = HistoryAggregates(schema, rates)

    def pieces():
        for piece in iter_table(work / "prepared", rows=rows):
            agg.add(piece)
            yield piece

    with tempfile.TemporaryDirectory(dir=work) as spill:
        spill_by_group(pieces(), Path(spill), buckets=buckets)
        profiles = profiles_from_spill(Path(spill), schema, models, config.grouping.min_profile_rows)
    table = agg.group_table(config.grouping)
    return _summary(table, agg.facility_defaults(), profiles)


def engine_memory(work: Path) -> dict[str, Any]:
    from types import SimpleNamespace

    import pandas as pd

    from model_store.groups import group_table
    from model_store.loaders import read_table
    from model_store.lots import lot_defect_rates, row_lot_rates
    from model_store.store_training import facility_defaults, setting_profiles

    schema, models, config = _context(work)
    records = read_table(work / "prepared")
    rates = row_lot_rates(records, lot_defect_rates(pd.read_parquet(work / "lots.parquet")))
    table = group_table(records, rates, config.grouping)
    profiles = setting_profiles(SimpleNamespace(records=records, setting_models=models), schema, config.grouping.min_profile_rows)
    return _summary(table, facility_defaults(records, schema), profiles)


def engine_duckdb(work: Path, threads: int, memory_limit: str | None = None) -> dict[str, Any]:
    import duckdb
    import pandas as pd

    from model_store.lots import lot_defect_rates

    schema, models, config = _context(work)
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET temp_directory = '{work / 'duckdb_tmp'}'")
    rates = lot_defect_rates(pd.read_parquet(work / "lots.parquet"))  # noqa: F841 - read by DuckDB by name
    files = f"{work / 'prepared'}/*.parquet"
    src = f"read_parquet('{files}', filename = true, file_row_number = true)"
    table = con.execute(f"""
        SELECT p.maker, p.facility, p.item, p.cluster, count(*) AS rows, count(DISTINCT p.lot_date) AS lots,
               count(r.defect_rate) AS lot_rows, avg(r.defect_rate) AS lot_defect_rate
        FROM {src} p LEFT JOIN rates r ON p.facility = r.facility AND p.item = r.item AND p.lot_date = r.lot_date
        WHERE p.cluster >= 0 AND p.item IS NOT NULL
        GROUP BY ALL ORDER BY ALL""").df()
    from model_store.groups import assign_roles

    table = assign_roles(table, config.grouping)
    items = con.execute(f"""SELECT maker, facility, item, count(*) AS n FROM {src} WHERE item IS NOT NULL GROUP BY ALL""").df()
    defaults: dict[str, dict] = {}
    for (_maker, facility), sub in items.groupby(["maker", "facility"]):
        best = sorted(sub.loc[sub["n"] == sub["n"].max(), "item"].astype(str))
        defaults[str(facility)] = {"item": best[0]}
    profiles: dict[str, list] = {}
    min_rows = config.grouping.min_profile_rows
    for maker, fields in schema.makers.items():
        model = models.get(maker)
        if model is None:
            continue
        sf = list(fields.settings)
        complete = " AND ".join(f'"{f}" IS NOT NULL' for f in sf)
        combos = con.execute(f"""
            SELECT facility, item, {", ".join(f'"{f}"' for f in sf)}, count(*) AS n,
                   min(filename || lpad(file_row_number::VARCHAR, 12, '0')) AS first
            FROM {src} WHERE maker = '{maker}' AND {complete} GROUP BY ALL""").df()
        for facility, sub in combos.groupby("facility"):
            entry = defaults.setdefault(str(facility), {"item": None})
            overall = sub.groupby(sf, as_index=False).agg(n=("n", "sum"), first=("first", "min"))
            top = overall.sort_values(["n", "first"], ascending=[False, True]).iloc[0]
            entry["settings"] = [float(top[f]) for f in sf]
            entry["settings_by_item"] = {
                str(item): [float(v) for v in grp.sort_values(["n", "first"], ascending=[False, True]).iloc[0][sf]]
                for item, grp in sub[sub["item"].notna()].groupby("item")}
        mf = list(model.fields)
        prod = list(fields.production)
        scaled = ", ".join(f'("{f}" - {float(m)!r}) / {float(s)!r} AS s{i}'
                           for i, (f, m, s) in enumerate(zip(mf, model.minimum, model.scale)))
        s_ok = " AND ".join(f"s{i} IS NOT NULL" for i in range(len(mf)))
        stats = ", ".join(
            f'median("{f}") AS med{i}, quantile_cont("{f}", 0.001) AS lo{i}, quantile_cont("{f}", 0.999) AS hi{i}'
            for i, f in enumerate(prod))
        cents = ", ".join(f"avg(s{i}) FILTER (WHERE {s_ok}) AS c{i}" for i in range(len(mf)))
        dist = " + ".join(f"(g.s{i} - c.c{i}) ^ 2" for i in range(len(mf)))
        rows = con.execute(f"""
            WITH g AS (SELECT facility, item, cluster, {", ".join(f'"{f}"' for f in prod)}, {scaled}
                       FROM {src} WHERE maker = '{maker}' AND cluster >= 0 AND item IS NOT NULL),
                 c AS (SELECT facility, item, cluster, count(*) AS rows, {stats}, {cents}
                       FROM g GROUP BY ALL HAVING count(*) >= {min_rows}),
                 r AS (SELECT g.facility, g.item, g.cluster, quantile_cont(sqrt({dist}), 0.95) AS radius
                       FROM g JOIN c USING (facility, item, cluster) WHERE {" AND ".join(f"g.s{i} IS NOT NULL" for i in range(len(mf)))}
                       GROUP BY ALL)
            SELECT * FROM c JOIN r USING (facility, item, cluster) ORDER BY facility, item, cluster""").df()
        for row in rows.itertuples(index=False):
            r = row._asdict()
            profiles.setdefault(maker, []).append({
                "facility": r["facility"], "item": r["item"], "cluster": int(r["cluster"]), "rows": int(r["rows"]),
                "median": [None if pd.isna(r[f"med{i}"]) else float(r[f"med{i}"]) for i in range(len(prod))],
                "setting_centroid": [float(r[f"c{i}"]) for i in range(len(mf))], "setting_radius": float(r["radius"]),
                "band": {"low": [float(r[f"lo{i}"]) if not pd.isna(r[f"lo{i}"]) else 0.0 for i in range(len(prod))],
                         "high": [float(r[f"hi{i}"]) if not pd.isna(r[f"hi{i}"]) else 0.0 for i in range(len(prod))]}})
    return _summary(table, defaults, profiles)


def _summary(table: Any, defaults: dict, profiles: dict) -> dict[str, Any]:
    """What the engines are compared on (written as JSON by the engine process)."""
    table = table.sort_values(GROUP_KEYS).reset_index(drop=True)
    return {
        "groups": [[str(r.maker), str(r.facility), str(r.item), int(r.cluster), int(r.rows), int(r.lots), int(r.lot_rows),
                    None if r.lot_defect_rate != r.lot_defect_rate else float(r.lot_defect_rate), str(r.role)]
                   for r in table.itertuples(index=False)],
        "facility_defaults": defaults,
        "profiles": {m: sorted(rows, key=lambda p: (p["facility"], p["item"], p["cluster"])) for m, rows in profiles.items()},
    }


def run_engine(name: str, work: Path, rows: int, buckets: int, threads: int, duckdb_path: str | None,
               duckdb_memory_limit: str) -> dict[str, Any]:
    env = dict(os.environ)
    if duckdb_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (duckdb_path, env.get("PYTHONPATH")) if p)
    out = work / f"engine_{name}.json"
    command = [sys.executable, __file__, "_engine", name, "--work", str(work), "--rows", str(rows), "--buckets", str(buckets),
               "--threads", str(threads), "--result", str(out), "--duckdb-memory-limit", duckdb_memory_limit]
    load_before = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        named = [line for line in lines if "Error" in line or "error" in line]
        return {"engine": name, **({"memory_limit": duckdb_memory_limit} if name == "duckdb_limited" else {}),
                "error": (named or lines or [f"exit {done.returncode}"])[-1].strip()}
    result = json.loads(out.read_text())
    return {"engine": name, **({"memory_limit": duckdb_memory_limit} if name == "duckdb_limited" else {}),
            "wall_seconds": round(seconds, 1), "compute_seconds": result["seconds"],
            "peak_rss_mb": round(result["maxrss_kb"] / 1024), "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()], "summary": result["summary"]}


def compare(a: dict, b: dict, tolerance: float = 1e-9) -> dict[str, Any]:
    """Do two engines' results agree? Counts exactly, rates and statistics within ``tolerance`` (relative)."""
    def close(x: Any, y: Any) -> bool:
        if isinstance(x, list) and isinstance(y, list):
            return len(x) == len(y) and all(close(p, q) for p, q in zip(x, y))
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(close(x[k], y[k]) for k in x)
        if isinstance(x, float) or isinstance(y, float):
            if x is None or y is None:
                return x is y
            return abs(x - y) <= tolerance * max(1.0, abs(x), abs(y))
        return x == y

    return {part: close(a[part], b[part]) for part in ("groups", "facility_defaults", "profiles")}


def cmd_aggregates(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    setup = {"uptime_before": uptime(), "plant": make_plant(work / "plant", args.shots, args.days, args.facilities, args.items, args.seed)}
    setup["prepare"] = prepare_pieces(work / "plant", work, args.rows)
    engines = []
    for name in args.engines:
        print(f"engine {name} ...", flush=True)
        engines.append(run_engine(name, work, args.rows, args.buckets, args.threads, args.duckdb_path, args.duckdb_memory_limit))
        print({k: v for k, v in engines[-1].items() if k != "summary"}, flush=True)
    summaries = {e["engine"]: e.pop("summary") for e in engines if "summary" in e}
    reference = summaries.get("memory") or summaries.get("pyarrow")
    agreement = {name: compare(s, reference) for name, s in summaries.items() if s is not reference}
    first = next(iter(summaries.values()), {"groups": [], "profiles": {}})
    run = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "shots": args.shots, "days": args.days, "facilities": args.facilities, "items": args.items, "seed": args.seed,
        "rows_per_piece": args.rows, "buckets": args.buckets, "duckdb_threads": args.threads,
        "groups": len(first["groups"]), "profiles": sum(len(v) for v in first["profiles"].values()),
        "setup": setup, "engines": engines, "agreement_with_" + ("memory" if "memory" in summaries else "pyarrow"): agreement,
        "uptime_after": uptime(), "notes": args.note,
    }
    previous = RESULTS / f"{args.name}.json"
    same = (args.shots, args.buckets, tuple(args.engines))  # a rerun of these replaces its earlier entry
    runs = [r for r in (json.loads(previous.read_text()).get("runs", []) if previous.exists() else [])
            if (r["shots"], r["buckets"], tuple(e["engine"] for e in r["engines"])) != same]
    kept = json.loads(previous.read_text()) if previous.exists() else {}
    payload = {"choice": args.choice or kept.get("choice", ""), "runs": sorted([*runs, run], key=lambda r: (r["shots"], r["buckets"]))}
    path = write_result(args.name, payload)
    print(json.dumps({k: v for k, v in run.items() if k != "setup"}, indent=1))
    print(path)


def cmd_engine(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    work = Path(args.work)
    if args.engine == "pyarrow":
        summary = engine_pyarrow(work, args.rows, args.buckets)
    elif args.engine == "duckdb":
        summary = engine_duckdb(work, args.threads)
    elif args.engine == "duckdb_limited":
        summary = engine_duckdb(work, args.threads, args.duckdb_memory_limit)
    else:
        summary = engine_memory(work)
    seconds = round(time.perf_counter() - started, 2)
    Path(args.result).write_text(json.dumps({"seconds": seconds, "maxrss_kb": peak_rss_kb(), "summary": summary}, default=float))


def peak_rss_kb() -> int:
    """This process's peak resident memory since its exec (VmHWM): ru_maxrss would also count the
    parent's memory this process was forked from, which Linux keeps across exec."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


# --- baseline: moldwatch train as today ---------------------------------------------------------


def cmd_baseline(args: argparse.Namespace) -> None:
    work = Path(args.work)
    runs = []
    for shots in args.shots:
        plant = work / f"plant_{shots}"
        if not (plant / "records.parquet").exists():
            subprocess.run(MOLDWATCH + ["simulate", "--out", str(plant), "--shots", str(shots), "--days", str(args.days),
                                        "--facilities", str(args.facilities), "--items", str(args.items), "--seed", str(args.seed)],
                           check=True, capture_output=True)
        store = work / f"store_{shots}"
        command = MOLDWATCH + ["train", "--schema", str(plant / "schema.yaml"), "--records", str(plant / "records.parquet"),
                               "--lots", str(plant / "lots.csv"), "--store", str(store), "--workers", str(args.workers)]
        before = uptime()
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with PeakMemory(process.pid, interval=0.5) as memory:
            output, _ = process.communicate()
        seconds = time.perf_counter() - started
        run: dict[str, Any] = {"shots": shots, "wall_seconds": round(seconds, 1), "peak_rss_mb_tree": round(memory.peak / 2**20),
                               "uptime_before": before, "uptime_after": uptime(), "exit": process.returncode}
        if process.returncode:
            run["error"] = output.strip().splitlines()[-1] if output.strip() else ""
        else:
            manifest = json.loads((store / "manifest.json").read_text())
            run.update(records=manifest["training"]["records"], groups=len(manifest["groups"]),
                       seconds_per_million=round(seconds / (shots / 1e6), 1),
                       gb_per_million=round(memory.peak / 2**30 / (shots / 1e6), 2))
        runs.append(run)
        print(run, flush=True)
    path = write_result(args.name, {"command": " ".join([Path(sys.executable).name, *sys.argv]), "workers": args.workers,
                                    "days": args.days, "facilities": args.facilities, "items": args.items, "seed": args.seed,
                                    "runs": runs, "notes": args.note})
    print(path)


# --- bounded: train on a history larger than memory ------------------------------------------


def cmd_bounded(args: argparse.Namespace) -> None:
    work = Path(args.work)
    runs = []
    for shots in args.shots:
        days = max(1, round(shots / (args.facilities * args.shots_per_machine_day)))
        plant = work / f"plant_{shots}" / "plant"
        plant.parent.mkdir(parents=True, exist_ok=True)
        made = make_plant(plant, shots, days, args.facilities, args.items, args.seed)
        print({"shots": shots, "days": days, "simulate": made}, flush=True)
        store = work / f"store_{shots}"
        command = MOLDWATCH + ["train", "--schema", str(plant / "schema.yaml"), "--records", str(plant / "records"),
                               "--lots", str(plant / "lots.csv"), "--store", str(store), "--workers", str(args.workers),
                               "--max-rows", str(args.max_rows)]
        before = uptime()
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with PeakMemory(process.pid, interval=0.5) as memory, PeakPerProcess(process.pid) as each:
            output, _ = process.communicate()
        seconds = time.perf_counter() - started
        run: dict[str, Any] = {"shots": shots, "days": days, "facilities": args.facilities, "items": args.items,
                               "simulate": made, "wall_seconds": round(seconds, 1),
                               "peak_rss_mb_tree": round(memory.peak / 2**20), **each.report(),
                               "uptime_before": before, "uptime_after": uptime(), "exit": process.returncode}
        run["stage_lines"] = [line for line in output.splitlines() if ": done (" in line or line.startswith("The history")]
        if process.returncode:
            run["error"] = output.strip().splitlines()[-3:] if output.strip() else ""
        else:
            manifest = json.loads((store / "manifest.json").read_text())
            sample = manifest["training"].get("history_sample", {})
            history = int(sample.get("rows", shots))
            run.update(history_rows=history, history_sample=sample, records_trained=manifest["training"]["records"],
                       training_seconds=manifest["training"]["seconds"], groups=len(manifest["groups"]),
                       seconds_per_million_shots=round(seconds / (history / 1e6), 1),
                       peak_rss_mb_per_million_shots=round(memory.peak / 2**20 / (history / 1e6), 1))
        runs.append(run)
        print(run, flush=True)
    ratio = None
    done = [r for r in runs if not r["exit"]]
    if len(done) >= 2:
        ratio = round(done[-1]["seconds_per_million_shots"] / done[0]["seconds_per_million_shots"], 3)
    path = write_result(args.name, {"command": " ".join([Path(sys.executable).name, *sys.argv]), "workers": args.workers,
                                    "max_rows": args.max_rows, "seed": args.seed, "runs": runs,
                                    "time_per_million_largest_over_smallest": ratio, "notes": args.note})
    print(path)


# --- sample_quality: what a bounded history costs in detection ---------------------------------


def cmd_sample_quality(args: argparse.Namespace) -> None:
    """Train on the early days whole and on samples of whole lots (history_sample.choose_lots, the
    rule train --max-rows uses), score the same later days, compare with the per-shot truth."""
    import numpy as np

    from bench._common import detection_metrics
    from bench.detection import split_by_day
    from model_store.canonical import canonical_lots, canonical_records
    from model_store.config import TrainingConfig
    from model_store.history_sample import LOT_ROLE_KEYS, choose_lots, lot_text
    from model_store.serving.scoring import ScoringEngine
    from model_store.serving.store import open_store
    from model_store.simulate import SimulationConfig, simulate
    from model_store.store_training import train_store

    plant = simulate(SimulationConfig(shots=args.shots, days=args.days, facilities=args.facilities, items=args.items,
                                      seed=args.seed))
    records = canonical_records(plant.records, plant.schema)
    lots = canonical_lots(plant.lots, plant.schema)
    truth = plant.labels.set_index("record_id")
    train, test = split_by_day(records, args.train_days)
    test = test.sort_values("timestamp", kind="stable").reset_index(drop=True)
    labels = truth.loc[test["record_id"], "defect"].to_numpy().astype(int)
    lot_rows = train.groupby(LOT_ROLE_KEYS, dropna=False).size().rename("rows").reset_index()
    print(f"simulated {len(records):,} shots; train {len(train):,} ({len(lot_rows):,} lots), test {len(test):,}", flush=True)
    runs = []
    for share in args.shares:
        cap = len(train) if share >= 1 else int(share * len(train))
        chosen, floor = choose_lots(lot_rows, cap)
        wanted = set(lot_text(chosen))
        sample = train[np.array([k in wanted for k in lot_text(train)])].reset_index(drop=True)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            train_store(sample, lots, plant.schema, Path(tmp) / "store", TrainingConfig(workers=args.workers), report=False)
            seconds = time.perf_counter() - started
            batch = ScoringEngine(open_store(Path(tmp) / "store")).score(test, memory={}, backward=False)
        metrics = detection_metrics(labels, batch.anomaly, np.nan_to_num(batch.score))
        run = {"share_asked": share, "max_rows": cap, "rows": len(sample), "lots": len(chosen), "min_lots_per_part": floor,
               "train_seconds": round(seconds, 1), "unscorable": float(np.mean(batch.resolution == "unscorable")),
               **{k: metrics[k] for k in ("f1", "best_f1", "auroc", "pr_auc", "precision", "recall", "alarm_to_defect_ratio")}}
        runs.append(run)
        print(run, flush=True)
    path = write_result(args.name, {"command": " ".join([Path(sys.executable).name, *sys.argv]), "shots": len(records),
                                    "train_rows": len(train), "test_rows": len(test), "train_days": args.train_days,
                                    "days": args.days, "facilities": args.facilities, "items": args.items, "seed": args.seed,
                                    "workers": args.workers, "uptime": uptime(), "runs": runs, "notes": args.note})
    print(path)


# --- project: time and memory of a larger history, from the measured costs --------------------

STAGE_LINE = re.compile(r"^(?P<stage>[^:]+): done \((?P<done>\d+) of (?P<total>\d+)\) in (?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d)")


def stage_seconds(lines: list[str]) -> dict[str, float]:
    """``{"Training group models": 109.0, ...}`` from train's ``<stage>: done (n of n) in H:MM:SS`` lines."""
    found = {}
    for line in lines:
        match = STAGE_LINE.match(line.strip())
        if match:
            found[match["stage"]] = 3600.0 * int(match["h"]) + 60.0 * int(match["m"]) + int(match["s"])
    return found


def _least_squares(columns: list[list[float]], ys: list[float]) -> list[float]:
    import numpy as np

    solution, *_ = np.linalg.lstsq(np.array(columns, dtype=float).T, np.array(ys, dtype=float), rcond=None)
    return [float(v) for v in solution]


def _varies(values: list[float]) -> bool:
    return len(set(values)) > 1


def project(runs: list[dict[str, Any]], shots: float, machines: int, workers: list[int], rows_per_part: int) -> dict[str, Any]:
    """What ``train --max-rows`` would take on ``shots`` of history from ``machines`` machines, from
    measured ``bench/scale.py bounded`` runs (each with its file's ``max_rows`` and ``workers``).

    Each term comes from the measurements (echoed in the output), none from a guess:
    - reading (two passes over every piece, on the driver alone, plus writing the store): a line
      through (history millions, wall - training seconds);
    - peak memory of the whole process tree: least squares over (1, history millions, cap) when
      the runs vary in both (a negative history term, noise between runs, is taken as none), else a
      line in history millions at the measured cap;
    - training on the sample: a line through (cap, training seconds) at the measured pool size,
      its group-fit share (the "Training group models" stage of the run with stage lines) spread
      over N workers at the per-worker efficiency measured at that size, the rest (clusters,
      makers' units, calibration: on the driver) unchanged;
    - parts: per machine as measured (one lot per part kept); the cap that leaves each part
      ``rows_per_part`` shots, never below the measured default.
    """
    done = [r for r in runs if not r.get("exit") and "history_rows" in r]
    if not done:
        raise SystemExit("no finished run in the bounded results")
    m = [r["history_rows"] / 1e6 for r in done]
    caps = [float(r["max_rows"]) for r in done]
    read_fixed, read_per_million = _least_squares([[1.0] * len(done), m], [r["wall_seconds"] - r["training_seconds"] for r in done]) \
        if _varies(m) else (0.0, sum(r["wall_seconds"] - r["training_seconds"] for r in done) / sum(m))
    tree = [float(r["peak_rss_mb_tree"]) for r in done]
    if _varies(m) and _varies(caps) and len(done) >= 3:
        mem = _least_squares([[1.0] * len(done), m, caps], tree)
        if mem[1] < 0:  # a longer history measured lower (run-to-run noise): not extrapolated as a fall
            mem = [*_least_squares([[1.0] * len(done), caps], tree)]
            mem.insert(1, 0.0)
    elif _varies(m):
        at_default = [i for i, c in enumerate(caps) if c == min(caps)]
        mem = [*_least_squares([[1.0] * len(at_default), [m[i] for i in at_default]], [tree[i] for i in at_default]), 0.0]
    else:
        mem = [max(tree), 0.0, 0.0]
    by_cap: dict[float, list[float]] = {}
    for r, cap in zip(done, caps):
        by_cap.setdefault(cap, []).append(float(r["training_seconds"]))
    cap_points = sorted((cap, sum(v) / len(v)) for cap, v in by_cap.items())
    train_fixed, train_per_row = _least_squares([[1.0] * len(cap_points), [c for c, _ in cap_points]], [t for _, t in cap_points]) \
        if len(cap_points) > 1 else (0.0, cap_points[0][1] / cap_points[0][0])
    staged = next((r for r in reversed(done) if r.get("stage_lines")), None)
    stages = stage_seconds(staged["stage_lines"]) if staged else {}
    fit_share = stages.get("Training group models", 0.0) / max(sum(stages.values()), 1e-9) if stages else 0.5
    pool = int(done[-1].get("workers", 2))
    default = next((r for r in reversed(done) if r["history_sample"].get("min_lots_per_part") == 1 and r["max_rows"] == min(caps)), None)
    parts_per_machine = default["history_sample"]["kept_lots"] / default["facilities"] if default else None
    parts = round(parts_per_machine * machines) if parts_per_machine else None
    cap = max(int(min(caps)), parts * rows_per_part) if parts else int(min(caps))
    target = shots / 1e6
    reading = read_fixed + read_per_million * target
    training_at_pool = train_fixed + train_per_row * cap
    rows = []
    for n in workers:
        training = training_at_pool * (fit_share * pool / n + (1 - fit_share))
        rows.append({"workers": n, "max_rows": cap, "read_hours": round(reading / 3600, 2),
                     "training_hours": round(training / 3600, 2), "total_hours": round((reading + training) / 3600, 2)})
    return {
        "shots": shots, "machines": machines, "parts_estimated": parts, "rows_per_part_wanted": rows_per_part,
        "measured_from": {"runs": [{"history_millions": round(a, 2), "max_rows": int(c), "wall_seconds": r["wall_seconds"],
                                    "training_seconds": r["training_seconds"], "peak_rss_mb_tree": r["peak_rss_mb_tree"]}
                                   for a, c, r in zip(m, caps, done)],
                          "stage_seconds": stages, "pool_workers": pool,
                          "parts_per_machine": round(parts_per_machine, 2) if parts_per_machine else None},
        "read_seconds_per_million": round(read_per_million, 2), "read_fixed_seconds": round(read_fixed, 1),
        "training_seconds_at_pool": round(training_at_pool), "group_fit_share_of_training": round(fit_share, 3),
        "peak_mb_tree": round(mem[0] + mem[1] * target + mem[2] * cap),
        "peak_mb_terms": {"fixed": round(mem[0]), "per_million_history": round(mem[1], 2), "per_trained_row": round(mem[2], 5)},
        "by_workers": rows,
    }


def cmd_project(args: argparse.Namespace) -> None:
    runs = []
    for name in args.bounded:
        result = json.loads(Path(name).read_text())
        runs += [{**r, "max_rows": result["max_rows"], "workers": result.get("workers", 2)} for r in result["runs"]]
    projections = [project(runs, shots, args.machines, args.workers, per_part) for shots in args.shots for per_part in args.rows_per_part]
    for projection in projections:
        print(f"{projection['shots']:.0e} shots, {projection['machines']} machines (~{projection['parts_estimated']} parts), "
              f"--max-rows {projection['by_workers'][0]['max_rows']:,}: peak memory ~{projection['peak_mb_tree'] / 1024:.1f} GB "
              f"(driver and {projection['measured_from']['pool_workers']} pool workers)")
        for row in projection["by_workers"]:
            print(f"  {row['workers']:>3} workers: read {row['read_hours']:.1f} h (driver) + training "
                  f"{row['training_hours']:.2f} h = {row['total_hours']:.1f} h")
    path = write_result(args.name, {"command": " ".join([Path(sys.executable).name, *sys.argv]), "bounded": args.bounded,
                                    "projections": projections, "notes": args.note})
    print(path)


# --- cluster: the same training in-process and on a local Dask cluster -------------------------


def _vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    except OSError:  # gone between the listing and the read
        return 0


class PeakPerProcess:
    """Samples every process of a tree: each one's peak RSS (VmHWM, kept from its last sample
    before it exits) and what it is, so the driver and each worker are reported apart."""

    def __init__(self, root: int, interval: float = 0.5):
        from bench._common import process_tree

        self.root, self.interval, self._tree = root, interval, process_tree
        self.peaks: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self._tree(self.root):
                self.peaks[pid] = max(self.peaks.get(pid, 0), _vm_hwm_kb(pid))
                if pid not in self.names:
                    try:
                        self.names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
                    except OSError:
                        pass
            time.sleep(self.interval)

    def __enter__(self) -> PeakPerProcess:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, Any]:
        def mb(kb: int) -> int:
            return round(kb / 1024)

        # A Dask worker is a spawned multiprocessing child of its nanny; the pool's workers too.
        # (its resource tracker is one too, at ~15 MB: a worker holds NumPy at least).
        workers = {pid: kb for pid, kb in self.peaks.items()
                   if pid != self.root and "multiprocessing" in self.names.get(pid, "") and kb > 50 * 1024}
        others = {pid: kb for pid, kb in self.peaks.items() if pid != self.root and pid not in workers}
        return {"driver_peak_rss_mb": mb(self.peaks.get(self.root, 0)),
                "worker_peak_rss_mb": sorted((mb(kb) for kb in workers.values()), reverse=True),
                "other_processes_peak_rss_mb": sorted((mb(kb) for kb in others.values() if kb > 50 * 1024), reverse=True)}


def cmd_train_once(args: argparse.Namespace) -> None:
    """One training run in this process, stage times from the progress callback (cluster part)."""
    from model_store.canonical import canonical_lots, canonical_records
    from model_store.config import TrainingConfig
    from model_store.dispatch import open_dispatcher
    from model_store.loaders import read_table
    from model_store.schema import load_schema
    from model_store.store_training import train_store

    plant = Path(args.plant)
    schema = load_schema(plant / "schema.yaml")
    started = time.perf_counter()
    records = canonical_records(read_table(str(plant / "records.parquet"), None), schema)
    lots = canonical_lots(read_table(str(plant / "lots.csv"), None), schema)
    marks: dict[str, float] = {"read": time.perf_counter() - started}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter() - started
        marks.setdefault(f"{stage}_start", now)
        if done == total:
            marks[f"{stage}_end"] = now

    mode = args.mode
    cluster = mode if mode.startswith("local:") or "://" in mode else None
    workers = int(mode.split(":")[1]) if mode.startswith("pool:") else 1
    config = TrainingConfig().with_overrides({"workers": str(workers)})
    with open_dispatcher(cluster, workers, args.cluster_memory) as dispatcher:
        opened = time.perf_counter() - started
        manifest = train_store(records, lots, schema, args.store, config, progress=progress, report=False, dispatcher=dispatcher)
    total = time.perf_counter() - started
    stages = {"read_s": marks["read"], "cluster_start_s": opened - marks["read"] if cluster else 0.0,
              "group_fits_s": marks.get("train_end", 0) - marks.get("train_start", 0),
              "conditional_s": marks.get("conditional_end", 0) - marks.get("conditional_start", 0),
              "calibrate_score_s": marks.get("calibrate_end", 0) - marks.get("calibrate_start", 0), "total_s": total}
    Path(args.result).write_text(json.dumps({
        "mode": mode, "records": manifest["training"]["records"], "groups": len(manifest["groups"]),
        "kinds": sorted({g["model_kind"] for g in manifest["groups"]}),
        "fit_pids": len({g["training"]["pid"] for g in manifest["groups"]}),
        "group_fit_cpu_s": round(sum(g["training"]["seconds"] for g in manifest["groups"]), 1),
        "thresholds": {g["id"]: g["threshold"]["base"] for g in manifest["groups"]},
        "stages": {k: round(v, 1) for k, v in stages.items()}}))


def cmd_cluster(args: argparse.Namespace) -> None:
    work = Path(args.work)
    plant = work / f"plant_{args.shots}"
    if not (plant / "records.parquet").exists():
        subprocess.run(MOLDWATCH + ["simulate", "--out", str(plant), "--shots", str(args.shots), "--days", str(args.days),
                                    "--facilities", str(args.facilities), "--items", str(args.items), "--seed", str(args.seed)],
                       check=True, capture_output=True)
    runs = []
    for mode in args.modes:
        result = work / f"run_{mode.replace(':', '_')}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "_train", "--plant", str(plant), "--mode", mode,
                   "--store", str(work / f"store_{mode.replace(':', '_')}"), "--cluster-memory", args.cluster_memory,
                   "--result", str(result)]
        before = uptime()
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with PeakPerProcess(process.pid) as peaks:
            output, _ = process.communicate()
        run: dict[str, Any] = {"mode": mode, "wall_seconds": round(time.perf_counter() - started, 1), "exit": process.returncode,
                               "uptime_before": before, "uptime_after": uptime(), **peaks.report()}
        if process.returncode:
            run["error"] = output.strip().splitlines()[-3:]
        else:
            run.update(json.loads(result.read_text()))
        runs.append(run)
        print({k: v for k, v in run.items() if k != "thresholds"}, flush=True)
    base = next((r for r in runs if r["mode"] == "in-process" and not r["exit"]), None)
    for run in runs:
        if base is not None and not run["exit"] and run is not base:
            run["speedup_total"] = round(base["stages"]["total_s"] / run["stages"]["total_s"], 2)
            run["speedup_group_fits"] = round(base["stages"]["group_fits_s"] / max(run["stages"]["group_fits_s"], 1e-9), 2)
            run["speedup_fits_and_units"] = round(
                (base["stages"]["group_fits_s"] + base["stages"]["conditional_s"])
                / max(run["stages"]["group_fits_s"] + run["stages"]["conditional_s"], 1e-9), 2)
            run["thresholds_equal_in_process"] = run["thresholds"] == base["thresholds"]
            run["thresholds_max_relative_difference"] = max(
                (abs(run["thresholds"][k] - v) / abs(v) for k, v in base["thresholds"].items() if v), default=0.0)
    for run in runs:
        run.pop("thresholds", None)
    path = write_result(args.name, {"command": " ".join([Path(sys.executable).name, *sys.argv]), "shots": args.shots,
                                    "days": args.days, "facilities": args.facilities, "items": args.items, "seed": args.seed,
                                    "cores": os.cpu_count(), "cluster_memory_per_worker": args.cluster_memory,
                                    "uptime_at_end": uptime(), "runs": runs, "notes": args.note})
    print(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    agg = sub.add_parser("aggregates", help="pyarrow vs DuckDB vs in-memory on training's aggregates")
    agg.add_argument("--shots", type=int, default=4_000_000)
    agg.add_argument("--days", type=int, default=60)
    agg.add_argument("--facilities", type=int, default=60)
    agg.add_argument("--items", type=int, default=120)
    agg.add_argument("--seed", type=int, default=0)
    agg.add_argument("--rows", type=int, default=200_000, help="rows per piece")
    agg.add_argument("--buckets", type=int, default=32)
    agg.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    agg.add_argument("--engines", nargs="+", default=["pyarrow", "duckdb", "memory"], choices=ENGINES)
    agg.add_argument("--duckdb-memory-limit", default="1GB", help="the duckdb_limited engine's memory_limit")
    agg.add_argument("--duckdb-path", default=None, help="a folder holding the duckdb package (pip install --target)")
    agg.add_argument("--work", default="runs/scale")
    agg.add_argument("--name", default="scale_aggregates")
    agg.add_argument("--choice", default="", help="the engine chosen, and why (written into the JSON)")
    agg.add_argument("--note", default="")
    agg.set_defaults(run=cmd_aggregates)
    eng = sub.add_parser("_engine")
    eng.add_argument("engine", choices=ENGINES)
    eng.add_argument("--duckdb-memory-limit", default="1GB")
    eng.add_argument("--work", required=True)
    eng.add_argument("--rows", type=int, default=200_000)
    eng.add_argument("--buckets", type=int, default=32)
    eng.add_argument("--threads", type=int, default=2)
    eng.add_argument("--result", required=True)
    eng.set_defaults(run=cmd_engine)
    base = sub.add_parser("baseline", help="moldwatch train as today: time and peak RSS")
    base.add_argument("--shots", type=int, nargs="+", default=[1_000_000, 2_000_000])
    base.add_argument("--days", type=int, default=60)
    base.add_argument("--facilities", type=int, default=24)
    base.add_argument("--items", type=int, default=48)
    base.add_argument("--seed", type=int, default=0)
    base.add_argument("--workers", type=int, default=2)
    base.add_argument("--work", default="runs/scale_baseline")
    base.add_argument("--name", default="scale_baseline")
    base.add_argument("--note", default="")
    base.set_defaults(run=cmd_baseline)
    bnd = sub.add_parser("bounded", help="moldwatch train --max-rows on a history larger than memory: time and peak RSS")
    bnd.add_argument("--shots", type=int, nargs="+", default=[10_000_000, 50_000_000])
    bnd.add_argument("--facilities", type=int, default=100)
    bnd.add_argument("--items", type=int, default=200)
    bnd.add_argument("--shots-per-machine-day", type=int, default=1300,
                     help="days = shots / (machines x this): the simulator's machines make ~1,400 shots a day, so "
                          "--shots is reached (it is a ceiling: the plant holds what its machines made in those days)")
    bnd.add_argument("--max-rows", type=int, default=400_000)
    bnd.add_argument("--seed", type=int, default=0)
    bnd.add_argument("--workers", type=int, default=2)
    bnd.add_argument("--work", default="runs/scale_bounded")
    bnd.add_argument("--name", default="scale_bounded")
    bnd.add_argument("--note", default="")
    bnd.set_defaults(run=cmd_bounded)
    qua = sub.add_parser("sample_quality", help="detection on later days: trained on the early days whole or on samples of whole lots")
    qua.add_argument("--shots", type=int, default=600_000)
    qua.add_argument("--days", type=int, default=30)
    qua.add_argument("--train-days", type=int, default=21)
    qua.add_argument("--facilities", type=int, default=20)
    qua.add_argument("--items", type=int, default=40)
    qua.add_argument("--seed", type=int, default=0)
    qua.add_argument("--shares", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    qua.add_argument("--workers", type=int, default=2)
    qua.add_argument("--name", default="scale_sample_quality")
    qua.add_argument("--note", default="")
    qua.set_defaults(run=cmd_sample_quality)
    clu = sub.add_parser("cluster", help="train --cluster local:N vs in-process on the same data: time and peak RSS")
    clu.add_argument("--shots", type=int, default=150_000)
    clu.add_argument("--days", type=int, default=20)
    clu.add_argument("--facilities", type=int, default=24)
    clu.add_argument("--items", type=int, default=48)
    clu.add_argument("--seed", type=int, default=0)
    clu.add_argument("--modes", nargs="+", default=["in-process", "local:2"], help="in-process, local:N, pool:N or a scheduler address")
    clu.add_argument("--cluster-memory", default="3GB", help="memory limit of each local:N worker")
    clu.add_argument("--work", default="runs/scale_cluster")
    clu.add_argument("--name", default="scale_cluster")
    clu.add_argument("--note", default="")
    clu.set_defaults(run=cmd_cluster)
    pro = sub.add_parser("project", help="time and memory of a larger history on N workers, from measured results")
    pro.add_argument("--bounded", nargs="+", default=[str(RESULTS / n) for n in ("scale_bounded_5e7.json", "scale_bounded_max1M.json")])
    pro.add_argument("--shots", type=float, nargs="+", default=[1e9])
    pro.add_argument("--machines", type=int, default=600, help="a 10^9-shot history: ~600 machines at 20 s cycles for a year")
    pro.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    pro.add_argument("--rows-per-part", type=int, nargs="+", default=[0, 500],
                     help="shots per part the cap should leave each part (0: the measured default cap)")
    pro.add_argument("--name", default="scale_projection")
    pro.add_argument("--note", default="")
    pro.set_defaults(run=cmd_project)
    once = sub.add_parser("_train")
    once.add_argument("--plant", required=True)
    once.add_argument("--mode", required=True)
    once.add_argument("--store", required=True)
    once.add_argument("--cluster-memory", default="3GB")
    once.add_argument("--result", required=True)
    once.set_defaults(run=cmd_train_once)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
