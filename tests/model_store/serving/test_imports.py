"""The serving core stays light: importing the worker (or anything that scores) must not load
training's libraries, which the worker image does not install."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Top-level packages serving must never import, and training/recipe-building modules of our own.
FORBIDDEN_PACKAGES = ("tensorflow", "keras", "sklearn", "matplotlib", "psycopg", "skops")
FORBIDDEN_MODULES = (
    "scipy.optimize", "model_store.store_training", "model_store.group_training", "model_store.setting_clusters",
    "model_store.calibration", "model_store.history_scoring", "model_store.groups", "model_store.report",
    "model_store.plots", "model_store.recipe.build", "model_store.recipe.ranking", "model_store.models.keras_nets",
)


def _loaded_after(modules: list[str]) -> list[str]:
    """Every module loaded by importing ``modules`` in a fresh interpreter."""
    code = f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _offenders(loaded: list[str]) -> list[str]:
    return sorted(
        m for m in loaded
        if m.split(".")[0] in FORBIDDEN_PACKAGES or any(m == f or m.startswith(f + ".") for f in FORBIDDEN_MODULES)
    )


@pytest.mark.parametrize("entry", [
    ["service.worker"], ["service.run_command"], ["service.http"], ["service.pipeline"],
    ["model_store.serving.scoring", "model_store.serving.verdict", "model_store.serving.recipe_book", "model_store.serving.store"],
])
def test_serving_entry_points_load_no_training_library(entry: list[str]) -> None:
    assert _offenders(_loaded_after(entry)) == []


def test_the_check_itself_sees_a_training_import() -> None:
    # The guard must be able to fail: group training pulls in what serving must not.
    assert "model_store.group_training" in _offenders(_loaded_after(["model_store.group_training"]))
    assert any(m.startswith("sklearn") for m in _offenders(_loaded_after(["model_store.setting_clusters"])))
