"""deploy/k8s/moldwatch-retrain.yaml: the scheduled retrain writes where the workers read, one at a
time, and its script turns the canary's exit codes into the right Job outcome (run for real, with a
stand-in moldwatch on PATH that records its arguments)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.promql import K8S_WORKER
from tests.support.standin import standin_moldwatch

RETRAIN = K8S_WORKER.parent / "moldwatch-retrain.yaml"


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(RETRAIN.read_text()) if d}


def _container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = objects["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


def test_one_retrain_at_a_time_on_the_workers_store_with_the_train_image(objects) -> None:
    worker = {d["kind"]: d for d in yaml.safe_load_all(K8S_WORKER.read_text()) if d}
    cron = objects["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["jobTemplate"]["spec"]["backoffLimit"] == 0
    container = _container(objects)
    assert "train" in container["image"]
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert claim == worker["PersistentVolumeClaim"]["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model-store")
    assert mount["mountPath"] == "/models" and not mount.get("readOnly")
    assert worker["ConfigMap"]["data"]["MOLDWATCH_STORE"] == "/models/store"  # where canary --promote writes
    assert all("value" not in e for e in container["env"])  # the database URI only from the Secret


def run_script(objects, tmp_path: Path, canary_exit: int, train_exit: int = 0) -> tuple[int, list[str]]:
    script = _container(objects)["args"][0].replace("/models", str(tmp_path / "models"))
    bin_dir, calls = standin_moldwatch(tmp_path, {"train": train_exit, "canary": canary_exit})
    env = {**os.environ, **objects["ConfigMap"]["data"], "PLANT_DB": "postgresql://u:p@db/plant",
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.skipif(shutil.which("date") is None, reason="needs date")
@pytest.mark.parametrize(("canary_exit", "job_exit"), [(0, 0), (3, 3), (4, 0), (2, 2)])
def test_the_script_trains_then_canaries_and_only_a_wait_is_not_a_failure(objects, tmp_path, canary_exit, job_exit) -> None:
    code, calls = run_script(objects, tmp_path, canary_exit)
    assert code == job_exit
    train, canary = calls
    assert train.startswith("train ") and "--store " + str(tmp_path / "models" / "candidate") in train
    assert "interval '60 days'" in train and "postgresql://u:p@db/plant" in train
    assert canary.startswith("canary ") and "--promote" in canary and "--since 20" in canary
    assert f"--store {tmp_path / 'models' / 'store'} --candidate {tmp_path / 'models' / 'candidate'}" in canary


def test_a_failed_training_never_reaches_the_canary(objects, tmp_path) -> None:
    code, calls = run_script(objects, tmp_path, canary_exit=0, train_exit=2)
    assert code == 2 and len(calls) == 1 and calls[0].startswith("train ")
