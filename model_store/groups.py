"""Training groups: (maker, facility, item, setting cluster), and which of them may be trained.

A group is normal enough to learn from when its row-weighted lot defect rate is below the limit;
the others are kept to measure the models on; groups too small for any model are dropped.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from model_store.config import GroupingConfig
from model_store.serving.clusters import SettingModel, assign_clusters, scale_settings

GROUP_KEYS = ["maker", "facility", "item", "cluster"]
TRAIN, VALIDATION, DROPPED = "train", "validation", "dropped"
# The cluster number of a part's pooled group: every setting of one (facility, item), trained on
# its cleanest lots (see :func:`part_groups`).
PART_CLUSTER = -1


@dataclass(frozen=True)
class GroupKey:
    maker: str
    facility: str
    item: str
    cluster: int

    @property
    def id(self) -> str:
        """Filesystem- and URL-safe identifier, stable across runs."""
        tail = "all" if self.cluster == PART_CLUSTER else f"c{self.cluster}"
        safe = [slug(self.maker), slug(self.facility), slug(self.item), tail]
        return "__".join(safe)

    def to_dict(self) -> dict:
        return {"maker": self.maker, "facility": self.facility, "item": self.item, "cluster": int(self.cluster)}


def slug(text: str) -> str:
    """A name made safe for paths and URLs, one to one: every character but letters, digits, '-'
    and '.' becomes '_', and a name that this changed gets '~' and 8 hex digits of its SHA-1, so
    that 'H1 M01' and 'H1_M01' (two machines of one plant) never share a group id or a folder."""
    text = str(text)
    safe = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in text)
    if safe == text:
        return safe
    return f"{safe}~{hashlib.sha1(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def cluster_rows(records: pd.DataFrame, models: dict[str, SettingModel]) -> tuple[np.ndarray, np.ndarray]:
    """Setting cluster and scaled setting vector norm-ready per row; -1 where settings are unknown."""
    clusters = np.full(len(records), -1, dtype=np.int64)
    for maker, model in models.items():
        rows = np.flatnonzero((records["maker"] == maker).to_numpy())
        if len(rows) == 0:
            continue
        scaled = scale_settings(records.iloc[rows][list(model.fields)].to_numpy(dtype=float), model)
        ok = ~np.isnan(scaled).any(axis=1)
        clusters[rows[ok]] = assign_clusters(scaled[ok], model.centroids)
    return clusters, np.flatnonzero(clusters >= 0)


def group_table(records: pd.DataFrame, lot_rates: np.ndarray, config: GroupingConfig) -> pd.DataFrame:
    """One row per group: rows, lots, days, lot defect rate (row-weighted) and its role.

    ``records`` needs the ``cluster`` column; rows with cluster -1 or no item are not grouped.
    """
    frame = records[GROUP_KEYS + ["lot_date"]].copy()
    frame["lot_rate"] = lot_rates
    frame = frame[(frame["cluster"] >= 0) & frame["item"].notna()]
    table = frame.groupby(GROUP_KEYS, as_index=False).agg(
        rows=("lot_rate", "size"),
        lots=("lot_date", "nunique"),
        lot_rows=("lot_rate", "count"),
        lot_defect_rate=("lot_rate", "mean"),
    )
    return assign_roles(table, config).sort_values(GROUP_KEYS).reset_index(drop=True)


def assign_roles(table: pd.DataFrame, config: GroupingConfig) -> pd.DataFrame:
    """``role`` and ``reason`` of every group of a table with ``rows``, ``lot_rows`` and
    ``lot_defect_rate`` (in place; returned)."""
    table["role"] = np.select(
        [
            table["rows"] < config.min_group_rows,
            table["lot_rows"] == 0,
            table["lot_defect_rate"] < config.normal_defect_rate,
        ],
        [DROPPED, VALIDATION, TRAIN],
        default=VALIDATION,
    )
    table["reason"] = np.select(
        [
            table["rows"] < config.min_group_rows,
            table["lot_rows"] == 0,
            table["lot_defect_rate"] < config.normal_defect_rate,
        ],
        [
            f"fewer than {config.min_group_rows} rows",
            "no lot covers it",
            f"lot defect rate below {config.normal_defect_rate:.1%}",
        ],
        default=f"lot defect rate at or above {config.normal_defect_rate:.1%}",
    )
    return table


def part_groups(records: pd.DataFrame, lot_rates: np.ndarray, config: GroupingConfig) -> tuple[pd.DataFrame, dict[tuple, np.ndarray]]:
    """One pooled group per (maker, facility, item) over its cleanest lots, whatever the setting.

    A part whose settings all run dirty lots has no clean *setting* to learn from, but its clean
    *days* still show what its own good production looks like. Lots are taken cleanest first: all
    below ``normal_defect_rate``; if they hold fewer than ``min_group_rows`` shots, the next
    cleanest while their rate stays below ``part_max_lot_rate``. Returns a table shaped like
    :func:`group_table` (cluster = ``PART_CLUSTER``) and each group's row positions in ``records``.
    """
    frame = pd.DataFrame({
        "maker": records["maker"].to_numpy(), "facility": records["facility"].to_numpy(),
        "item": records["item"].to_numpy(), "lot_date": records["lot_date"].to_numpy(), "lot_rate": lot_rates,
        "position": np.arange(len(records)),
    })
    frame = frame[frame["item"].notna() & np.isfinite(frame["lot_rate"].to_numpy(dtype=float))]
    rows: list[dict] = []
    positions: dict[tuple, np.ndarray] = {}
    for (maker, facility, item), sub in frame.groupby(["maker", "facility", "item"], sort=True):
        lots = sub.groupby("lot_date")["lot_rate"].agg(["first", "size"]).sort_values("first", kind="stable")
        clean = lots["first"] < config.normal_defect_rate
        taken = clean.copy()
        if lots.loc[clean, "size"].sum() < config.min_group_rows:
            extra = lots[~clean & (lots["first"] < config.part_max_lot_rate)]
            needed = config.min_group_rows - int(lots.loc[clean, "size"].sum())
            reach = np.searchsorted(extra["size"].cumsum().to_numpy(), needed) + 1  # lots until enough rows
            taken.loc[extra.index[:reach]] = True
        chosen = sub[sub["lot_date"].isin(lots.index[taken.to_numpy()])]
        n = len(chosen)
        rate = float(chosen["lot_rate"].mean()) if n else float("nan")
        role = TRAIN if n >= config.min_group_rows else DROPPED
        reason = (f"pooled over its {int(taken.sum())} cleanest lots" if role == TRAIN
                  else f"fewer than {config.min_group_rows} rows in lots below {config.part_max_lot_rate:.1%}")
        rows.append({"maker": maker, "facility": facility, "item": item, "cluster": PART_CLUSTER, "rows": n,
                     "lots": int(taken.sum()), "lot_rows": n, "lot_defect_rate": rate, "role": role, "reason": reason})
        if role == TRAIN:
            positions[(maker, facility, item, PART_CLUSTER)] = chosen["position"].to_numpy()
    columns = GROUP_KEYS + ["rows", "lots", "lot_rows", "lot_defect_rate", "role", "reason"]
    return pd.DataFrame(rows, columns=columns), positions
