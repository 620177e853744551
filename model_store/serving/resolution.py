"""Group resolution: which trained group judges a record. A part is judged by its own production first.

exact    - the record's (facility, item, setting cluster) was trained;
part     - else the pooled model of the same facility and item, trained on its cleanest lots
           whatever the setting (see :func:`model_store.groups.part_groups`);
nearest  - else the trained setting of the same facility and item whose centroid is nearest
           (Euclidean, in the maker's scaled setting space); the line is widened by the distance;
item     - else the same item on another facility (nearest setting centroid), and
maker    - else any part of the same maker (nearest setting centroid) — both only for records
           whose own setting has a history profile, which aligns them into the other group's frame
           (see :mod:`model_store.serving.scoring`): another machine or part is a different process, and
           its model says nothing about an unaligned record;
unscorable - none of these, with the reason.

A path can be switched off per store (the lot calibration drops a path whose scores do not
explain the lots' bad counts on the plant's own history); its records move down the chain.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from model_store.serving.store_format import GroupEntry

EXACT, PART, NEAREST, ITEM, MAKER, UNSCORABLE = "exact", "part", "nearest", "item", "maker", "unscorable"
PATHS = (EXACT, PART, NEAREST, ITEM, MAKER)
ALIGNED_PATHS = (ITEM, MAKER)  # paths that judge a record relative to its own setting's profile
PART_CLUSTER = -1  # as model_store.groups.PART_CLUSTER (kept import-free: serving needs no pandas here)


@dataclass(frozen=True)
class MakerIndex:
    """The trained groups of one maker, as parallel arrays."""

    group_ids: np.ndarray  # (G,) object
    facility: np.ndarray  # (G,) object
    item: np.ndarray  # (G,) object
    cluster: np.ndarray  # (G,) int; PART_CLUSTER for a part's pooled group
    centroids: np.ndarray  # (G, settings) scaled

    @classmethod
    def build(cls, entries: Sequence[GroupEntry], settings: int) -> MakerIndex:
        return cls(
            group_ids=np.array([e.id for e in entries], dtype=object),
            facility=np.array([e.key.facility for e in entries], dtype=object),
            item=np.array([e.key.item for e in entries], dtype=object),
            cluster=np.array([e.key.cluster for e in entries], dtype=np.int64),
            centroids=np.array([e.setting_centroid for e in entries], dtype=float).reshape(len(entries), settings),
        )


@dataclass(frozen=True)
class Resolution:
    group: np.ndarray  # (n,) index into MakerIndex, -1 when unscorable
    path: np.ndarray  # (n,) object: one of PATHS or UNSCORABLE
    distance: np.ndarray  # (n,) to the chosen group's setting centroid, NaN when unscorable


def resolve(
    index: MakerIndex,
    facility: np.ndarray,
    item: np.ndarray,
    cluster: np.ndarray,
    scaled: np.ndarray,
    max_distance: float | None = None,
    profiled: np.ndarray | None = None,
    enabled: Iterable[str] = PATHS,
) -> Resolution:
    """The first enabled path of the chain that has a candidate, per record.

    ``profiled`` marks rows whose own (facility, item, cluster) has a history profile (None: all
    have); only they may take the aligned paths. ``max_distance`` bounds the setting distance on
    the nearest, item and maker paths.
    """
    n = len(facility)
    group = np.full(n, -1, dtype=np.int64)
    path = np.full(n, UNSCORABLE, dtype=object)
    distance = np.full(n, np.nan)
    # Without set points only the part's pooled model (which spans every setting) can judge.
    settings_known = ~np.isnan(scaled).any(axis=1) if n else np.zeros(0, bool)
    item_known = np.array([isinstance(v, str) for v in item], dtype=bool) if n else np.zeros(0, bool)
    enabled = set(enabled)
    if len(index.group_ids) == 0 or not (settings_known | item_known).any():
        return Resolution(group, path, distance)

    rows = np.flatnonzero(settings_known | item_known)
    with np.errstate(over="ignore"):  # an absurd set point is infinitely far from every group, as it should be
        d = np.sqrt(((np.nan_to_num(scaled[rows, None, :]) - index.centroids[None, :, :]) ** 2).sum(axis=2))  # (r, G)
    has_settings = settings_known[rows, None]
    same_item = item[rows, None] == index.item[None, :]
    same_part = same_item & (facility[rows, None] == index.facility[None, :])
    pooled = (index.cluster == PART_CLUSTER)[None, :]
    near_enough = np.ones_like(d, dtype=bool) if max_distance is None else d <= max_distance
    aligned_ok = np.ones((len(rows), 1), dtype=bool) if profiled is None else profiled[rows, None]
    candidates = {
        EXACT: same_part & (cluster[rows, None] == index.cluster[None, :]) & ~pooled & has_settings,
        PART: same_part & pooled,
        NEAREST: same_part & ~pooled & near_enough & has_settings,
        ITEM: same_item & ~same_part & near_enough & aligned_ok & has_settings,
        MAKER: ~same_item & near_enough & aligned_ok & has_settings,
    }
    done = np.zeros(len(rows), dtype=bool)
    for name in PATHS:
        if name not in enabled:
            continue
        mask = candidates[name]
        take = mask.any(axis=1) & ~done
        if not take.any():
            continue
        chosen = np.where(mask, d, np.inf).argmin(axis=1)
        target = rows[take]
        group[target] = chosen[take]
        path[target] = name
        distance[target] = np.where(has_settings[take, 0], d[np.flatnonzero(take), chosen[take]], np.nan)
        done |= take
    return Resolution(group, path, distance)
