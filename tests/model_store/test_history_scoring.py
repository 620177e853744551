"""Scoring the history at training: the drift references every store now carries."""
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_store.canonical import canonical_lots, canonical_records
from model_store.config import DriftReferenceConfig
from model_store.history_scoring import drift_references
from model_store.serving.drift import REFERENCE_PROBS, references_from_manifest
from model_store.serving.scoring import ScoringEngine
from model_store.serving.store import open_store


def test_every_judged_part_gets_a_reference_or_is_listed_with_its_count(forest_store: Path, forest_plant) -> None:
    manifest = json.loads((forest_store / "manifest.json").read_text())
    drift = manifest["drift"]
    assert drift["block"] == 200 and drift["min_reference_blocks"] == 10
    references = references_from_manifest(drift)
    assert references  # the forest plant has parts with thousands of judged shots
    listed = set(references) | {(u["facility"], u["item"]) for u in drift["unreferenced"]}
    assert len(listed) == len(references) + len(drift["unreferenced"])  # each part once
    assert all(u["judged"] < 200 * 10 for u in drift["unreferenced"])
    for ref in references.values():
        assert ref.rows >= 2000 and len(ref.quantiles) == len(REFERENCE_PROBS) and ref.block == 200


def history_as_trained(forest_store: Path, forest_plant) -> tuple[pd.DataFrame, np.ndarray, Any]:
    """The history, its lot rates and verdicts exactly as training scored them (items imputed)."""
    from model_store.config import TrainingConfig
    from model_store.history_scoring import score_history
    from model_store.store_training import prepare
    from tests.support.plants import FOREST_TRAINING

    data = prepare(canonical_records(forest_plant.records, forest_plant.schema),
                   canonical_lots(forest_plant.lots, forest_plant.schema), forest_plant.schema,
                   TrainingConfig().with_overrides(FOREST_TRAINING))
    return score_history(open_store(forest_store), data)


def test_references_are_what_the_calibrated_store_did_on_history(forest_store: Path, forest_plant) -> None:
    frame, lot_rate, batch = history_as_trained(forest_store, forest_plant)
    again = drift_references(batch, DriftReferenceConfig(min_reference_lots=5), frame["lot_date"].to_numpy(dtype=object),
                             lot_rate)
    stored = json.loads((forest_store / "manifest.json").read_text())["drift"]
    assert again["parts"] == stored["parts"]
    assert any("lots" in entry for entry in stored["parts"])  # alarms against lots: part of the reference
    without = drift_references(batch, DriftReferenceConfig())
    assert [{k: v for k, v in e.items() if k != "lots"} for e in stored["parts"]] == without["parts"]
    judged = pd.DataFrame({"f": batch.facility, "i": batch.item, "a": batch.anomaly})[batch.resolution != "unscorable"]
    for entry in stored["parts"]:
        sub = judged[(judged["f"] == entry["facility"]) & (judged["i"] == entry["item"])]
        assert entry["rows"] == len(sub) and entry["alarms"] == int(np.sum(sub["a"]))


def test_a_bigger_block_lists_more_parts_as_unreferenced(forest_store: Path, forest_plant) -> None:
    engine = ScoringEngine(open_store(forest_store))
    records = canonical_records(forest_plant.records, forest_plant.schema).sort_values("timestamp", kind="stable")
    batch = engine.score(records.reset_index(drop=True), memory={}, backward=True, explain=False)
    small, big = (drift_references(batch, DriftReferenceConfig(block=b)) for b in (50, 2000))
    assert len(small["parts"]) > len(big["parts"])
    assert {(p["facility"], p["item"]) for p in big["parts"]} <= {(p["facility"], p["item"]) for p in small["parts"]}


def test_each_lot_reference_is_the_parts_alarms_per_expected_bad_part(forest_store: Path, forest_plant) -> None:
    from model_store.serving.lot_drift import lot_references_from_manifest

    frame, lot_rate, batch = history_as_trained(forest_store, forest_plant)
    stored = lot_references_from_manifest(json.loads((forest_store / "manifest.json").read_text())["drift"])
    assert stored
    for (facility, item), reference in stored.items():
        mine = (batch.facility == facility) & (batch.item == item) & (batch.resolution != "unscorable") & np.isfinite(lot_rate)
        alarms, expected = np.sum(batch.score[mine] > 1.0), np.sum(lot_rate[mine])
        assert reference.ratio == alarms / expected and reference.dispersion >= 1.0 and reference.lots >= 5
        assert reference.lots == frame.loc[mine, "lot_date"].nunique()
