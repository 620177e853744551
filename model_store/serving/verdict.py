"""Verdict objects (DESIGN.md §3) from a :class:`~model_store.serving.scoring.ScoredBatch`.

The JSON Schema of a verdict is ``model_store/schemas/verdict.schema.json``; tests validate real
messages against it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from model_store.serving.columns import RecordColumns
from model_store.serving.scoring import UNSCORABLE, ScoredBatch, unscorable_cause

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


@dataclass(frozen=True)
class VerdictColumns:
    """What the worker's sink and metrics read of a batch's verdicts, as columns in verdict order.

    Built once from the scored arrays, so nothing downstream parses a verdict back: an unscorable
    verdict's ``cause`` is the scoring core's own (a key of ``UNSCORABLE_CAUSES``), not a prefix
    of its reason text. ``on_recipe`` is None when no recipe book judged the batch.
    """

    facility: list[str | None]  # None only in a verdict built by hand without one
    item: list[str | None]
    anomaly: list[bool]
    resolution: list[str]
    cause: list[str | None]
    imputed: list[list[str]]
    on_recipe: list[bool | None] | None = None

    def __len__(self) -> int:
        return len(self.facility)

    def with_recipes(self, flags: Sequence[bool | None]) -> VerdictColumns:
        return VerdictColumns(self.facility, self.item, self.anomaly, self.resolution, self.cause, self.imputed,
                              list(flags))

    @classmethod
    def concat(cls, parts: Sequence[VerdictColumns]) -> VerdictColumns:
        recipes = [p.on_recipe for p in parts]
        return cls([v for p in parts for v in p.facility], [v for p in parts for v in p.item],
                   [v for p in parts for v in p.anomaly], [v for p in parts for v in p.resolution],
                   [v for p in parts for v in p.cause], [v for p in parts for v in p.imputed],
                   None if any(r is None for r in recipes) or not parts else [v for r in recipes if r for v in r])

    @classmethod
    def of_verdicts(cls, verdicts: Sequence[Mapping[str, Any]]) -> VerdictColumns:
        """The columns of verdicts that exist only as objects (read back, or built by hand); the
        cause of an unscorable one is then read from its reason text."""
        recipes = [v.get("on_recipe") for v in verdicts] if verdicts and all("on_recipe" in v for v in verdicts) else None
        return cls([None if v.get("facility") is None else str(v.get("facility")) for v in verdicts],
                   [v.get("item") for v in verdicts],
                   [bool(v.get("anomaly")) for v in verdicts], [str(v.get("resolution")) for v in verdicts],
                   [unscorable_cause(v.get("reason")) if v.get("resolution") == UNSCORABLE else None for v in verdicts],
                   [list(v.get("imputed") or ()) for v in verdicts], recipes)


def verdict_columns(batch: ScoredBatch) -> VerdictColumns:
    """The columns of a scored batch's verdicts (the values :func:`to_verdicts` writes)."""
    assert batch.cause is not None  # filled by ScoredBatch.__post_init__
    return VerdictColumns(
        facility=[str(f) for f in batch.facility.tolist()],
        item=[i if isinstance(i, str) else None for i in batch.item.tolist()],
        anomaly=[bool(a) for a in batch.anomaly.tolist()],
        resolution=[str(r) for r in batch.resolution.tolist()],
        cause=batch.cause.tolist(),
        imputed=[list(names) for names in batch.imputed],
    )


_NUMBERS = ("distance", "loss", "threshold", "margin", "score", "excursion", "measured_share", "defect_probability")


def to_verdicts(records: pd.DataFrame | RecordColumns, batch: ScoredBatch, model_version: str,
                scored_at: str | None = None) -> list[dict[str, Any]]:
    """One verdict per record, in input order."""
    return to_verdicts_and_columns(records, batch, model_version, scored_at)[0]


def to_verdicts_and_columns(records: pd.DataFrame | RecordColumns, batch: ScoredBatch, model_version: str,
                            scored_at: str | None = None) -> tuple[list[dict[str, Any]], VerdictColumns]:
    """The verdicts, and their :class:`VerdictColumns` (the same values, shared)."""
    columns = verdict_columns(batch)
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
    makers, facilities, items = batch.maker.tolist(), columns.facility, columns.item
    clusters, groups, resolutions = batch.cluster.tolist(), batch.group_id.tolist(), columns.resolution
    kinds, anomalies, reasons = batch.model_kind.tolist(), columns.anomaly, batch.reason.tolist()
    bases = [b if isinstance(b, str) else None for b in (batch.basis.tolist() if batch.basis is not None else [None] * len(batch))]
    lines = batch.line.tolist() if batch.line is not None else [1.0] * len(batch)
    line_version = batch.line_version or None
    out: list[dict[str, Any]] = []
    for i in range(len(batch)):
        cluster = int(clusters[i])
        out.append(
            {
                "verdict_version": VERDICT_VERSION,
                "record_id": str(ids[i]),
                "maker": makers[i] if isinstance(makers[i], str) else None,
                "facility": facilities[i],
                "item": items[i],
                "timestamp": stamps[i],
                "lot_date": lot_dates[i] if isinstance(lot_dates[i], str) else None,
                "setting_cluster": cluster if cluster >= 0 else None,
                "group_id": groups[i],
                "resolution": resolutions[i],
                "distance": distance[i],
                "model_kind": kinds[i],
                "model_version": model_version,
                "loss": loss[i],
                "threshold": threshold[i],
                "margin": margin[i],
                "score": score[i],
                "anomaly": anomalies[i],
                "line": lines[i],
                "line_version": line_version if lines[i] != 1.0 else None,
                "excursion": excursion[i],
                "measured_share": measured[i],
                "defect_probability": probability[i],
                "imputed": list(columns.imputed[i]),
                "out_of_range": list(batch.out_of_range[i]),
                "top_features": list(batch.top_features[i]),
                "reason": reasons[i],
                "basis": bases[i],
                "scored_at": scored_at,
            }
        )
    return out, columns
