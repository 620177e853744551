"""``moldwatch store`` and ``moldwatch canary`` as an operator runs them: subprocesses, real stores and files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_store.generations import list_generations, read_log
from model_store.serving.store import open_store
from tests.support.plants import versioned_store as versioned

pytestmark = pytest.mark.slow


def moldwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def plant_files(forest_plant, tmp_path_factory) -> dict[str, Path]:
    from model_store.simulate import write_plant

    return write_plant(forest_plant, tmp_path_factory.mktemp("forest_files"), fmt="csv")


@pytest.fixture()
def served(forest_store: Path, tmp_path: Path) -> Path:
    return versioned(forest_store, tmp_path / "models" / "store", "v1")


def canary(served: Path, candidate: Path, plant_files: dict[str, Path], *extra: str) -> subprocess.CompletedProcess:
    return moldwatch("canary", "--store", str(served), "--candidate", str(candidate), "--records",
                     str(plant_files["records"]), "--lots", str(plant_files["lots"]), *extra)


def test_a_candidate_not_worse_is_promoted_and_rolled_back_in_one_command(served, forest_store, plant_files,
                                                                          tmp_path) -> None:
    candidate = versioned(forest_store, tmp_path / "candidate", "v2")
    report = tmp_path / "canary.json"
    done = canary(served, candidate, plant_files, "--promote", "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "promoted v2; v1 kept for rollback" in done.stdout
    assert open_store(served).model_version == "v2"
    payload = json.loads(report.read_text())
    assert payload["decision"] == "promote" and payload["served"]["alarms_in_lots"] == payload["candidate"]["alarms_in_lots"]
    listed = moldwatch("store", "list", "--store", str(served))
    assert "served: v2" in listed.stdout and "kept:   v1" in listed.stdout and "promote v2" in listed.stdout
    back = moldwatch("store", "rollback", "--store", str(served), "--reason", "operators prefer v1")
    assert back.returncode == 0 and "serves v1 again" in back.stdout
    assert open_store(served).model_version == "v1" and [g.model_version for g in list_generations(served)] == ["v2"]
    assert read_log(served)[-1]["reason"] == "operators prefer v1"


def test_a_candidate_that_alarms_on_everything_is_refused_and_the_refusal_logged(served, forest_store, plant_files,
                                                                                 tmp_path) -> None:
    noisy = versioned(forest_store, tmp_path / "noisy", "noisy", line_scale=1e-3)
    done = canary(served, noisy, plant_files, "--promote")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "refuse: alarm volume" in done.stdout
    assert open_store(served).model_version == "v1" and noisy.exists()
    assert read_log(served)[-1]["event"] == "refuse" and read_log(served)[-1]["model_version"] == "noisy"


def test_too_few_records_is_a_wait_and_bad_input_is_one_line(served, forest_store, plant_files, tmp_path) -> None:
    candidate = versioned(forest_store, tmp_path / "candidate", "v2")
    wait = canary(served, candidate, plant_files, "--since", "2100-01-01", "--promote")
    assert wait.returncode == 4 and "not enough evidence yet" in wait.stdout
    assert open_store(served).model_version == "v1"
    bad = canary(served, candidate, plant_files, "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since: 'yesterday-ish' is not a time" in bad.stderr and "Traceback" not in bad.stderr
    missing = moldwatch("store", "promote", str(tmp_path / "nowhere"), "--store", str(served))
    assert missing.returncode == 2 and "model store not found" in missing.stderr
    nothing = moldwatch("store", "rollback", "--store", str(served))
    assert nothing.returncode == 2 and "no kept store to roll back to" in nothing.stderr
