"""The recommended setting and the operating window of production under it. Pure NumPy/pandas."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

# The operating window is p1-p99 of normal production: a sensor spike the models let through (one
# shot at 531 degC among thousands at 223) must not stretch it. Shots outside are counted as outliers.
STATS = ("min", "p1", "p5", "mean", "p95", "p99", "max")
DIGITS = 6  # set points and measurements carry at most a few decimals; 6 keeps JSON small and exact enough


def _num(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), DIGITS)


def most_used_combination(settings: pd.DataFrame) -> tuple[dict[str, float], int, float]:
    """The exact set-point combination used on the most shots (rows with every field known).

    Returns (field -> value, shots with it, its share of the rows with every field known).
    """
    complete = settings.dropna()
    if complete.empty:
        return {}, 0, 0.0
    counts = complete.value_counts(sort=True)
    top = counts.index[0]
    top = top if isinstance(top, tuple) else (top,)
    return (
        {name: _num(v) for name, v in zip(settings.columns, top)},
        int(counts.iloc[0]),
        float(counts.iloc[0] / len(complete)),
    )


def window_stats(values: np.ndarray) -> dict[str, float | int | None]:
    """min / p1 / p5 / mean / p95 / p99 / max of one field, ignoring gaps (None when nothing is known),
    and ``outliers``: how many shots lie outside p1-p99."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {**dict.fromkeys(STATS), "outliers": 0}
    p1, p5, p95, p99 = np.percentile(values, [1, 5, 95, 99])
    return {"min": _num(values.min()), "p1": _num(p1), "p5": _num(p5), "mean": _num(values.mean()), "p95": _num(p95),
            "p99": _num(p99), "max": _num(values.max()), "outliers": int(((values < p1) | (values > p99)).sum())}


def operating_window(production: pd.DataFrame, normal: np.ndarray | None = None) -> dict[str, Any]:
    """Per production field, the window of the shots made under one setting.

    With ``normal`` (True = a model scored the shot and judged it normal), only normal shots count —
    the window of good production — unless none is normal, then all shots.
    """
    use = production
    normal_only = False
    if normal is not None:
        normal = np.asarray(normal, dtype=bool)
        if normal.any():
            use, normal_only = production[normal], True
    return {
        "rows": int(len(use)),
        "normal_only": normal_only,
        "fields": {name: window_stats(use[name].to_numpy()) for name in production.columns},
    }


def centroid_raw(centroid_scaled: Sequence[float], minimum: np.ndarray, scale: np.ndarray,
                 fields: Sequence[str]) -> dict[str, float | None]:
    """A cluster centre from the maker's [0, 1] setting space back to raw set-point units."""
    raw = np.asarray(centroid_scaled, dtype=float) * np.asarray(scale, dtype=float) + np.asarray(minimum, dtype=float)
    return {name: _num(v) for name, v in zip(fields, raw)}
