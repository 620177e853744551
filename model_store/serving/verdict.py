"""Verdict objects (DESIGN.md §3) from a :class:`~model_store.serving.scoring.ScoredBatch`.

The JSON Schema of a verdict is ``model_store/schemas/verdict.schema.json``; tests validate real
messages against it.
"""
from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from model_store.serving.columns import RecordColumns
from model_store.serving.scoring import ScoredBatch

VERDICT_SCHEMA_PATH = Path(__file__).parent.parent / "schemas" / "verdict.schema.json"
# 2: excursion, measured_share, defect_probability; resolution part/item/maker. 3: basis; resolution and
# model_kind "conditional". 4: line, line_version, lot_date
VERDICT_VERSION = 4


def _iso(ts: Any) -> str | None:
    if ts is None or (isinstance(ts, float) and math.isnan(ts)) or pd.isna(ts):
        return None
    return cast(str, pd.Timestamp(ts).isoformat())


def _iso_column(column: pd.Series | np.ndarray) -> list[str | None]:
    """ISO 8601 strings for a whole column at once (per-value Timestamp.isoformat is ~10 µs each)."""
    if isinstance(column, np.ndarray):
        if column.dtype.kind != "M":
            return [_iso(v) for v in column.tolist()]
        text = np.datetime_as_string(column.astype("datetime64[us]"), unit="us")
        missing = np.isnat(column)
        return [None if m else (t[:-7] if t.endswith(".000000") else t) for t, m in zip(text.tolist(), missing.tolist())]
    if pd.api.types.is_datetime64_any_dtype(column):
        tz = getattr(column.dtype, "tz", None)
        if tz is not None and str(tz) not in ("UTC", "utc"):  # a local zone: offsets vary (DST), per value
            return [_iso(v) for v in column.tolist()]
        # tz-aware UTC converts to naive UTC here; the offset is written back below, as isoformat() does
        text = np.datetime_as_string(column.to_numpy(dtype="datetime64[us]"), unit="us")
        missing = column.isna().to_numpy()
        offset = "+00:00" if tz is not None else ""
        # match Timestamp.isoformat(): no fractional part when there is none
        return [None if m else (t[:-7] if t.endswith(".000000") else t) + offset for t, m in zip(text.tolist(), missing)]
    return [_iso(v) for v in column.tolist()]


def _num_column(values: np.ndarray) -> list[float | None]:
    """Seven significant digits, NaN/inf as null, for a whole column (Python floats: no NumPy
    scalar per value). Significant digits keep JSON short, and a tiny margin keeps its sign
    (rounding to a fixed number of decimals would turn a margin of 3e-7 into 0 on an anomalous
    verdict)."""
    isfinite = math.isfinite
    return [float(f"{v:.7g}") if isfinite(v) else None for v in np.asarray(values, dtype=float).tolist()]


_NUMBERS = ("distance", "loss", "threshold", "margin", "score", "excursion", "measured_share", "defect_probability")


def to_verdicts(records: pd.DataFrame | RecordColumns, batch: ScoredBatch, model_version: str,
                scored_at: str | None = None) -> list[dict[str, Any]]:
    """One verdict per record, in input order."""
    scored_at = scored_at or datetime.now(UTC).isoformat(timespec="milliseconds")
    if isinstance(records, pd.DataFrame):
        ids = records["record_id"].to_numpy(dtype=object).tolist()
        stamps = _iso_column(records["timestamp"])  # a frame's column keeps its time zone
        lot_dates = records["lot_date"].tolist() if "lot_date" in records.columns else [None] * len(ids)
    else:
        ids = np.asarray(records["record_id"], dtype=object).tolist()
        stamps = _iso_column(np.asarray(records["timestamp"]))
        lot_dates = np.asarray(records["lot_date"], dtype=object).tolist() if "lot_date" in records else [None] * len(ids)
    # Column by column, as Python lists: one conversion per column instead of one NumPy scalar per
    # value and field (this loop runs once per verdict on the worker's hot path).
    distance, loss, threshold, margin, score, excursion, measured, probability = (
        _num_column(getattr(batch, name)) for name in _NUMBERS)
    makers, facilities, items = batch.maker.tolist(), batch.facility.tolist(), batch.item.tolist()
    clusters, groups, resolutions = batch.cluster.tolist(), batch.group_id.tolist(), batch.resolution.tolist()
    kinds, anomalies, reasons = batch.model_kind.tolist(), batch.anomaly.tolist(), batch.reason.tolist()
    bases = [b if isinstance(b, str) else None for b in (batch.basis.tolist() if batch.basis is not None else [None] * len(batch))]
    lines = batch.line.tolist() if batch.line is not None else [1.0] * len(batch)
    line_version = batch.line_version or None
    out: list[dict[str, Any]] = []
    for i in range(len(batch)):
        cluster = int(clusters[i])
        item = items[i]
        out.append(
            {
                "verdict_version": VERDICT_VERSION,
                "record_id": str(ids[i]),
                "maker": makers[i] if isinstance(makers[i], str) else None,
                "facility": str(facilities[i]),
                "item": item if isinstance(item, str) else None,
                "timestamp": stamps[i],
                "lot_date": lot_dates[i] if isinstance(lot_dates[i], str) else None,
                "setting_cluster": cluster if cluster >= 0 else None,
                "group_id": groups[i],
                "resolution": str(resolutions[i]),
                "distance": distance[i],
                "model_kind": kinds[i],
                "model_version": model_version,
                "loss": loss[i],
                "threshold": threshold[i],
                "margin": margin[i],
                "score": score[i],
                "anomaly": bool(anomalies[i]),
                "line": lines[i],
                "line_version": line_version if lines[i] != 1.0 else None,
                "excursion": excursion[i],
                "measured_share": measured[i],
                "defect_probability": probability[i],
                "imputed": list(batch.imputed[i]),
                "out_of_range": list(batch.out_of_range[i]),
                "top_features": list(batch.top_features[i]),
                "reason": reasons[i],
                "basis": bases[i],
                "scored_at": scored_at,
            }
        )
    return out
