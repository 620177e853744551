"""The serving core on a store with every model family (TensorFlow-trained AE and MemAE included):
excursions, evidence, calibration, verdict schema. Rules that need no particular family are in
test_scoring.py, on a store of forests only.

The setting-conditioned scorer decides by default (combine "conditional"), so every judged verdict's
model_kind is "conditional". The family rules below are the setting groups' own and are checked on
the groups alone (``conditional=False``: how the group calibration scores history, and what decides
under combine "groups" or "max"); where a rule must also hold for the default verdict (a gross
excursion alarms, a value pushed further never lowers the score, evidence has a boundary), it is
checked on both."""
from __future__ import annotations

import dataclasses
import json

import jsonschema
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_store.canonical import canonical_records
from model_store.models import MODEL_KINDS
from model_store.serving.scoring import UNSCORABLE_CAUSES, ScoringEngine, unscorable_cause
from model_store.serving.store import open_store
from model_store.serving.verdict import VERDICT_SCHEMA_PATH, VERDICT_VERSION, to_verdicts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(trained_store) -> ScoringEngine:
    return ScoringEngine(open_store(trained_store))


@pytest.fixture(scope="module")
def groups(trained_store) -> ScoringEngine:
    """The setting groups alone decide (no conditional scorer)."""
    return ScoringEngine(open_store(trained_store), conditional=False)


@pytest.fixture(scope="module")
def banded(trained_store) -> ScoringEngine:
    """The conditional scorer decides and the setting groups' own bands alarm beside it
    (conditional.group_excursions on; the default is off)."""
    manifest = open_store(trained_store)
    raw = {**manifest.raw, "conditional": {**manifest.raw["conditional"], "group_excursions": True}}
    return ScoringEngine(dataclasses.replace(manifest, raw=raw))


@pytest.fixture(scope="module")
def scored(engine, small_plant) -> tuple[pd.DataFrame, object]:
    records = canonical_records(small_plant.records, small_plant.schema)
    records = records.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return records, engine.score(records, memory={}, backward=True)


@pytest.fixture(scope="module")
def normal_rows(scored, groups) -> dict[str, pd.DataFrame]:
    """Per model family: a few complete, unflagged records judged on the exact path (by the groups:
    with the conditional scorer deciding, every verdict's model_kind is "conditional")."""
    records, _ = scored
    batch = groups.score(records, memory={}, backward=True)
    out = {}
    for kind in MODEL_KINDS:
        ok = (batch.model_kind == kind) & (batch.resolution == "exact") & ~batch.anomaly
        ok &= np.array([not imp for imp in batch.imputed])
        rows = np.flatnonzero(ok)[:5]
        if len(rows):
            out[kind] = records.iloc[rows].reset_index(drop=True)
    return out


def test_store_holds_every_model_family(normal_rows) -> None:
    assert set(normal_rows) == set(MODEL_KINDS)


def _push(engine: ScoringEngine, row: pd.DataFrame, field_index: int, value: float):
    batch = engine.score(row)
    group = engine.group(batch.group_id[0])
    moved = row.copy()
    moved[group.features[field_index]] = value
    return group, engine.score(moved)


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("spans", [1.0, 3.0, 10.0])
def test_gross_excursions_always_alarm_and_are_named_first(engine, groups, banded, normal_rows, kind, spans) -> None:
    row = normal_rows[kind].iloc[[0]]
    group = groups.group(groups.score(row).group_id[0])
    for j, field in enumerate(group.features):
        # beyond the excursion band (the group's training band widened to its part's history) by
        # the tolerance plus 1, 3 or 10 training spans
        step = group.tolerance[j] + spans * group.scaler.span[j]
        for value in (group.band_high[j] + step, group.band_low[j] - step):
            _, out = _push(groups, row, j, value)
            assert out.anomaly[0], (kind, field, value)
            assert out.top_features[0][0]["field"] == field and out.top_features[0][0]["excursion"] > 1
            assert out.excursion[0] > 1 and out.score[0] > 1 and out.margin[0] > 0
            # with group_excursions on, the group's bands still hold when the conditional scorer decides
            _, both = _push(banded, row, j, value)
            assert both.anomaly[0] and both.model_kind[0] == "conditional", (kind, field, value)
            assert both.excursion[0] > 1 and both.score[0] > 1 and both.margin[0] > 0
            # by default the conditional scorer alone decides: 3 spans and more beyond the group's
            # band are beyond anything the part produced too (1 span may be within its wider band)
            if spans >= 3.0:
                _, default = _push(engine, row, j, value)
                assert default.anomaly[0] and default.model_kind[0] == "conditional", (kind, field, value)
                assert default.score[0] > 1 and default.margin[0] > 0


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_value_at_the_tolerance_is_not_an_excursion_and_just_beyond_is(banded, groups, normal_rows, kind) -> None:
    # the group's own band (with the conditional scorer deciding, the worst of its bands and the
    # group's is the verdict's excursion, so only the groups alone show the group's ratio of 1)
    row = normal_rows[kind].iloc[[0]]
    group = groups.group(groups.score(row).group_id[0])
    j = 0
    _, at_line = _push(groups, row, j, group.band_high[j] + group.tolerance[j])
    assert at_line.excursion[0] == pytest.approx(1.0)
    _, beyond = _push(groups, row, j, group.band_high[j] + group.tolerance[j] * 1.001)
    assert beyond.excursion[0] > 1.0 and beyond.anomaly[0]
    _, both = _push(banded, row, j, group.band_high[j] + group.tolerance[j] * 1.001)
    assert both.excursion[0] > 1.0 and both.anomaly[0]


@pytest.mark.parametrize("decider", ["groups", "conditional"])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_pushing_a_field_further_out_never_lowers_the_score(engine, groups, normal_rows, kind, decider) -> None:
    row = normal_rows[kind].iloc[[0]]
    group = groups.group(groups.score(row).group_id[0])
    engine = groups if decider == "groups" else engine

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(j=st.integers(0, len(group.features) - 1), a=st.floats(0, 20), b=st.floats(0, 20), up=st.booleans())
    def check(j: int, a: float, b: float, up: bool) -> None:
        near, far = sorted((a, b))
        edge = group.scaler.maximum[j] if up else group.scaler.minimum[j]
        sign = 1.0 if up else -1.0
        _, first = _push(engine, row, j, edge + sign * near * group.scaler.span[j])
        _, second = _push(engine, row, j, edge + sign * far * group.scaler.span[j])
        assert second.score[0] >= first.score[0] - 1e-9

    check()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_imputed_fields_never_lower_the_score(groups, normal_rows, kind) -> None:
    # The groups impute a missing field with its training mean. (The conditional scorer gives a
    # missing field no evidence, as a value at its expectation: its own rule, in test_tails.py.)
    engine = groups
    row = normal_rows[kind].iloc[[0]]
    group = engine.group(engine.score(row).group_id[0])
    for j, field in enumerate(group.features):
        at_mean = row.copy()
        at_mean[field] = group.means[j]  # a real value equal to what imputation would fill in
        gap = row.copy()
        gap[field] = np.nan
        assert engine.score(gap).score[0] >= engine.score(at_mean).score[0] - 1e-9, field


def _judging_features(engine: ScoringEngine, row: pd.DataFrame) -> list[str]:
    """The production fields the record's decider reads: its maker's conditional unit, else its group."""
    batch = engine.score(row)
    unit = engine.conditional_units.get(batch.maker[0])
    return list(unit.features) if unit is not None else list(engine.group(batch.group_id[0]).features)


@pytest.mark.parametrize("decider", ["groups", "conditional"])
def test_no_measurements_is_unscorable_not_normal(engine, groups, normal_rows, decider) -> None:
    engine = groups if decider == "groups" else engine
    row = normal_rows["autoencoder"].iloc[[0]].copy()
    row[_judging_features(engine, row)] = np.nan
    out = engine.score(row)
    assert out.resolution[0] == "unscorable" and not out.anomaly[0] and np.isnan(out.score[0])
    assert unscorable_cause(out.reason[0]) == "insufficient_evidence"
    assert out.measured_share[0] == 0.0


@pytest.mark.parametrize("decider", ["groups", "conditional"])
def test_evidence_boundary_is_the_documented_share(engine, groups, normal_rows, decider) -> None:
    engine = groups if decider == "groups" else engine
    row = normal_rows["autoencoder"].iloc[[0]].copy()
    features = _judging_features(engine, row)
    n = len(features)
    half = n // 2  # exactly max_imputed_share (0.5) missing when n is even: still scorable
    assert n % 2 == 0
    at_limit = row.copy()
    at_limit[features[:half]] = np.nan
    assert engine.score(at_limit).resolution[0] != "unscorable"
    over = row.copy()
    over[features[: half + 1]] = np.nan
    out = engine.score(over)
    assert out.resolution[0] == "unscorable" and out.measured_share[0] == pytest.approx((n - half - 1) / n)


def test_lot_calibration_alarms_track_the_lots_on_history(trained_store) -> None:
    manifest = json.loads((trained_store / "manifest.json").read_text())
    history = manifest["history"]
    assert 0.5 <= history["alarm_rate"] / history["lot_defect_rate"] <= 2.0
    units = manifest["calibration"]["units"]
    assert units
    for unit in units:
        # each calibrated unit alarms on its history as often as its lots were bad (whole shots),
        # unless its gross excursions alone already exceed that
        wanted = max(int(np.floor(unit["expected_bad"] + 0.5)), unit["history_excursions"])
        assert unit["history_alarms"] == min(wanted, unit["rows"]) or unit["history_alarms"] == wanted - 1  # a tie at the line


def test_defect_probability_is_monotone_in_score_per_path(scored) -> None:
    """Monotone in the score where the score is the tail score; a gross excursion (its ratio > 1
    and the larger term of the score) has one probability of its own, whatever its ratio
    (model_store/serving/probability.py)."""
    _, batch = scored
    excursion = np.nan_to_num(np.asarray(batch.excursion, dtype=float), nan=0.0)
    gross = (excursion > 1.0) & (excursion >= np.nan_to_num(batch.score, nan=0.0))
    for path in set(batch.resolution) - {"unscorable"}:
        rows = (batch.resolution == path) & np.isfinite(batch.defect_probability)
        assert np.all((batch.defect_probability[rows] >= 0) & (batch.defect_probability[rows] <= 1))
        tail = rows & ~gross
        order = np.argsort(batch.score[tail])
        assert np.all(np.diff(batch.defect_probability[tail][order]) >= -1e-12), path
    judged = gross & np.isfinite(batch.defect_probability)
    assert judged.sum() >= 10  # the small plant's history has gross excursions on several paths
    maker = np.asarray(batch.maker, dtype=object)
    for name in set(maker[judged].tolist()):  # one probability for every gross excursion of a maker
        assert np.ptp(batch.defect_probability[judged & (maker == name)]) <= 1e-12, name


def test_verdicts_validate_against_the_v2_schema(scored, engine) -> None:
    records, batch = scored
    verdicts = to_verdicts(records, batch, engine.model_version)
    schema = json.loads(VERDICT_SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for verdict in verdicts[::97]:
        validator.validate(verdict)
    assert verdicts[0]["verdict_version"] == VERDICT_VERSION == 4
    scored_rows = [v for v in verdicts if v["resolution"] != "unscorable"]
    assert all(v["defect_probability"] is not None for v in scored_rows)
    assert all((v["margin"] > 0) == v["anomaly"] for v in scored_rows)


def test_unscorable_causes_are_named() -> None:
    assert unscorable_cause(UNSCORABLE_CAUSES["no_group_near"]) == "no_group_near"
    assert unscorable_cause(UNSCORABLE_CAUSES["insufficient_evidence"] + ": more than 50 %") == "insufficient_evidence"
    assert unscorable_cause(None) == "other" and unscorable_cause("something else") == "other"


def test_fallback_paths_need_lot_evidence(trained_store) -> None:
    calibration = json.loads((trained_store / "manifest.json").read_text())["calibration"]
    for path, info in calibration["paths"].items():
        if path in ("exact", "part"):
            assert info["used"] or (info["evidence"] is not None and info["evidence"] < calibration["min_evidence"])
        else:
            assert info["used"] == (info["evidence"] is not None and info["evidence"] >= calibration["min_evidence"]), path


def test_disabled_paths_are_not_taken(trained_store, small_plant) -> None:
    engine = ScoringEngine(open_store(trained_store))
    unused = {p for p, use in engine.calibration.paths.items() if not use.used}
    records = canonical_records(small_plant.records.head(5000), small_plant.schema)
    assert not (set(engine.score(records).resolution) & unused)


def test_verdict_numbers_keep_the_sign_of_a_tiny_margin(scored, engine) -> None:
    records, _batch = scored
    one = records.iloc[[0]]
    single = engine.score(one)
    single.margin[0], single.anomaly[0], single.score[0] = 3e-7, True, 1.0000001
    verdict = to_verdicts(one, single, engine.model_version)[0]
    assert verdict["margin"] == 3e-7 and verdict["anomaly"]
