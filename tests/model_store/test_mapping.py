"""One mapping, offline and online: the same rows through ``canonical_records`` (a plant export as
a frame) and through the worker's decoder (a micro-batch of documents) give the same frame, and
refuse the same rows."""
from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from bson import Decimal128, ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_store.canonical import canonical_records
from model_store.errors import DataError
from model_store.mapping import MISSING_NUMBER_TEXT, map_documents
from service.decode import INVALID_FIELD, MISSING_FIELD, RecordDecoder
from tests.service.test_decode import SCHEMA

# The decoder's test plant (two makers, odd column names): both paths see the same schema.
FIELDS = ["_id", "TimeStamp", "EQUIP_CD", "PART_NAME", "PART_FACT_PLAN_DATE", "maker", "Barrel Temp 1", "s2",
          "Cycle_Time", "p2", "t1", "q1"]


def as_export(documents: list[dict]) -> pd.DataFrame:
    """The documents as a plant export: one object column per field, None where a document lacks it
    (object columns: pandas' own inference would turn an integer column with a gap into floats,
    which is the loader's business, not the mapping's)."""
    return pd.DataFrame({f: pd.Series([d.get(f) for d in documents], dtype=object) for f in FIELDS})


def online(documents: list[dict]):
    return RecordDecoder(SCHEMA).decode_batch(documents)


# -- generated documents -------------------------------------------------------------------------
codes = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,15}", fullmatch=True)
padding = st.sampled_from(["", " ", "\t"])
finite = st.floats(allow_nan=False, allow_infinity=False)
numbers = st.one_of(
    finite, st.integers(-(10**15), 10**15), finite.map(repr), st.just(None), st.just(float("nan")),
    st.floats(-1e9, 1e9, allow_nan=False).map(lambda f: Decimal128(repr(f))), st.sampled_from(["", " nan ", "  7 "]),
    st.sampled_from(sorted(MISSING_NUMBER_TEXT)),
)
stamps = st.datetimes(min_value=datetime(1678, 1, 1), max_value=datetime(2261, 12, 31),
                      timezones=st.none() | st.just(UTC) | st.just(timezone(timedelta(hours=9))))


@st.composite
def valid_document(draw) -> dict:
    maker = draw(st.sampled_from(["A", "B"]))
    stamp = draw(stamps)
    doc = {
        "_id": draw(st.one_of(codes.map(lambda c: draw(padding) + c), st.builds(ObjectId), st.integers(0, 10**12))),
        "TimeStamp": draw(st.sampled_from([stamp, stamp.isoformat()])),
        "EQUIP_CD": draw(st.one_of(codes, st.integers(0, 999))),
        "maker": maker,
    }
    if draw(st.booleans()):
        doc["PART_NAME"] = draw(st.one_of(codes, st.just(None), st.just("  ")))
    if draw(st.booleans()):
        doc["PART_FACT_PLAN_DATE"] = draw(st.one_of(stamps.map(lambda s: s.date().isoformat()), st.just("junk"), stamps))
    for field in SCHEMA.makers[maker].all:
        if draw(st.booleans()):
            doc[field] = draw(numbers)
    return doc


anything = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | stamps | st.builds(ObjectId)


@st.composite
def any_document(draw) -> dict:
    """A valid document with up to three fields replaced by anything (or removed)."""
    doc = draw(valid_document())
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            doc.pop(field, None)
        else:
            doc[field] = draw(anything)
    return doc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_document(), min_size=1, max_size=8))
def test_valid_documents_map_to_the_same_frame_offline_and_online(documents):
    decoded = online(documents)
    assert decoded.dead_letters == {}, {k: (v.reason, v.error) for k, v in decoded.dead_letters.items()}
    assert decoded.rows == list(range(len(documents)))
    offline = canonical_records(as_export(documents), SCHEMA)
    pd.testing.assert_frame_equal(decoded.frame, offline)
    assert decoded.frame["timestamp"].dtype == np.dtype("datetime64[us]")
    assert all(decoded.frame[c].dtype == np.float64 for c in SCHEMA.numeric_fields)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_document(), min_size=1, max_size=8))
def test_both_paths_refuse_the_same_rows_and_keep_the_others(documents):
    decoded = online(documents)
    refused = sorted(decoded.dead_letters)
    assert sorted(refused + decoded.rows) == list(range(len(documents)))  # each document: one outcome
    if refused:
        with pytest.raises(DataError, match=rf"row {refused[0] + 1}\b"):
            canonical_records(as_export(documents), SCHEMA)
        kept = [documents[i] for i in decoded.rows]
        if kept:  # the rest of the batch maps exactly as it would alone
            pd.testing.assert_frame_equal(decoded.frame, online(kept).frame)
    else:
        pd.testing.assert_frame_equal(decoded.frame, canonical_records(as_export(documents), SCHEMA))


# -- hand-computed cases ---------------------------------------------------------------------------
def good(**changes) -> dict:
    doc = {"_id": "s1", "TimeStamp": datetime(2026, 1, 5, 8, 30, tzinfo=UTC), "EQUIP_CD": "F01",
           "PART_NAME": "ITM-1", "maker": "A", "Barrel Temp 1": 230.0, "s2": 50, "Cycle_Time": "13.25", "p2": None}
    doc.update(changes)
    return doc


def test_text_a_csv_reader_reads_as_missing_is_a_gap_in_every_source(tmp_path):
    """'n/a' in a CSV cell is a gap (pandas reads it so); in a JSON record, a MongoDB document or a
    text column it must be one too, not a refused record: one plant, one answer."""
    from pandas._libs.parsers import STR_NA_VALUES

    from model_store.loaders import read_table

    assert frozenset(STR_NA_VALUES) == MISSING_NUMBER_TEXT
    tokens = sorted(MISSING_NUMBER_TEXT - {""})
    documents = [good(_id=f"r{i}", s2=token) for i, token in enumerate(tokens)]
    decoded = online(documents)
    assert decoded.dead_letters == {} and decoded.frame["s2"].isna().all()
    csv = tmp_path / "records.csv"
    as_export(documents).to_csv(csv, index=False)
    from_csv = canonical_records(read_table(str(csv)), SCHEMA)
    assert from_csv["s2"].isna().all() and len(from_csv) == len(tokens)
    assert from_csv["Cycle_Time"].tolist() == decoded.frame["Cycle_Time"].tolist() == [13.25] * len(tokens)
    # text that only resembles a token is still refused
    for near in ("n/a/", "none yet", "NA NA"):
        assert online([good(s2=near)]).dead_letters[0].reason == INVALID_FIELD, near


def test_a_bad_document_is_refused_and_the_rest_of_the_batch_proceeds():
    documents = [good(_id="a"), good(_id="b", s2="hot"), good(_id="c", EQUIP_CD=None), good(_id="d", s2=float("inf"))]
    decoded = online(documents)
    assert decoded.rows == [0]
    assert decoded.frame["record_id"].tolist() == ["a"]
    assert {k: (v.reason, v.error) for k, v in decoded.dead_letters.items()} == {
        1: (INVALID_FIELD, "s2: expected a number or a numeric string (got 'hot')"),
        2: (MISSING_FIELD, "EQUIP_CD: is empty; every record needs it"),
        3: (INVALID_FIELD, "s2: is infinite (got inf)"),
    }


def test_offline_refusals_name_column_row_and_value():
    with pytest.raises(DataError, match=r"^plant\.csv: column 's2' must be numeric; row 2 \(value 'hot'\): expected a number"):
        canonical_records(as_export([good(), good(s2="hot")]), SCHEMA, source="plant.csv")
    with pytest.raises(DataError, match=r"^plant\.csv: column 'EQUIP_CD' is empty at row 1; every record needs it"):
        canonical_records(as_export([good(EQUIP_CD="  ")]), SCHEMA, source="plant.csv")
    with pytest.raises(DataError, match=r"column 'TimeStamp' must hold timestamps; row 1 \(value 'yesterday'\): is not a date-time"):
        canonical_records(as_export([good(TimeStamp="yesterday")]), SCHEMA, source="plant.csv")


def test_typed_export_columns_map_like_documents():
    """A CSV/Parquet export arrives typed (float64 numbers with NaN gaps, datetime64 stamps, int ids)."""
    frame = pd.DataFrame({
        "_id": [1, 2], "TimeStamp": pd.to_datetime(["2026-01-05 08:30:00", "2026-01-05 08:30:30"]),
        "EQUIP_CD": ["F01", "F02"], "PART_NAME": ["X", None], "PART_FACT_PLAN_DATE": ["2026-01-04", None],
        "maker": ["A", "B"], "Barrel Temp 1": [230.0, np.nan], "s2": [50.0, np.nan], "Cycle_Time": [13.25, np.nan],
        "p2": [np.nan, np.nan], "t1": [np.nan, 7.0], "q1": [np.nan, 8.0],
    })
    offline = canonical_records(frame, SCHEMA)
    documents = [{k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v)) and v is not None}
                 for row in frame.astype(object).to_dict("records")]
    for doc in documents:
        doc["TimeStamp"] = doc["TimeStamp"].to_pydatetime()
    pd.testing.assert_frame_equal(offline, online(documents).frame)
    assert offline["record_id"].tolist() == ["1", "2"] and offline["item"].tolist() == ["X", None]
    assert offline["lot_date"].tolist() == ["2026-01-04", "2026-01-05"]
    with pytest.raises(DataError, match=r"column 's2' must be numeric; row 2 \(value inf\): is infinite"):
        canonical_records(frame.assign(s2=[1.0, np.inf]), SCHEMA)


def test_an_empty_batch_maps_to_an_empty_frame_with_the_canonical_columns():
    mapped = map_documents([], SCHEMA)
    assert list(mapped.frame.columns) == RecordDecoder(SCHEMA).columns and len(mapped.frame) == 0


def test_integer_codes_in_a_column_with_a_blank_are_codes_not_refusals():
    # pandas reads a CSV column of integer facility / item codes with one blank cell as floats:
    # the codes must come out as "101", "7" (as the same codes sent online as ints do), the blank
    # item as a gap, and a fractional code is still refused with the column, row and value named.
    frame = pd.DataFrame({
        "_id": ["a", "b"], "TimeStamp": pd.to_datetime(["2026-01-05 08:30:00", "2026-01-05 08:30:30"]),
        "EQUIP_CD": [101.0, 102.0], "PART_NAME": [7.0, np.nan], "PART_FACT_PLAN_DATE": ["2026-01-04", "2026-01-04"], "maker": ["A", "A"],
        "Barrel Temp 1": [230.0, 231.0], "s2": [50.0, 51.0], "Cycle_Time": [13.0, 13.5], "p2": [1.0, 1.0],
    })
    offline = canonical_records(frame, SCHEMA)
    assert offline["facility"].tolist() == ["101", "102"] and offline["item"].tolist() == ["7", None]
    online_frame = online([{**good(_id="a", EQUIP_CD=101, PART_NAME=7)}, {**good(_id="b", EQUIP_CD=102.0, PART_NAME=None)}]).frame
    assert online_frame["facility"].tolist() == ["101", "102"] and online_frame["item"].tolist() == ["7", None]
    with pytest.raises(DataError, match=r"EQUIP_CD.*row 2 \(value 102\.5\)"):
        canonical_records(frame.assign(EQUIP_CD=[101.0, 102.5]), SCHEMA)


def test_an_export_with_zone_aware_stamps_is_read_as_naive_utc_like_documents():
    # 10:30 in Berlin (winter, +01:00) is 09:30 UTC, offline and online alike.
    stamps = pd.to_datetime(["2026-01-05 10:30:00", "2026-01-05 10:30:30"]).tz_localize("Europe/Berlin")
    frame = as_export([good(_id="a"), good(_id="b")]).assign(TimeStamp=stamps)
    offline = canonical_records(frame, SCHEMA)
    assert offline["timestamp"].tolist() == [pd.Timestamp("2026-01-05 09:30:00"), pd.Timestamp("2026-01-05 09:30:30")]
    documents = [good(_id="a", TimeStamp=stamps[0].to_pydatetime()), good(_id="b", TimeStamp=stamps[1].to_pydatetime())]
    assert online(documents).frame["timestamp"].tolist() == offline["timestamp"].tolist()


@pytest.mark.parametrize(("stamp", "accepted"), [
    (datetime(1677, 9, 22), True), (datetime(1677, 9, 21, 23, 59, 59), False),
    (datetime(2262, 4, 11), True), (datetime(2262, 4, 11, 0, 0, 1), False),
])
def test_the_supported_time_range_includes_both_ends(stamp: datetime, accepted: bool):
    decoded = online([good(TimeStamp=stamp)])
    assert (decoded.rows == [0]) is accepted
    if not accepted:
        (letter,) = decoded.dead_letters.values()
        assert letter.reason == INVALID_FIELD and "outside the supported range (1677-09-22 to 2262-04-11)" in letter.error


@pytest.mark.parametrize(("length", "accepted"), [(256, True), (257, False)])
def test_a_name_of_exactly_the_length_bound_is_accepted(length: int, accepted: bool):
    name = "F" * length
    for changes in ({"EQUIP_CD": name}, {"PART_NAME": name}, {"_id": name}):
        decoded = online([good(**changes)])
        assert (decoded.rows == [0]) is accepted, changes


# -- required fields: missing vs empty, named and never quoted ----------------------------------------
def test_a_missing_or_empty_required_field_is_named_exactly_and_quotes_no_value():
    def without(field: str) -> dict:
        doc = good(_id=f"no-{field}")
        doc.pop(field)
        return doc

    documents = [without("_id"), without("TimeStamp"), without("EQUIP_CD"), good(_id="blank", EQUIP_CD="  "),
                 good(_id="nan", EQUIP_CD=float("nan"))]
    errors = {k: (v.reason, v.error) for k, v in online(documents).dead_letters.items()}
    assert errors == {
        0: (MISSING_FIELD, "_id: is missing"),
        1: (MISSING_FIELD, "TimeStamp: is missing"),
        2: (MISSING_FIELD, "EQUIP_CD: is missing"),
        3: (MISSING_FIELD, "EQUIP_CD: is empty; every record needs it"),
        4: (MISSING_FIELD, "EQUIP_CD: is empty; every record needs it"),
    }


def test_an_export_with_a_missing_timestamp_says_which_row():
    frame = as_export([good(_id="a"), good(_id="b")]).assign(
        TimeStamp=pd.to_datetime(["2026-01-05 08:30:00", None]))  # a typed datetime64 column with a NaT
    with pytest.raises(DataError, match=r"column 'TimeStamp' is empty at row 2; every record needs it"):
        canonical_records(frame, SCHEMA)
    from model_store.mapping import map_frame

    (error,) = map_frame(frame, SCHEMA).errors[1]
    assert (error.reason, error.text) == (MISSING_FIELD, "TimeStamp: is missing")


# -- time: microseconds exact over the whole range, both readings -------------------------------------
ODD_MICROSECONDS = [datetime(1677, 9, 22, 0, 0, 0, 1), datetime(2262, 4, 10, 23, 59, 59, 999_999),
                    datetime(2026, 1, 5, 8, 30, 0, 123_457)]


@pytest.mark.parametrize("stamp", ODD_MICROSECONDS)
def test_timestamps_keep_every_microsecond_at_both_ends_of_the_range(stamp: datetime):
    # Beyond 2**53 microseconds from 1970 (~285 years) a float64 cannot hold an odd microsecond:
    # the conversion must stay in integers on every path.
    expected = pd.Timestamp(stamp)
    assert online([good(TimeStamp=stamp)]).frame["timestamp"].tolist() == [expected]
    assert online([good(TimeStamp=stamp.isoformat())]).frame["timestamp"].tolist() == [expected]
    typed = as_export([good()]).assign(TimeStamp=pd.Series(np.array([stamp], dtype="datetime64[us]")))
    assert canonical_records(typed, SCHEMA)["timestamp"].tolist() == [expected]


def test_an_export_stamp_outside_the_range_is_refused_with_its_column_and_value():
    frame = as_export([good(_id="a"), good(_id="b")]).assign(
        TimeStamp=pd.Series(np.array(["2026-01-05T08:30", "1600-01-01T00:00"], dtype="datetime64[us]")))
    from model_store.mapping import map_frame

    mapped = map_frame(frame, SCHEMA)
    assert mapped.rows.tolist() == [0]
    (error,) = mapped.errors[1]
    assert error.reason == INVALID_FIELD and error.text.startswith("TimeStamp: is outside the supported range")
    assert "1600-01-01" in error.text


@pytest.mark.parametrize(("text", "accepted"), [
    ("1677/09/22 00:00:00", True), ("1677/09/21 23:59:59", False),  # not ISO 8601: read by pandas, then range-checked
    ("2262/04/11 00:00:00", True), ("2262/04/11 00:00:01", False),
])
def test_the_range_holds_for_text_that_is_not_iso_8601(text: str, accepted: bool):
    decoded = online([good(TimeStamp=text)])
    assert (decoded.rows == [0]) is accepted
    if not accepted:
        (letter,) = decoded.dead_letters.values()
        assert (letter.reason, letter.error) == (
            INVALID_FIELD, f"TimeStamp: is outside the supported range (1677-09-22 to 2262-04-11) (got '{text}')")


def test_an_aware_time_converts_to_utc_whatever_the_machines_zone(monkeypatch):
    import time as time_module

    from model_store.mapping import time_value

    monkeypatch.setenv("TZ", "Asia/Seoul")  # the host's zone must not enter the conversion
    time_module.tzset()
    try:
        seoul = pd.Timestamp("2026-01-05 10:00", tz="Asia/Seoul")
        assert time_value(seoul) == datetime(2026, 1, 5, 1, 0)
        assert time_value(seoul.to_pydatetime()) == datetime(2026, 1, 5, 1, 0)
    finally:
        monkeypatch.undo()
        time_module.tzset()


def test_an_integer_typed_numeric_export_column_maps_like_documents():
    # A CSV numeric column without gaps is read as int64: its values are numbers, not refusals.
    frame = as_export([good(_id="a"), good(_id="b")]).assign(s2=pd.Series([50, 51], dtype="int64"))
    offline = canonical_records(frame, SCHEMA)
    assert offline["s2"].tolist() == [50.0, 51.0]
    pd.testing.assert_frame_equal(offline, online([good(_id="a", s2=50), good(_id="b", s2=51)]).frame)


def test_an_export_whose_timestamps_are_all_missing_refuses_every_row_without_failing():
    from model_store.mapping import map_frame

    frame = as_export([good(_id="a"), good(_id="b")]).assign(TimeStamp=pd.to_datetime([None, None]))
    mapped = map_frame(frame, SCHEMA)
    assert mapped.rows.tolist() == [] and sorted(mapped.errors) == [0, 1]
    assert {e.text for errors in mapped.errors.values() for e in errors} == {"TimeStamp: is missing"}


def test_a_null_cell_in_an_export_is_a_missing_value_like_an_absent_key():
    from model_store.mapping import map_frame

    mapped = map_frame(as_export([good(_id="a", EQUIP_CD=None)]), SCHEMA)
    (error,) = mapped.errors[0]
    assert (error.reason, error.text) == (MISSING_FIELD, "EQUIP_CD: is missing")


def test_a_typed_lot_date_column_gives_its_day_and_a_gap_falls_back_to_the_shot_day():
    frame = as_export([good(_id="a"), good(_id="b", TimeStamp=datetime(2026, 1, 6, 23, 0, tzinfo=UTC))]).assign(
        PART_FACT_PLAN_DATE=pd.to_datetime(["2026-01-04 17:00", None]))  # datetime64 with a NaT, as Parquet gives it
    assert canonical_records(frame, SCHEMA)["lot_date"].tolist() == ["2026-01-04", "2026-01-06"]


def test_text_read_by_pandas_keeps_every_microsecond_near_the_end_of_the_range():
    # Not ISO 8601, so the per-value rule reads it: its conversion to microseconds must stay integral.
    decoded = online([good(TimeStamp="2262/04/10 23:59:59.999999")])
    assert decoded.frame["timestamp"].tolist() == [pd.Timestamp("2262-04-10 23:59:59.999999")]


def test_identifying_columns_hold_python_strings_and_none_not_arrow_strings():
    # pandas 3 infers its Arrow-backed str dtype for strings, where a gap is NaN, not None: the
    # scoring core and the verdicts test `isinstance(value, str)` and keep None as null.
    frame = online([good(_id="a", PART_NAME=None), good(_id="b")]).frame
    for column in ("record_id", "maker", "facility", "item", "lot_date"):
        assert frame[column].dtype == object, column
    assert frame["item"].tolist() == [None, "ITM-1"]


def test_every_row_gets_its_own_lot_day_whatever_the_rows_before_it():
    # A gap, a naive date, a zone-aware date-time whose UTC day differs from its local day, another
    # date: each row's lot day is read on its own (the shots are all on 2026-01-05).
    lots = [None, "2026-01-04", "2026-01-03T23:30:00-05:00", "2026-01-02"]
    documents = [good(_id=f"r{i}", PART_FACT_PLAN_DATE=lot) for i, lot in enumerate(lots)]
    expected = ["2026-01-05", "2026-01-04", "2026-01-04", "2026-01-02"]
    assert online(documents).frame["lot_date"].tolist() == expected
    assert canonical_records(as_export(documents), SCHEMA)["lot_date"].tolist() == expected


# -- day or month first: refused when both readings are dates ---------------------------------------
@settings(max_examples=60, deadline=None)
@given(first=st.integers(1, 28), second=st.integers(1, 12), separator=st.sampled_from("/.-"), clock=st.booleans())
def test_a_date_whose_day_and_month_could_swap_is_refused_unless_the_schema_names_the_format(first, second, separator, clock):
    text = f"{first:02d}{separator}{second:02d}{separator}2026" + (" 05:36" if clock else "")
    decoded = online([good(TimeStamp=text)])
    if first <= 12 and first != second:  # 05/01: 5 January or 1 May
        (letter,) = decoded.dead_letters.values()
        assert letter.reason == INVALID_FIELD and "is ambiguous (day or month first?)" in letter.error
        assert "timestamp_format" in letter.error
    else:  # 13/01: only day first is a date; 05/05: both readings agree
        assert not decoded.dead_letters
        assert decoded.frame["timestamp"][0] == pd.Timestamp(2026, second, first, 5 if clock else 0, 36 if clock else 0)
    # named in the schema, the same text is read as the plant writes it
    fmt = f"%d{separator}%m{separator}%Y" + (" %H:%M" if clock else "")
    named = RecordDecoder(dataclasses.replace(SCHEMA, timestamp_format=fmt)).decode_batch([good(TimeStamp=text)])
    assert not named.dead_letters
    assert named.frame["timestamp"][0] == pd.Timestamp(2026, second, first, 5 if clock else 0, 36 if clock else 0)


def test_year_first_and_iso_dates_are_never_ambiguous():
    for text in ("2026/05/01 05:36", "2026-05-01", "2026-05-01T05:36:00+02:00"):
        decoded = online([good(TimeStamp=text)])
        assert not decoded.dead_letters, text
        assert decoded.frame["timestamp"][0].month == 5
