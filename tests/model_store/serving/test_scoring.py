"""The scoring engine's own rules on a store of IsolationForests only (no TensorFlow): batch and
stream agree, the order of records does not matter, evidence has a boundary, state carries over.

Each rule holds for both deciders: the store's default (the setting-conditioned scorer decides
every record it can judge, combine "conditional") and the setting groups alone (``conditional=False``,
as the group calibration scores history). Family-specific behaviour (AE/MemAE excursions,
calibration on every path) is in test_scoring_families.py; what only the conditional scorer does
(coverage, combine modes) in test_scoring_conditional.py."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_store.canonical import canonical_records
from model_store.serving.scoring import UNSCORABLE, UNSCORABLE_CAUSES, ScoringEngine, unscorable_cause
from model_store.serving.store import open_store

NUMBERS = ("loss", "threshold", "margin", "score", "excursion", "measured_share", "defect_probability", "distance")
LABELS = ("group_id", "resolution", "model_kind", "cluster", "anomaly", "reason")


@pytest.fixture(scope="module", params=["conditional", "groups"])
def engine(request, forest_store) -> ScoringEngine:
    return ScoringEngine(open_store(forest_store), conditional=request.param == "conditional")


def _judging_features(engine: ScoringEngine, batch, row: int = 0) -> list[str]:
    """The production fields the record's decider reads: its maker's conditional unit, else its group."""
    unit = engine.conditional_units.get(batch.maker[row])
    return list(unit.features) if unit is not None else list(engine.group(batch.group_id[row]).features)


@pytest.fixture(scope="module")
def records(forest_plant) -> pd.DataFrame:
    frame = canonical_records(forest_plant.records, forest_plant.schema)
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def judged(engine, records) -> pd.DataFrame:
    """Complete records the store judges (no gap anywhere, so no imputation order effects)."""
    batch = engine.score(records)
    complete = np.array([not gaps for gaps in batch.imputed]) & (batch.resolution != UNSCORABLE)
    chosen = records[complete]
    # some alarms too, so the properties below cover both sides of the line
    alarms = chosen[batch.anomaly[complete]].head(20)
    return pd.concat([chosen.head(180), alarms]).drop_duplicates("record_id").reset_index(drop=True)


def _table(batch, ids) -> pd.DataFrame:
    return pd.DataFrame({"record_id": ids, **{k: getattr(batch, k) for k in NUMBERS + LABELS}}).set_index("record_id")


def test_the_store_judges_records_and_alarms_some(judged, engine) -> None:
    batch = engine.score(judged)
    assert len(judged) >= 100 and batch.anomaly.any() and not batch.anomaly.all()
    # the verdict is the rule: anomalous exactly when score > 1
    assert np.array_equal(batch.anomaly, batch.score > 1.0)
    assert np.array_equal(batch.anomaly, batch.margin > 0)
    if engine.conditional_units:
        # The setting-conditioned scorer decides every record (combine "conditional"); its score is
        # max(log p / log p_line, excursion), which is > 1 exactly when the evidence sum (loss) is
        # beyond its line (threshold) or a field is a gross excursion. (It replaced the groups'
        # loss / line as the default decider: this test pinned "iforest" and loss / line before.)
        assert set(batch.model_kind) == {"conditional"}
        assert np.all(batch.score >= batch.excursion)
        assert np.array_equal(batch.anomaly, (batch.loss > batch.threshold) | (batch.excursion > 1.0))
    else:
        assert set(batch.model_kind) == {"iforest"}
        # score = max(loss / line, excursion)
        assert np.allclose(batch.score, np.maximum(batch.loss / batch.threshold, batch.excursion))


def test_one_record_at_a_time_equals_the_whole_batch(engine, judged) -> None:
    # The worker scores micro-batches of any size, carrying each facility's state and each part's
    # running baseline in its memory; `moldwatch score` whole files: same numbers.
    ordered = judged.sort_values("timestamp", kind="stable").reset_index(drop=True)
    whole = _table(engine.score(ordered, memory={}), ordered["record_id"])
    memory: dict = {}
    for i in range(len(ordered)):
        one = ordered.iloc[[i]]
        single = _table(engine.score(one, memory=memory), one["record_id"])
        pd.testing.assert_frame_equal(single, whole.loc[single.index], check_dtype=False)


def test_a_single_record_without_memory_is_judged_from_where_the_history_ended(engine, judged) -> None:
    # POST /score of one shot with no stream behind it: its part's baseline is the store's own
    # (the end of its history), the same as the first record of a fresh batch.
    ordered = judged.sort_values("timestamp", kind="stable").reset_index(drop=True)
    first = ordered.drop_duplicates(["facility", "item"]).head(20)
    alone = pd.concat([_table(engine.score(first.iloc[[i]]), first["record_id"].iloc[[i]]) for i in range(len(first))])
    together = _table(engine.score(first), first["record_id"])  # one record per part: nothing carried between them
    pd.testing.assert_frame_equal(alone, together.loc[alone.index], check_dtype=False, check_index_type=False)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False))
def test_record_order_does_not_change_any_verdict(engine, judged, rng) -> None:
    order = list(range(len(judged)))
    rng.shuffle(order)
    shuffled = judged.iloc[order].reset_index(drop=True)
    a = _table(engine.score(judged), judged["record_id"])
    b = _table(engine.score(shuffled), shuffled["record_id"]).loc[a.index]
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


def test_explain_false_changes_no_number_and_lists_nothing(engine, judged) -> None:
    full, bare = engine.score(judged), engine.score(judged, explain=False)
    pd.testing.assert_frame_equal(_table(full, judged["record_id"]), _table(bare, judged["record_id"]), check_dtype=False)
    assert all(t for t in full.top_features) and not any(bare.top_features) and not any(bare.imputed)


def test_evidence_boundary_half_the_fields_measured_is_enough_one_less_is_not(engine, judged) -> None:
    row = judged.iloc[[0]].copy()
    features = _judging_features(engine, engine.score(row))
    assert engine.max_imputed_share == 0.5 and len(features) % 2 == 0
    half = row.copy()
    half[features[: len(features) // 2]] = np.nan  # measured share exactly 0.5: still judged
    batch = engine.score(half)
    assert batch.resolution[0] != UNSCORABLE and batch.measured_share[0] == 0.5
    fewer = row.copy()
    fewer[features[: len(features) // 2 + 1]] = np.nan
    batch = engine.score(fewer)
    assert batch.resolution[0] == UNSCORABLE and unscorable_cause(batch.reason[0]) == "insufficient_evidence"
    assert not batch.anomaly[0] and np.isnan(batch.score[0])
    assert batch.measured_share[0] == pytest.approx((len(features) // 2 - 1) / len(features))


def test_unknown_maker_and_facility_are_unscorable_with_their_cause(engine, judged) -> None:
    row = judged.iloc[[0]].copy()
    row["maker"], row["facility"] = "NO-SUCH-MAKER", "F99"
    batch = engine.score(row)
    assert batch.resolution[0] == UNSCORABLE and batch.reason[0] == UNSCORABLE_CAUSES["unknown_maker"]
    assert batch.group_id[0] is None and not batch.anomaly[0]


def test_a_known_facility_without_its_maker_is_judged_as_its_maker(engine, judged) -> None:
    row = judged.iloc[[0]].copy()
    judged_with_maker = engine.score(row)
    row["maker"] = None
    batch = engine.score(row)
    assert batch.maker[0] == judged_with_maker.maker[0] and batch.group_id[0] == judged_with_maker.group_id[0]
    assert batch.score[0] == judged_with_maker.score[0]


def test_a_facilitys_state_carries_over_between_calls_through_memory(engine, judged) -> None:
    complete = judged.iloc[[0]].copy()
    setting_fields = list(engine.manifest.setting_models[engine.score(complete).maker[0]].fields)
    gap = complete.copy()
    gap["record_id"] = "gap"
    gap[["item", *setting_fields]] = np.nan
    memory: dict = {}
    first = engine.score(complete, memory=memory, backward=False)
    after_first = copy.deepcopy(memory)
    second = engine.score(gap, memory=memory, backward=False)
    assert second.group_id[0] == first.group_id[0] and second.item[0] == first.item[0]
    assert "item" in second.imputed[0] and set(setting_fields) <= set(second.imputed[0])
    # same production values, same judge, same part baseline: as if the complete record came twice
    again = engine.score(complete.assign(record_id="again"), memory=after_first, backward=False)
    assert second.score[0] == pytest.approx(again.score[0])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), gap_share=st.sampled_from([0.0, 0.3, 0.7, 1.0]))
def test_each_unscorable_record_carries_the_cause_its_reason_names(engine, records, seed, gap_share) -> None:
    """The cause (a metric label) comes with the reason from one place: records with gaps in any
    field, unknown makers and unknown items give reasons, each naming exactly the carried cause."""
    rng = np.random.default_rng(seed)
    rows = records.iloc[rng.choice(len(records), size=60, replace=False)].copy().reset_index(drop=True)
    fields = [c for c in rows.columns if c not in ("record_id", "timestamp", "facility", "maker")]
    for field in fields:
        rows.loc[rng.random(len(rows)) < gap_share * 0.5, field] = np.nan if rows[field].dtype.kind == "f" else None
    rows.loc[rng.random(len(rows)) < 0.1, "maker"] = "NO-SUCH-MAKER"
    batch = engine.score(rows)
    for reason, cause, resolution in zip(batch.reason, batch.cause, batch.resolution):
        assert (cause is None) == (reason is None) == (resolution != UNSCORABLE), (reason, cause, resolution)
        if cause is not None:
            assert cause in UNSCORABLE_CAUSES and unscorable_cause(reason) == cause
