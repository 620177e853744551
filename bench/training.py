"""Training wall time and peak memory on the default simulation, on this machine's cores.

Runs ``moldwatch train`` as a subprocess and samples the resident memory of its whole process
tree (the parent plus the training workers). The baseline, in the same run, is the same training
with one worker: the ratio shows what the process pool buys on this machine.

    .venv/bin/python bench/training.py                # default simulation, 2 runs
    .venv/bin/python bench/training.py --no-baseline  # only the parallel run
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PeakMemory, write_result

MOLDWATCH = [sys.executable, "-m", "service"]
TARGET_SECONDS = 600


def timed_train(plant: Path, store: Path, workers: int) -> dict:
    command = MOLDWATCH + ["train", "--schema", str(plant / "schema.yaml"), "--records", str(plant / "records.parquet"),
                           "--lots", str(plant / "lots.csv"), "--store", str(store), "--workers", str(workers)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with PeakMemory(process.pid) as memory:
        output, _ = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"train failed:\n{output[-3000:]}")
    import json

    manifest = json.loads((store / "manifest.json").read_text())
    kinds: dict[str, int] = {}
    for group in manifest["groups"]:
        kinds[group["model_kind"]] = kinds.get(group["model_kind"], 0) + 1
    return {"workers": workers, "wall_seconds": round(seconds, 1), "peak_rss_mb": round(memory.peak / 2**20),
            "groups_trained": len(manifest["groups"]), "model_kinds": kinds, "records": manifest["training"]["records"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, default=500_000)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plant = Path(tmp) / "plant"
        subprocess.run(MOLDWATCH + ["simulate", "--out", str(plant), "--shots", str(args.shots)], check=True)
        cores = os.cpu_count() or 1
        parallel = timed_train(plant, Path(tmp) / "store", cores)
        print(f"{cores} workers: {parallel}", flush=True)
        result = {"shots": args.shots, "parallel": parallel, "target_seconds": TARGET_SECONDS,
                  "target_met": parallel["wall_seconds"] < TARGET_SECONDS}
        if not args.no_baseline and cores > 1:
            single = timed_train(plant, Path(tmp) / "store1", 1)
            print(f"1 worker: {single}", flush=True)
            result["baseline_one_worker"] = single
            result["speedup_vs_one_worker"] = round(single["wall_seconds"] / parallel["wall_seconds"], 2)
    print(write_result("training", result))


if __name__ == "__main__":
    main()
