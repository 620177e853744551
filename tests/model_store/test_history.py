"""Scoring the history at training: the drift references every store now carries."""
import json
from pathlib import Path

import numpy as np
import pandas as pd

from model_store.config import DriftReferenceConfig
from model_store.history import drift_references
from model_store.serving.drift import REFERENCE_PROBS, references_from_manifest
from model_store.serving.scoring import ScoringEngine
from model_store.serving.store import open_store
from model_store.schema import canonical_records


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


def test_references_are_what_the_calibrated_store_did_on_history(forest_store: Path, forest_plant) -> None:
    engine = ScoringEngine(open_store(forest_store))
    records = canonical_records(forest_plant.records, forest_plant.schema).sort_values("timestamp", kind="stable")
    batch = engine.score(records.reset_index(drop=True), memory={}, backward=True, explain=False)
    again = drift_references(batch, DriftReferenceConfig())
    stored = json.loads((forest_store / "manifest.json").read_text())["drift"]
    assert again["parts"] == stored["parts"]
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
