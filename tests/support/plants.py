"""Session fixtures: one small simulated plant and one store trained on it, shared by all tests.

Small on purpose (a few seconds of training): tests check behaviour, bench/ measures quality.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from model_store.canonical import canonical_lots, canonical_records
from model_store.config import TrainingConfig

SMALL_PLANT = dict(seed=1, days=10, facilities=20, items=40, shots=80_000)
# Few epochs and low size bounds so every model family appears in a small store.
SMALL_TRAINING = {
    "model.epochs": "4",
    "model.autoencoder_min_rows": "900",
    "model.memae_min_rows": "2500",
    "grouping.min_group_rows": "300",
    # Drift references for parts of 500 judged shots (10 blocks of 50): the small plant's parts
    # have a few hundred to a few thousand shots, and the worker's tests need watched parts.
    "drift.block": "50",
    "drift.min_reference_lots": "3",  # 10 lot days: lot references for the parts the worker tests see
    "workers": "1",
}


def _simulate(plant: dict):
    from model_store.simulate import SimulationConfig, simulate

    return simulate(SimulationConfig(**plant))


def _train(plant, store: Path, overrides: dict[str, str], report: bool = True) -> Path:
    from model_store.store_training import train_store

    records = canonical_records(plant.records, plant.schema)
    lots = canonical_lots(plant.lots, plant.schema)
    train_store(records, lots, plant.schema, store, TrainingConfig().with_overrides(overrides), report=report)
    return store


@pytest.fixture(scope="session")
def small_plant():
    return _simulate(SMALL_PLANT)


@pytest.fixture(scope="session")
def small_plant_files(small_plant, tmp_path_factory) -> dict[str, Path]:
    from model_store.simulate import write_plant

    return write_plant(small_plant, tmp_path_factory.mktemp("plant"), fmt="csv")


@pytest.fixture(scope="session")
def trained_store(small_plant, tmp_path_factory) -> Path:
    return _train(small_plant, tmp_path_factory.mktemp("stores") / "store", SMALL_TRAINING)


# A store of IsolationForests only (no TensorFlow anywhere): the serving core's own tests need a
# real store, not every model family. Few facilities and trees keep it to seconds.
FOREST_PLANT = dict(seed=2, days=8, facilities=6, items=8, shots=12_000)
FOREST_TRAINING = {
    "model.autoencoder_min_rows": str(10**9),
    "model.memae_min_rows": str(10**9),
    "model.iforest_trees": "25",
    "grouping.min_group_rows": "300",
    "workers": "1",
    "drift.min_reference_lots": "5",  # the plant has 8 lot days: lot references for its parts
}


@pytest.fixture(scope="session")
def forest_plant():
    return _simulate(FOREST_PLANT)


@pytest.fixture(scope="session")
def forest_store(forest_plant, tmp_path_factory) -> Path:
    return _train(forest_plant, tmp_path_factory.mktemp("stores") / "forest_store", FOREST_TRAINING, report=False)


@pytest.fixture()
def store_copy(trained_store, tmp_path) -> Path:
    """A private copy for tests that modify or tamper with a store."""
    target = tmp_path / "store"
    shutil.copytree(trained_store, target)
    return target


def versioned_store(source: Path, target: Path, version: str, line_scale: float = 1.0,
                    schema_hash: str | None = None) -> Path:
    """A copy of store ``source`` as another model version (its manifest rewritten, artifacts as they
    are). ``line_scale`` below 1 moves every conditional line down: a store that alarms on nearly
    everything, as one trained on corrupted data may; ``schema_hash``: another plant's store."""
    import json

    from model_store.serving.store import MANIFEST

    shutil.copytree(source, target)
    raw = json.loads((target / MANIFEST).read_text())
    raw["model_version"] = version
    for unit in raw["conditional"]["units"].values():
        for calibration in unit["calibration"]:
            calibration["line"] *= line_scale
    if schema_hash is not None:
        raw["schema_hash"] = schema_hash
    (target / MANIFEST).write_text(json.dumps(raw))
    return target
