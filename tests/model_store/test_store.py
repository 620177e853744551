import json

import numpy as np
import pandas as pd
import pytest

from model_store.errors import StoreError
from model_store.models import MODEL_KINDS
from model_store.schema import canonical_records
from model_store.scoring import ScoringEngine
from model_store.store import StoreStaging, open_store


def test_store_has_all_model_kinds_and_contract_fields(trained_store) -> None:
    manifest = open_store(trained_store)
    raw = manifest.raw
    assert {"store_format", "model_version", "schema_hash", "created_at", "artifacts", "groups"} <= set(raw)
    assert {g["model_kind"] for g in raw["groups"]} == set(MODEL_KINDS)
    for group in raw["groups"]:
        assert {"key", "model_kind", "artifacts", "rows", "lot_defect_rate", "threshold", "loss_summary", "setting_centroid"} <= set(group)
        assert group["lot_defect_rate"] < raw["config"]["grouping"]["normal_defect_rate"]
        assert {"mean", "std", "cv", "max", "q99"} <= set(group["loss_summary"])
        for path in group["artifacts"].values():
            assert path in raw["artifacts"] and not path.endswith((".pkl", ".pickle", ".joblib"))
    assert (trained_store / "report.html").is_file()


def test_tampered_artifact_is_refused(store_copy) -> None:
    entry = json.loads((store_copy / "manifest.json").read_text())["groups"][0]
    artifact = store_copy / next(iter(entry["artifacts"].values()))
    artifact.write_bytes(artifact.read_bytes() + b"x")
    with pytest.raises(StoreError, match="does not match its sha256"):
        open_store(store_copy)


def test_unreadable_and_incompatible_stores(store_copy, tmp_path) -> None:
    with pytest.raises(StoreError, match="model store not found"):
        open_store(tmp_path / "missing")
    manifest = store_copy / "manifest.json"
    raw = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**raw, "store_format": 99}))
    with pytest.raises(StoreError, match="store format 99 is not supported"):
        open_store(store_copy)
    manifest.write_text("{not json")
    with pytest.raises(StoreError, match="unreadable manifest"):
        open_store(store_copy)


def test_failed_write_leaves_existing_store_untouched(store_copy) -> None:
    before = (store_copy / "manifest.json").read_bytes()
    with pytest.raises(RuntimeError):
        with StoreStaging(store_copy) as staging:
            (staging.path / "half-written").write_text("x")
            raise RuntimeError("training crashed")
    assert (store_copy / "manifest.json").read_bytes() == before
    assert not list(store_copy.parent.glob(".store.staging-*"))


def test_scoring_exact_nearest_and_out_of_range(trained_store, small_plant) -> None:
    engine = ScoringEngine(open_store(trained_store))
    records = canonical_records(small_plant.records.head(3000), small_plant.schema)
    batch = engine.score(records)
    assert set(batch.resolution) <= {"exact", "nearest", "unscorable"}
    assert (batch.resolution == "exact").mean() > 0.2 and (batch.resolution == "nearest").any()
    # An extreme value is clipped by the scaler but never hidden: it is listed and raises the loss.
    row = records.iloc[[int(np.flatnonzero(batch.resolution == "exact")[0])]].copy()
    field = engine.group(batch.group_id[np.flatnonzero(batch.resolution == "exact")[0]]).features[0]
    normal = engine.score(row)
    row[field] = row[field] * 50 + 1e4
    extreme = engine.score(row)
    assert field in extreme.out_of_range[0]
    assert extreme.loss[0] > normal.loss[0]


def test_unknown_setting_resolves_nearest_with_wider_threshold(trained_store, small_plant) -> None:
    engine = ScoringEngine(open_store(trained_store))
    records = canonical_records(small_plant.records.head(500), small_plant.schema)
    exact = engine.score(records)
    i = int(np.flatnonzero(exact.resolution == "exact")[0])
    row = records.iloc[[i]].copy()
    maker = row["maker"].iloc[0]
    fields = list(small_plant.schema.makers[maker].settings)
    row[fields] = row[fields].to_numpy() * 1.3  # a setting never trained on
    moved = engine.score(row)
    assert moved.resolution[0] == "nearest" and moved.distance[0] > 0
    assert moved.threshold[0] >= engine.group(moved.group_id[0]).threshold.base


def test_missing_fields_are_imputed_and_listed(trained_store, small_plant) -> None:
    engine = ScoringEngine(open_store(trained_store))
    records = canonical_records(small_plant.records.head(400), small_plant.schema)
    records = records.sort_values("timestamp").reset_index(drop=True)
    maker = records["maker"].iloc[-1]
    setting = small_plant.schema.makers[maker].settings[0]
    production = small_plant.schema.makers[maker].production[0]
    records.loc[len(records) - 1, ["item", setting, production]] = [None, np.nan, np.nan]
    batch = engine.score(records, memory={})
    assert batch.resolution[-1] != "unscorable"
    assert {"item", setting, production} <= set(batch.imputed[-1])
    assert batch.item[-1] is not None


def test_unknown_facility_without_maker_is_unscorable(trained_store, small_plant) -> None:
    engine = ScoringEngine(open_store(trained_store))
    records = canonical_records(small_plant.records.head(1), small_plant.schema)
    records["facility"] = "NEW-MACHINE"
    records["maker"] = None
    batch = engine.score(records)
    assert batch.resolution[0] == "unscorable" and not batch.anomaly[0] and batch.reason[0]
