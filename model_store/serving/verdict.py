"""Verdict objects (DESIGN.md §3) from a :class:`~model_store.serving.scoring.ScoredBatch`.

The JSON Schema of a verdict is ``model_store/schemas/verdict.schema.json``; tests validate real
messages against it.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_store.serving.scoring import ScoredBatch

VERDICT_SCHEMA_PATH = Path(__file__).parent.parent / "schemas" / "verdict.schema.json"
VERDICT_VERSION = 2  # 2: excursion, measured_share, defect_probability; resolution part/item/maker


def _num(value: float) -> float | None:
    """Seven significant digits: short JSON, and a tiny margin keeps its sign (rounding to a fixed
    number of decimals would turn a margin of 3e-7 into 0 on an anomalous verdict)."""
    return None if value is None or not math.isfinite(value) else float(f"{float(value):.7g}")


def _iso(ts: Any) -> str | None:
    if ts is None or (isinstance(ts, float) and math.isnan(ts)) or pd.isna(ts):
        return None
    return pd.Timestamp(ts).isoformat()


def _iso_column(column: pd.Series) -> list[str | None]:
    """ISO 8601 strings for a whole column at once (per-value Timestamp.isoformat is ~10 µs each)."""
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


def to_verdicts(records: pd.DataFrame, batch: ScoredBatch, model_version: str, scored_at: str | None = None) -> list[dict[str, Any]]:
    """One verdict per record, in input order."""
    scored_at = scored_at or datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    ids = records["record_id"].to_numpy(dtype=object)
    stamps = _iso_column(records["timestamp"])
    out: list[dict[str, Any]] = []
    for i in range(len(batch)):
        cluster = int(batch.cluster[i])
        item = batch.item[i]
        out.append(
            {
                "verdict_version": VERDICT_VERSION,
                "record_id": str(ids[i]),
                "maker": batch.maker[i] if isinstance(batch.maker[i], str) else None,
                "facility": str(batch.facility[i]),
                "item": item if isinstance(item, str) else None,
                "timestamp": stamps[i],
                "setting_cluster": cluster if cluster >= 0 else None,
                "group_id": batch.group_id[i],
                "resolution": str(batch.resolution[i]),
                "distance": _num(batch.distance[i]),
                "model_kind": batch.model_kind[i],
                "model_version": model_version,
                "loss": _num(batch.loss[i]),
                "threshold": _num(batch.threshold[i]),
                "margin": _num(batch.margin[i]),
                "score": _num(batch.score[i]),
                "anomaly": bool(batch.anomaly[i]),
                "excursion": _num(batch.excursion[i]),
                "measured_share": _num(batch.measured_share[i]),
                "defect_probability": _num(batch.defect_probability[i]),
                "imputed": list(batch.imputed[i]),
                "out_of_range": list(batch.out_of_range[i]),
                "top_features": list(batch.top_features[i]),
                "reason": batch.reason[i],
                "scored_at": scored_at,
            }
        )
    return out
