"""Decoding raw documents: what is accepted, what becomes a dead letter and why; never an exception."""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from bson import Decimal128, Int64, ObjectId
from hypothesis import HealthCheck, given, settings, strategies as st

from model_store.schema import parse_schema
from service.decode import (
    INVALID_FIELD,
    MISSING_FIELD,
    NOT_A_DOCUMENT,
    REASONS,
    UNKNOWN_MAKER,
    CanonicalRecord,
    DeadLetter,
    RecordDecoder,
)

SCHEMA = parse_schema(
    {
        "record_id": "_id",
        "timestamp": "TimeStamp",
        "facility": "EQUIP_CD",
        "item": "PART_NAME",
        "lot_date": "PART_FACT_PLAN_DATE",
        "maker": {"column": "maker"},
        "makers": {
            "A": {"settings": ["Barrel Temp 1", "s2"], "production": ["Cycle_Time", "p2"]},
            "B": {"settings": ["t1"], "production": ["q1"]},
        },
    },
    source="test-schema",
)
DECODER = RecordDecoder(SCHEMA)


def good(**changes):
    doc = {
        "_id": ObjectId("6b0518ffc15a762ceb0939d4"),
        "TimeStamp": datetime(2026, 1, 5, 8, 30, tzinfo=timezone.utc),
        "EQUIP_CD": "F01",
        "PART_NAME": "ITM-001",
        "maker": "A",
        "Barrel Temp 1": 230.0,
        "s2": 50,
        "Cycle_Time": "13.25",
        "p2": Decimal128("1.5"),
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not ...}


def test_valid_document_becomes_a_canonical_row():
    out = DECODER.decode(good())
    assert isinstance(out, CanonicalRecord)
    row = out.row
    assert row["record_id"] == "6b0518ffc15a762ceb0939d4"  # ObjectId -> its hex string
    assert row["timestamp"] == datetime(2026, 1, 5, 8, 30)  # naive UTC, like the offline path
    assert (row["maker"], row["facility"], row["item"]) == ("A", "F01", "ITM-001")
    assert row["Barrel Temp 1"] == 230.0 and row["s2"] == 50.0
    assert row["Cycle_Time"] == 13.25 and row["p2"] == 1.5  # numeric string, Decimal128
    assert math.isnan(row["t1"]) and math.isnan(row["q1"])  # other maker's fields: missing
    assert out.record_time == datetime(2026, 1, 5, 8, 30, tzinfo=timezone.utc).timestamp()
    assert list(row) == DECODER.columns


def test_timestamps_in_other_zones_and_as_text_are_normalised_to_utc():
    kst = timezone(timedelta(hours=9))
    assert DECODER.decode(good(TimeStamp=datetime(2026, 1, 5, 17, 30, tzinfo=kst))).row["timestamp"] == datetime(2026, 1, 5, 8, 30)
    assert DECODER.decode(good(TimeStamp="2026-01-05T17:30:00+09:00")).row["timestamp"] == datetime(2026, 1, 5, 8, 30)
    assert DECODER.decode(good(TimeStamp="2026-01-05 08:30:00")).row["timestamp"] == datetime(2026, 1, 5, 8, 30)


def test_gaps_are_missing_values_not_errors():
    out = DECODER.decode(good(PART_NAME=None, s2=None, Cycle_Time="", p2=float("nan"), maker=...))
    assert isinstance(out, CanonicalRecord)
    assert out.row["item"] is None and out.row["maker"] is None  # imputed / looked up by facility later
    assert all(math.isnan(out.row[c]) for c in ("s2", "Cycle_Time", "p2"))


def test_integer_ids_and_codes_are_accepted_as_text():
    out = DECODER.decode(good(_id=Int64(42), EQUIP_CD=7, PART_NAME=13))
    assert isinstance(out, CanonicalRecord)
    assert (out.row["record_id"], out.row["facility"], out.row["item"]) == ("42", "7", "13")
    assert DECODER.decode(good(s2=Decimal("2.5"))).row["s2"] == 2.5


def test_lot_date_column_is_used_and_falls_back_to_the_timestamp_day():
    assert DECODER.decode(good(PART_FACT_PLAN_DATE="2026-01-04")).row["lot_date"] == "2026-01-04"
    assert DECODER.decode(good(PART_FACT_PLAN_DATE="not a date")).row["lot_date"] == "2026-01-05"
    assert DECODER.decode(good()).row["lot_date"] == "2026-01-05"


@pytest.mark.parametrize(
    "document, reason, mentions",
    [
        (good(_id=...), MISSING_FIELD, "_id"),
        (good(TimeStamp=...), MISSING_FIELD, "TimeStamp"),
        (good(EQUIP_CD=...), MISSING_FIELD, "EQUIP_CD"),
        (good(EQUIP_CD="  "), MISSING_FIELD, "EQUIP_CD"),
        (good(maker="Z"), UNKNOWN_MAKER, "Z"),
        (good(Cycle_Time="fast"), INVALID_FIELD, "Cycle_Time"),
        (good(s2=True), INVALID_FIELD, "s2"),
        (good(s2=[1, 2]), INVALID_FIELD, "s2"),
        (good(s2=float("inf")), INVALID_FIELD, "infinite"),
        (good(s2=10**400), INVALID_FIELD, "too large"),
        (good(TimeStamp=1767601800), INVALID_FIELD, "number"),
        (good(TimeStamp="yesterday-ish"), INVALID_FIELD, "TimeStamp"),
        (good(TimeStamp="9999-01-01T00:00:00"), INVALID_FIELD, "range"),
        (good(_id={"nested": 1}), INVALID_FIELD, "_id"),
        (good(EQUIP_CD=["F01"]), INVALID_FIELD, "EQUIP_CD"),
        ([good()], NOT_A_DOCUMENT, "list"),
        ("text", NOT_A_DOCUMENT, "str"),
        (None, NOT_A_DOCUMENT, "NoneType"),
    ],
)
def test_invalid_documents_become_dead_letters_with_a_reason(document, reason, mentions):
    out = DECODER.decode(document)
    assert isinstance(out, DeadLetter)
    assert out.reason == reason
    assert mentions in out.error
    assert out.document is document  # the original goes to the dead-letter topic untouched


def test_a_plant_column_name_is_what_the_error_names():
    out = DECODER.decode(good(**{"Barrel Temp 1": "hot"}))
    assert isinstance(out, DeadLetter) and out.error.startswith("Barrel Temp 1:")


def test_constant_maker_schema_and_timestamp_format():
    schema = parse_schema(
        {"record_id": "id", "timestamp": "ts", "timestamp_format": "%d/%m/%Y %H:%M", "facility": "fac", "item": "part",
         "maker": {"constant": "kamp"}, "makers": {"kamp": {"settings": ["s"], "production": ["p"]}}}
    )
    decoder = RecordDecoder(schema)
    out = decoder.decode({"id": "1", "ts": "05/01/2026 08:30", "fac": "M1", "part": "X", "s": 1, "p": 2})
    assert isinstance(out, CanonicalRecord)
    assert out.row["maker"] == "kamp" and out.row["timestamp"] == datetime(2026, 1, 5, 8, 30)
    assert decoder.decode({"id": "1", "ts": "2026-13-45", "fac": "M1"}).reason == INVALID_FIELD


# -- property: any JSON-like (or BSON-like) document decodes or dead-letters, never raises -------
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
bson_scalars = (
    st.datetimes(timezones=st.none() | st.just(timezone.utc))
    | st.builds(ObjectId)
    | st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Decimal128(repr(f)))
    | st.sampled_from([Decimal128("NaN"), Decimal128("Infinity"), Decimal128("-0")])
)
json_like = st.recursive(
    json_scalars | bson_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(["_id", "TimeStamp", "EQUIP_CD", "PART_NAME", "maker", "Barrel Temp 1", "s2",
                               "Cycle_Time", "p2", "t1", "q1", "PART_FACT_PLAN_DATE", "other"])
# Mostly-valid documents with some fields replaced by anything: reaches deeper than pure noise.
mutated = st.builds(lambda base, changes: {**base, **changes}, st.just(good()), st.dictionaries(field_names, json_like, max_size=4))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_like, mutated, st.dictionaries(field_names, json_like)))
def test_any_document_decodes_or_dead_letters_never_raises(document):
    out = DECODER.decode(document)
    assert isinstance(out, (CanonicalRecord, DeadLetter))
    if isinstance(out, DeadLetter):
        assert out.reason in REASONS and out.error
    else:
        assert out.row["record_id"] and out.row["facility"]
        assert all(isinstance(out.row[c], float) for c in SCHEMA.numeric_fields)
