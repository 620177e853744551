"""What the worker image saves: installed size and start-up time, serving vs full environment.

Builds two fresh virtual environments the way the Dockerfile does (a lock in hash-checking mode,
then the project with ``--no-deps``, from ``git archive HEAD``):

  serve   requirements-serve.lock   the worker image now (the base install)
  full    requirements.lock         the baseline: everything, as the image held before the split
                                    (and what the demo and the tests install)

and measures, in the same run (ratios serve/full; the machine is shared and noisy):

1. installed size: disk usage of each venv, of its site-packages, and of site-packages without
   pip and setuptools (the interpreter itself is a symlink, not counted). Target: serve <= 400 MB.
2. start-up, import to ready, each a fresh process, the environments alternating, ``--rounds``:
   a. ``engine``: ``import service.worker``, open the store, build the ScoringEngine (parent's wall
      time from spawn to the child's ready line; the child also reports import and load times);
   b. ``worker``: ``moldwatch run`` against the local Kafka and MongoDB-protocol servers
      (service.devservers), from spawn until ``GET /readyz`` answers 200.
   Reference, the image before issue 10: the code before the serving core was split off (commit
   5206016) run from the full environment: its ``import service.worker`` and its ``moldwatch run``.

    .venv/bin/python bench/serving_env.py --store runs/store          # a store trained by the full env
    .venv/bin/python bench/serving_env.py --store runs/store --keep /tmp/envs   # reuse built envs

A small store: ``moldwatch simulate --out P --format csv --shots 80000 --days 10 --facilities 20
--items 40 --seed 1`` then ``moldwatch train ... --workers 1 --set model.epochs=4`` (tests/support/plants.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import write_result

LOCKS = {"serve": "requirements-serve.lock", "full": "requirements.lock"}
TARGET_BYTES = 400e6
BEFORE_SPLIT = "5206016"  # the last commit before model_store/serving (0de8c54)
READY_TIMEOUT_S = 180.0

ENGINE_CHILD = """
import sys, time
t0 = time.perf_counter()
import service.worker
t1 = time.perf_counter()
from model_store.serving.store import open_store
from model_store.serving.scoring import ScoringEngine
engine = ScoringEngine(open_store(sys.argv[1]))
t2 = time.perf_counter()
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "sklearn", "scipy", "matplotlib", "pyarrow", "psycopg"})
print("READY", t1 - t0, t2 - t1, ",".join(heavy), flush=True)
"""
IMPORT_CHILD = """
import sys, time
t0 = time.perf_counter()
import service.worker
print("READY", time.perf_counter() - t0, flush=True)
"""


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def source_tree(commit: str, target: Path) -> Path:
    """The project's files at ``commit`` (pyproject, README, the two packages), as the image copies them."""
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit,
                              "pyproject.toml", "README.md", "model_store", "service"],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def build_env(kind: str, where: Path, source: Path) -> dict:
    venv = where / kind
    if (venv / ".built").is_file():
        return json.loads((venv / ".built").read_text())
    shutil.rmtree(venv, ignore_errors=True)
    started = time.perf_counter()
    run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    run([*pip, "--require-hashes", "-r", str(ROOT / LOCKS[kind])])
    run([*pip, "--no-deps", str(source)])
    info = {"lock": LOCKS[kind], "install_seconds": round(time.perf_counter() - started, 1)}
    (venv / ".built").write_text(json.dumps(info))
    return info


def disk_bytes(path: Path, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """Disk usage (allocated blocks, as du) and apparent size, hard links counted once, symlinks not followed."""
    seen: set[tuple[int, int]] = set()
    disk = apparent = 0
    for folder, dirs, files in os.walk(path):
        if Path(folder) == path:
            dirs[:] = [d for d in dirs if not d.startswith(skip)] if skip else dirs
        for name in files + dirs:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            disk += st.st_blocks * 512
            apparent += st.st_size if not os.path.islink(os.path.join(folder, name)) else 0
    return {"disk_bytes": disk, "apparent_bytes": apparent}


def sizes(venv: Path) -> dict:
    site = next((venv / "lib").glob("python3.*/site-packages"))
    packages = sorted(((p.name, disk_bytes(p)["disk_bytes"]) for p in site.iterdir() if p.is_dir() and not p.name.endswith(".dist-info")),
                      key=lambda kv: -kv[1])
    return {
        "venv": disk_bytes(venv),
        "site_packages": disk_bytes(site),
        "site_packages_without_pip_setuptools": disk_bytes(site, skip=("pip", "setuptools", "_distutils_hack", "pkg_resources")),
        "largest_packages_mb": {name: round(b / 1e6, 1) for name, b in packages[:8]},
        "distributions": len(list(site.glob("*.dist-info"))),
    }


def engine_start(python: Path, store: Path, code: str = ENGINE_CHILD, env: dict | None = None) -> dict:
    started = time.perf_counter()
    # cwd: not the repository, whose packages `python -c` would import instead of the environment's.
    child = subprocess.Popen([str(python), "-c", code, str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=python.parent)
    line = child.stdout.readline()
    wall = time.perf_counter() - started
    _, err = child.communicate(timeout=60)
    if not line.startswith("READY"):
        return {"error": (err or line).strip().splitlines()[-1] if (err or line).strip() else f"exit {child.returncode}"}
    fields = line.split()
    result = {"wall_s": wall, "import_s": float(fields[1])}
    if len(fields) > 2:
        result["load_s"] = float(fields[2])
        result["heavy_modules"] = fields[3].split(",") if len(fields) > 3 and fields[3] else []
    return result


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_ready(venv: Path, store: Path, mongo_uri: str, kafka: str, logs: Path, tag: str, pythonpath: Path | None = None) -> dict:
    """Spawn `moldwatch run` and poll /readyz until 200: seconds from spawn to ready.

    ``pythonpath``: run that source tree's code instead of the installed one (the before-split baseline)."""
    port = free_port()
    env = {**os.environ, "MOLDWATCH_MONGO_URI": mongo_uri, "MOLDWATCH_KAFKA_BOOTSTRAP_SERVERS": kafka, "MOLDWATCH_LOG_FORMAT": "json"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    command = [str(venv / "bin" / "python"), "-m", "service", "run", "--store", str(store), "--http-host", "127.0.0.1",
               "--http-port", str(port), "--mongo-database", f"bench_{tag}"]
    log = open(logs / f"worker-{tag}.log", "w")  # noqa: SIM115 - the child writes to it until it exits; closed below
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=logs)
    ready = None
    try:
        while time.perf_counter() - started < READY_TIMEOUT_S and child.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        ready = time.perf_counter() - started
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.01)  # a poll interval, the measurement's resolution
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()
    if ready is None:
        return {"error": f"not ready within {READY_TIMEOUT_S:.0f} s (exit {child.returncode}); see {log.name}"}
    return {"wall_s": ready}


def summary(samples: list[dict], key: str = "wall_s") -> dict:
    values = [s[key] for s in samples if key in s]
    errors = [s["error"] for s in samples if "error" in s]
    out: dict = {"n": len(values)}
    if values:
        out.update(median_s=round(statistics.median(values), 3), min_s=round(min(values), 3), max_s=round(max(values), 3))
    if errors:
        out["errors"] = errors[:3]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True, help="a model store (trained by the full environment)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build the environments here and keep them (reused when present)")
    parser.add_argument("--no-worker", action="store_true", help="skip the `moldwatch run` start-up (needs Java for the servers)")
    opts = parser.parse_args()
    store = opts.store.resolve()
    commit = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="serving-env-") as tmp:
        where = (opts.keep or Path(tmp)).resolve()
        where.mkdir(parents=True, exist_ok=True)
        source = source_tree("HEAD", Path(tmp) / "src")
        envs = {kind: where / kind for kind in LOCKS}
        builds = {kind: build_env(kind, where, source) for kind in LOCKS}
        print("built:", builds, flush=True)
        size = {kind: sizes(venv) for kind, venv in envs.items()}
        print(json.dumps({k: v["venv"] for k, v in size.items()}), flush=True)

        before = source_tree(BEFORE_SPLIT, Path(tmp) / "before")
        engine: dict[str, list] = {kind: [] for kind in LOCKS}
        import_before: list[dict] = []
        for _ in range(opts.rounds):
            for kind, venv in envs.items():
                engine[kind].append(engine_start(venv / "bin" / "python", store))
            import_before.append(engine_start(envs["full"] / "bin" / "python", store, IMPORT_CHILD,
                                              env={**os.environ, "PYTHONPATH": str(before)}))
        print("engine:", {k: summary(v) for k, v in engine.items()}, flush=True)

        worker: dict[str, list] = {kind: [] for kind in LOCKS}
        worker_before: list[dict] = []
        if not opts.no_worker:
            from service.devservers import KafkaServer, MongoServer

            logs = where / "logs"
            logs.mkdir(exist_ok=True)
            with KafkaServer() as kafka, MongoServer() as mongo:
                for round_ in range(opts.rounds):
                    for kind, venv in envs.items():
                        worker[kind].append(worker_ready(venv, store, mongo.uri, kafka.bootstrap_servers, logs, f"{kind}{round_}"))
                    worker_before.append(worker_ready(envs["full"], store, mongo.uri, kafka.bootstrap_servers, logs,
                                                      f"before{round_}", pythonpath=before))
            print("worker:", {k: summary(v) for k, v in worker.items()}, flush=True)

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    engine_s = {k: summary(v) for k, v in engine.items()}
    worker_s = {k: summary(v) for k, v in worker.items()}
    serve_bytes = size["serve"]["venv"]["disk_bytes"]
    result = {
        "commit": commit,
        "store_groups": len(json.loads((store / "manifest.json").read_text())["groups"]),
        "rounds": opts.rounds,
        "environments": {kind: {**builds[kind], **size[kind]} for kind in LOCKS},
        "size_mb": {kind: round(size[kind]["venv"]["disk_bytes"] / 1e6, 1) for kind in LOCKS},
        "size_ratio_serve_over_full": ratio(serve_bytes, size["full"]["venv"]["disk_bytes"]),
        "target_mb": TARGET_BYTES / 1e6,
        "target_met": serve_bytes <= TARGET_BYTES,
        "startup_engine": {
            "what": "fresh interpreter: import service.worker + open_store + ScoringEngine; wall time spawn -> ready line",
            **engine_s,
            "import_s": {k: summary(v, "import_s") for k, v in engine.items()},
            "load_s": {k: summary(v, "load_s") for k, v in engine.items()},
            "heavy_modules_loaded": {k: sorted({m for s in v for m in s.get("heavy_modules", [])}) for k, v in engine.items()},
            "ratio_serve_over_full": ratio(engine_s["serve"].get("median_s"), engine_s["full"].get("median_s")),
        },
        "import_worker_before_split": {
            "what": f"import service.worker with the code of {BEFORE_SPLIT} (before model_store/serving) in the full environment",
            **summary(import_before, "import_s"),
        },
        "startup_worker": {
            "what": "moldwatch run against local Kafka + MongoDB-protocol servers: spawn -> GET /readyz 200 (10 ms polls)",
            **worker_s,
            "ratio_serve_over_full": ratio(worker_s["serve"].get("median_s"), worker_s["full"].get("median_s")),
            "full_before_split": {"what": f"the code of {BEFORE_SPLIT} in the full environment (the image before issue 10)",
                                  **summary(worker_before)},
            "ratio_serve_over_full_before_split": ratio(worker_s["serve"].get("median_s"), summary(worker_before).get("median_s")),
        } if worker_s["serve"]["n"] or worker_s["full"]["n"] else {"skipped": True},
    }
    print(write_result("serving_env", result))
    print(json.dumps({k: result[k] for k in ("size_mb", "size_ratio_serve_over_full", "target_met")}))


if __name__ == "__main__":
    main()
