"""deploy/k8s/moldwatch-lines.yaml: the hourly feedback-lines update writes the file the workers
read, with the workers' image, Kafka settings and credentials; its script is run for real with a
stand-in moldwatch that records its arguments."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.promql import K8S_WORKER
from tests.support.standin import standin_moldwatch

LINES = K8S_WORKER.parent / "moldwatch-lines.yaml"


@pytest.fixture(scope="module")
def worker() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(K8S_WORKER.read_text()) if d}


@pytest.fixture(scope="module")
def cron() -> dict[str, Any]:
    (job,) = [d for d in yaml.safe_load_all(LINES.read_text()) if d]
    assert job["kind"] == "CronJob"
    return job


def container(cron: dict[str, Any]) -> dict[str, Any]:
    (one,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return one


def test_one_update_at_a_time_on_the_workers_store_image_and_settings(cron, worker) -> None:
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    lines = container(cron)
    (workers,) = worker["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert lines["image"] == workers["image"]
    assert lines["envFrom"] == workers["envFrom"]  # the same Kafka, store and lines settings
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in lines["env"] if "valueFrom" in e}
    assert secrets == {e["name"]: e["valueFrom"]["secretKeyRef"] for e in workers["env"]
                       if "valueFrom" in e and "KAFKA" in e["name"]}
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert claim == worker["PersistentVolumeClaim"]["metadata"]["name"]
    mount = next(m for m in lines["volumeMounts"] if m["name"] == "model-store")
    assert mount["mountPath"] == "/models" and not mount.get("readOnly")
    config = worker["ConfigMap"]["data"]
    assert config["MOLDWATCH_LINES"].startswith("/models/") and config["MOLDWATCH_STORE"].startswith("/models/")


def test_the_script_updates_the_lines_the_workers_read(cron, worker, tmp_path: Path) -> None:
    bin_dir, calls = standin_moldwatch(tmp_path)
    lines = container(cron)
    env = {**os.environ, **worker["ConfigMap"]["data"], "PATH": f"{bin_dir}:{os.environ['PATH']}",
           **{e["name"]: e["value"] for e in lines["env"] if "value" in e}}
    done = subprocess.run(["/bin/sh", "-c", lines["args"][0]], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    config = worker["ConfigMap"]["data"]
    assert calls.read_text().split() == ["lines", "update", "--store", config["MOLDWATCH_STORE"], "--feedback-topic",
                                         "moldwatch.feedback", "--lines", config["MOLDWATCH_LINES"]]
