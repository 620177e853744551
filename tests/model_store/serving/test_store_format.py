"""The store format (model_store/serving/store_format.py): what training writes is what serving
reads, field for field, and a manifest that is not exactly that is refused in one line that names
the file and the field."""
from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_store.config import ThresholdConfig, TrainingConfig
from model_store.errors import StoreError
from model_store.serving.excursions import EXCURSION_BAND_SHARE
from model_store.serving.scoring import ScoringEngine
from model_store.serving.store import MANIFEST, StoreManifest, open_store
from model_store.serving.store_format import (
    LEGACY_BASELINE_HALFLIFE,
    LEGACY_FOLLOW_NEW_SETTINGS,
    LEGACY_GROUP_EXCURSIONS,
    LEGACY_LASTING_RATIO,
    LEGACY_PROBABILITY_BLEND,
    STORE_FORMAT,
    Band,
    GroupEntry,
    Manifest,
    StoreGroupKey,
    read,
)
from model_store.serving.thresholds import GroupThreshold
from model_store.serving.verdict import to_verdicts

SOURCE = "/stores/line-3/manifest.json"
# Sections kept as JSON (their own readers, or the report's): mutating inside them is not this format's business.
OPAQUE = ("schema", "setting_models", "setting_clusters", "group_table", "training", "history", "drift")


@pytest.fixture(scope="module")
def raw(forest_store) -> dict[str, Any]:
    return json.loads((forest_store / MANIFEST).read_text())


def _parse(raw: Any) -> Manifest:
    return Manifest.from_dict(raw, source=SOURCE)


# -- what training writes, the reader reads back whole ------------------------------------------------
@pytest.mark.parametrize("store", ["forest_store", "trained_store"])
def test_a_trained_store_round_trips_through_the_typed_manifest(store, request) -> None:
    root = request.getfixturevalue(store)
    raw = json.loads((root / MANIFEST).read_text())
    manifest = _parse(raw)
    assert json.loads(json.dumps(manifest.to_dict(), allow_nan=False)) == raw  # nothing lost, nothing added
    assert manifest.store_format == STORE_FORMAT and manifest.groups and manifest.conditional is not None
    assert manifest.calibration is not None and manifest.config == TrainingConfig.from_dict(raw["config"])
    assert {g.id for g in manifest.groups} == {g["id"] for g in raw["groups"]}
    assert all(isinstance(g.threshold, GroupThreshold) for g in manifest.groups)
    assert open_store(root).contents == manifest


def test_verdicts_are_the_same_from_the_written_and_the_rewritten_manifest(forest_store, forest_plant) -> None:
    from model_store.canonical import canonical_records

    opened = open_store(forest_store)
    rewritten = StoreManifest(opened.root, opened.contents.to_dict(), opened.schema, opened.setting_models)
    records = canonical_records(forest_plant.records.head(4000), forest_plant.schema)
    for kwargs in ({}, {"conditional": False}):
        a, b = (ScoringEngine(m, **kwargs) for m in (opened, rewritten))
        first = to_verdicts(records, a.score(records, memory={}), a.model_version, scored_at="t")
        second = to_verdicts(records, b.score(records, memory={}), b.model_version, scored_at="t")
        assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_serving_defaults_are_training_defaults() -> None:
    # defined once: the excursion share serving falls back on is the configuration's
    assert ThresholdConfig().excursion_band_share == EXCURSION_BAND_SHARE
    assert Manifest(STORE_FORMAT, "v", "h", {}, {}, (), {}).effective_config == TrainingConfig()


# -- refusals: one line, the file, the field, what to do ------------------------------------------------
def _refusal(raw: Any) -> str:
    with pytest.raises(StoreError) as caught:
        _parse(raw)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(SOURCE) and "retrain the store with 'moldwatch train'" in message
    return message


@pytest.mark.parametrize("edit, field, problem", [
    (lambda r: r["groups"][0]["threshold"].pop("base"), "groups[0].threshold.base", "is missing"),
    (lambda r: r["groups"][0]["threshold"].update(base=float("nan")), "groups[0].threshold.base", "is nan (must be a finite number)"),
    (lambda r: r["groups"][1].update(rows="300"), "groups[1].rows", "must be a whole number, got text"),
    (lambda r: r["groups"][0].update(feature_means=r["groups"][0]["feature_means"][:-1]), "groups[0].feature_means",
     "has"),
    (lambda r: r.pop("groups"), "groups", "is missing"),
    (lambda r: r["calibration"]["units"][0].update(factor=float("inf")), "calibration.units[0].factor", "is inf"),
    (lambda r: r["conditional"].update(combine="either"), "conditional.combine", "must be one of conditional, max, groups"),
    (lambda r: r["config"]["threshold"].update(max_imputed_share="half"), "config.threshold.max_imputed_share",
     "must be a number, got text"),
    (lambda r: r["facility_defaults"][next(iter(r["facility_defaults"]))].update(item=7), "facility_defaults.", "must be text"),
])
def test_a_bad_manifest_is_refused_naming_the_field(raw, edit, field, problem) -> None:
    bad = copy.deepcopy(raw)
    edit(bad)
    message = _refusal(bad)
    assert f"field '{field}" in message and problem in message


@pytest.mark.parametrize("found, says", [
    (5, "store format 5 is not supported (expected 4); retrain the store with 'moldwatch train'. It was written by another"),
    (3, "store format 3 is not supported (expected 4); retrain the store with 'moldwatch train'. Format 3 (excursion bands, "
        "pooled part groups, lot calibration) was written by an older moldwatch"),
    ("4", "store format '4' is not supported"),
    (True, "store format True is not supported"),
    (None, "The manifest has no store_format"),
])
def test_another_format_version_is_refused_by_name(raw, found, says) -> None:
    bad = {**raw, "store_format": found}
    if found is None:
        del bad["store_format"]
    assert says in _refusal(bad)


def test_a_store_from_before_the_later_format_4_fields_reads_as_it_was_served(raw) -> None:
    legacy = copy.deepcopy(raw)
    for key in ("group_excursions", "probability_model", "held_out_excursions"):
        legacy["conditional"].pop(key)
    for unit in legacy["conditional"]["units"].values():
        for key in ("lasting_ratio", "follow_new_settings", "baseline_halflife", "neighbour_tables"):
            unit.pop(key)
    for key in ("drift", "setting_clusters", "config"):
        legacy.pop(key)
    manifest = _parse(legacy)
    section = manifest.conditional
    assert section is not None and section.group_excursions is LEGACY_GROUP_EXCURSIONS and section.probability_model is None
    unit = next(iter(section.units.values()))
    assert (unit.lasting_ratio, unit.follow_new_settings, unit.baseline_halflife, unit.neighbour_tables) == (
        LEGACY_LASTING_RATIO, LEGACY_FOLLOW_NEW_SETTINGS, LEGACY_BASELINE_HALFLIFE, ())
    assert manifest.drift is None and manifest.config is None and manifest.effective_config == TrainingConfig()
    assert LEGACY_PROBABILITY_BLEND == 1.0


# -- properties ----------------------------------------------------------------------------------
def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, tuple[Any, ...]]]:
    """(field name as the refusals spell it, key path) of every value in the typed sections."""
    if isinstance(value, dict):
        for key, child in value.items():
            name = f"{path}.{key}" if path else str(key)
            yield name, (key,)
            if not (path == "" and key in OPAQUE):
                for inner, keys in _leaves(child, name):
                    yield inner, (key, *keys)
    elif isinstance(value, list):
        for i, child in enumerate(value[:2]):  # the first two of a list stand for the rest
            name = f"{path}[{i}]"
            yield name, (i,)
            for inner, keys in _leaves(child, name):
                yield inner, (i, *keys)


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
DELETE = object()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_one_edit_parses_or_is_refused_naming_where(raw, data) -> None:
    """Whatever one value of a manifest becomes (or if it goes), the reader parses it or raises a
    StoreError naming that field or one inside it; never a KeyError, TypeError or ValueError."""
    leaves = list(_leaves(raw))
    name, keys = data.draw(st.sampled_from(leaves), label="field")
    value = data.draw(st.one_of(st.just(DELETE), JSON_VALUES), label="becomes")
    edited = copy.deepcopy(raw)
    parent = edited
    for key in keys[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[keys[-1]]
    else:
        parent[keys[-1]] = value
    try:
        _parse(edited)
    except StoreError as exc:
        message = str(exc)
        assert "\n" not in message
        if keys == ("store_format",):
            assert "store format" in message
        else:
            named = message.split("field '", 1)[1].split("'", 1)[0]
            # the field itself, one inside it, or (an edited dictionary key) its parent's next field
            parent_name = name.rsplit(".", 1)[0] if "." in name else name
            assert named.startswith((name, parent_name)), (name, message)


FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)
NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=6)


@st.composite
def group_entries(draw: st.DrawFn) -> GroupEntry:
    n = draw(st.integers(1, 4))
    vector = st.lists(FINITE, min_size=n, max_size=n).map(tuple)
    return GroupEntry(
        id=draw(NAMES), key=StoreGroupKey(draw(NAMES), draw(NAMES), draw(NAMES), draw(st.integers(-1, 40))),
        model_kind=draw(st.sampled_from(["iforest", "autoencoder", "memae"])),
        artifacts={"model": draw(NAMES), "forward": draw(NAMES)}, rows=draw(st.integers(0, 10**7)),
        lots=draw(st.integers(0, 10**4)), lot_defect_rate=draw(FINITE),
        features=tuple(draw(st.lists(NAMES, min_size=n, max_size=n))), scaler_min=draw(vector), scaler_max=draw(vector),
        feature_means=draw(vector), feature_median_scaled=draw(vector), feature_error_scale=draw(vector),
        feature_median_raw=draw(st.one_of(vector, st.just(()))), feature_band=Band(draw(vector), draw(vector)),
        loss_summary=draw(st.dictionaries(NAMES, FINITE, max_size=3)),
        threshold=GroupThreshold(*(draw(FINITE) for _ in range(7))),
        setting_centroid=tuple(draw(st.lists(FINITE, max_size=3))),
        setting_mode=tuple(draw(st.lists(st.one_of(st.none(), FINITE), max_size=3))),
        training={"seconds": draw(FINITE)},
    )


@settings(max_examples=200, deadline=None)
@given(entry=group_entries())
def test_any_group_entry_round_trips_through_json(entry: GroupEntry) -> None:
    text = json.dumps(entry.to_dict(), allow_nan=False)
    assert read(GroupEntry.from_dict, json.loads(text)) == entry


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.text(max_size=3), st.booleans(), st.none()))
def test_a_threshold_that_is_not_a_finite_number_is_refused(value: Any) -> None:
    entry = json.loads(json.dumps(GroupEntry(
        "g", StoreGroupKey("M", "F", "I", 0), "iforest", {"forward": "f.npz"}, 1, 1, 0.0, ("p",), (0.0,), (1.0,), (0.5,),
        (0.5,), (0.5,), (0.5,), Band((0.0,), (1.0,)), {}, GroupThreshold(1, 1, 1, 0, 0, 0, 0), (), (), {}).to_dict()))
    entry["threshold"]["base"] = value
    with pytest.raises(StoreError, match=r"field 'groups\[7\]\.threshold\.base' "):
        read(GroupEntry.from_dict, entry, SOURCE, "groups[7]")
