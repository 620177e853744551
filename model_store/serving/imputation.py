"""Fill gaps so that a record is never unscorable because one field is blank.

Identity and setting fields are process *state*: a machine keeps its item and set points until
someone changes them, so the last known value on the same facility is the best guess (forward
fill), then the next known one (backward fill, offline only), then a plant-wide fallback.
Production values are *measurements*: they are filled later from the resolved group's training
means (see :mod:`model_store.serving.scoring`), because only the group knows what is normal for them.
"""
from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, cast

import numpy as np
import pandas as pd

FacilityMemory = MutableMapping[str, dict[str, Any]]
"""Last known value of each state column per facility, carried across batches by the worker."""


def _is_missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return cast("np.ndarray", np.isnan(values))
    return cast("np.ndarray", pd.isna(values))


def _last_valid(valid: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per row: index of the latest valid row at or before it within its facility, else -1."""
    index = np.where(valid, np.arange(len(valid)), -1)
    latest = np.maximum.accumulate(index)
    return np.where(latest >= starts, latest, -1)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def impute_state(
    frame: pd.DataFrame,
    columns: list[str],
    fallback: Mapping[str, Any],
    memory: FacilityMemory | None = None,
    backward: bool = True,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Fill ``columns`` per facility: forward, from ``memory``, backward, then ``fallback``.

    ``frame`` needs ``facility`` and ``timestamp``; its row order is kept. Returns the filled frame
    and a boolean ``(rows, columns)`` mask of what was imputed. ``memory`` (if given) is read for
    gaps before a facility's first known value in this batch and updated with the last values.
    """
    out = frame.copy()
    if out.empty or not columns:
        return out, np.zeros((len(out), len(columns)), dtype=bool)
    given = {c: out[c].to_numpy() for c in columns if c in out}
    filled, imputed = impute_columns(out["facility"].astype(str).to_numpy(), out["timestamp"].to_numpy(), given, columns,
                                     fallback, memory, backward)
    for column in columns:
        if filled[column] is not given.get(column):  # the column had gaps
            out[column] = filled[column]  # float when numeric: filled from a float array
    return out, imputed


def impute_columns(
    facility: np.ndarray,
    timestamp: np.ndarray,
    given: Mapping[str, np.ndarray],
    columns: list[str],
    fallback: Mapping[str, Any],
    memory: FacilityMemory | None = None,
    backward: bool = True,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """:func:`impute_state` on arrays: ``given`` maps a column to its values (a column not in it
    is all gaps); returns every column of ``columns`` filled, and the mask of what was imputed."""
    rows = len(facility)
    imputed = np.zeros((rows, len(columns)), dtype=bool)
    filled_columns: dict[str, np.ndarray] = {}
    if rows == 0:
        return {c: np.asarray(given.get(c, np.full(0, np.nan))) for c in columns}, imputed
    facility = np.asarray(facility).astype(str)
    order = np.lexsort((timestamp, facility))
    sorted_facility = facility[order]
    boundary = np.r_[True, sorted_facility[1:] != sorted_facility[:-1]]
    group = np.cumsum(boundary) - 1
    starts = np.flatnonzero(boundary)[group]  # first sorted row of each row's facility
    ends = np.r_[np.flatnonzero(boundary)[1:], len(order)][group] - 1  # last sorted row of it
    last_rows = np.flatnonzero(np.r_[boundary[1:], True])  # the last sorted row of each facility

    for j, column in enumerate(columns):
        raw = given[column] if column in given else np.full(rows, np.nan)
        filled_columns[column] = raw
        # A column that is all blanks in this batch reads as float NaN even when it holds text
        # (the item): what memory or the fallback would put there decides whether it is numeric.
        supplied = [state[column] for state in (memory or {}).values() if column in state]
        numeric = raw.dtype.kind == "f" and all(_is_number(v) for v in [*supplied, fallback.get(column)] if v is not None)
        values = raw[order].copy() if numeric else raw[order].astype(object)
        valid = ~_is_missing(values)
        if not valid.all():
            before = _last_valid(valid, starts)
            filled = np.where(before >= 0, values[np.maximum(before, 0)], values)
            still = before < 0
            if memory and still.any():
                remembered = np.array([memory.get(f, {}).get(column) for f in sorted_facility[still]], dtype=object)
                known = ~pd.isna(remembered)
                found = np.flatnonzero(still)[known]
                filled[found] = remembered[known]
                still[found] = False
            if backward and still.any():
                # the next valid row of the same facility: the same scan on the reversed order
                reverse = _last_valid(valid[::-1], (len(valid) - 1 - ends)[::-1])[::-1]
                after = np.where(reverse >= 0, len(valid) - 1 - reverse, -1)
                found = np.flatnonzero(still & (after >= 0))
                filled[found] = values[after[found]]
                still[found] = False
            if still.any() and fallback.get(column) is not None:
                filled[still] = fallback[column]
                still[:] = False
            now_valid = ~_is_missing(filled)
            imputed[order, j] = ~valid & now_valid
            result = np.empty_like(filled)
            result[order] = filled
            filled_columns[column] = result
            values, valid = filled, now_valid
        if memory is not None:
            latest = _last_valid(valid, starts)[last_rows]
            for row, index in zip(last_rows, latest):
                if index >= 0:
                    memory.setdefault(str(sorted_facility[row]), {})[column] = values[index]
    return filled_columns, imputed


def fill_with_means(x: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace NaN in ``x`` (rows, features) by the per-feature ``means``; also return the mask."""
    missing = np.isnan(x)
    if not missing.any():
        return x, missing
    return np.where(missing, means[None, :], x), missing
