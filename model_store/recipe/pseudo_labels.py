"""Pseudo-labels: the whole history scored by the store with the worker's scoring core.

Every record becomes normal / anomalous (``anomaly``) where a model could score it (``scored``);
the setting cluster is the one the scoring core assigned after imputing gaps in the set points.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from model_store.serving.scoring import UNSCORABLE, ScoringEngine

Progress = Callable[[str, int, int], None]
BATCH = 50_000  # records per scoring call: bounded memory, and the same batching as `moldwatch score`


def pseudo_label(
    records: pd.DataFrame, engine: ScoringEngine, batch: int = BATCH, progress: Progress | None = None
) -> pd.DataFrame:
    """Score canonical records in time order; one row per record (in the input's order).

    Columns: record_id, facility, item (imputed), maker, cluster, lot_date, day, group_id,
    resolution, scored, anomaly.
    """
    order = np.argsort(records["timestamp"].to_numpy(), kind="stable")
    frame = records.iloc[order].reset_index(drop=True)
    parts = []
    memory: dict = {}
    total = len(frame)
    for start in range(0, total, batch):
        chunk = frame.iloc[start : start + batch]
        scored = engine.score(chunk, memory=memory, backward=True)
        parts.append(
            pd.DataFrame(
                {
                    "facility": scored.facility,
                    "item": scored.item,
                    "maker": scored.maker,
                    "cluster": scored.cluster,
                    "group_id": scored.group_id,
                    "resolution": scored.resolution,
                    "scored": scored.resolution != UNSCORABLE,
                    "anomaly": scored.anomaly.astype(bool),
                }
            )
        )
        if progress:
            progress("score", min(start + batch, total), total)
    labels = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    labels.insert(0, "record_id", frame["record_id"].to_numpy())
    labels["lot_date"] = frame["lot_date"].to_numpy()
    labels["day"] = frame["timestamp"].dt.strftime("%Y-%m-%d").to_numpy()
    # Back to the caller's row order, so labels line up with ``records``.
    out = labels.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)
    return out
