"""Fill gaps so that a record is never unscorable because one field is blank.

Identity and setting fields are process *state*: a machine keeps its item and set points until
someone changes them, so the last known value on the same facility is the best guess (forward
fill), then the next known one (backward fill, offline only), then a plant-wide fallback.
Production values are *measurements*: they are filled later from the resolved group's training
means (see :mod:`model_store.scoring`), because only the group knows what is normal for them.
"""
from __future__ import annotations

from typing import Any, Mapping, MutableMapping

import numpy as np
import pandas as pd

FacilityMemory = MutableMapping[str, dict[str, Any]]
"""Last known value of each state column per facility, carried across batches by the worker."""


def _missing(values: pd.Series) -> np.ndarray:
    return values.isna().to_numpy()


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
    order = np.lexsort((out["timestamp"].to_numpy(), out["facility"].astype(str).to_numpy()))
    ordered = out.iloc[order]
    imputed = np.zeros((len(out), len(columns)), dtype=bool)
    facility = ordered["facility"].astype(str)
    filled_cols: dict[str, pd.Series] = {}
    for j, column in enumerate(columns):
        values = ordered[column] if column in ordered else pd.Series(np.nan, index=ordered.index)
        was_missing = _missing(values)
        if not was_missing.any():
            filled_cols[column] = values
            continue
        values = values.astype(object) if values.dtype == object else values
        filled = values.groupby(facility, sort=False).ffill()
        if memory:
            remembered = facility.map(lambda f, c=column: memory.get(f, {}).get(c))
            filled = filled.where(filled.notna(), remembered)
        if backward:
            filled = filled.groupby(facility, sort=False).bfill()
        if column in fallback and fallback[column] is not None:
            filled = filled.where(filled.notna(), fallback[column])
        filled_cols[column] = filled
        imputed[order, j] = was_missing & filled.notna().to_numpy()
    for column, series in filled_cols.items():
        restored = pd.Series(index=ordered.index, data=series.to_numpy()).reindex(out.index)
        out[column] = restored.infer_objects() if restored.dtype == object and column not in ("item",) else restored
    if memory is not None:
        last = out.iloc[order].groupby(facility.to_numpy(), sort=False).tail(1)
        for _, row in last.iterrows():
            state = memory.setdefault(str(row["facility"]), {})
            for column in columns:
                if pd.notna(row[column]):
                    state[column] = row[column]
    return out, imputed


def fill_with_means(x: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace NaN in ``x`` (rows, features) by the per-feature ``means``; also return the mask."""
    missing = np.isnan(x)
    if not missing.any():
        return x, missing
    return np.where(missing, means[None, :], x), missing
