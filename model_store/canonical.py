"""A plant's exports as canonical frames: records and daily lots renamed to moldwatch's roles and checked.

:func:`canonical_records` maps a records export (CSV, Parquet or PostgreSQL) by the rules of
:mod:`model_store.mapping`, the ones the streaming worker decodes documents with, and refuses the
first bad row; :func:`canonical_lots` does the same for the daily lot table. The roles come from
the plant's schema (:mod:`model_store.schema`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from model_store.errors import DataError
from model_store.mapping import map_frame
from model_store.schema import LABEL, MAKER, PlantSchema


def _first_bad_row(frame: pd.DataFrame, column: str, bad: np.ndarray) -> str:
    index = int(np.flatnonzero(bad)[0])
    return f"row {index + 1} (value {frame[column].iloc[index]!r})"


def canonical_records(frame: pd.DataFrame, schema: PlantSchema, source: str = "records") -> pd.DataFrame:
    """Rename a plant export to canonical roles and check it against the schema.

    The rules are :mod:`model_store.mapping`'s, the same the streaming worker decodes documents
    with. Raises :class:`DataError` naming the source, the column and the first refused row.
    Numeric fields may be missing (NaN) — imputation deals with gaps — but must not hold text.
    """
    if frame.empty:
        raise DataError(f"{source}: no rows; expected production records with columns {schema.record_id}, {schema.timestamp}, ...")
    needed = [schema.record_id, schema.timestamp, schema.facility, schema.item]
    if schema.maker_column:
        needed.append(schema.maker_column)
    if schema.lot_date:
        needed.append(schema.lot_date)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column {missing[0]!r} (schema {schema.source} needs {', '.join(needed)})")

    mapped = map_frame(frame, schema)
    if mapped.errors:
        row = min(mapped.errors)
        raise DataError(f"{source}: {_refused_row(schema, row, mapped.errors[row][0])}")
    out = mapped.frame
    present = set(out[MAKER].dropna().unique())
    for name in schema.numeric_fields:
        if name not in frame.columns:
            makers_using = [m for m, f in schema.makers.items() if name in f.all]
            if present & set(makers_using):
                raise DataError(f"{source}: missing column {name!r} (a field of maker {makers_using[0]} in {schema.source})")
    if schema.label and schema.label in frame.columns:
        out[LABEL] = _as_label(frame[schema.label].reset_index(drop=True))
    return out


def _refused_row(schema: PlantSchema, index: int, error: Any) -> str:
    """An offline refusal: the column, the row (1-based) and its value, then the rule's words."""
    column, at = error.column, f"row {index + 1}"
    if error.reason == "missing_field":
        return f"column {column!r} is empty at {at}; every record needs it"
    value = f"(value {error.value!r})" if len(repr(error.value)) <= 120 else f"(value of {len(repr(error.value))} characters)"
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
    missing = [v for v in schema.lot_columns.values() if v not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column {missing[0]!r}; lots need {', '.join(schema.lot_columns.values())}")
    lots = frame[list(rename)].rename(columns=rename).copy()
    lots["facility"] = lots["facility"].astype(str)
    lots["item"] = lots["item"].astype(str)
    dates = pd.to_datetime(lots["lot_date"], errors="coerce")
    if dates.isna().any():
        raise DataError(f"{source}: column {schema.lot_columns['lot_date']!r} must hold dates; "
                        f"{_first_bad_row(lots, 'lot_date', dates.isna().to_numpy())}")
    lots["lot_date"] = dates.dt.strftime("%Y-%m-%d")
    for col in ("good_qty", "bad_qty"):
        qty = pd.to_numeric(lots[col], errors="coerce")
        bad = qty.isna().to_numpy() | (qty.fillna(0) < 0).to_numpy()
        if bad.any():
            raise DataError(f"{source}: column {schema.lot_columns[col]!r} must be a non-negative count; {_first_bad_row(lots, col, bad)}")
        lots[col] = qty.astype("int64")
    return lots.reset_index(drop=True)
