"""A group's loss per record: the one formula training (thresholds) and serving (verdicts) share."""
from __future__ import annotations

from typing import Any, cast

import numpy as np

from model_store.models import IFOREST


def feature_errors(kind: str, model: Any, scaled: np.ndarray, median: np.ndarray) -> np.ndarray:
    """Per-feature error: |x - x_hat| for AE/MemAE; |x - training median| for IsolationForest."""
    if kind == IFOREST:
        return cast("np.ndarray", np.abs(scaled - median))
    return cast("np.ndarray", np.abs(scaled - model(scaled)))


def group_losses(
    kind: str, model: Any, scaled: np.ndarray, median: np.ndarray, error_scale: np.ndarray,
    unmeasured: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row loss and per-feature errors in units of each feature's usual training error.

    AE/MemAE: the root mean square of the normalised reconstruction errors. A plain MAE lets the
    noisiest features dominate and dilutes a defect that moves two of twelve fields; dividing each
    feature's error by its mean training error weighs every field by its own noise.
    IsolationForest (a :class:`~model_store.serving.forest.ForestArrays`): the negated sklearn
    score (larger = more isolated); the normalised distances to the training median explain it.

    ``unmeasured`` (rows, features) marks imputed values, which are no evidence and must never make
    a record look more normal: an AE/MemAE loss is the larger of the RMS over all fields and the
    RMS over the measured ones (a field filled with its mean reconstructs well and would dilute the
    rest); a forest takes the shortest path at splits on them. Their own errors are reported as 0.
    """
    errors = feature_errors(kind, model, scaled, median) / error_scale
    gaps = unmeasured is not None and bool(np.any(unmeasured))
    if kind == IFOREST:
        loss = model.loss(scaled, unmeasured if gaps else None)
    else:
        loss = np.sqrt(np.mean(errors**2, axis=1))
        if gaps:
            measured = ~np.asarray(unmeasured, dtype=bool)
            count = measured.sum(axis=1)
            measured_rms = np.sqrt(np.where(measured, errors**2, 0.0).sum(axis=1) / np.maximum(count, 1))
            loss = np.where(count > 0, np.maximum(loss, measured_rms), loss)
    if gaps and unmeasured is not None:  # gaps implies unmeasured; said again for the type checker
        errors = np.where(unmeasured, 0.0, errors)
    return loss, errors
