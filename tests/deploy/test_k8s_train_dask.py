"""deploy/k8s/moldwatch-train-dask.yaml: training on a Dask cluster (the Dask Kubernetes operator's
DaskJob) agrees with the rest of deploy/ (images, claim, secrets, settings) and its job script runs
`moldwatch train --cluster` against the scheduler the operator names (run for real, with a stand-in
moldwatch on PATH)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.promql import K8S_WORKER, ROOT

TRAIN_DASK = K8S_WORKER.parent / "moldwatch-train-dask.yaml"
RETRAIN = K8S_WORKER.parent / "moldwatch-retrain.yaml"


def _load(path: Path) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}


@pytest.fixture(scope="module")
def job() -> dict[str, Any]:
    objects = _load(TRAIN_DASK)
    assert set(objects) == {"DaskJob"}
    assert objects["DaskJob"]["apiVersion"] == "kubernetes.dask.org/v1"
    return objects["DaskJob"]


def _pods(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = job["spec"]["cluster"]["spec"]
    return {"job": job["spec"]["job"]["spec"], "scheduler": cluster["scheduler"]["spec"], "worker": cluster["worker"]["spec"]}


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["containers"]
    return container


def test_driver_scheduler_and_workers_run_the_retrain_image(job) -> None:
    retrain = _load(RETRAIN)["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    image = _container(retrain)["image"]
    assert {name: _container(pod)["image"] for name, pod in _pods(job).items()} == dict.fromkeys(("job", "scheduler", "worker"), image)
    # That image installs requirements.lock, which holds Dask (the serving lock does not).
    assert re.search(r"^distributed==", (ROOT / "requirements.lock").read_text(), re.M)
    assert not re.search(r"^distributed==", (ROOT / "requirements-serve.lock").read_text(), re.M)


def test_the_driver_writes_the_workers_store_from_the_retrain_settings(job) -> None:
    worker = _load(K8S_WORKER)
    retrain = _load(RETRAIN)
    pod = _pods(job)["job"]
    container = _container(pod)
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert claim == worker["PersistentVolumeClaim"]["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model-store")
    assert mount["mountPath"] == "/models" and not mount.get("readOnly")
    assert worker["ConfigMap"]["data"]["MOLDWATCH_STORE"] == "/models/store"
    assert [ref["configMapRef"]["name"] for ref in container["envFrom"]] == [retrain["ConfigMap"]["metadata"]["name"]]
    schema = next(v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v)
    retrain_pod = retrain["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert schema == next(v["configMap"]["name"] for v in retrain_pod["volumes"] if "configMap" in v)
    assert all("value" not in e for e in container["env"])  # the database URI only from the Secret
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]} == {
        e["valueFrom"]["secretKeyRef"]["name"] for e in _container(retrain_pod)["env"]}


def test_workers_mount_no_store_and_stay_under_their_memory_limit(job) -> None:
    """Fitted artifacts come back to the driver as bytes: a worker needs neither the store nor a secret."""
    pod = _pods(job)["worker"]
    container = _container(pod)
    assert not any("persistentVolumeClaim" in v for v in pod.get("volumes", []))
    assert "env" not in container or all("valueFrom" not in e for e in container["env"])
    command = container["command"]
    assert command[:2] == ["dask", "worker"]
    assert command[command.index("--nthreads") + 1] == "1"
    dask_limit = _gib(command[command.index("--memory-limit") + 1])
    assert dask_limit < _gib(container["resources"]["limits"]["memory"])  # Dask restarts it before the kernel kills it
    assert job["spec"]["cluster"]["spec"]["worker"]["replicas"] >= 2


def test_the_scheduler_service_reaches_the_scheduler_port(job) -> None:
    scheduler = job["spec"]["cluster"]["spec"]["scheduler"]
    container = _container(scheduler["spec"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["command"][:2] == ["dask", "scheduler"]
    assert ports["tcp-comm"] == int(container["command"][container["command"].index("--port") + 1]) == 8786
    service = {p["name"]: p for p in scheduler["service"]["ports"]}
    assert service["tcp-comm"]["targetPort"] == "tcp-comm" and service["tcp-comm"]["port"] == 8786
    assert scheduler["service"]["selector"]["dask.org/cluster-name"] == job["metadata"]["name"]


def _gib(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)\s*([A-Za-z]*)", quantity).groups()
    return float(number) * {"Gi": 1.0, "GiB": 1.0, "Mi": 1 / 1024, "MiB": 1 / 1024}[unit]


@pytest.mark.skipif(shutil.which("date") is None, reason="needs date")
def test_the_job_trains_on_the_operators_scheduler(job, tmp_path) -> None:
    script = _container(_pods(job)["job"])["args"][0].replace("/models", str(tmp_path / "models"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "moldwatch"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit 0\n')
    fake.chmod(0o755)
    env = {**os.environ, **_load(RETRAIN)["ConfigMap"]["data"], "PLANT_DB": "postgresql://u:p@db/plant",
           "DASK_SCHEDULER_ADDRESS": "tcp://moldwatch-train-dask-scheduler.moldwatch.svc.cluster.local:8786",
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    train, canary = calls.read_text().splitlines()
    assert train.startswith("train ") and train.endswith(
        f"--store {tmp_path}/models/candidate --cluster tcp://moldwatch-train-dask-scheduler.moldwatch.svc.cluster.local:8786")
    assert canary.startswith("canary ") and "--promote" in canary
