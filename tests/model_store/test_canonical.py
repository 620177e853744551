"""A plant's exports as canonical frames (model_store/canonical.py): renamed, typed, and refused
with the source, the column and the first bad row."""
import re
import unicodedata
from datetime import date

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.canonical import canonical_lots, canonical_records
from model_store.errors import DataError
from model_store.mapping import Refusal, lot_day_value
from model_store.schema import PlantSchema, parse_schema
from tests.support.schemas import two_maker_schema


def _records(**changes) -> pd.DataFrame:
    frame = pd.DataFrame(
        {"id": [1, 2], "ts": ["2026-01-01 08:00:00", "2026-01-01 08:00:30"], "fac": ["F1", "F2"], "part": ["X", "Y"],
         "mk": ["A", "B"], "s1": [1.0, np.nan], "p1": [2.0, np.nan], "p2": ["3.5", None], "t1": [np.nan, 7.0], "q1": [np.nan, 8.0]}
    )
    for key, value in changes.items():
        frame[key] = value
    return frame


def test_canonical_records_renames_and_types() -> None:
    out = canonical_records(_records(), two_maker_schema())
    assert list(out["record_id"]) == ["1", "2"] and list(out["lot_date"]) == ["2026-01-01"] * 2
    assert out["p2"].dtype == float and out["maker"].tolist() == ["A", "B"]


@pytest.mark.parametrize(
    "frame, message",
    [
        (_records().drop(columns=["fac"]), "missing column 'fac'"),
        (_records(mk=["A", "Z"]), "unknown maker in column 'mk', row 2"),
        (_records(p1=[1.0, "hot"]), "column 'p1' must be numeric; row 2 (value 'hot')"),
        (_records(ts=["2026-01-01", "yesterday"]), "column 'ts' must hold timestamps"),
        (_records().iloc[0:0], "no rows"),
    ],
    ids=["missing-column", "unknown-maker", "text-in-numeric", "bad-timestamp", "empty"],
)
def test_bad_records_name_the_problem(frame, message) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        canonical_records(frame, two_maker_schema(), source="records.csv")


def test_lots_validation() -> None:
    lots = pd.DataFrame({"facility": ["F1"], "item": ["X"], "lot_date": ["2026-01-01"], "good_qty": [10], "bad_qty": [-1]})
    with pytest.raises(DataError, match="bad_qty' must be a non-negative count"):
        canonical_lots(lots, two_maker_schema())


# -- lot dates: one rule for the lot table and the records' lot_date column -----------------------
def _lots(dates: list, **changes) -> pd.DataFrame:
    frame = pd.DataFrame({"facility": ["F1"] * len(dates), "item": ["X"] * len(dates), "lot_date": dates,
                          "good_qty": [10] * len(dates), "bad_qty": [1] * len(dates)})
    for key, value in changes.items():
        frame[key] = value
    return frame


def _schema(**extra) -> PlantSchema:
    return parse_schema({**two_maker_schema().to_dict(), **extra}, source="plant.yaml")


@pytest.mark.parametrize("dates, expected", [
    (["2026-03-02", "2026-03-13"], ["2026-03-02", "2026-03-13"]),
    (["13.03.2026"], ["2026-03-13"]),  # day first, and only one reading is a date
    (["2026-03-02T00:30:00+01:00"], ["2026-03-02"]),  # the day as written, not moved to UTC
    ([pd.Timestamp("2026-03-02 00:30", tz="Europe/Berlin")], ["2026-03-02"]),
    ([np.datetime64("2026-03-02")], ["2026-03-02"]),
])
def test_lot_dates_are_read_as_written(dates, expected) -> None:
    assert list(canonical_lots(_lots(dates), two_maker_schema())["lot_date"]) == expected


@pytest.mark.parametrize("dates, message", [
    (["2026-03-02", "02.03.2026"], "row 2 (value '02.03.2026') is ambiguous (day or month first?)"),
    (["05/01/2026"], "row 1 (value '05/01/2026') is ambiguous"),
    (["13.03.26"], "row 1 (value '13.03.26') has a two-digit year (which century?)"),
    ([20260302], "row 1 (value 20260302) is not a date"),  # pandas would read it as nanoseconds after 1970
    (["2026-03-02", None], "row 2 is empty; every lot needs its date"),
    (["soon"], "row 1 (value 'soon') is not a date"),
])
def test_lot_dates_that_could_be_misread_are_refused(dates, message) -> None:
    with pytest.raises(DataError, match=re.escape(f"lots: column 'lot_date' must hold dates; {message}")):
        canonical_lots(_lots(dates), two_maker_schema())


def test_a_named_lot_date_format_reads_day_first_and_iso_still_reads() -> None:
    schema = _schema(lot_date_format="%d.%m.%Y")
    assert list(canonical_lots(_lots(["02.03.2026", "2026-03-04"]), schema)["lot_date"]) == ["2026-03-02", "2026-03-04"]
    with pytest.raises(DataError, match=re.escape("(value '2026/03/02') is not a date in the schema's lot_date_format")):
        canonical_lots(_lots(["2026/03/02"]), schema)


def test_lot_names_are_trimmed_like_the_records_and_never_empty() -> None:
    assert canonical_lots(_lots(["2026-03-02"], facility=["F1 "], item=[" X"]), two_maker_schema())[
        ["facility", "item"]].iloc[0].tolist() == ["F1", "X"]
    with pytest.raises(DataError, match="column 'facility' is empty at row 1"):
        canonical_lots(_lots(["2026-03-02"], facility=[None]), two_maker_schema())


def test_a_refused_count_is_quoted_as_the_plant_wrote_it() -> None:
    with pytest.raises(DataError, match=re.escape("row 1 (value -5)")):  # not np.int64(-5)
        canonical_lots(_lots(["2026-03-02"], bad_qty=np.array([-5], dtype=np.int64)), two_maker_schema())


def test_an_ambiguous_lot_date_in_the_records_is_refused_unless_the_schema_names_the_format() -> None:
    night = _records(ts=["2026-03-03T02:00:00", "2026-03-03T02:00:30"], ld=["02.03.2026", "02.03.2026"])
    with pytest.raises(DataError, match=re.escape("column 'ld', row 1 (value '02.03.2026'): is ambiguous")):
        canonical_records(night, _schema(lot_date="ld"))
    # with the format the night shift keeps the lot of the day it started, not the timestamp's day
    assert list(canonical_records(night, _schema(lot_date="ld", lot_date_format="%d.%m.%Y"))["lot_date"]) == ["2026-03-02"] * 2
    later = _records(ts=["2026-03-23T02:00:00"] * 2, ld=["22.03.2026"] * 2)  # only one reading is a date
    assert list(canonical_records(later, _schema(lot_date="ld"))["lot_date"]) == ["2026-03-22"] * 2


@settings(max_examples=300, deadline=None)
@given(st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31)),
       st.sampled_from(["%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%Y-%m-%d", "%d.%m.%y"]))
def test_a_lot_date_is_never_silently_another_day(day, written) -> None:
    # whatever way a plant writes a date, without a format it is read as that day or refused
    text = day.strftime(written)
    try:
        read = lot_day_value(text)
    except Refusal:
        return
    assert read == day.isoformat()


def test_column_names_differing_only_in_unicode_form_or_outer_spaces_are_the_schemas() -> None:
    schema = parse_schema({**two_maker_schema().to_dict(), "makers": {
        "A": {"settings": ["s1"], "production": ["Kühlzeit [s]", "p2"]}, "B": {"settings": ["t1"], "production": ["q1"]}}})
    decomposed = unicodedata.normalize("NFD", "Kühlzeit [s]")
    frame = _records().rename(columns={"p1": decomposed, "fac": " fac "})
    out = canonical_records(frame, schema)
    assert out["Kühlzeit [s]"].tolist()[0] == 2.0 and out["facility"].tolist() == ["F1", "F2"]
    twice = frame.assign(**{"Kühlzeit [s]": [5.0, 6.0]})
    with pytest.raises(DataError, match=re.escape(f"columns {decomposed!r} and 'Kühlzeit [s]' both read as 'Kühlzeit [s]'")):
        canonical_records(twice, schema)


def test_a_byte_order_mark_or_zero_width_space_in_a_header_is_ignored() -> None:
    frame = _records().rename(columns={"fac": "\ufefffac", "p1": "p\u200b1"})
    out = canonical_records(frame, two_maker_schema())
    assert out["facility"].tolist() == ["F1", "F2"] and out["p1"].tolist()[0] == 2.0


def test_lot_columns_are_matched_the_same_way() -> None:
    lots = _lots(["2026-03-02"]).rename(columns={"good_qty": "good_qty "})
    assert canonical_lots(lots, two_maker_schema())["good_qty"].tolist() == [10]


def test_a_huge_value_is_described_by_its_own_length() -> None:
    huge = "x" * 1_048_576
    with pytest.raises(DataError, match=re.escape("column 'part', row 2 (value of 1,048,576 characters): is 1048576 "
                                                  "characters long")):
        canonical_records(_records(part=["X", huge]), two_maker_schema())


def test_exact_repeats_are_left_out_and_reused_ids_named() -> None:
    from model_store.canonical import repeated_records

    records = canonical_records(_records(), two_maker_schema())
    twice = pd.concat([records, records.iloc[[0]], records.iloc[[1]].assign(p1=9.0, record_id="1")], ignore_index=True)
    kept, repeated, reused = repeated_records(twice)
    assert repeated == 1 and len(kept) == 3  # the exact copy of row 1 goes; the other shot named '1' stays
    assert reused == ["1"]
    assert repeated_records(records)[1:] == (0, [])
