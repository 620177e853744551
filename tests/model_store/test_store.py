"""The on-disk store: atomic writes, hash-verified loading, one-line refusals.

The contract tests build tiny stores by hand (no training); the last ones check the store that
training writes and the scoring core reading it.
"""
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from model_store.canonical import canonical_records
from model_store.errors import StoreError
from model_store.groups import PART_CLUSTER
from model_store.models import MODEL_KINDS
from model_store.schema import parse_schema
from model_store.serving.scoring import UNSCORABLE_CAUSES, ScoringEngine
from model_store.serving.store import MANIFEST, STORE_FORMAT, open_store, sha256_file
from model_store.store import StoreStaging

SCHEMA = parse_schema({"record_id": "id", "timestamp": "ts", "facility": "fac", "item": "part",
                      "maker": {"constant": "M"}, "makers": {"M": {"settings": ["s"], "production": ["p"]}}})


def _group(**changes) -> dict:
    """A complete group entry of the one production field (model_store/serving/store_format.py)."""
    one = [0.5]
    entry = {"id": "g1", "key": {"maker": "M", "facility": "F", "item": "I", "cluster": 0}, "model_kind": "iforest",
             "artifacts": {"model": "groups/g1/model.npz", "forward": "groups/g1/model.npz"}, "rows": 300, "lots": 3,
             "lot_defect_rate": 0.0, "features": ["p"], "scaler": {"min": [0.0], "max": [1.0]}, "feature_means": one,
             "feature_median_scaled": one, "feature_error_scale": one, "feature_median_raw": one,
             "feature_band": {"low": [0.0], "high": [1.0]}, "loss_summary": {"mean": 0.1},
             "threshold": {"base": 1.0, "fixed": 1.0, "max_presumed_good": 1.0, "cv": 0.1, "cv_gain": 0.1,
                           "distance_gain": 0.5, "margin_limit": 0.5},
             "setting_centroid": one, "setting_mode": [None], "training": {}}
    return {**entry, **changes}


def _manifest(**changes) -> dict:
    raw = {"model_version": "v1", "schema": SCHEMA.to_dict(), "schema_hash": SCHEMA.hash(),
           "groups": [_group()], "setting_models": {}}
    return {**raw, **changes}


def _write_store(target: Path, **changes) -> Path:
    with StoreStaging(target) as staging:
        (staging.path / "groups" / "g1").mkdir(parents=True)
        (staging.path / "groups" / "g1" / "model.npz").write_bytes(b"weights")
        (staging.path / "notes.txt").write_text("n")
        staging.commit(_manifest(**changes))
    return target


# -- the contract, on hand-made stores ----------------------------------------------------------
def test_commit_lists_every_artifact_with_its_sha256(tmp_path) -> None:
    store = _write_store(tmp_path / "store")
    raw = json.loads((store / MANIFEST).read_text())
    assert raw["store_format"] == STORE_FORMAT
    assert raw["artifacts"] == {
        "groups/g1/model.npz": hashlib.sha256(b"weights").hexdigest(),
        "notes.txt": hashlib.sha256(b"n").hexdigest(),
    }
    manifest = open_store(store)
    assert manifest.model_version == "v1" and manifest.schema_hash == SCHEMA.hash()
    assert manifest.group("g1").artifacts == {"model": "groups/g1/model.npz", "forward": "groups/g1/model.npz"}
    assert manifest.artifact("groups/g1/model.npz") == store / "groups/g1/model.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no staging or old copies left


def test_a_new_commit_replaces_the_old_store_whole(tmp_path) -> None:
    store = _write_store(tmp_path / "store")
    (store / "stale.bin").write_bytes(b"old")
    _write_store(store, model_version="v2")
    assert open_store(store).model_version == "v2"
    assert not (store / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_staging_refuses_a_directory_that_is_not_a_store(tmp_path) -> None:
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(StoreError, match="exists and is not a model store; choose an empty or new directory"):
        StoreStaging(other)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert open_store(_write_store(empty)).model_version == "v1"  # an empty directory is fine


def test_unknown_group_and_unlisted_or_changed_artifacts_are_refused(tmp_path) -> None:
    manifest = open_store(_write_store(tmp_path / "store"))
    with pytest.raises(StoreError, match="no group 'g9' in the manifest"):
        manifest.group("g9")
    with pytest.raises(StoreError, match=r"artifact other.npz is not listed in the manifest"):
        manifest.artifact("other.npz")
    (manifest.root / "notes.txt").write_text("changed after opening")
    with pytest.raises(StoreError, match=r"artifact notes.txt does not match its sha256"):
        manifest.artifact("notes.txt")
    (manifest.root / "notes.txt").unlink()
    with pytest.raises(StoreError, match=r"artifact notes.txt is missing; retrain or restore the store"):
        manifest.artifact("notes.txt")


@pytest.mark.parametrize("damage, message", [
    (lambda s: (s / "groups/g1/model.npz").write_bytes(b"weightz"), "artifact groups/g1/model.npz does not match its sha256"),
    (lambda s: (s / "notes.txt").unlink(), "artifact notes.txt is missing"),
    (lambda s: (s / MANIFEST).unlink(), "no manifest.json; not a model store"),
    (lambda s: (s / MANIFEST).write_text("[1, 2]"), "store format None is not supported"),
])
def test_damaged_stores_are_refused_with_one_line(tmp_path, damage, message) -> None:
    store = _write_store(tmp_path / "store")
    damage(store)
    with pytest.raises(StoreError, match=message) as caught:
        open_store(store)
    assert "\n" not in str(caught.value)


def test_verify_false_skips_only_the_hashes(tmp_path) -> None:
    store = _write_store(tmp_path / "store")
    (store / "notes.txt").write_text("changed")
    assert open_store(store, verify=False).model_version == "v1"


@pytest.mark.parametrize("key", ["model_version", "schema", "schema_hash", "groups", "setting_models", "artifacts"])
def test_a_manifest_lacking_a_key_is_refused_naming_it(tmp_path, key) -> None:
    store = _write_store(tmp_path / "store")
    raw = json.loads((store / MANIFEST).read_text())
    del raw[key]
    (store / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(StoreError, match=f"manifest.json: field '{key}' is missing; retrain the store with 'moldwatch train'"):
        open_store(store)


def test_an_edited_schema_is_refused(tmp_path) -> None:
    store = _write_store(tmp_path / "store")
    raw = json.loads((store / MANIFEST).read_text())
    raw["schema"]["facility"] = "machine"
    (store / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(StoreError, match="schema hash mismatch; the manifest was edited"):
        open_store(store)


def test_a_manifest_with_nan_is_never_written(tmp_path) -> None:
    store = _write_store(tmp_path / "store")
    before = (store / MANIFEST).read_bytes()
    nan_line = {**_group()["threshold"], "base": float("nan")}
    with pytest.raises(StoreError, match=r"field 'groups\[0\].threshold.base' is nan \(must be a finite number\)"):
        _write_store(store, groups=[_group(threshold=nan_line)])
    assert (store / MANIFEST).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


@pytest.mark.parametrize("changes, field", [
    ({"groups": [_group(note="new")]}, "groups[0].note"),
    ({"lot_drift": {"parts": []}}, "lot_drift"),
    ({"groups": [_group(key={"maker": "M", "facility": "F", "item": "I", "cluster": 0, "line": 3})]}, "groups[0].key.line"),
])
def test_a_field_the_format_does_not_know_is_never_dropped_silently(tmp_path, changes, field) -> None:
    with pytest.raises(StoreError, match=f"field '{re.escape(field)}' is not part of store format {STORE_FORMAT}; declare it in "
                                         "model_store/serving/store_format.py"):
        _write_store(tmp_path / "store", **changes)
    assert not (tmp_path / "store").exists()


def test_sha256_file_reads_large_files_whole(tmp_path) -> None:
    data = bytes(range(256)) * 40_000  # ~10 MB: more than one read chunk
    (tmp_path / "big").write_bytes(data)
    assert sha256_file(tmp_path / "big") == hashlib.sha256(data).hexdigest()


def test_unreadable_and_incompatible_stores(tmp_path) -> None:
    with pytest.raises(StoreError, match="model store not found; train one with 'moldwatch train'"):
        open_store(tmp_path / "missing")
    store = _write_store(tmp_path / "store")
    manifest = store / MANIFEST
    raw = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**raw, "store_format": 99}))
    with pytest.raises(StoreError, match=f"store format 99 is not supported \\(expected {STORE_FORMAT}\\); retrain the store"):
        open_store(store)
    manifest.write_text(json.dumps({**raw, "store_format": STORE_FORMAT - 1}))
    with pytest.raises(StoreError, match=f"store format {STORE_FORMAT - 1} is not supported"):
        open_store(store)
    # a store of format 3 has no setting-conditioned units: refused, with what to do
    assert STORE_FORMAT == 4
    manifest.write_text(json.dumps({**raw, "store_format": 3}))
    with pytest.raises(StoreError, match="store format 3 is not supported \\(expected 4\\); retrain the store"):
        open_store(store)
    manifest.write_text("{not json")
    with pytest.raises(StoreError, match="unreadable manifest \\(JSONDecodeError"):
        open_store(store)


def test_failed_write_leaves_existing_store_untouched(tmp_path) -> None:
    store = _write_store(tmp_path / "store")
    before = (store / MANIFEST).read_bytes()
    with pytest.raises(RuntimeError), StoreStaging(store) as staging:
        (staging.path / "half-written").write_text("x")
        raise RuntimeError("training crashed")
    assert (store / MANIFEST).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


# -- the store that training writes -------------------------------------------------------------
def test_store_has_all_model_kinds_and_contract_fields(trained_store) -> None:
    manifest = open_store(trained_store)
    raw = manifest.raw
    assert {"store_format", "model_version", "schema_hash", "created_at", "artifacts", "groups"} <= set(raw)
    assert raw["store_format"] == STORE_FORMAT
    assert {g["model_kind"] for g in raw["groups"]} == set(MODEL_KINDS)
    ids = [g["id"] for g in raw["groups"]]
    assert len(ids) == len(set(ids))
    listed = set()
    for group in raw["groups"]:
        assert {"key", "model_kind", "artifacts", "rows", "lot_defect_rate", "threshold", "loss_summary", "setting_centroid"} <= set(group)
        grouping = raw["config"]["grouping"]
        # a setting group is trained only below the normal rate; a part's pooled group may reach
        # into its next cleanest lots, below part_max_lot_rate (model_store/groups.py)
        limit = grouping["part_max_lot_rate"] if group["key"]["cluster"] == PART_CLUSTER else grouping["normal_defect_rate"]
        assert group["lot_defect_rate"] < limit
        assert group["rows"] >= grouping["min_group_rows"]
        summary = group["loss_summary"]
        assert {"mean", "std", "cv", "max", "q99"} <= set(summary)
        assert summary["cv"] == pytest.approx(summary["std"] / summary["mean"]) and summary["q99"] <= summary["max"]
        for path in group["artifacts"].values():
            assert path in raw["artifacts"] and not path.endswith((".pkl", ".pickle", ".joblib"))
            listed.add(path)
    # one setting-conditioned unit per maker: its arrays are listed and hashed as every artifact
    conditional = raw["conditional"]
    assert conditional["combine"] == "conditional" and conditional["units"]
    assert set(conditional["units"]) <= set(manifest.schema.makers)
    for unit in conditional["units"].values():
        assert unit["artifact"] in raw["artifacts"] and unit["artifact"].endswith(".npz")
        listed.add(unit["artifact"])
    for path, digest in raw["artifacts"].items():
        assert sha256_file(trained_store / path) == digest
    on_disk = {p.relative_to(trained_store).as_posix() for p in trained_store.rglob("*") if p.is_file()}
    assert on_disk - {MANIFEST} == set(raw["artifacts"])  # nothing unlisted, nothing missing
    assert listed <= set(raw["artifacts"])
    assert (trained_store / "report.html").is_file()


def test_scoring_exact_nearest_and_out_of_range(trained_store, small_plant) -> None:
    engine = ScoringEngine(open_store(trained_store))
    records = canonical_records(small_plant.records.head(3000), small_plant.schema)
    batch = engine.score(records)
    # "conditional": records no setting group can judge, which the maker's setting-conditioned
    # scorer judges (they were "unscorable" before it)
    assert set(batch.resolution) <= {"exact", "part", "nearest", "item", "maker", "conditional", "unscorable"}
    assert (batch.resolution == "exact").mean() > 0.2 and (batch.resolution == "part").any()
    # An extreme value is clipped by the scaler but never hidden: it is listed and raises the loss.
    row = records.iloc[[int(np.flatnonzero(batch.resolution == "exact")[0])]].copy()
    field = engine.group(batch.group_id[np.flatnonzero(batch.resolution == "exact")[0]]).features[0]
    normal = engine.score(row)
    row[field] = row[field] * 50 + 1e4
    extreme = engine.score(row)
    assert set(extreme.out_of_range[0]) == set(normal.out_of_range[0]) | {field}
    assert extreme.loss[0] > normal.loss[0]
    assert bool(extreme.anomaly[0]) is True  # far outside its group's range: evidence whatever the model says


def test_unknown_setting_resolves_to_its_own_part_first(trained_store, small_plant) -> None:
    engine = ScoringEngine(open_store(trained_store))
    records = canonical_records(small_plant.records.head(500), small_plant.schema)
    exact = engine.score(records)
    i = int(np.flatnonzero(exact.resolution == "exact")[0])
    row = records.iloc[[i]].copy()
    maker = row["maker"].iloc[0]
    fields = list(small_plant.schema.makers[maker].settings)
    row[fields] = row[fields].to_numpy() * 1.3  # a setting never trained on
    moved = engine.score(row)
    # the part's own pooled model judges a setting it has no setting group for
    assert moved.resolution[0] == "part" and moved.distance[0] > 0
    assert engine.group(moved.group_id[0]).key.facility == row["facility"].iloc[0]
    assert engine.group(moved.group_id[0]).key.item == row["item"].iloc[0]


def test_missing_fields_are_imputed_and_listed(trained_store, small_plant) -> None:
    engine = ScoringEngine(open_store(trained_store))
    records = canonical_records(small_plant.records.head(400), small_plant.schema)
    records = records.sort_values("timestamp").reset_index(drop=True)
    maker = records["maker"].iloc[-1]
    setting = small_plant.schema.makers[maker].settings[0]
    production = small_plant.schema.makers[maker].production[0]
    records.loc[len(records) - 1, ["item", setting, production]] = [None, np.nan, np.nan]
    facility = records["facility"].iloc[-1]
    earlier = records.iloc[:-1]
    last_item = earlier.loc[earlier["facility"] == facility, "item"].dropna().iloc[-1]  # the machine's last known item
    batch = engine.score(records, memory={})
    assert batch.resolution[-1] != "unscorable"
    assert {"item", setting, production} <= set(batch.imputed[-1])
    assert batch.item[-1] == last_item


def test_unknown_facility_without_maker_is_unscorable(trained_store, small_plant) -> None:
    engine = ScoringEngine(open_store(trained_store))
    records = canonical_records(small_plant.records.head(1), small_plant.schema)
    records["facility"] = "NEW-MACHINE"
    records["maker"] = None
    batch = engine.score(records)
    assert batch.resolution[0] == "unscorable" and bool(batch.anomaly[0]) is False
    assert batch.reason[0] == UNSCORABLE_CAUSES["unknown_maker"]
