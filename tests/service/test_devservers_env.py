"""`python -m service.devservers up` speaks the worker's language: its output, taken by a shell
with eval, sets the MOLDWATCH_* variables that `moldwatch run` reads, and the servers answer there."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.config import WorkerSettings, env_name
from service.devservers.__main__ import exports

ROOT = Path(__file__).resolve().parents[2]


def test_exports_name_settings_the_worker_reads() -> None:
    lines = exports("127.0.0.1:9092", "mongodb://127.0.0.1:27017/?directConnection=true")
    names = [line.split()[1].split("=")[0] for line in lines]
    assert names == [env_name("kafka_bootstrap_servers"), env_name("mongo_uri")]
    assert all(name.removeprefix("MOLDWATCH_").lower() in WorkerSettings.model_fields for name in names)
    assert "'mongodb://127.0.0.1:27017/?directConnection=true'" in lines[1]  # quoted: '?' and '&' are shell syntax


@pytest.mark.servers
@pytest.mark.slow
def test_eval_of_detached_up_configures_the_worker() -> None:
    python = sys.executable
    script = f"""
set -e
eval "$({python} -m service.devservers up --detach)"
trap '{python} -m service.devservers down' EXIT
{python} - <<'PY'
from pymongo import MongoClient
from service.config import WorkerSettings
settings = WorkerSettings()
print("kafka", settings.kafka_bootstrap_servers)
print("mongo", settings.mongo_uri)
print("ping", MongoClient(settings.mongo_uri, serverSelectionTimeoutMS=20000).admin.command("ping")["ok"])
PY
"""
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    out = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert out["kafka"].startswith("127.0.0.1:") or out["kafka"].startswith("localhost:")
    assert out["mongo"].startswith("mongodb://") and out["ping"] == "1.0"
    down = subprocess.run([python, "-m", "service.devservers", "down"], capture_output=True, text=True, cwd=ROOT, timeout=90)
    assert down.returncode == 0
