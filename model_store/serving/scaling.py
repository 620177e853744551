"""MinMax scaling with clip, as the original: an extreme value cannot make the input diverge.

What the clip hides is reported instead: :func:`scale_clip` returns which values left the range.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MinMax:
    minimum: np.ndarray
    maximum: np.ndarray

    @property
    def span(self) -> np.ndarray:
        span = self.maximum - self.minimum
        return np.where(span > 0, span, 1.0)

    @classmethod
    def fit(cls, x: np.ndarray) -> MinMax:
        return cls(np.nanmin(x, axis=0).astype(float), np.nanmax(x, axis=0).astype(float))

    def to_dict(self) -> dict[str, list[float]]:
        return {"min": self.minimum.tolist(), "max": self.maximum.tolist()}

    @classmethod
    def from_dict(cls, raw: dict[str, list[float]]) -> MinMax:
        return cls(np.asarray(raw["min"], dtype=float), np.asarray(raw["max"], dtype=float))


def scale_clip(x: np.ndarray, scaler: MinMax) -> tuple[np.ndarray, np.ndarray]:
    """Scaled inputs in [0, 1] (float32) and the (rows, features) mask of clipped values."""
    scaled = (x - scaler.minimum) / scaler.span
    out_of_range = (scaled < 0.0) | (scaled > 1.0)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32), out_of_range
