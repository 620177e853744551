"""Setting clusters at serving time: a maker's setting space and the nearest-centroid rule.

Fitting the centroids (K-Means over the unique set-point combinations) is training's job
(:mod:`model_store.setting_clusters`); serving only scales set points and picks the nearest centroid,
with NumPy alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np


@dataclass(frozen=True)
class SettingModel:
    """A maker's setting space: min-max scaling of its set points and the cluster centroids."""

    maker: str
    fields: tuple[str, ...]
    minimum: np.ndarray  # per field, raw units
    scale: np.ndarray  # per field, max - min (1 where constant)
    centroids: np.ndarray  # (k, n_fields) in scaled space
    silhouette: dict[int, float]  # k -> score, as searched

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "maker": self.maker,
            "fields": list(self.fields),
            "minimum": self.minimum.tolist(),
            "scale": self.scale.tolist(),
            "centroids": self.centroids.tolist(),
            "k": self.k,
            "silhouette": {str(k): v for k, v in self.silhouette.items()},
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SettingModel:
        return cls(
            maker=raw["maker"],
            fields=tuple(raw["fields"]),
            minimum=np.asarray(raw["minimum"], dtype=float),
            scale=np.asarray(raw["scale"], dtype=float),
            centroids=np.asarray(raw["centroids"], dtype=float).reshape(-1, len(raw["fields"])),
            silhouette={int(k): float(v) for k, v in raw.get("silhouette", {}).items()},
        )


def scale_settings(values: np.ndarray, model: SettingModel) -> np.ndarray:
    """Raw set points -> the maker's [0, 1] setting space (not clipped: distance must see outliers)."""
    return cast("np.ndarray", (np.asarray(values, dtype=float) - model.minimum) / model.scale)


def assign_clusters(scaled: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for every row (rows must have no NaN)."""
    if len(scaled) == 0:
        return np.zeros(0, dtype=np.int64)
    with np.errstate(over="ignore"):  # a set point of 1e308 is infinitely far: the nearest is still the nearest
        d2 = ((scaled[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    return cast("np.ndarray", d2.argmin(axis=1))
