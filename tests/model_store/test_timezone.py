"""The schema's ``timezone`` (model_store/mapping.py): a timestamp written without an offset is the
plant's wall-clock time, one rule on every path (text, datetimes, an export's datetime64 column, a
format, the stream's documents); hand-computed across DST's repeated and skipped hours; a lot day
taken from a timestamp is the plant's day."""
from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.canonical import canonical_records
from model_store.errors import SchemaError
from model_store.mapping import local_to_utc_us, time_value, zone_info
from model_store.schema import parse_schema
from service.decode import RecordDecoder
from tests.model_store.test_mapping import as_export
from tests.service.test_decode import SCHEMA

SEOUL = replace(SCHEMA, timezone="Asia/Seoul")
BERLIN = replace(SCHEMA, timezone="Europe/Berlin")


def doc(stamp, lot_date=None, _id="s1") -> dict:
    out = {"_id": _id, "TimeStamp": stamp, "EQUIP_CD": "F01", "PART_NAME": "ITM-1", "maker": "A", "s2": 1.0}
    if lot_date is not None:
        out["PART_FACT_PLAN_DATE"] = lot_date
    return out


def naive_export(wall: datetime | str) -> pd.DataFrame:
    """One record as a Parquet export holds it: a naive datetime64 timestamp column."""
    return as_export([doc(wall)]).astype({"TimeStamp": "datetime64[us]"})


def stream(schema, documents) -> pd.DataFrame:
    decoded = RecordDecoder(schema).decode_batch(documents)
    assert decoded.dead_letters == {}, {k: v.error for k, v in decoded.dead_letters.items()}
    return decoded.frame


def test_a_wall_clock_time_in_seoul_is_nine_hours_ahead_of_utc_and_its_lot_day_is_seouls() -> None:
    frame = stream(SEOUL, [doc("2026-01-05T08:30:00"), doc("2026-01-05T08:30:00+09:00", _id="s2"),
                           doc("2026-01-04T23:30:00Z", _id="s3"), doc(datetime(2026, 1, 5, 8, 30), _id="s4")])
    assert frame["timestamp"].tolist() == [pd.Timestamp("2026-01-04 23:30")] * 4
    assert frame["lot_date"].tolist() == ["2026-01-05"] * 4  # the plant's day, not UTC's 4 January
    # without a timezone the same text is UTC, as before the setting
    before = stream(SCHEMA, [doc("2026-01-05T08:30:00"), doc("2026-01-04T23:30:00Z", _id="s3")])
    assert before["timestamp"].tolist() == [pd.Timestamp("2026-01-05 08:30"), pd.Timestamp("2026-01-04 23:30")]
    assert before["lot_date"].tolist() == ["2026-01-05", "2026-01-04"]
    # a lot date written as a date is the plant's day as written, whatever the zone
    assert stream(SEOUL, [doc("2026-01-05T08:30:00", lot_date="2026-01-06")])["lot_date"].tolist() == ["2026-01-06"]


@pytest.mark.parametrize(("wall", "utc"), [
    ("2026-10-25T01:59:59", "2026-10-24 23:59:59"),  # CEST, +2
    ("2026-10-25T02:30:00", "2026-10-25 00:30:00"),  # the clocks show it twice: its first occurrence (CEST)
    ("2026-10-25T03:00:00", "2026-10-25 02:00:00"),  # CET, +1
    ("2026-03-29T01:59:59", "2026-03-29 00:59:59"),  # CET
    ("2026-03-29T02:00:00", "2026-03-29 01:00:00"),  # skipped by the clocks: the first time after the jump (03:00 CEST)
    ("2026-03-29T02:30:00", "2026-03-29 01:00:00"),
    ("2026-03-29T03:00:00", "2026-03-29 01:00:00"),  # CEST, +2: the same instant
])
def test_dst_in_berlin_hand_computed_the_same_on_every_path(wall: str, utc: str) -> None:
    expected = pd.Timestamp(utc)
    naive = datetime.fromisoformat(wall)
    assert time_value(wall, zone=zone_info("Europe/Berlin")) == expected.to_pydatetime()
    assert stream(BERLIN, [doc(wall)])["timestamp"].iloc[0] == expected
    assert stream(BERLIN, [doc(naive)])["timestamp"].iloc[0] == expected
    formatted = replace(BERLIN, timestamp_format="%d.%m.%Y %H:%M:%S")
    assert stream(formatted, [doc(naive.strftime("%d.%m.%Y %H:%M:%S"))])["timestamp"].iloc[0] == expected
    export = naive_export(wall)  # a Parquet export's naive column
    assert canonical_records(export, BERLIN)["timestamp"].iloc[0] == expected


def test_an_exports_zone_aware_column_is_an_instant_never_shifted_again() -> None:
    export = as_export([doc("x")]).assign(TimeStamp=pd.Series([pd.Timestamp("2026-01-05 08:30", tz="Asia/Seoul")]))
    frame = canonical_records(export, SEOUL)
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2026-01-04 23:30") and frame["lot_date"].iloc[0] == "2026-01-05"


def test_a_bson_date_is_an_instant_and_its_lot_day_is_the_plants() -> None:
    instant = datetime(2026, 1, 4, 23, 30, tzinfo=UTC)  # the stream's codec gives UTC-aware dates
    frame = stream(SEOUL, [doc(instant)])
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2026-01-04 23:30") and frame["lot_date"].iloc[0] == "2026-01-05"
    offset = stream(SEOUL, [doc(datetime(2026, 1, 5, 8, 30, tzinfo=timezone(timedelta(hours=9))))])
    assert offset["timestamp"].iloc[0] == pd.Timestamp("2026-01-04 23:30")


def test_a_timezone_the_database_does_not_know_is_one_line_naming_it() -> None:
    raw = {**SCHEMA.to_dict(), "timezone": "Asia/Seol"}
    with pytest.raises(SchemaError, match=r"timezone 'Asia/Seol' is not a time zone .* IANA name such as Asia/Seoul"):
        parse_schema(raw, "plant.yaml")
    for bad in ("../../etc/passwd", "", "Not/AZone"):
        with pytest.raises(SchemaError):
            parse_schema({**SCHEMA.to_dict(), "timezone": bad}, "plant.yaml")
    schema = parse_schema({**SCHEMA.to_dict(), "timezone": "Asia/Seoul"}, "plant.yaml")
    assert schema.timezone == "Asia/Seoul" and schema.to_dict()["timezone"] == "Asia/Seoul"
    assert schema.hash() != SCHEMA.hash() and "timezone" not in SCHEMA.to_dict()


zones = st.sampled_from(["Europe/Berlin", "America/Chicago", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"])


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1901, 1, 1), max_value=datetime(2099, 12, 31)), zones)
def test_every_path_reads_a_wall_clock_time_alike_and_back_to_the_same_wall_clock_outside_a_gap(wall: datetime,
                                                                                              zone_name: str) -> None:
    zone = zone_info(zone_name)
    schema = replace(SCHEMA, timezone=zone_name)
    wall = wall.replace(microsecond=0)
    utc = time_value(wall.isoformat(), zone=zone)
    assert stream(schema, [doc(wall)])["timestamp"].iloc[0] == pd.Timestamp(utc)
    export = naive_export(wall)
    assert canonical_records(export, schema)["timestamp"].iloc[0] == pd.Timestamp(utc)
    back = utc.replace(tzinfo=UTC).astimezone(zone).replace(tzinfo=None)
    skipped = back != wall
    if skipped:  # only a time the clocks skipped moves, and only forward, to the end of the gap
        assert back > wall and back - wall <= timedelta(hours=1)
        assert (wall.replace(tzinfo=zone).utcoffset() != wall.replace(tzinfo=zone, fold=1).utcoffset())
    local_us = np.array([(wall - datetime(1970, 1, 1)) // timedelta(microseconds=1)])
    assert local_to_utc_us(local_us, zone)[0] == (utc - datetime(1970, 1, 1)) // timedelta(microseconds=1)
