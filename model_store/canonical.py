"""A plant's exports as canonical frames: records and daily lots renamed to moldwatch's roles and checked.

:func:`canonical_records` maps a records export (CSV, Parquet or PostgreSQL) by the rules of
:mod:`model_store.mapping`, the ones the streaming worker decodes documents with, and refuses the
first bad row; :func:`canonical_lots` does the same for the daily lot table. The roles come from
the plant's schema (:mod:`model_store.schema`).
"""
from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from model_store.errors import DataError
from model_store.mapping import Refusal, lot_day_value, map_frame, short_repr
from model_store.schema import LABEL, MAKER, MakerFields, PlantSchema


def _first_bad_row(frame: pd.DataFrame, column: str, bad: np.ndarray) -> str:
    index = int(np.flatnonzero(bad)[0])
    value = frame[column].iloc[index]
    if isinstance(value, np.generic):  # the plant's value, not numpy's repr of it (np.int64(-5))
        value = value.item()
    return f"row {index + 1} (value {value!r})"


# Characters that print as nothing: a spreadsheet's byte-order mark or a zero-width space pasted
# into a header must not make 'shot_id' another column.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))


def _name_key(name: Any) -> str:
    """How a column name is compared with the schema's: Unicode NFC (an 'ü' typed on one system and
    exported as 'u' + combining diaeresis on another are one name), outer spaces and invisible
    characters (byte-order mark, zero-width spaces, soft hyphen) ignored."""
    return unicodedata.normalize("NFC", str(name)).translate(_INVISIBLE).strip()


def align_columns(frame: pd.DataFrame, names: Iterable[str], source: str) -> pd.DataFrame:
    """``frame`` with each column that is one of ``names`` but for Unicode normalisation or outer
    spaces renamed to the schema's spelling; two columns that would take one name are refused."""
    wanted = {_name_key(n): n for n in names}
    rename: dict[Any, str] = {}
    taken: dict[str, Any] = {}
    for column in frame.columns:
        target = wanted.get(_name_key(column))
        if target is None:
            continue
        if target in taken:
            raise DataError(f"{source}: columns {taken[target]!r} and {column!r} both read as {target!r} "
                            f"(they differ only in spaces or Unicode form); keep one")
        taken[target] = column
        if column != target:
            rename[column] = target
    return frame.rename(columns=rename) if rename else frame


@dataclass(frozen=True)
class RefusedRow:
    """A record of an export that the mapping refuses: where it is, which record, and why."""

    row: int  # 1-based position in the export (a JSON source: the line the record starts on)
    record_id: str | None  # the record's id as written (cut to MAX_QUOTED_ID characters), None when it has none
    reason: str  # the mapping's reason, the dead letter's vocabulary (invalid_field, missing_field, unknown_maker)
    error: str  # one line for a person: the column, the row, the value and what was expected

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "record_id": self.record_id, "reason": self.reason, "error": self.error}


MAX_QUOTED_ID = 200


def quoted_id(value: Any) -> str | None:
    """A record id as a refusal quotes it: text, cut to MAX_QUOTED_ID; None for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= MAX_QUOTED_ID else text[:MAX_QUOTED_ID] + "..."


def canonical_records(frame: pd.DataFrame, schema: PlantSchema, source: str = "records",
                      refused: list[RefusedRow] | None = None, first_row: int = 0, keys_only: bool = False) -> pd.DataFrame:
    """Rename a plant export to canonical roles and check it against the schema.

    The rules are :mod:`model_store.mapping`'s, the same the streaming worker decodes documents
    with. Raises :class:`DataError` naming the source, the column and the first refused row; with
    ``refused`` (a list), each refused row is appended to it instead and the others are returned
    (an error still when every row is refused, or a column is missing: the file, not a row, is
    wrong). Numeric fields may be missing (NaN) — imputation deals with gaps — but must not hold text.
    ``first_row``: the frame's first row's position in the source (a piece of a larger read), so
    that refusals name the source's row. ``keys_only``: the frame holds the identifying columns
    only (record id, timestamp, machine, item, maker, lot date); the production fields are not
    asked for.
    """
    if frame.empty:
        raise DataError(f"{source}: no rows; expected production records with columns {schema.record_id}, {schema.timestamp}, ...")
    frame = align_columns(frame, [schema.record_id, schema.timestamp, schema.facility, schema.item,
                                  *(c for c in (schema.maker_column, schema.lot_date, schema.label) if c),
                                  *schema.numeric_fields], source)
    needed = [schema.record_id, schema.timestamp, schema.facility, schema.item]
    if schema.maker_column:
        needed.append(schema.maker_column)
    if schema.lot_date:
        needed.append(schema.lot_date)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column {missing[0]!r} (schema {schema.source} needs {', '.join(needed)})")

    mapped = map_frame(frame, replace(schema, makers={m: MakerFields((), ()) for m in schema.makers}) if keys_only else schema)
    if mapped.errors and (refused is None or len(mapped.errors) == len(frame)):
        row = min(mapped.errors)
        every = f" (and every other row: {len(frame):,} refused)" if refused is not None and len(frame) > 1 else ""
        raise DataError(f"{source}: {_refused_row(schema, first_row + row, mapped.errors[row][0])}{every}")
    if mapped.errors and refused is not None:
        ids = frame[schema.record_id].tolist()
        for row in sorted(mapped.errors):
            first = mapped.errors[row][0]
            refused.append(RefusedRow(first_row + row + 1, quoted_id(ids[row]), first.reason,
                                      _refused_row(schema, first_row + row, first)))
    out = mapped.frame
    present = set(out[MAKER].dropna().unique())
    for name in () if keys_only else schema.numeric_fields:
        if name not in frame.columns:
            makers_using = [m for m, f in schema.makers.items() if name in f.all]
            if present & set(makers_using):
                raise DataError(f"{source}: missing column {name!r} (a field of maker {makers_using[0]} in {schema.source})")
    if schema.label and schema.label in frame.columns:
        labels = _as_label(frame[schema.label].reset_index(drop=True))
        out[LABEL] = labels.to_numpy()[mapped.rows] if mapped.errors else labels
    return out


def repeated_records(records: pd.DataFrame) -> tuple[pd.DataFrame, int, list[str]]:
    """(``records`` without rows that repeat an earlier row exactly, how many were left out, the
    record ids still shared by different shots)."""
    exact = records.duplicated(keep="first").to_numpy()
    kept = records[~exact].reset_index(drop=True) if exact.any() else records
    shared = kept["record_id"][kept["record_id"].duplicated(keep=False)]
    return kept, int(exact.sum()), [str(v) for v in pd.unique(shared)]


def _refused_row(schema: PlantSchema, index: int, error: Any) -> str:
    """An offline refusal: the column, the row (1-based) and its value, then the rule's words."""
    column, at = error.column, f"row {index + 1}"
    if error.reason == "missing_field":
        return f"column {column!r} is empty at {at}; every record needs it"
    shown = repr(error.value)
    length = len(error.value) if isinstance(error.value, str) else len(shown)  # the plant's characters, not the quotes
    value = f"(value {shown})" if len(shown) <= 120 else f"(value of {length:,} characters)"
    if error.reason == "unknown_maker":
        return f"unknown maker in column {column!r}, {at} {value}; the schema defines {', '.join(schema.makers)}"
    if column == schema.timestamp:
        return f"column {column!r} must hold timestamps; {at} {value}: {error.message}"
    if column in schema.numeric_fields:
        return f"column {column!r} must be numeric; {at} {value}: {error.message}"
    return f"column {column!r}, {at} {value}: {error.message}"


_FAIL_WORDS = {"n", "ng", "fail", "false", "bad", "defect", "1", "1.0", "y", "yes", "true"}


def _as_label(column: pd.Series) -> pd.Series:
    """Evaluation labels as 1 = defective. Accepts 0/1, booleans or KAMP's 'Y'/'N' PassOrFail."""
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return column.astype(float).fillna(0).astype(int)
    text = column.astype(str).str.strip().str.lower()
    # KAMP's PassOrFail is 'Y' for pass; other exports write 'OK'/'NG'.
    if set(text.unique()) <= {"y", "n", "nan"}:
        return (text == "n").astype(int)
    return text.isin(_FAIL_WORDS - {"n", "y"}).astype(int)


def canonical_lots(frame: pd.DataFrame, schema: PlantSchema, source: str = "lots") -> pd.DataFrame:
    """Rename a lot table to ``facility, item, lot_date, good_qty, bad_qty`` and check it."""
    if frame.empty:
        raise DataError(f"{source}: no rows; expected daily lots with columns {', '.join(schema.lot_columns.values())}")
    rename = {v: k for k, v in schema.lot_columns.items()}
    frame = align_columns(frame, schema.lot_columns.values(), source)
    missing = [v for v in schema.lot_columns.values() if v not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column {missing[0]!r}; lots need {', '.join(schema.lot_columns.values())}")
    lots = frame[list(rename)].rename(columns=rename).copy()
    for key in ("facility", "item"):
        # the records' rule for names (model_store.mapping.name_value): text, trimmed, never empty
        names = lots[key].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip())
        empty = names.isna().to_numpy() | (names == "").to_numpy()
        if empty.any():
            raise DataError(f"{source}: column {schema.lot_columns[key]!r} is empty at row {int(np.flatnonzero(empty)[0]) + 1}; "
                            f"every lot names its {key}")
        lots[key] = names
    days = []
    for index, value in enumerate(lots["lot_date"].tolist()):
        try:
            days.append(lot_day_value(value, schema.lot_date_format))
        except Refusal as refusal:
            quoted = f" (value {short_repr(value)})" if refusal.quote else ""
            raise DataError(f"{source}: column {schema.lot_columns['lot_date']!r} must hold dates; row {index + 1}"
                            f"{quoted} {refusal.message}") from None
    lots["lot_date"] = days
    for col in ("good_qty", "bad_qty"):
        qty = pd.to_numeric(lots[col], errors="coerce")
        bad = qty.isna().to_numpy() | (qty.fillna(0) < 0).to_numpy()
        if bad.any():
            raise DataError(f"{source}: column {schema.lot_columns[col]!r} must be a non-negative count; {_first_bad_row(lots, col, bad)}")
        lots[col] = qty.astype("int64")
    return lots.reset_index(drop=True)
