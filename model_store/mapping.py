"""One mapping from a plant's records to canonical columns, offline and online.

The rules for every role (record id, timestamp, facility, item, maker, lot date, numeric fields)
live here once. :func:`map_columns` applies them column by column to a batch of rows and returns
the canonical frame of the rows that map plus, for each row that does not, every refusal in field
order. Two callers feed it:

- offline, :func:`model_store.canonical.canonical_records` hands it a plant export's columns (a
  CSV/Parquet/PostgreSQL frame) and raises :class:`~model_store.errors.DataError` on the first
  refused row;
- online, :class:`service.decode.RecordDecoder` hands it a micro-batch of MongoDB/JSON documents
  and dead-letters each refused row with the reason of its first refusal.

Validation is vectorised where the data allow it (a column of plain floats is one NumPy call, a
column of datetimes or ISO 8601 text one pandas call); a value of any other type goes through the
per-value rule that also writes its error message. The per-value rules are the specification: the
vectorised paths only take values on which they agree with them.

Refusal reasons are a bounded vocabulary (each is a label of ``moldwatch_dead_letters_total``).
MongoDB specifics: ``ObjectId``/``UUID`` ids become their text, BSON dates (tz-aware or naive UTC)
become naive UTC, ``Decimal128``/``Int64`` are numbers, a ``DatetimeMS`` beyond Python's range is
an out-of-range timestamp.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as dtime
from decimal import Decimal
from functools import lru_cache
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.errors import InvalidBSON
from bson.objectid import ObjectId

from model_store.schema import FACILITY, ITEM, LOT_DATE, MAKER, RECORD_ID, TIMESTAMP, PlantSchema
from model_store.serving.columns import RecordColumns

NOT_A_DOCUMENT = "not_a_document"  # not a JSON object / BSON document
MISSING_FIELD = "missing_field"  # a required role (record id, timestamp, facility) is absent or empty
INVALID_FIELD = "invalid_field"  # present but of the wrong type or unparseable
UNKNOWN_MAKER = "unknown_maker"  # maker not defined by the plant schema

# pandas stores timestamps as datetime64[ns] in many places downstream; outside these bounds a
# frame cannot hold them.
TS_MIN = datetime(1677, 9, 22)
TS_MAX = datetime(2262, 4, 11)
_EPOCH = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)
_TS_MIN_US = (TS_MIN - _EPOCH) // _US
_TS_MAX_US = (TS_MAX - _EPOCH) // _US
_RANGE = "is outside the supported range (1677-09-22 to 2262-04-11)"
# Identifying fields (record id, facility, item, maker) travel in every verdict, in Kafka keys and
# in metric labels. Real ones are short codes; a megabyte "facility" would make a verdict the broker
# refuses, and a label series per garbage value. 256 characters is far above any plant's naming.
MAX_NAME_LENGTH = 256
_EXACT_FLOAT_INT = 2.0**53  # every integer up to here is exactly representable as a float
# Text longer than this is not a number or a date-time: refuse it before parsing a megabyte.
MAX_SCALAR_TEXT = 64
REPR_LIMIT = 120  # characters of a bad value quoted in an error: enough to recognise it

ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "<absent>"})()  # a field the row does not have


def short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not break error reporting
        text = f"<{type(value).__name__}>"
    return text if len(text) <= REPR_LIMIT else text[: REPR_LIMIT - 3] + "..."


class Refusal(ValueError):
    """One value a rule refuses: the reason, a message for a person, and whether to quote the value."""

    def __init__(self, reason: str, message: str, quote: bool = True) -> None:
        super().__init__(message)
        self.reason, self.message, self.quote = reason, message, quote


@dataclass(frozen=True)
class FieldError:
    """A refused value: which plant column, why, and the value itself."""

    column: str
    reason: str
    message: str
    value: Any
    quote: bool = True

    @property
    def text(self) -> str:
        """``"<plant column>: <message> (got <value>)"``: names the plant's own field."""
        return f"{self.column}: {self.message}" + (f" (got {short_repr(self.value)})" if self.quote else "")


@dataclass
class Mapped:
    """The canonical frame of the rows that map, and the refusals of those that do not.

    ``rows`` are the input positions of the frame's rows (in input order); ``errors`` maps an
    input position to its refusals in field order (record id, timestamp, facility, item, maker,
    then the numeric fields in schema order). ``record_time`` is each frame row's timestamp in
    epoch seconds (UTC).
    """

    records: RecordColumns
    rows: np.ndarray
    errors: dict[int, list[FieldError]] = field(default_factory=dict)
    record_time: list[float] = field(default_factory=list)

    @property
    def frame(self) -> pd.DataFrame:
        return self.records.frame


# -- per-value rules (the specification; each raises Refusal) ------------------------------------
class TooLong(Refusal):
    """An identifying field over :data:`MAX_NAME_LENGTH`."""


def bounded(text: str) -> str:
    if len(text) > MAX_NAME_LENGTH:
        raise TooLong(INVALID_FIELD, f"is {len(text)} characters long; at most {MAX_NAME_LENGTH} are accepted")
    return text


def record_id_value(value: Any) -> str:
    if value is ABSENT:
        raise Refusal(MISSING_FIELD, "is missing", quote=False)
    if isinstance(value, bool):
        raise Refusal(INVALID_FIELD, "expected a string, integer or ObjectId")
    if isinstance(value, (ObjectId, UUID, int)):
        return bounded(str(value))
    if isinstance(value, str) and value.strip():
        return bounded(value.strip())
    raise Refusal(INVALID_FIELD, "expected a non-empty string, integer or ObjectId")


def name_value(value: Any) -> str | None:
    """Facility / item / maker names: strings, or integer codes that some plants use. A null or a
    float NaN (how a frame writes a blank cell) is a gap."""
    if value is None or value is ABSENT or (type(value) is float and value != value):
        return None
    if isinstance(value, bool):
        raise Refusal(INVALID_FIELD, "expected a string or integer code")
    if isinstance(value, int):
        return bounded(str(value))
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_FLOAT_INT:
        # A CSV column of integer codes with one blank cell is read as floats: 7.0 is the code 7,
        # as the same code sent as a BSON int or double is. Beyond 2**53 a float is no exact code.
        return bounded(str(int(value)))
    if isinstance(value, str):
        return bounded(value.strip()) or None
    raise Refusal(INVALID_FIELD, "expected a string or integer code")


def facility_value(value: Any) -> str:
    if value is ABSENT:
        raise Refusal(MISSING_FIELD, "is missing", quote=False)
    name = name_value(value)
    if name is None:
        raise Refusal(MISSING_FIELD, "is empty; every record needs it", quote=False)
    return name


def maker_rule(makers: Sequence[str]) -> Callable[[Any], str | None]:
    known = tuple(makers)

    def maker_value(value: Any) -> str | None:
        try:
            name = name_value(value)
        except TooLong:
            raise  # say so, not "unknown maker"
        except Refusal:
            name = short_repr(value)
        if name is not None and name not in known:
            raise Refusal(UNKNOWN_MAKER, f"maker {name} is not defined by the plant schema (known: {', '.join(known)})",
                          quote=False)
        return name

    return maker_value


@lru_cache(maxsize=32)
def zone_info(name: str | None) -> tzinfo | None:
    """The schema's ``timezone`` (checked when the schema was read), None for none."""
    return ZoneInfo(name) if name else None


def local_to_utc_us(local_us: np.ndarray, zone: tzinfo) -> np.ndarray:
    """Wall-clock times in ``zone`` (microseconds since 1970 as if UTC) as UTC microseconds. The
    one rule for every path: a time the clocks show twice (the hour a DST change repeats) is its
    first occurrence; a time they skip (the hour a DST change jumps) is read as the first time
    after the jump."""
    local_us = np.asarray(local_us, dtype=np.int64)
    if not len(local_us):
        return local_us
    index = pd.DatetimeIndex(local_us.astype("datetime64[us]"))
    aware = index.tz_localize(zone, ambiguous=np.ones(len(index), dtype=bool), nonexistent="shift_forward")
    return np.asarray(aware.tz_convert("UTC").tz_localize(None).as_unit("us").asi8, dtype=np.int64)


def utc_to_local_us(utc_us: np.ndarray, zone: tzinfo | None) -> np.ndarray:
    """UTC microseconds as wall-clock microseconds in ``zone`` (unchanged without one)."""
    utc_us = np.asarray(utc_us, dtype=np.int64)
    if zone is None or not len(utc_us):
        return utc_us
    index = pd.DatetimeIndex(utc_us.astype("datetime64[us]")).tz_localize("UTC").tz_convert(zone).tz_localize(None)
    return np.asarray(index.as_unit("us").asi8, dtype=np.int64)


class UtcStamps(np.ndarray):
    """A datetime64 column known to be UTC (an export's zone-aware column, converted): never
    read as the plant's wall-clock time."""


def _to_naive_utc(value: datetime, zone: tzinfo | None = None) -> datetime:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    elif zone is not None:
        if not TS_MIN <= value <= TS_MAX:
            raise Refusal(INVALID_FIELD, _RANGE)
        local = (value - _EPOCH) // _US
        value = _EPOCH + timedelta(microseconds=int(local_to_utc_us(np.array([local]), zone)[0]))
    if not TS_MIN <= value <= TS_MAX:
        raise Refusal(INVALID_FIELD, _RANGE)
    return value


def time_value(value: Any, fmt: str | None = None, zone: tzinfo | None = None) -> datetime:
    """A date-time as naive UTC: BSON dates, dates, ISO 8601 text, or text in ``fmt``; a value
    without an offset is wall-clock time in ``zone`` (the schema's timezone), else UTC."""
    if value is ABSENT:
        raise Refusal(MISSING_FIELD, "is missing", quote=False)
    if isinstance(value, DatetimeMS):
        # A BSON date beyond Python's datetime (year < 1 or > 9999: valid in MongoDB); the reader
        # decodes such dates as DatetimeMS (DATETIME_AUTO) instead of crashing on them.
        try:
            value = value.as_datetime()
        except (OverflowError, ValueError, OSError, InvalidBSON):
            raise Refusal(INVALID_FIELD, _RANGE) from None
    if isinstance(value, datetime):
        return _to_naive_utc(value, zone)
    if isinstance(value, date):
        return _to_naive_utc(datetime.combine(value, dtime()), zone)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if len(text) > MAX_SCALAR_TEXT:
            raise Refusal(INVALID_FIELD, f"is {len(text)} characters long; not a date-time")
        try:
            return _to_naive_utc(datetime.fromisoformat(text), zone)
        except Refusal:
            raise
        except ValueError:
            pass
        if not fmt and _ambiguous_day_month(text):
            raise Refusal(INVALID_FIELD, "is ambiguous (day or month first?); write ISO 8601 (2026-01-05T05:36:00) or name "
                                         "the plant's format in the schema (timestamp_format: \"%d/%m/%Y %H:%M\")")
        try:
            if fmt:
                return _to_naive_utc(datetime.strptime(text, fmt), zone)
            parsed = pd.Timestamp(text)  # pandas' leniency for mixed formats
            if not pd.isna(parsed):
                return _to_naive_utc(parsed.to_pydatetime(), zone)
        except Refusal:
            raise
        except Exception:  # noqa: BLE001 - pandas raises many types for unparseable text
            pass
        raise Refusal(INVALID_FIELD, "is not a date-time" + (f" in format {fmt}" if fmt else " (ISO 8601 expected)"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # Epoch numbers are ambiguous (s? ms? ns?): guessing wrong scores against the wrong lot.
        raise Refusal(INVALID_FIELD, "is a number; expected a BSON date or an ISO 8601 string")
    raise Refusal(INVALID_FIELD, "expected a BSON date or an ISO 8601 string")


_TWO_DIGIT_YEAR = re.compile(r"^\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2}(?:\D|$)")
_DAY_MONTH = re.compile(r"^(\d{1,2})[/.\-](\d{1,2})[/.\-]\d{2,4}(?:\D|$)")


def _ambiguous_day_month(text: str) -> bool:
    """``05/01/2026``: 5 January or 1 May? Both readings are dates (a day-first plant would get
    silently wrong dates from a month-first reader). ``13/01/2026`` and ``05/05/2026`` are not."""
    match = _DAY_MONTH.match(text)
    if match is None:
        return False
    first, second = int(match.group(1)), int(match.group(2))
    return 1 <= first <= 12 and 1 <= second <= 12 and first != second


# Text a numeric field holds for "no value": pandas' CSV reader reads these as a gap, so a JSON
# record, a MongoDB document or a PostgreSQL text column that holds them reads the same as the CSV.
MISSING_NUMBER_TEXT = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null"})


def number_value(value: Any) -> float:
    """Numeric fields: numbers, numeric strings, Decimal128; blank / NaN / null / absent, and text
    a CSV reader reads as missing (``n/a``, ``NA``, ``NULL``: MISSING_NUMBER_TEXT) mean a gap (NaN)."""
    if type(value) is float and math.isfinite(value):
        return value
    if value is None or value is ABSENT:
        return math.nan
    if isinstance(value, bool):
        raise Refusal(INVALID_FIELD, "expected a number, not a boolean")
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    if isinstance(value, str):
        text = value.strip()
        if text in MISSING_NUMBER_TEXT:
            return math.nan
        if len(text) > MAX_SCALAR_TEXT:
            raise Refusal(INVALID_FIELD, f"is {len(text)} characters long; not a number")
        try:
            value = float(text)
        except ValueError:
            raise Refusal(INVALID_FIELD, "expected a number or a numeric string") from None
    if isinstance(value, (int, float, Decimal)):
        try:
            number = float(value)
        except (OverflowError, ValueError):
            raise Refusal(INVALID_FIELD, "is too large for a 64-bit float") from None
        if math.isinf(number):
            raise Refusal(INVALID_FIELD, "is infinite")
        return number  # NaN: a gap, imputation fills it like a missing field
    raise Refusal(INVALID_FIELD, "expected a number or a numeric string")


# -- column rules (vectorised where the values allow) ---------------------------------------------
Errors = dict[int, FieldError]


def _per_value(values: Sequence[Any], rule: Callable[[Any], Any], column: str, errors: Errors) -> list[Any]:
    out: list[Any] = []
    for i, value in enumerate(values):
        try:
            out.append(rule(value))
        except Refusal as exc:
            errors[i] = FieldError(column, exc.reason, exc.message, value, exc.quote)
            out.append(None)
    return out


def _plain_names(values: Sequence[Any]) -> list[Any] | None:
    """Stripped names when every value is a string no longer than the bound, else None (per value)."""
    if not all(type(v) is str for v in values):
        return None
    out = [v.strip() for v in values]
    if any(len(v) > MAX_NAME_LENGTH for v in out):
        return None
    return out


def id_column(values: Sequence[Any], column: str, errors: Errors) -> list[Any]:
    plain = _plain_names(values)
    if plain is not None and all(plain):
        return plain
    return _per_value(values, record_id_value, column, errors)


def name_column(values: Sequence[Any], column: str, errors: Errors, rule: Callable[[Any], Any] = name_value) -> list[Any]:
    plain = _plain_names(values)
    if plain is not None and rule is name_value:
        return [v or None for v in plain]
    if plain is not None and rule is facility_value and all(plain):
        return plain
    return _per_value(values, rule, column, errors)


def maker_column(values: Sequence[Any], column: str, errors: Errors, makers: Sequence[str]) -> list[Any]:
    plain = _plain_names(values)
    if plain is not None and set(plain) <= set(makers):
        return plain
    return _per_value(values, maker_rule(makers), column, errors)


_FLOATISH = frozenset({float, int, type(None)})
_NONE_ONLY = {type(None)}


def number_column(values: Sequence[Any], column: str, errors: Errors) -> np.ndarray:
    """Floats, ints and gaps in one NumPy call; any other type by the per-value rule."""
    out: np.ndarray | None = None
    types = None if isinstance(values, np.ndarray) and values.dtype == np.float64 else set(map(type, values))
    if types is None:
        out = values.copy()
    elif types == _NONE_ONLY:
        out = np.full(len(values), np.nan)  # another maker's field: NumPy's None -> NaN path is slow
    elif types <= _FLOATISH:
        try:
            out = np.array(values, dtype=np.float64)  # None -> NaN (a gap)
        except (OverflowError, TypeError, ValueError):  # an int beyond float range: the rule says which
            out = None
    if out is None:
        out = np.empty(len(values), dtype=np.float64)
        for i, value in enumerate(values):
            try:
                out[i] = number_value(value)
            except Refusal as exc:
                errors[i] = FieldError(column, exc.reason, exc.message, value, exc.quote)
                out[i] = np.nan
        return out
    for i in np.flatnonzero(np.isinf(out)).tolist():
        errors[i] = FieldError(column, INVALID_FIELD, "is infinite", float(values[i]))
        out[i] = np.nan
    return out


def time_column(values: Sequence[Any], column: str, errors: Errors, fmt: str | None, zone: tzinfo | None = None) -> np.ndarray:
    """Microseconds since the epoch (int64, naive UTC); refused rows hold 0.

    Datetimes and ISO 8601 text (as ``datetime.fromisoformat`` reads it) are converted to UTC by
    pandas in one call; everything else through :func:`time_value`.
    """
    n = len(values)
    out = np.zeros(n, dtype=np.int64)
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":  # an export's datetime64 column
        nat = np.isnat(values)
        for i in np.flatnonzero(nat).tolist():
            errors[i] = FieldError(column, MISSING_FIELD, "is missing", None, quote=False)
        present = np.flatnonzero(~nat)
        us = np.asarray(values[present].astype("datetime64[us]").astype(np.int64))
        if zone is not None and not isinstance(values, UtcStamps):  # naive: the plant's wall clock
            us = _local_within_range(us, zone)
        _place(out, present.tolist(), us, values, column, errors)
        return out
    stamps: list[int] = []
    parsed_stamps: list[datetime] = []
    slow: list[int] = []
    for i, value in enumerate(values):
        kind = type(value)
        if kind is datetime:
            stamps.append(i)
            parsed_stamps.append(value)
        elif kind is str:
            # datetime.fromisoformat is the rule's first reading of text (pandas' "ISO8601"
            # format also takes 2026/01/05: not the same rule)
            text = value.strip()
            try:
                stamp = datetime.fromisoformat(text) if 0 < len(text) <= MAX_SCALAR_TEXT else None
            except ValueError:
                stamp = None
            if stamp is None:
                slow.append(i)
            else:
                stamps.append(i)
                parsed_stamps.append(stamp)
        else:
            slow.append(i)
    if stamps:
        parsed = pd.to_datetime(parsed_stamps, utc=True)  # aware -> UTC, naive taken as UTC
        us = np.asarray(parsed.as_unit("us").asi8, dtype=np.int64)
        if zone is not None:  # naive: the plant's wall clock
            naive = np.fromiter((s.tzinfo is None for s in parsed_stamps), dtype=bool, count=len(parsed_stamps))
            us[naive] = _local_within_range(us[naive], zone)
        _place(out, stamps, us, values, column, errors)
    for i in slow:
        try:
            out[i] = (time_value(values[i], fmt, zone) - _EPOCH) // _US
        except Refusal as exc:
            errors[i] = FieldError(column, exc.reason, exc.message, values[i], exc.quote)
    return out


def _local_within_range(local_us: np.ndarray, zone: tzinfo) -> np.ndarray:
    """:func:`local_to_utc_us` of the values within the supported range; the others as they are
    (``_place`` refuses them by range)."""
    out = np.array(local_us, dtype=np.int64)
    inside = (out >= _TS_MIN_US) & (out <= _TS_MAX_US)
    out[inside] = local_to_utc_us(out[inside], zone)
    return out


def _place(out: np.ndarray, rows: list[int], us: np.ndarray, values: Sequence[Any], column: str, errors: Errors) -> None:
    rows_arr = np.asarray(rows, dtype=np.int64)
    out[rows_arr] = us
    outside = (us < _TS_MIN_US) | (us > _TS_MAX_US)
    for k in np.flatnonzero(outside).tolist():
        errors[rows[k]] = FieldError(column, INVALID_FIELD, _RANGE, values[rows[k]])
        out[rows[k]] = 0


LOT_DATE_AMBIGUOUS = ("is ambiguous (day or month first?); write ISO 8601 (2026-01-05) or name the plant's format in the "
                      "schema (lot_date_format: \"%d.%m.%Y\")")


def lot_day_value(value: Any, fmt: str | None = None) -> str:
    """A lot date as ``YYYY-MM-DD``, strictly (the lot table's rule): dates and date-times (the
    day as written, never shifted to UTC), ISO 8601 text, text in ``fmt``, other unambiguous
    text; text that reads both day first and month first is refused without ``fmt`` (a
    day-first plant would otherwise get silently wrong lots), and so are numbers."""
    if isinstance(value, np.datetime64):
        value = None if np.isnat(value) else pd.Timestamp(value).to_pydatetime()
    elif isinstance(value, np.generic):
        value = value.item()
    if value is None or value is ABSENT or value is pd.NaT or (isinstance(value, float) and math.isnan(value)) \
            or (isinstance(value, str) and not value.strip()):
        raise Refusal(MISSING_FIELD, "is empty; every lot needs its date", quote=False)
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if not isinstance(value, str):
        raise Refusal(INVALID_FIELD, "is not a date; write ISO 8601 (2026-01-05) or text in the schema's lot_date_format")
    text = value.strip()
    if len(text) > MAX_SCALAR_TEXT:
        raise Refusal(INVALID_FIELD, f"is {len(text)} characters long; not a date")
    try:
        return datetime.fromisoformat(text).date().isoformat()
    except ValueError:
        pass
    if fmt:
        try:
            return datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            raise Refusal(INVALID_FIELD, f"is not a date in the schema's lot_date_format {fmt!r}") from None
    if _ambiguous_day_month(text):
        raise Refusal(INVALID_FIELD, LOT_DATE_AMBIGUOUS)
    if _TWO_DIGIT_YEAR.match(text):
        raise Refusal(INVALID_FIELD, "has a two-digit year (which century?); write ISO 8601 (2026-01-05) or name the "
                                     "plant's format in the schema (lot_date_format: \"%d.%m.%y\")")
    try:
        parsed = pd.Timestamp(text)
    except Exception:  # noqa: BLE001 - pandas raises many types for unparseable text
        parsed = pd.NaT
    if pd.isna(parsed):
        raise Refusal(INVALID_FIELD, "is not a date; write ISO 8601 (2026-01-05) or name the plant's format in the schema "
                                     "(lot_date_format: \"%d.%m.%Y\")")
    return str(parsed.date().isoformat())


def lot_date_refusals(values: Sequence[Any], column: str, errors: Errors, fmt: str | None) -> None:
    """Records whose lot date is text that reads both day first and month first (no ``fmt``):
    refused, as a timestamp would be, instead of silently taking one reading."""
    if fmt or (isinstance(values, np.ndarray) and values.dtype.kind == "M"):
        return
    for i, value in enumerate(values):
        if type(value) is str and _ambiguous_day_month(value.strip()):
            errors[i] = FieldError(column, INVALID_FIELD, LOT_DATE_AMBIGUOUS, value)


def lot_day_column(values: Sequence[Any] | None, stamps_us: np.ndarray, fmt: str | None = None,
                   zone: tzinfo | None = None) -> list[str]:
    """``YYYY-MM-DD`` of the lot date where one parses (:func:`time_value`, or ``fmt``), else of
    the timestamp (lenient on purpose: a lot date is a hint, the timestamp decides; an ambiguous
    one was refused by :func:`lot_date_refusals`). Days of UTC instants are ``zone``'s days."""
    local = utc_to_local_us(stamps_us, zone)
    days: list[str] = np.datetime_as_string(local.astype("datetime64[us]"), unit="D").tolist()
    if values is None:
        return days
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":  # an export's datetime64 column
        text = np.datetime_as_string(values.astype("datetime64[D]"), unit="D").tolist()
        return [t if t != "NaT" else d for t, d in zip(text, days)]
    for i, value in enumerate(values):
        if value is None or value is ABSENT:
            continue
        if type(value) is str:  # the common case, first: a naive ISO date or date-time
            try:
                stamp: datetime | None = datetime.fromisoformat(value.strip())
            except ValueError:
                stamp = None
            if stamp is not None and stamp.tzinfo is None and TS_MIN <= stamp <= TS_MAX:
                days[i] = stamp.date().isoformat()
                continue
            if fmt and stamp is None:
                try:
                    days[i] = datetime.strptime(value.strip(), fmt).date().isoformat()
                except ValueError:
                    pass
                continue
        try:
            instant = time_value(value)  # a date-time with an offset: the zone's day of that instant
            days[i] = (instant if zone is None else instant.replace(tzinfo=UTC).astimezone(zone)).date().isoformat()
        except Refusal:
            pass
    return days


# -- the mapping --------------------------------------------------------------------------------
def map_columns(columns: Mapping[str, Sequence[Any]], n: int, schema: PlantSchema) -> Mapped:
    """Map ``n`` rows given as plant columns (each a sequence of ``n`` values, :data:`ABSENT`
    where a row lacks the field; a column not in ``columns`` is absent from every row)."""
    absent = [ABSENT] * n
    per_field: list[Errors] = []

    def take(name: str | None) -> Sequence[Any]:
        return absent if name is None else columns.get(name, absent)

    def errs() -> Errors:
        per_field.append({})
        return per_field[-1]

    zone = zone_info(schema.timezone)
    ids = id_column(take(schema.record_id), schema.record_id, errs())
    stamps = time_column(take(schema.timestamp), schema.timestamp, errs(), schema.timestamp_format, zone)
    facilities = name_column(take(schema.facility), schema.facility, errs(), facility_value)
    items = name_column(take(schema.item), schema.item, errs())
    if schema.maker_column:
        makers: list[Any] = maker_column(take(schema.maker_column), schema.maker_column, errs(), list(schema.makers))
    else:
        makers = [schema.maker_constant] * n
    numbers = [number_column(take(name), name, errs()) for name in schema.numeric_fields]
    if schema.lot_date:
        lot_date_refusals(take(schema.lot_date), schema.lot_date, errs(), schema.lot_date_format)

    errors: dict[int, list[FieldError]] = {}
    for field_errors in per_field:
        for i, error in field_errors.items():
            errors.setdefault(i, []).append(error)
    if errors:
        rows = np.asarray([i for i in range(n) if i not in errors], dtype=np.int64)
    else:
        rows = np.arange(n, dtype=np.int64)
    keep = rows.tolist() if errors else None

    def pick(values: Sequence[Any]) -> list[Any]:
        return list(values) if keep is None else [values[i] for i in keep]

    stamps = stamps if keep is None else stamps[rows]
    lot_values = take(schema.lot_date) if schema.lot_date else None
    if lot_values is not None and keep is not None:
        lot_values = [lot_values[i] for i in keep]
    data: dict[str, np.ndarray] = {
        RECORD_ID: _objects(pick(ids)),
        TIMESTAMP: stamps.astype("datetime64[us]"),
        MAKER: _objects(pick(makers)),
        FACILITY: _objects(pick(facilities)),
        ITEM: _objects(pick(items)),
        LOT_DATE: _objects(lot_day_column(lot_values, stamps, schema.lot_date_format, zone)),
    }
    for name, values in zip(schema.numeric_fields, numbers):
        data[name] = np.asarray(values if keep is None else values[rows], dtype=float)
    record_time = [u / 1_000_000 for u in stamps.tolist()]  # int / int: exact like datetime.timestamp()
    return Mapped(RecordColumns(data, len(rows)), rows, errors, record_time)


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-d object array of the values as they are (np.array would unpack a sequence value)."""
    return np.fromiter(values, dtype=object, count=len(values))


def canonical_columns(schema: PlantSchema) -> list[str]:
    """Column order of the canonical frame."""
    return [RECORD_ID, TIMESTAMP, MAKER, FACILITY, ITEM, LOT_DATE, *schema.numeric_fields]


def document_columns(documents: Sequence[Mapping[str, Any]], schema: PlantSchema) -> dict[str, list[Any]]:
    """The plant columns the schema reads, one list per column: :data:`ABSENT` where a document
    lacks a role, ``None`` where it lacks a numeric field (both are a gap there)."""
    n = len(documents)
    roles = [schema.record_id, schema.timestamp, schema.facility, schema.item]
    if schema.maker_column:
        roles.append(schema.maker_column)
    if schema.lot_date:
        roles.append(schema.lot_date)
    out: dict[str, list[Any]] = {name: [ABSENT] * n for name in roles}
    for name in schema.numeric_fields:
        out.setdefault(name, [None] * n)
    # One pass over each document's own fields (a plant's document holds its maker's fields only,
    # a third of the schema's here): half the cost of one dict.get per column and document.
    wanted = out.get
    for i, document in enumerate(documents):
        for key, value in document.items():
            column = wanted(key)
            if column is not None:
                column[i] = value
    return out


def map_documents(documents: Sequence[Mapping[str, Any]], schema: PlantSchema) -> Mapped:
    """Map a batch of documents (plain dicts keyed by the plant's column names)."""
    return map_columns(document_columns(documents, schema), len(documents), schema)


def frame_columns(frame: pd.DataFrame, schema: PlantSchema) -> dict[str, Sequence[Any]]:
    """A plant export's columns as the mapping reads them: a null (NaN, NA, NaT, None) is a value
    the row does not have; float64 numeric columns stay NumPy arrays (one vectorised check)."""
    out: dict[str, Sequence[Any]] = {}
    numeric = set(schema.numeric_fields)
    for name in frame.columns:
        column = frame[name]
        if name in numeric and column.dtype == np.float64:
            out[name] = column.to_numpy()
            continue
        if pd.api.types.is_datetime64_any_dtype(column.dtype):
            if column.dt.tz is not None:  # an instant: UTC, never the plant's wall clock
                out[name] = column.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().view(UtcStamps)
            else:
                out[name] = column.to_numpy()
            continue
        values: list[Any] = column.astype(object).tolist()
        missing = column.isna().to_numpy()
        if missing.any():
            values = [ABSENT if m else v for v, m in zip(values, missing.tolist())]
        out[name] = values
    return out


def map_frame(frame: pd.DataFrame, schema: PlantSchema) -> Mapped:
    """Map a plant export (a frame with the plant's column names)."""
    return map_columns(frame_columns(frame.reset_index(drop=True), schema), len(frame), schema)


__all__ = ["Mapped", "FieldError", "Refusal", "map_columns", "map_documents", "map_frame", "document_columns",
           "frame_columns", "canonical_columns", "short_repr", "ABSENT", "MAX_NAME_LENGTH", "MAX_SCALAR_TEXT",
           "NOT_A_DOCUMENT", "MISSING_FIELD", "INVALID_FIELD", "UNKNOWN_MAKER", "TS_MIN", "TS_MAX"]
