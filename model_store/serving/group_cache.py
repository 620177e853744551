"""Serving-side groups: a store entry turned into arrays and a model, kept in a bounded LRU."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_store.errors import StoreError
from model_store.models import IFOREST
from model_store.serving.excursions import NEW_SETTING_FLOOR, excursion_ratios, excursion_tolerance
from model_store.serving.forest import ForestArrays
from model_store.serving.forward import ForwardNet
from model_store.serving.imputation import fill_with_means
from model_store.serving.losses import group_losses
from model_store.serving.scaling import MinMax, scale_clip
from model_store.serving.store import StoreManifest
from model_store.serving.store_format import GroupEntry, StoreGroupKey
from model_store.serving.thresholds import GroupThreshold


@dataclass(frozen=True)
class GroupEvaluation:
    loss: np.ndarray  # (rows,)
    errors: np.ndarray  # (rows, features): per-feature contribution, larger = more unusual
    imputed: np.ndarray  # (rows, features) bool
    out_of_range: np.ndarray  # (rows, features) bool
    excursion: np.ndarray  # (rows, features): distance beyond the training band / tolerance


@dataclass(frozen=True)
class RuntimeGroup:
    id: str
    key: StoreGroupKey
    kind: str
    features: tuple[str, ...]
    scaler: MinMax
    means: np.ndarray
    median: np.ndarray
    error_scale: np.ndarray
    threshold: GroupThreshold
    model: Any  # ForwardNet or ForestArrays
    median_raw: np.ndarray  # per-field median of the training rows, raw units (alignment target)
    band_low: np.ndarray  # excursion band (model_store/serving/excursions.py), raw units
    band_high: np.ndarray
    tolerance: np.ndarray
    share: float  # the excursion band share the tolerance was made with

    def evaluate(self, x: np.ndarray, shift: np.ndarray | None = None, new_setting: np.ndarray | None = None,
                 with_model: bool = True) -> GroupEvaluation:
        """Loss of raw production rows; ``shift`` (rows, features) is added first (profile alignment).

        ``new_setting`` marks rows produced under a setting the part never ran in history: their
        gross-excursion tolerance uses ``NEW_SETTING_FLOOR`` (see :mod:`model_store.serving.excursions`).
        ``with_model=False`` skips the model (loss and errors 0): where the setting-conditioned
        scorer decides, the group only resolves the setting and keeps its excursion bands.
        """
        filled, imputed = fill_with_means(np.asarray(x, dtype=float), self.means)
        if shift is not None:
            filled = np.where(imputed, filled, filled + shift)
        scaled, out_of_range = scale_clip(filled, self.scaler)
        if with_model:
            loss, errors = group_losses(self.kind, self.model, scaled, self.median, self.error_scale, imputed)
        else:
            loss, errors = np.zeros(len(scaled)), np.zeros(scaled.shape, dtype=np.float32)
        tolerance = self.tolerance
        if new_setting is not None and new_setting.any():
            wide = excursion_tolerance(self.band_low, self.band_high, self.share, NEW_SETTING_FLOOR)
            tolerance = np.where(np.asarray(new_setting, dtype=bool)[:, None], wide[None, :], self.tolerance[None, :])
        excursion = excursion_ratios(filled, self.band_low, self.band_high, tolerance, ~imputed)
        return GroupEvaluation(np.asarray(loss, dtype=float), errors, imputed, out_of_range & ~imputed, excursion)


def load_runtime_group(manifest: StoreManifest, entry: GroupEntry) -> RuntimeGroup:
    kind = entry.model_kind
    try:
        if kind == IFOREST:
            model: Any = ForestArrays.load(manifest.artifact(entry.artifacts["forward"]))
        else:
            model = ForwardNet.load(manifest.artifact(entry.artifacts["forward"]))
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"{manifest.root}: group {entry.id}: cannot load its model ({exc})") from exc
    low, high = np.asarray(entry.feature_band.low, dtype=float), np.asarray(entry.feature_band.high, dtype=float)
    share = manifest.contents.effective_config.threshold.excursion_band_share
    return RuntimeGroup(
        id=entry.id,
        key=entry.key,
        kind=kind,
        features=entry.features,
        scaler=MinMax(np.asarray(entry.scaler_min, dtype=float), np.asarray(entry.scaler_max, dtype=float)),
        means=np.asarray(entry.feature_means, dtype=float),
        median=np.asarray(entry.feature_median_scaled, dtype=np.float32),
        error_scale=np.asarray(entry.feature_error_scale, dtype=np.float32),
        threshold=entry.threshold,
        model=model,
        median_raw=np.asarray(entry.feature_median_raw, dtype=float),
        band_low=low,
        band_high=high,
        tolerance=excursion_tolerance(low, high, share),
        share=share,
    )


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    loads: int = 0
    evictions: int = 0


@dataclass
class GroupCache:
    """Per-group models loaded on first use and kept in an LRU bounded by count.

    Thread-safe: scoring runs in a thread pool off the event loop.
    """

    manifest: StoreManifest
    capacity: int = 2048
    stats: CacheStats = field(default_factory=CacheStats)
    _items: OrderedDict[str, RuntimeGroup] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, group_id: str) -> RuntimeGroup:
        with self._lock:
            group = self._items.get(group_id)
            if group is not None:
                self._items.move_to_end(group_id)
                self.stats.hits += 1
                return group
            self.stats.misses += 1
        group = load_runtime_group(self.manifest, self.manifest.group(group_id))
        with self._lock:
            self.stats.loads += 1
            self._items[group_id] = group
            self._items.move_to_end(group_id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
                self.stats.evictions += 1
        return group

    def __len__(self) -> int:
        return len(self._items)
