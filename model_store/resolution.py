"""Group resolution: which trained group scores a record.

exact    - the record's (facility, item, setting cluster) was trained;
nearest  - else the trained group of the same facility and item whose setting centroid is nearest
           (Euclidean, in the maker's scaled setting space), else the nearest of the whole maker;
unscorable - the maker has no trained group, or the settings are unknown, or the only candidates
           are other parts and the record's setting has no history profile to align it with.

Another part on another machine is a different process: its model only says something about this
record once the record is expressed relative to its own setting's normal (a *profile*, see
:mod:`model_store.scoring`). Without one, scoring across parts raises alarms on every shot, so
the maker-wide fallback is only taken for profiled records.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXACT, NEAREST, UNSCORABLE = "exact", "nearest", "unscorable"


@dataclass(frozen=True)
class MakerIndex:
    """The trained groups of one maker, as parallel arrays."""

    group_ids: np.ndarray  # (G,) object
    facility: np.ndarray  # (G,) object
    item: np.ndarray  # (G,) object
    cluster: np.ndarray  # (G,) int
    centroids: np.ndarray  # (G, settings) scaled

    @classmethod
    def build(cls, entries: list[dict], settings: int) -> "MakerIndex":
        return cls(
            group_ids=np.array([e["id"] for e in entries], dtype=object),
            facility=np.array([e["key"]["facility"] for e in entries], dtype=object),
            item=np.array([e["key"]["item"] for e in entries], dtype=object),
            cluster=np.array([e["key"]["cluster"] for e in entries], dtype=np.int64),
            centroids=np.array([e["setting_centroid"] for e in entries], dtype=float).reshape(len(entries), settings),
        )


@dataclass(frozen=True)
class Resolution:
    group: np.ndarray  # (n,) index into MakerIndex, -1 when unscorable
    path: np.ndarray  # (n,) object: exact / nearest / unscorable
    distance: np.ndarray  # (n,) to the chosen group's setting centroid, NaN when unscorable


def resolve(
    index: MakerIndex,
    facility: np.ndarray,
    item: np.ndarray,
    cluster: np.ndarray,
    scaled: np.ndarray,
    max_distance: float | None = None,
    profiled: np.ndarray | None = None,
) -> Resolution:
    """``profiled`` marks rows whose own (facility, item, cluster) has a history profile; rows
    without one may only fall back to groups of the same facility and item (None: all may)."""
    n = len(facility)
    group = np.full(n, -1, dtype=np.int64)
    path = np.full(n, UNSCORABLE, dtype=object)
    distance = np.full(n, np.nan)
    known = ~np.isnan(scaled).any(axis=1) if n else np.zeros(0, bool)
    if len(index.group_ids) == 0 or not known.any():
        return Resolution(group, path, distance)

    rows = np.flatnonzero(known)
    d = np.sqrt(((scaled[rows, None, :] - index.centroids[None, :, :]) ** 2).sum(axis=2))  # (r, G)
    same_fi = (facility[rows, None] == index.facility[None, :]) & (item[rows, None] == index.item[None, :])
    exact = same_fi & (cluster[rows, None] == index.cluster[None, :])

    has_exact = exact.any(axis=1)
    has_same_fi = same_fi.any(axis=1)
    # Among same facility/item (or, failing that, the whole maker) the nearest centroid wins.
    candidate = np.where(has_same_fi[:, None], np.where(same_fi, d, np.inf), d)
    nearest = candidate.argmin(axis=1)
    chosen = np.where(has_exact, exact.argmax(axis=1), nearest)
    chosen_d = d[np.arange(len(rows)), chosen]

    allowed = has_exact | has_same_fi | (np.ones(len(rows), bool) if profiled is None else profiled[rows])
    ok = allowed & (has_exact | (np.isfinite(chosen_d) if max_distance is None else chosen_d <= max_distance))
    group[rows[ok]] = chosen[ok]
    path[rows[ok]] = np.where(has_exact[ok], EXACT, NEAREST)
    distance[rows[ok]] = chosen_d[ok]
    return Resolution(group, path, distance)
