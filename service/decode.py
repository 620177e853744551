"""Decode and validate one raw production document into a canonical row, or say why not.

The pydantic model is built from the plant schema, so the plant's own field names (aliases) are
what a bad record's error message names. :meth:`RecordDecoder.decode` never raises: a document
that cannot be scored becomes a :class:`DeadLetter` with a reason from a small fixed vocabulary
(it is a metric label) and a one-line error for the person who reads the dead-letter topic.

MongoDB specifics: ``ObjectId`` ids become their hex string, BSON dates (tz-aware or naive UTC)
are normalised to naive UTC like the offline path, ``Decimal128``/``Int64`` are numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timezone
from decimal import Decimal
from typing import Annotated, Any, Mapping
from uuid import UUID

import pandas as pd
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.errors import InvalidBSON
from bson.objectid import ObjectId
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic_core import PydanticCustomError

from model_store.schema import FACILITY, ITEM, LOT_DATE, MAKER, RECORD_ID, TIMESTAMP, PlantSchema

# Dead-letter reasons (a bounded vocabulary: each is a label of moldwatch_dead_letters_total).
NOT_A_DOCUMENT = "not_a_document"  # not a JSON object / BSON document
MISSING_FIELD = "missing_field"  # a required role (record id, timestamp, facility) is absent
INVALID_FIELD = "invalid_field"  # present but of the wrong type or unparseable
UNKNOWN_MAKER = "unknown_maker"  # maker not defined by the plant schema
UNDECODABLE = "undecodable"  # bytes that are not JSON, or a failure nobody anticipated
SCORING_FAILED = "scoring_failed"  # valid record that the scoring core raised on
# Permanent send failures (service/sink.py): the broker will never accept the message as it is.
MESSAGE_TOO_LARGE = "message_too_large"  # the verdict exceeds the Kafka message limit
SERIALIZATION_FAILED = "serialization_failed"  # the verdict could not be written as JSON
REJECTED_BY_BROKER = "rejected_by_broker"  # the broker refused the record itself (corrupt, invalid)
REASONS = (NOT_A_DOCUMENT, MISSING_FIELD, INVALID_FIELD, UNKNOWN_MAKER, UNDECODABLE, SCORING_FAILED,
           MESSAGE_TOO_LARGE, SERIALIZATION_FAILED, REJECTED_BY_BROKER)

# pandas stores timestamps as datetime64[ns]; outside these bounds the scoring frame cannot hold them.
_TS_MIN = datetime(1677, 9, 22)
_TS_MAX = datetime(2262, 4, 11)
_REPR_LIMIT = 120  # characters of a bad value quoted in an error: enough to recognise it
# Identifying fields (record id, facility, item, maker) travel in every verdict, in Kafka keys and
# in metric labels. Real ones are short codes; a megabyte "facility" would make a verdict the broker
# refuses, and a label series per garbage value. 256 characters is far above any plant's naming.
MAX_NAME_LENGTH = 256
# Text longer than this is not a number or a date-time: refuse it before parsing a megabyte.
_MAX_SCALAR_TEXT = 64


@dataclass(frozen=True)
class DeadLetter:
    """A record that gets no verdict: why (``reason``), the details (``error``) and the original."""

    reason: str
    error: str
    document: Any


@dataclass(frozen=True)
class CanonicalRecord:
    """One valid record: canonical columns (see ``model_store.schema``) and its time in epoch seconds."""

    row: dict[str, Any]
    record_time: float


def short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not break error reporting
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


# -- field converters (each raises PydanticCustomError with a message for a person) -------------
def _record_id(value: Any) -> str:
    if isinstance(value, bool):
        raise PydanticCustomError("record_id", "expected a string, integer or ObjectId")
    if isinstance(value, (ObjectId, UUID, int)):
        return _bounded(str(value))
    if isinstance(value, str) and value.strip():
        return _bounded(value.strip())
    raise PydanticCustomError("record_id", "expected a non-empty string, integer or ObjectId")


def _bounded(text: str) -> str:
    if len(text) > MAX_NAME_LENGTH:
        raise PydanticCustomError("too_long", "is {length} characters long; at most {limit} are accepted",
                                  {"length": len(text), "limit": MAX_NAME_LENGTH})
    return text


def _name(value: Any) -> str | None:
    """Facility / item / maker names: strings, or integer codes that some plants use."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise PydanticCustomError("name", "expected a string or integer code")
    if isinstance(value, int):
        return _bounded(str(value))
    if isinstance(value, str):
        return _bounded(value.strip()) or None
    raise PydanticCustomError("name", "expected a string or integer code")


def _required_name(value: Any) -> str:
    name = _name(value)
    if name is None:
        raise PydanticCustomError("missing", "is empty; every record needs it")
    return name


def _to_naive_utc(value: datetime) -> datetime:
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    if not _TS_MIN <= value <= _TS_MAX:
        raise PydanticCustomError("timestamp", "is outside the supported range (1677-09-22 to 2262-04-11)")
    return value


def _parse_time(value: Any, fmt: str | None) -> datetime:
    if isinstance(value, DatetimeMS):
        # A BSON date beyond Python's datetime (year < 1 or > 9999: valid in MongoDB); the reader
        # decodes such dates as DatetimeMS (DATETIME_AUTO) instead of crashing on them.
        try:
            value = value.as_datetime()
        except (OverflowError, ValueError, OSError, InvalidBSON):
            raise PydanticCustomError("timestamp", "is outside the supported range (1677-09-22 to 2262-04-11)") from None
    if isinstance(value, datetime):
        return _to_naive_utc(value)
    if isinstance(value, date):
        return datetime.combine(value, dtime())
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if len(text) > _MAX_SCALAR_TEXT:
            raise PydanticCustomError("timestamp", "is {length} characters long; not a date-time", {"length": len(text)})
        try:
            return _to_naive_utc(datetime.fromisoformat(text))
        except ValueError:
            pass
        try:
            if fmt:
                return _to_naive_utc(datetime.strptime(text, fmt))
            parsed = pd.Timestamp(text)  # the offline loader's leniency (pandas' mixed formats)
            if not pd.isna(parsed):
                return _to_naive_utc(parsed.to_pydatetime())
        except PydanticCustomError:
            raise
        except Exception:  # noqa: BLE001 - pandas raises many types for unparseable text
            pass
        raise PydanticCustomError("timestamp", "is not a date-time" + (f" in format {fmt}" if fmt else " (ISO 8601 expected)"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # Epoch numbers are ambiguous (s? ms? ns?): guessing wrong scores against the wrong lot.
        raise PydanticCustomError("timestamp", "is a number; expected a BSON date or an ISO 8601 string")
    raise PydanticCustomError("timestamp", "expected a BSON date or an ISO 8601 string")


def _number(value: Any) -> float | None:
    """Numeric fields: numbers, numeric strings, Decimal128; blank / NaN / null mean missing."""
    if type(value) is float and math.isfinite(value):  # the common case, first: ~30 fields a record
        return value
    if value is None:
        return None
    if isinstance(value, bool):
        raise PydanticCustomError("number", "expected a number, not a boolean")
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if len(text) > _MAX_SCALAR_TEXT:
            raise PydanticCustomError("number", "is {length} characters long; not a number", {"length": len(text)})
        try:
            value = float(text)
        except ValueError:
            raise PydanticCustomError("number", "expected a number or a numeric string") from None
    if isinstance(value, (int, float, Decimal)):
        try:
            number = float(value)
        except (OverflowError, ValueError):
            raise PydanticCustomError("number", "is too large for a 64-bit float") from None
        if math.isnan(number):
            return None  # a gap; imputation fills it like a missing field
        if math.isinf(number):
            raise PydanticCustomError("number", "is infinite")
        return number
    raise PydanticCustomError("number", "expected a number or a numeric string")


def _maker_check(makers: tuple[str, ...]) -> Any:
    def check(value: Any) -> str | None:
        try:
            name = _name(value)
        except PydanticCustomError as exc:
            if exc.type == "too_long":
                raise
            name = short_repr(value)
        if name is not None and name not in makers:
            raise PydanticCustomError("unknown_maker", "maker {maker} is not defined by the plant schema (known: {known})",
                                      {"maker": name, "known": ", ".join(makers)})
        return name

    return check


# -- the model --------------------------------------------------------------------------------
def build_record_model(schema: PlantSchema) -> tuple[type[BaseModel], dict[str, str]]:
    """A pydantic model whose aliases are the plant's column names.

    Returns the model and the map from its (identifier-safe) field names to canonical columns.
    """
    fmt = schema.timestamp_format
    fields: dict[str, Any] = {
        "record_id": (Annotated[str, BeforeValidator(_record_id)], Field(alias=schema.record_id)),
        "timestamp": (Annotated[datetime, BeforeValidator(lambda v: _parse_time(v, fmt))], Field(alias=schema.timestamp)),
        "facility": (Annotated[str, BeforeValidator(_required_name)], Field(alias=schema.facility)),
        "item": (Annotated[str | None, BeforeValidator(_name)], Field(None, alias=schema.item)),
    }
    canonical = {"record_id": RECORD_ID, "timestamp": TIMESTAMP, "facility": FACILITY, "item": ITEM}
    if schema.maker_column:
        check = _maker_check(tuple(schema.makers))
        fields["maker"] = (Annotated[str | None, BeforeValidator(check)], Field(None, alias=schema.maker_column))
        canonical["maker"] = MAKER
    if schema.lot_date:
        # Lenient like the offline loader: an unparseable lot date falls back to the timestamp's day.
        fields["lot_date"] = (Any, Field(None, alias=schema.lot_date))
    for i, column in enumerate(schema.numeric_fields):
        fields[f"n{i}"] = (Annotated[float | None, BeforeValidator(_number)], Field(None, alias=column))
        canonical[f"n{i}"] = column
    model = create_model(  # type: ignore[call-overload]
        f"{_identifier(schema.name)}Record",
        __config__=ConfigDict(extra="ignore", populate_by_name=False, arbitrary_types_allowed=True),
        **fields,
    )
    return model, canonical


def _identifier(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in name.title())
    return cleaned if cleaned[:1].isalpha() else "Plant" + cleaned


def _first_error(exc: ValidationError) -> tuple[str, str]:
    errors = exc.errors(include_url=False)
    if not errors:
        return INVALID_FIELD, str(exc).splitlines()[0]
    err = errors[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "document"
    kind = err.get("type", "")
    if kind == "missing":
        reason = MISSING_FIELD
        text = f"{where}: {'is missing' if err.get('msg') == 'Field required' else err.get('msg')}"
    else:
        reason = UNKNOWN_MAKER if kind == "unknown_maker" else INVALID_FIELD
        text = f"{where}: {err.get('msg')}"
        if reason != UNKNOWN_MAKER:
            text += f" (got {short_repr(err.get('input'))})"
    more = len(errors) - 1
    return reason, text + (f"; and {more} more error{'s' if more > 1 else ''}" if more else "")


class RecordDecoder:
    """Turns raw documents of one plant into canonical rows. Thread-safe (no mutable state)."""

    def __init__(self, schema: PlantSchema) -> None:
        self.schema = schema
        self.model, self._canonical = build_record_model(schema)
        self.numeric_fields = schema.numeric_fields
        self._numeric_keys = [(k, v) for k, v in self._canonical.items() if k.startswith("n") and k[1:].isdigit()]

    def decode(self, document: Any) -> CanonicalRecord | DeadLetter:
        """A canonical record, or a dead letter with the reason. Never raises."""
        try:
            return self._decode(document)
        except Exception as exc:  # noqa: BLE001 - the contract: one bad record never stops the stream
            return DeadLetter(UNDECODABLE, f"{type(exc).__name__}: {short_repr(str(exc))}", document)

    def _decode(self, document: Any) -> CanonicalRecord | DeadLetter:
        if not isinstance(document, Mapping):
            return DeadLetter(NOT_A_DOCUMENT, f"expected a JSON object / BSON document, got {type(document).__name__}", document)
        try:
            parsed = self.model.model_validate(dict(document))
        except ValidationError as exc:
            reason, text = _first_error(exc)
            return DeadLetter(reason, text, document)
        values = parsed.__dict__
        ts: datetime = values["timestamp"]
        row: dict[str, Any] = {
            RECORD_ID: values["record_id"],
            TIMESTAMP: ts,
            MAKER: values.get("maker") if self.schema.maker_column else self.schema.maker_constant,
            FACILITY: values["facility"],
            ITEM: values["item"],
            LOT_DATE: self._lot_date(values.get("lot_date"), ts),
        }
        for key, column in self._numeric_keys:
            value = values[key]
            row[column] = math.nan if value is None else value
        return CanonicalRecord(row, ts.replace(tzinfo=timezone.utc).timestamp())

    def _lot_date(self, raw: Any, ts: datetime) -> str:
        if raw is not None:
            try:
                return _parse_time(raw, None).strftime("%Y-%m-%d")
            except PydanticCustomError:
                pass
        return ts.strftime("%Y-%m-%d")

    @property
    def columns(self) -> list[str]:
        """Column order of the canonical frame built from decoded rows."""
        return [RECORD_ID, TIMESTAMP, MAKER, FACILITY, ITEM, LOT_DATE, *self.numeric_fields]


__all__ = ["RecordDecoder", "CanonicalRecord", "DeadLetter", "REASONS", "short_repr", "MAX_NAME_LENGTH",
           "MESSAGE_TOO_LARGE", "SERIALIZATION_FAILED", "REJECTED_BY_BROKER",
           "NOT_A_DOCUMENT", "MISSING_FIELD", "INVALID_FIELD", "UNKNOWN_MAKER", "UNDECODABLE", "SCORING_FAILED"]
