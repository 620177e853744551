"""Setting identification: per maker, K-Means over the unique set-point combinations.

The same facility and item run under different machine settings, and each setting shifts the
production data. Clustering the *unique* combinations (not the rows) keeps a setting used for
100k shots from drowning out one used for 2k.
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from model_store.config import GroupingConfig
from model_store.serving.clusters import SettingModel, assign_clusters


def fit_setting_model(
    maker: str, fields: tuple[str, ...], values: np.ndarray, config: GroupingConfig, seed: int = 0
) -> SettingModel:
    """Fit a maker's setting model on its records' (imputed, NaN-free) set points."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values).any(axis=1)]
    if len(values) == 0:
        raise ValueError(f"maker {maker}: no record has all setting fields {list(fields)}")
    minimum = values.min(axis=0)
    span = values.max(axis=0) - minimum
    scale = np.where(span > 0, span, 1.0)
    unique = np.unique(np.round((values - minimum) / scale, 6), axis=0)
    rng = np.random.default_rng(seed)
    if len(unique) > config.max_unique_settings:
        unique = unique[rng.choice(len(unique), config.max_unique_settings, replace=False)]
    centroids, silhouette = _choose_k(unique, config, seed)
    return SettingModel(maker, tuple(fields), minimum, scale, centroids, silhouette)


def _choose_k(unique: np.ndarray, config: GroupingConfig, seed: int) -> tuple[np.ndarray, dict[int, float]]:
    n = len(unique)
    if n <= config.min_clusters:
        return unique.copy(), {}
    k_max = min(config.max_clusters, n - 1)
    candidates = _candidate_ks(config.min_clusters, k_max)
    rng = np.random.default_rng(seed)
    sample = unique if n <= config.silhouette_sample else unique[rng.choice(n, config.silhouette_sample, replace=False)]
    best: tuple[float, int, np.ndarray] | None = None
    scores: dict[int, float] = {}
    for k in candidates:
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(unique)
        labels = assign_clusters(sample, km.cluster_centers_)
        if len(np.unique(labels)) < 2:
            continue
        score = float(silhouette_score(sample, labels))
        scores[k] = round(score, 4)
        # Ties go to the larger k: a finer split costs a little data per group, a coarser one
        # mixes two settings' distributions in one model.
        if best is None or score >= best[0] - 1e-9:
            best = (score, k, km.cluster_centers_)
    if best is None:
        return unique.mean(axis=0, keepdims=True), scores
    return best[2], scores


def _candidate_ks(k_min: int, k_max: int) -> list[int]:
    """Every k up to 12, then a geometric ladder: silhouette is flat at large k and each fit costs."""
    ks = list(range(k_min, min(k_max, 12) + 1))
    k = 12
    while k < k_max:
        k = min(k_max, int(round(k * 1.25)))
        ks.append(k)
    return sorted(set(ks))
