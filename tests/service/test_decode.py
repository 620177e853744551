"""Decoding raw documents: what is accepted, what becomes a dead letter and why; never an exception."""
from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from bson import Decimal128, Int64, ObjectId
from bson.datetime_ms import DatetimeMS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_store.schema import parse_schema
from service.decode import (
    INVALID_FIELD,
    MISSING_FIELD,
    NOT_A_DOCUMENT,
    REASONS,
    SCORING_FAILED,
    UNDECODABLE,
    UNKNOWN_MAKER,
    CanonicalRecord,
    DeadLetter,
    RecordDecoder,
    short_repr,
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


@pytest.fixture
def decoder() -> RecordDecoder:
    """A decoder per test: one built at import time would keep the model-building code it was
    built with, and mutation testing (bench/mutation.py) could not tell when that code breaks."""
    return RecordDecoder(SCHEMA)


def good(**changes):
    doc = {
        "_id": ObjectId("6b0518ffc15a762ceb0939d4"),
        "TimeStamp": datetime(2026, 1, 5, 8, 30, tzinfo=UTC),
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


def test_valid_document_becomes_a_canonical_row(decoder):
    out = decoder.decode(good())
    assert isinstance(out, CanonicalRecord)
    row = out.row
    assert row["record_id"] == "6b0518ffc15a762ceb0939d4"  # ObjectId -> its hex string
    assert row["timestamp"] == datetime(2026, 1, 5, 8, 30)  # naive UTC, like the offline path
    assert (row["maker"], row["facility"], row["item"]) == ("A", "F01", "ITM-001")
    assert row["Barrel Temp 1"] == 230.0 and row["s2"] == 50.0
    assert row["Cycle_Time"] == 13.25 and row["p2"] == 1.5  # numeric string, Decimal128
    assert math.isnan(row["t1"]) and math.isnan(row["q1"])  # other maker's fields: missing
    assert out.record_time == datetime(2026, 1, 5, 8, 30, tzinfo=UTC).timestamp()
    assert list(row) == decoder.columns


def test_timestamps_in_other_zones_and_as_text_are_normalised_to_utc(decoder):
    kst = timezone(timedelta(hours=9))
    assert decoder.decode(good(TimeStamp=datetime(2026, 1, 5, 17, 30, tzinfo=kst))).row["timestamp"] == datetime(2026, 1, 5, 8, 30)
    assert decoder.decode(good(TimeStamp="2026-01-05T17:30:00+09:00")).row["timestamp"] == datetime(2026, 1, 5, 8, 30)
    assert decoder.decode(good(TimeStamp="2026-01-05 08:30:00")).row["timestamp"] == datetime(2026, 1, 5, 8, 30)


def test_gaps_are_missing_values_not_errors(decoder):
    out = decoder.decode(good(PART_NAME=None, s2=None, Cycle_Time="", p2=float("nan"), maker=...))
    assert isinstance(out, CanonicalRecord)
    assert out.row["item"] is None and out.row["maker"] is None  # imputed / looked up by facility later
    assert all(math.isnan(out.row[c]) for c in ("s2", "Cycle_Time", "p2"))


def test_integer_ids_and_codes_are_accepted_as_text(decoder):
    out = decoder.decode(good(_id=Int64(42), EQUIP_CD=7, PART_NAME=13))
    assert isinstance(out, CanonicalRecord)
    assert (out.row["record_id"], out.row["facility"], out.row["item"]) == ("42", "7", "13")
    assert decoder.decode(good(s2=Decimal("2.5"))).row["s2"] == 2.5


def test_lot_date_column_is_used_and_falls_back_to_the_timestamp_day(decoder):
    assert decoder.decode(good(PART_FACT_PLAN_DATE="2026-01-04")).row["lot_date"] == "2026-01-04"
    assert decoder.decode(good(PART_FACT_PLAN_DATE="not a date")).row["lot_date"] == "2026-01-05"
    assert decoder.decode(good()).row["lot_date"] == "2026-01-05"


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
def test_invalid_documents_become_dead_letters_with_a_reason(document, reason, mentions, decoder):
    out = decoder.decode(document)
    assert isinstance(out, DeadLetter)
    assert out.reason == reason
    assert mentions in out.error
    assert out.document is document  # the original goes to the dead-letter topic untouched


def test_a_plant_column_name_is_what_the_error_names(decoder):
    out = decoder.decode(good(**{"Barrel Temp 1": "hot"}))
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


# -- numbers at the edges: what is a value, what is a gap, what is an error -----------------------
@pytest.mark.parametrize(
    "raw, expected",
    [
        (" 1.5 ", 1.5),  # blank-padded, as fixed-width exports write numbers
        ("\t-2.25\n", -2.25),
        ("1e3", 1000.0),
        ("-0", 0.0),
        ("7", 7.0),
        (3, 3.0),
        (-(2**62), float(-(2**62))),
        (Int64(12), 12.0),
        (Decimal("0.125"), 0.125),
        (Decimal128("2.5E-1"), 0.25),
        (2.5, 2.5),
        (1e308, 1e308),
    ],
)
def test_numbers_and_numeric_text_are_values(raw, expected, decoder):
    out = decoder.decode(good(s2=raw))
    assert isinstance(out, CanonicalRecord), getattr(out, "error", "")
    value = out.row["s2"]
    assert type(value) is float and value == expected


@pytest.mark.parametrize("raw", ["", "   ", " \t\n ", "nan", " NaN ", "-nan", float("nan"), Decimal("NaN"),
                                 Decimal128("NaN"), None])
def test_blank_and_nan_are_gaps_not_errors(raw, decoder):
    out = decoder.decode(good(s2=raw))
    assert isinstance(out, CanonicalRecord), getattr(out, "error", "")
    assert math.isnan(out.row["s2"])


@pytest.mark.parametrize(
    "raw, mentions",
    [
        ("inf", "infinite"),
        (" -inf ", "infinite"),
        ("Infinity", "infinite"),
        ("1e400", "infinite"),  # a numeric string beyond float range: infinite, not a gap
        (float("-inf"), "infinite"),
        (Decimal("Infinity"), "infinite"),
        (Decimal128("-Infinity"), "infinite"),
        (10**400, "too large"),
        (-(10**400), "too large"),
        ("1,5", "numeric string"),
        ("12 kg", "numeric string"),
        (False, "boolean"),
        ({"$numberDouble": "1.0"}, "numeric string"),
        (b"1.5", "numeric string"),
    ],
)
def test_infinite_and_non_numeric_values_are_invalid_fields(raw, mentions, decoder):
    out = decoder.decode(good(s2=raw))
    assert isinstance(out, DeadLetter)
    assert out.reason == INVALID_FIELD and out.error.startswith("s2: ") and mentions in out.error, out.error


def test_an_invalid_value_is_quoted_in_the_error(decoder):
    out = decoder.decode(good(Cycle_Time="fast"))
    assert out.error == "Cycle_Time: expected a number or a numeric string (got 'fast')"


def test_several_errors_are_counted_after_the_first(decoder):
    two = decoder.decode(good(s2="x", p2="y"))
    three = decoder.decode(good(s2="x", p2="y", Cycle_Time="z"))
    assert two.error.endswith("; and 1 more error") and three.error.endswith("; and 2 more errors")
    assert "; and" not in decoder.decode(good(s2="x")).error


def test_short_repr_bounds_long_and_hostile_values():
    assert short_repr("abc") == "'abc'"
    text = short_repr("x" * 500)
    assert len(text) == 120 and text.endswith("...") and text.startswith("'xxx")
    assert len(short_repr("y" * 118)) == 120 and not short_repr("y" * 118).endswith("...")  # exactly at the limit

    class Hostile:
        def __repr__(self):
            raise RuntimeError("no")

    assert short_repr(Hostile()) == "<Hostile>"


# -- names, ids and timestamps at the edges -----------------------------------------------------
def test_names_and_ids_are_stripped(decoder):
    out = decoder.decode(good(_id="  shot-1 ", EQUIP_CD=" F01\t", PART_NAME=" ITM-9 ", maker=" A "))
    assert (out.row["record_id"], out.row["facility"], out.row["item"], out.row["maker"]) == ("shot-1", "F01", "ITM-9", "A")


@pytest.mark.parametrize(
    "changes, reason, mentions",
    [
        (dict(_id="   "), INVALID_FIELD, "non-empty"),
        (dict(_id=True), INVALID_FIELD, "_id"),
        (dict(_id=1.5), INVALID_FIELD, "_id"),
        (dict(EQUIP_CD=True), INVALID_FIELD, "EQUIP_CD"),
        (dict(EQUIP_CD=1.5), INVALID_FIELD, "integer code"),
        (dict(EQUIP_CD=float("inf")), INVALID_FIELD, "integer code"),
        (dict(EQUIP_CD=1e300), INVALID_FIELD, "integer code"),  # integral, but no exact code: 300 digits of noise
        (dict(EQUIP_CD=2.0**53 + 2), INVALID_FIELD, "integer code"),
        (dict(EQUIP_CD=None), MISSING_FIELD, "EQUIP_CD: is empty"),
        (dict(PART_NAME=False), INVALID_FIELD, "PART_NAME"),
        (dict(maker=True), UNKNOWN_MAKER, "maker True"),
        (dict(maker=7), UNKNOWN_MAKER, "maker 7 is not defined by the plant schema (known: A, B)"),
    ],
)
def test_bad_names_are_dead_letters(changes, reason, mentions, decoder):
    out = decoder.decode(good(**changes))
    assert isinstance(out, DeadLetter) and out.reason == reason and mentions in out.error, (out.reason, out.error)


def test_missing_field_errors_say_is_missing(decoder):
    assert decoder.decode(good(_id=...)).error == "_id: is missing"
    assert decoder.decode(good(EQUIP_CD="")).error == "EQUIP_CD: is empty; every record needs it"


def test_a_blank_item_or_maker_is_a_gap(decoder):
    out = decoder.decode(good(PART_NAME="  ", maker=""))
    assert out.row["item"] is None and out.row["maker"] is None


def test_uuid_ids_and_integer_item_codes(decoder):
    from uuid import UUID

    out = decoder.decode(good(_id=UUID(int=5), PART_NAME=0))
    assert out.row["record_id"] == "00000000-0000-0000-0000-000000000005" and out.row["item"] == "0"


@pytest.mark.parametrize(
    "stamp, expected",
    [
        (datetime(1677, 9, 22), datetime(1677, 9, 22)),  # the first day pandas can hold
        (datetime(2262, 4, 11), datetime(2262, 4, 11)),  # the last
        (datetime(2026, 1, 5, tzinfo=timezone(timedelta(hours=-5))), datetime(2026, 1, 5, 5)),
        (" 2026-01-05T08:30:00 ", datetime(2026, 1, 5, 8, 30)),
        ("2026-01-05T08:30:00Z", datetime(2026, 1, 5, 8, 30)),
        ("Jan 5 2026 08:30", datetime(2026, 1, 5, 8, 30)),  # pandas' leniency, like the offline loader
    ],
)
def test_timestamps_at_the_edges_of_the_range(stamp, expected, decoder):
    out = decoder.decode(good(TimeStamp=stamp))
    assert isinstance(out, CanonicalRecord), getattr(out, "error", "")
    assert out.row["timestamp"] == expected
    assert out.record_time == expected.replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "stamp, mentions",
    [
        (datetime(1677, 9, 21), "outside the supported range"),
        (datetime(2262, 4, 12), "outside the supported range"),
        ("1677-09-21T00:00:00", "outside the supported range"),
        ("", "expected a BSON date"),
        ("   ", "expected a BSON date"),
        (1767601800.5, "is a number"),
        (True, "expected a BSON date"),
        ("not a time", "ISO 8601 expected"),
    ],
)
def test_timestamps_outside_the_range_or_unparseable_are_invalid(stamp, mentions, decoder):
    out = decoder.decode(good(TimeStamp=stamp))
    assert isinstance(out, DeadLetter) and out.reason == INVALID_FIELD
    assert out.error.startswith("TimeStamp: ") and mentions in out.error, out.error


def test_a_date_without_time_is_midnight(decoder):
    from datetime import date

    out = decoder.decode(good(TimeStamp=date(2026, 1, 5), PART_FACT_PLAN_DATE=date(2026, 1, 4)))
    assert out.row["timestamp"] == datetime(2026, 1, 5) and out.row["lot_date"] == "2026-01-04"


def test_lot_date_accepts_dates_and_padded_text_and_ignores_junk(decoder):
    assert decoder.decode(good(PART_FACT_PLAN_DATE=datetime(2026, 1, 3, 23, 0))).row["lot_date"] == "2026-01-03"
    assert decoder.decode(good(PART_FACT_PLAN_DATE=" 2026-01-02 ")).row["lot_date"] == "2026-01-02"
    assert decoder.decode(good(PART_FACT_PLAN_DATE=12345)).row["lot_date"] == "2026-01-05"
    assert decoder.decode(good(PART_FACT_PLAN_DATE=None)).row["lot_date"] == "2026-01-05"


def test_timestamp_format_errors_name_the_format():
    schema = parse_schema(
        {"record_id": "id", "timestamp": "ts", "timestamp_format": "%d/%m/%Y %H:%M", "facility": "fac", "item": "part",
         "maker": {"constant": "kamp"}, "makers": {"kamp": {"settings": ["s"], "production": ["p"]}}}
    )
    out = RecordDecoder(schema).decode({"id": "1", "ts": "2026/01/05", "fac": "M1"})
    assert out.reason == INVALID_FIELD and "in format %d/%m/%Y %H:%M" in out.error
    iso = RecordDecoder(schema).decode({"id": "1", "ts": "2026-01-05T08:30:00", "fac": "M1"})
    assert iso.row["timestamp"] == datetime(2026, 1, 5, 8, 30)  # ISO 8601 is always understood
    assert iso.row["maker"] == "kamp" and iso.row["lot_date"] == "2026-01-05"


def test_the_maker_is_read_from_the_plants_own_column():
    schema = parse_schema({"record_id": "id", "timestamp": "ts", "facility": "fac", "item": "part",
                           "maker": {"column": "vendor"}, "makers": {"A": {"settings": ["s"], "production": ["p"]}}})
    decoder = RecordDecoder(schema)
    out = decoder.decode({"id": "1", "ts": "2026-01-05T08:30:00", "fac": "M1", "vendor": "A", "maker": "Z"})
    assert out.row["maker"] == "A"
    assert decoder.decode({"id": "1", "ts": "2026-01-05T08:30:00", "fac": "M1", "vendor": "Q"}).reason == UNKNOWN_MAKER


# -- every refusal says exactly why, naming the plant's own field --------------------------------
def _refusals():
    long_text = "x" * 65  # one over the limit of what can be a number or a date-time
    at_limit = "x" * 64
    return [
        (dict(_id=True), INVALID_FIELD, "_id: expected a string, integer or ObjectId (got True)"),
        (dict(_id="  "), INVALID_FIELD, "_id: expected a non-empty string, integer or ObjectId (got '  ')"),
        (dict(_id=...), MISSING_FIELD, "_id: is missing"),
        (dict(_id="i" * 257), INVALID_FIELD,
         f"_id: is 257 characters long; at most 256 are accepted (got {short_repr('i' * 257)})"),
        (dict(_id=int("9" * 257)), INVALID_FIELD,
         f"_id: is 257 characters long; at most 256 are accepted (got {short_repr(int('9' * 257))})"),
        (dict(EQUIP_CD=True), INVALID_FIELD, "EQUIP_CD: expected a string or integer code (got True)"),
        (dict(EQUIP_CD=1.5), INVALID_FIELD, "EQUIP_CD: expected a string or integer code (got 1.5)"),
        (dict(EQUIP_CD=""), MISSING_FIELD, "EQUIP_CD: is empty; every record needs it"),
        (dict(EQUIP_CD="f" * 257), INVALID_FIELD,
         f"EQUIP_CD: is 257 characters long; at most 256 are accepted (got {short_repr('f' * 257)})"),
        (dict(PART_NAME=10 ** 256), INVALID_FIELD,
         f"PART_NAME: is 257 characters long; at most 256 are accepted (got {short_repr(10 ** 256)})"),
        (dict(TimeStamp=datetime(1677, 9, 21)), INVALID_FIELD,
         "TimeStamp: is outside the supported range (1677-09-22 to 2262-04-11) (got datetime.datetime(1677, 9, 21, 0, 0))"),
        (dict(TimeStamp="nope"), INVALID_FIELD, "TimeStamp: is not a date-time (ISO 8601 expected) (got 'nope')"),
        (dict(TimeStamp=at_limit), INVALID_FIELD, f"TimeStamp: is not a date-time (ISO 8601 expected) (got {short_repr(at_limit)})"),
        (dict(TimeStamp=long_text), INVALID_FIELD, f"TimeStamp: is 65 characters long; not a date-time (got {short_repr(long_text)})"),
        (dict(TimeStamp=5), INVALID_FIELD, "TimeStamp: is a number; expected a BSON date or an ISO 8601 string (got 5)"),
        (dict(TimeStamp=[1]), INVALID_FIELD, "TimeStamp: expected a BSON date or an ISO 8601 string (got [1])"),
        (dict(TimeStamp=DatetimeMS(2**62)), INVALID_FIELD,
         f"TimeStamp: is outside the supported range (1677-09-22 to 2262-04-11) (got {short_repr(DatetimeMS(2**62))})"),
        (dict(s2=True), INVALID_FIELD, "s2: expected a number, not a boolean (got True)"),
        (dict(s2="fast"), INVALID_FIELD, "s2: expected a number or a numeric string (got 'fast')"),
        (dict(s2=at_limit), INVALID_FIELD, f"s2: expected a number or a numeric string (got {short_repr(at_limit)})"),
        (dict(s2=long_text), INVALID_FIELD, f"s2: is 65 characters long; not a number (got {short_repr(long_text)})"),
        (dict(s2=10**400), INVALID_FIELD, f"s2: is too large for a 64-bit float (got {short_repr(10**400)})"),
        (dict(s2="-inf"), INVALID_FIELD, "s2: is infinite (got '-inf')"),
        (dict(s2=[1]), INVALID_FIELD, "s2: expected a number or a numeric string (got [1])"),
        (dict(maker="Z"), UNKNOWN_MAKER, "maker: maker Z is not defined by the plant schema (known: A, B)"),
        (dict(maker=[1]), UNKNOWN_MAKER, "maker: maker [1] is not defined by the plant schema (known: A, B)"),
        (dict(maker="M" * 256), UNKNOWN_MAKER, f"maker: maker {'M' * 256} is not defined by the plant schema (known: A, B)"),
        (dict(maker="M" * 257), INVALID_FIELD, f"maker: is 257 characters long; at most 256 are accepted (got {short_repr('M' * 257)})"),
    ]


@pytest.mark.parametrize("changes, reason, error", _refusals())
def test_every_refusal_says_exactly_why(decoder, changes, reason, error):
    out = decoder.decode(good(**changes))
    assert isinstance(out, DeadLetter)
    assert (out.reason, out.error) == (reason, error)


def test_names_and_numbers_at_the_length_limits_are_accepted(decoder):
    out = decoder.decode(good(_id="i" * 256, EQUIP_CD="f" * 256, PART_NAME=" " + "p" * 256 + " ", s2="0" * 63 + "5"))
    assert isinstance(out, CanonicalRecord), out.error
    assert (len(out.row["record_id"]), len(out.row["facility"]), len(out.row["item"]), out.row["s2"]) == (256, 256, 256, 5.0)
    padded = decoder.decode(good(s2=" " * 100 + "2.5" + " " * 100))  # the limit counts the text, not its padding
    assert padded.row["s2"] == 2.5


def test_bson_dates_beyond_python_arrive_as_datetime_ms(decoder):
    out = decoder.decode(good(TimeStamp=DatetimeMS(datetime(2026, 1, 5, 8, 30, tzinfo=UTC))))
    assert out.row["timestamp"] == datetime(2026, 1, 5, 8, 30)


def test_an_unanticipated_failure_is_undecodable_not_a_crash(decoder):
    class Exploding(Mapping):
        def __getitem__(self, key):
            raise RuntimeError("boom")

        def __iter__(self):
            return iter(["_id"])

        def __len__(self):
            return 1

    document = Exploding()
    out = decoder.decode(document)
    assert (out.reason, out.error) == (UNDECODABLE, "RuntimeError: 'boom'") and out.document is document


def test_internal_field_names_are_not_aliases(decoder):
    # only the plant's own column names count: a document keyed by the model's names has no id
    out = decoder.decode({"record_id": "x", "timestamp": datetime(2026, 1, 5), "facility": "F", "n0": 1.0})
    assert (out.reason, out.error) == (MISSING_FIELD, "_id: is missing; and 2 more errors")


@pytest.fixture
def seoul_clock():
    """The process's local time zone set to UTC+9, as on a plant server in Korea."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "KST-9"  # POSIX form: needs no tz database
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_timestamps_are_utc_whatever_the_servers_local_zone(decoder, seoul_clock):
    kst = timezone(timedelta(hours=9))
    out = decoder.decode(good(TimeStamp=datetime(2026, 1, 5, 17, 30, tzinfo=kst)))
    assert out.row["timestamp"] == datetime(2026, 1, 5, 8, 30)
    naive = decoder.decode(good(TimeStamp=datetime(2026, 1, 5, 8, 30)))  # BSON dates are UTC
    assert naive.record_time == out.record_time == datetime(2026, 1, 5, 8, 30, tzinfo=UTC).timestamp()


# -- property: a valid mapped document always decodes, to exactly its values ---------------------
codes = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,15}", fullmatch=True)
padding = st.sampled_from(["", " ", "  ", "\t", " \n"])
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def numeric_field(draw):
    """(raw value as a plant or MongoDB would send it, the float it means or None for a gap)."""
    kind = draw(st.integers(0, 6))
    if kind == 0:
        value = draw(finite)
        return value, value
    if kind == 1:
        value = draw(st.integers(-(10**15), 10**15))
        return value, float(value)
    if kind == 2:
        value = draw(finite)
        return draw(padding) + repr(value) + draw(padding), value
    if kind == 3:
        value = draw(st.floats(-1e9, 1e9, allow_nan=False))
        return Decimal128(repr(value)), value
    if kind == 4:
        return draw(st.sampled_from([None, "", "  ", "nan", " NaN ", float("nan"), Decimal128("NaN")])), None
    if kind == 5:
        value = draw(st.integers(-(10**6), 10**6))
        return draw(padding) + str(value) + draw(padding), float(value)
    return ..., None  # absent


@st.composite
def valid_documents(draw):
    maker = draw(st.sampled_from(["A", "B"]))
    stamp = draw(st.datetimes(min_value=datetime(1678, 1, 1), max_value=datetime(2261, 12, 31),
                              timezones=st.none() | st.just(UTC) | st.just(timezone(timedelta(hours=9)))))
    expected_time = stamp.astimezone(UTC).replace(tzinfo=None) if stamp.tzinfo else stamp
    record_id = draw(st.one_of(codes, st.builds(ObjectId), st.integers(0, 10**12)))
    facility = draw(codes)
    doc = {
        "_id": draw(padding) + record_id + draw(padding) if isinstance(record_id, str) else record_id,
        "TimeStamp": draw(st.sampled_from([stamp, stamp.isoformat()])),
        "EQUIP_CD": draw(padding) + facility + draw(padding),
        "maker": maker,
    }
    expected: dict = {"record_id": str(record_id), "timestamp": expected_time, "facility": facility, "maker": maker}
    fields = SCHEMA.makers[maker].settings + SCHEMA.makers[maker].production
    for field in fields:
        raw, value = draw(numeric_field())
        if raw is not ...:
            doc[field] = raw
        expected[field] = value
    return doc, expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(valid_documents())
def test_a_valid_document_always_decodes_to_its_values(decoder, case):
    document, expected = case
    out = decoder.decode(document)
    assert isinstance(out, CanonicalRecord), (out.reason, out.error)
    row = out.row
    for key, value in expected.items():
        if value is None:
            assert math.isnan(row[key]), key
        else:
            assert row[key] == value, key
    assert row["lot_date"] == expected["timestamp"].strftime("%Y-%m-%d")
    assert list(row) == decoder.columns


# -- property: any JSON-like (or BSON-like) document decodes or dead-letters, never raises -------
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
bson_scalars = (
    st.datetimes(timezones=st.none() | st.just(UTC))
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


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(json_like, mutated, st.dictionaries(field_names, json_like)))
def test_any_document_decodes_or_dead_letters_never_raises(decoder, document):
    out = decoder.decode(document)
    assert isinstance(out, (CanonicalRecord, DeadLetter))
    if isinstance(out, DeadLetter):
        # every failure of a document is anticipated and named: "undecodable" is for bytes that
        # are not JSON (and would mean a bug here), "scoring_failed" is not the decoder's to give
        assert out.reason in REASONS and out.reason not in (UNDECODABLE, SCORING_FAILED), (out.reason, out.error)
        assert out.error and out.document is document
    else:
        assert out.row["record_id"] and out.row["facility"]
        assert all(isinstance(out.row[c], float) for c in SCHEMA.numeric_fields)


def test_a_batch_the_mapping_trips_on_is_decoded_one_by_one(decoder, monkeypatch) -> None:
    # The batch path maps all documents at once; should the mapping itself raise on one of them
    # (a bug, or a value no rule foresaw), the batch is mapped again one document at a time: the
    # offender becomes an `undecodable` dead letter naming the exception, refusals keep their own
    # reasons, and every other record is decoded in input order.
    import service.decode as decode_module

    real = decode_module.map_documents

    def tripping(documents, schema):
        if any(doc.get("EQUIP_CD") == "TRIP" for doc in documents):
            raise ZeroDivisionError("a rule divided by zero")
        return real(documents, schema)

    monkeypatch.setattr(decode_module, "map_documents", tripping)
    documents = [good(EQUIP_CD="F01"), good(EQUIP_CD="TRIP"), good(EQUIP_CD="F02", Cycle_Time="ERR"),
                 good(EQUIP_CD="F03")]
    batch = decoder.decode_batch(documents)
    assert batch.rows == [0, 3]
    assert list(batch.frame["facility"]) == ["F01", "F03"] and len(batch.record_time) == 2
    assert sorted(batch.dead_letters) == [1, 2]
    tripped = batch.dead_letters[1]
    assert tripped.reason == UNDECODABLE and tripped.error == "ZeroDivisionError: 'a rule divided by zero'"
    assert batch.dead_letters[2].reason == INVALID_FIELD and "Cycle_Time" in batch.dead_letters[2].error
    # the same documents without the trip: one batch call, the same records
    monkeypatch.setattr(decode_module, "map_documents", real)
    plain = decoder.decode_batch([documents[0], documents[3]])
    assert list(plain.frame["facility"]) == ["F01", "F03"]
    assert plain.frame.equals(batch.frame)


def test_a_batch_where_every_document_trips_yields_an_empty_canonical_frame(decoder, monkeypatch) -> None:
    import service.decode as decode_module

    real = decode_module.map_documents
    monkeypatch.setattr(decode_module, "map_documents",
                        lambda documents, schema: real(documents, schema) if not documents else 1 / 0)
    batch = decoder.decode_batch([good(), good()])
    assert batch.rows == [] and batch.record_time == [] and sorted(batch.dead_letters) == [0, 1]
    assert list(batch.frame.columns) == list(real([], SCHEMA).frame.columns) and batch.frame.empty


@pytest.mark.parametrize(("code", "expected"),
                         [(1.0, "1"), (7, "7"), (-3.0, "-3"), (0.0, "0"), (" 12 ", "12"), (2.0**53, "9007199254740992")])
def test_integer_codes_read_the_same_whatever_their_number_type(decoder, code, expected):
    out = decoder.decode(good(EQUIP_CD=code, PART_NAME=code))
    assert isinstance(out, CanonicalRecord) and out.row["facility"] == expected == out.row["item"]


def test_unknown_field_names_are_reported_once_each_with_the_field_they_resemble() -> None:
    from service.decode import UnknownFields, unknown_field_text

    unknown = UnknownFields(SCHEMA)
    first = [{"_id": 1, "TimeStamp": 0, "EQUIP_CD": "F", "PART_NAME": "I", "PART_FACT_PLAN_DATE": "d", "maker": "A",
              "Barrel Temp 1": 1, "cycle_time": 2, "Cycle_Tme": 3, "operator": "x", 7: "not a name"}]
    assert unknown.observe(first) == [("Cycle_Tme", "Cycle_Time"), ("cycle_time", "Cycle_Time"), ("operator", None)]
    assert unknown.observe(first + [{"operator": 1, "q2": 0, "Barrel Temp 2": 1}]) == [("Barrel Temp 2", "Barrel Temp 1"), ("q2", None)]
    assert unknown.observe([]) == []
    assert unknown_field_text("Cycle_Tme", "Cycle_Time") == (
        "field 'Cycle_Tme' is not in the plant schema (did you mean 'Cycle_Time'? a record without it has it imputed)")
    assert unknown_field_text("operator", None) == "field 'operator' is not in the plant schema (ignored)"


def test_unknown_field_reports_are_bounded() -> None:
    from service.decode import MAX_UNKNOWN_FIELDS, UnknownFields

    unknown = UnknownFields(SCHEMA)
    flood = [{f"name-{i:06d}": i for i in range(10 * MAX_UNKNOWN_FIELDS)}]
    assert len(unknown.observe(flood)) == MAX_UNKNOWN_FIELDS
    assert unknown.observe([{"one-more": 1}]) == []
