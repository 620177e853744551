"""Verdict objects from scored arrays: pure, no store, no model (model_store/serving/verdict.py)."""
from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.serving.scoring import UNSCORABLE, ScoredBatch
from model_store.serving.verdict import VERDICT_SCHEMA_PATH, VERDICT_VERSION, to_verdicts

SCHEMA = json.loads(VERDICT_SCHEMA_PATH.read_text())


def batch_of(n: int, **columns: Any) -> ScoredBatch:
    """A batch of ``n`` unscorable records, with the given columns replaced."""
    defaults: dict[str, Any] = {
        "maker": np.full(n, "HANIL", dtype=object), "facility": np.full(n, "F01", dtype=object),
        "item": np.full(n, "ITM-001", dtype=object), "cluster": np.full(n, -1, dtype=np.int64),
        "group_id": np.full(n, None, dtype=object), "resolution": np.full(n, UNSCORABLE, dtype=object),
        "model_kind": np.full(n, None, dtype=object), "anomaly": np.zeros(n, dtype=bool),
        "reason": np.full(n, "no trained group near this setting", dtype=object),
        "imputed": [[] for _ in range(n)], "out_of_range": [[] for _ in range(n)], "top_features": [[] for _ in range(n)],
    }
    for f in dataclasses.fields(ScoredBatch):
        if f.default is dataclasses.MISSING:  # basis, line, line_version: their own defaults
            defaults.setdefault(f.name, np.full(n, np.nan))
    defaults.update(columns)
    return ScoredBatch(**defaults)


def records_of(n: int, timestamps: Any = None) -> pd.DataFrame:
    stamps = timestamps if timestamps is not None else pd.to_datetime(["2026-11-27T08:00:00Z"] * n, format="ISO8601")
    return pd.DataFrame({"record_id": [f"r{i}" for i in range(n)], "timestamp": stamps})


def scored_batch() -> ScoredBatch:
    """Two judged records: one normal, one a gross excursion."""
    return batch_of(
        2, cluster=np.array([0, 3]), group_id=np.array(["HANIL__F01__ITM-001__c0"] * 2, dtype=object),
        resolution=np.array(["exact", "nearest"], dtype=object), distance=np.array([0.0, 0.123456789]),
        model_kind=np.array(["iforest", "autoencoder"], dtype=object), loss=np.array([0.4, 2.0]),
        threshold=np.array([0.5, 0.5]), margin=np.array([-0.1, 1.5]), score=np.array([0.8, 12.0]),
        anomaly=np.array([False, True]), excursion=np.array([0.2, 12.0]), measured_share=np.array([1.0, 0.75]),
        defect_probability=np.array([0.01, np.nan]), reason=np.array([None, None], dtype=object),
        imputed=[[], ["PV_CUSHION"]], out_of_range=[[], ["PV_PEAK_PRS"]],
        top_features=[[{"field": "PV_FILL_TM", "error": 1.2}], [{"field": "PV_PEAK_PRS", "error": 9.0, "excursion": 12.0}]],
    )


def test_one_verdict_per_record_in_input_order_with_every_field() -> None:
    verdicts = to_verdicts(records_of(2), scored_batch(), "v1", scored_at="2026-11-27T08:00:01.000+00:00")
    assert [v["record_id"] for v in verdicts] == ["r0", "r1"]
    normal, alarm = verdicts
    assert normal["verdict_version"] == VERDICT_VERSION == 4
    assert (normal["anomaly"], alarm["anomaly"]) == (False, True)
    assert (normal["setting_cluster"], alarm["setting_cluster"]) == (0, 3)  # cluster 0 is a cluster, not "none"
    assert alarm["distance"] == 0.1234568  # seven significant digits
    assert alarm["defect_probability"] is None  # NaN is not JSON: null
    assert alarm["imputed"] == ["PV_CUSHION"] and alarm["out_of_range"] == ["PV_PEAK_PRS"]
    assert alarm["top_features"][0] == {"field": "PV_PEAK_PRS", "error": 9.0, "excursion": 12.0}
    assert normal["model_version"] == "v1" and normal["scored_at"] == "2026-11-27T08:00:01.000+00:00"
    assert normal["timestamp"] == "2026-11-27T08:00:00+00:00"
    for verdict in verdicts:
        jsonschema.validate(verdict, SCHEMA)
        json.dumps(verdict, allow_nan=False)  # strict JSON


def test_the_line_and_its_version_are_in_every_verdict() -> None:
    trained = to_verdicts(records_of(2), scored_batch(), "v1")
    assert [(v["line"], v["line_version"]) for v in trained] == [(1.0, None), (1.0, None)]
    raised = scored_batch()
    raised.line, raised.line_version = np.array([1.0, 1.5]), 4
    verdicts = to_verdicts(records_of(2), raised, "v1")
    assert [(v["line"], v["line_version"]) for v in verdicts] == [(1.0, None), (1.5, 4)]
    for verdict in verdicts:
        jsonschema.validate(verdict, SCHEMA)


def test_unscorable_records_carry_nulls_and_their_reason() -> None:
    batch = batch_of(1, maker=np.array([None], dtype=object), item=np.array([np.nan], dtype=object))
    verdict = to_verdicts(records_of(1), batch, "v1")[0]
    assert verdict["setting_cluster"] is None and verdict["maker"] is None and verdict["item"] is None
    assert verdict["resolution"] == "unscorable" and verdict["reason"] == "no trained group near this setting"
    assert all(verdict[k] is None for k in ("loss", "threshold", "margin", "score", "excursion", "distance"))
    assert verdict["anomaly"] is False
    jsonschema.validate(verdict, SCHEMA)
    # the default scored_at: UTC, milliseconds
    assert datetime.fromisoformat(verdict["scored_at"]).utcoffset() == timedelta(0)
    assert len(verdict["scored_at"].split(".")[1]) == len("000+00:00")


@pytest.mark.parametrize(("margin", "expected"), [(3e-7, 3e-7), (-3e-7, -3e-7), (0.0, 0.0), (123456789.0, 123456800.0),
                                                  (1.00000004, 1.0), (1.00000005, 1.000000)])
def test_numbers_keep_seven_significant_digits_and_the_sign_of_a_tiny_margin(margin: float, expected: float) -> None:
    verdict = to_verdicts(records_of(1), batch_of(1, margin=np.array([margin])), "v1")[0]
    assert verdict["margin"] == expected
    assert math.copysign(1.0, verdict["margin"]) == math.copysign(1.0, margin)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_numbers_become_null(value: float) -> None:
    verdict = to_verdicts(records_of(1), batch_of(1, score=np.array([value]), loss=np.array([value])), "v1")[0]
    assert verdict["score"] is None and verdict["loss"] is None


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300))
def test_any_finite_number_round_trips_within_seven_digits(value: float) -> None:
    out = to_verdicts(records_of(1), batch_of(1, score=np.array([value])), "v1")[0]["score"]
    assert out == pytest.approx(value, rel=5.000001e-7, abs=0.0)
    assert (out > 0) == (value > 0) and (out < 0) == (value < 0)


def _stamps(values: list[datetime | None], zone: str | None) -> pd.Series:
    series = pd.Series(pd.to_datetime(values, utc=zone is not None)).astype("datetime64[us, UTC]" if zone else "datetime64[us]")
    return series.dt.tz_convert(zone) if zone not in (None, "UTC") else series


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1))), min_size=1, max_size=6),
    st.sampled_from([None, "UTC", "Europe/Berlin", "America/Sao_Paulo"]),
)
def test_timestamps_are_what_isoformat_writes_offset_included(values: list[datetime | None], zone: str | None) -> None:
    # The vectorised path must equal pandas' own isoformat(), value by value: an aware time keeps its
    # offset (a verdict without one would be read as local time by a consumer).
    stamps = _stamps([v.replace(tzinfo=UTC) if (v and zone) else v for v in values], zone)
    verdicts = to_verdicts(records_of(len(stamps), stamps), batch_of(len(stamps)), "v1")
    expected = [None if pd.isna(s) else pd.Timestamp(s).isoformat() for s in stamps]
    assert [v["timestamp"] for v in verdicts] == expected


def test_timestamps_given_as_text_or_objects_are_written_as_iso() -> None:
    stamps = pd.Series([pd.Timestamp("2026-11-27T08:00:00.250000+00:00"), None], dtype=object)
    verdicts = to_verdicts(records_of(2, stamps), batch_of(2), "v1")
    assert [v["timestamp"] for v in verdicts] == ["2026-11-27T08:00:00.250000+00:00", None]


_CAUSES = st.sampled_from([None, "unknown_maker", "no_group_near", "insufficient_evidence", "broken_model"])


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(["F01", "F02", "7"]), st.sampled_from(["ITM-1", "ITM-2", None]),
                               st.booleans(), _CAUSES, st.lists(st.sampled_from(["a", "b"]), max_size=2)),
                     min_size=1, max_size=12))
def test_the_columns_are_what_the_verdicts_say(rows) -> None:
    """The columns the sink and metrics read agree with the verdicts, field by field, and the
    carried cause is the one the reason text names (the path for verdicts read back)."""
    from model_store.serving.scoring import UNSCORABLE_CAUSES
    from model_store.serving.verdict import VerdictColumns, to_verdicts_and_columns, verdict_columns

    n = len(rows)
    batch = batch_of(n, facility=np.array([r[0] for r in rows], dtype=object),
                     item=np.array([r[1] for r in rows], dtype=object),
                     anomaly=np.array([r[2] and r[3] is None for r in rows]),
                     resolution=np.array([UNSCORABLE if r[3] else "exact" for r in rows], dtype=object),
                     reason=np.full(n, None, dtype=object), imputed=[list(r[4]) for r in rows])
    for i, (_, _, _, cause, _) in enumerate(rows):
        if cause is not None:
            batch.unscorable(np.array([i]), cause, ": group g" if cause == "broken_model" else "")
    verdicts, columns = to_verdicts_and_columns(records_of(n), batch, "v1")
    assert columns == verdict_columns(batch) == VerdictColumns.of_verdicts(verdicts)
    assert [v["reason"] is None for v in verdicts] == [c is None for c in columns.cause]
    assert all(c is None or v["reason"].startswith(UNSCORABLE_CAUSES[c]) for v, c in zip(verdicts, columns.cause))
