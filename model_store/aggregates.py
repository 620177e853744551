"""Training's whole-history aggregates, computed piece by piece (out of core), equal to the
in-memory ones.

:func:`model_store.store_training.prepare` and the manifest compute, from the whole records frame:

* lot defect rates and, per setting group, rows / lots / lot rows / row-weighted lot defect rate
  (:func:`model_store.groups.group_table`);
* each facility's usual item and most used setting combination, overall and per item
  (:func:`model_store.store_training.facility_defaults`);
* per-setting profiles: per (maker, facility, item, cluster) the median and band of every
  production field and the setting centroid and radius (:func:`model_store.store_training.setting_profiles`).

Here the records come as pieces (:func:`model_store.loaders.iter_table`, then canonical, imputed
and clustered), and the results are the same:

* counts, sums and modes are **partial aggregates** per piece (pyarrow's hash aggregation),
  merged by summing: exact; ties between modes are broken as pandas does (the value seen first);
* medians, quantiles and the radius need each group's values together: every piece is **spilled**
  to ``buckets`` Parquet buckets by a hash of its group (``spill_dir/bucket=K/piece-N.parquet``),
  then each bucket (about 1/``buckets`` of the history, whole groups) is read alone and its groups
  computed with the in-memory functions. Memory: one piece, or one bucket — with
  :func:`buckets_for` (about ``BUCKET_ROWS`` rows a bucket), not the history's size; the largest
  group is the floor (its rows are held together).

Pure logic apart from the spill folder, which the caller owns (a temporary directory).
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_store.config import GroupingConfig
from model_store.groups import GROUP_KEYS, assign_roles
from model_store.lots import LOT_KEYS
from model_store.schema import PlantSchema
from model_store.serving.clusters import SettingModel, scale_settings
from model_store.serving.excursions import training_band

DEFAULT_BUCKETS = 32  # spill buckets: a bucket holds ~1/32 of the history (whole groups) in memory at a time
BUCKET_ROWS = 250_000  # rows a bucket should hold at most: buckets_for(history rows) keeps memory flat as history grows


def buckets_for(history_rows: int, bucket_rows: int = BUCKET_ROWS) -> int:
    """Buckets so that one holds about ``bucket_rows`` rows (a group larger than that is still one
    bucket's: its rows are needed together for exact medians)."""
    return max(1, -(-int(history_rows) // int(bucket_rows)))


def lot_rates_of(pieces: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """:func:`model_store.lots.lot_defect_rates` over lots read in pieces (partial sums per lot)."""
    partial = [p.groupby(LOT_KEYS, as_index=False)[["good_qty", "bad_qty"]].sum() for p in pieces]
    totals = pd.concat(partial, ignore_index=True).groupby(LOT_KEYS, as_index=False)[["good_qty", "bad_qty"]].sum()
    produced = totals["good_qty"] + totals["bad_qty"]
    totals["defect_rate"] = np.where(produced > 0, totals["bad_qty"] / produced.where(produced > 0, 1), np.nan)
    return totals


def _aggregate(frame: pd.DataFrame, keys: list[str], sums: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """pyarrow hash aggregation of ``frame`` by ``keys`` (null keys kept as their own group)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    out = table.group_by(keys, use_threads=False).aggregate([(col, how) for col, how in set(sums.values())]).to_pandas()
    for name, (col, how) in sums.items():
        out[name] = out[f"{col}_{how}"]
    return out[[*keys, *sums]]


@dataclass
class HistoryAggregates:
    """Group table and facility defaults from pieces of the prepared records (canonical, imputed,
    with ``cluster``), in their storage order; ``rates`` from :func:`lot_rates_of`."""

    schema: PlantSchema
    rates: pd.DataFrame
    _groups: list[pd.DataFrame] = field(default_factory=list)
    _group_lots: list[pd.DataFrame] = field(default_factory=list)
    _items: list[pd.DataFrame] = field(default_factory=list)
    _combos: dict[str, list[pd.DataFrame]] = field(default_factory=dict)
    _facilities: set[tuple[str, str]] = field(default_factory=set)
    _offset: int = 0

    def add(self, piece: pd.DataFrame) -> None:
        position = np.arange(self._offset, self._offset + len(piece))
        self._offset += len(piece)
        self._facilities |= {(str(m), str(f)) for m, f in piece[["maker", "facility"]].drop_duplicates().itertuples(index=False)}
        joined = piece[LOT_KEYS].merge(self.rates[LOT_KEYS + ["defect_rate"]], on=LOT_KEYS, how="left")
        lot_rate = joined["defect_rate"].to_numpy(dtype=float)
        grouped = (piece["cluster"].to_numpy() >= 0) & piece["item"].notna().to_numpy()
        frame = pd.DataFrame({k: piece[k].to_numpy() for k in GROUP_KEYS})[grouped]
        frame["lot_rate"] = lot_rate[grouped]
        frame["lot_date"] = piece["lot_date"].to_numpy()[grouped]
        frame["one"] = 1
        self._groups.append(_aggregate(frame, GROUP_KEYS, {"rows": ("one", "sum"), "lot_rows": ("lot_rate", "count"),
                                                           "rate_sum": ("lot_rate", "sum")}))
        self._group_lots.append(frame[[*GROUP_KEYS, "lot_date"]].drop_duplicates())
        items = pd.DataFrame({"maker": piece["maker"].to_numpy(), "facility": piece["facility"].to_numpy(),
                              "item": piece["item"].to_numpy(), "one": 1})
        self._items.append(_aggregate(items[items["item"].notna()], ["maker", "facility", "item"], {"n": ("one", "sum")}))
        for maker, fields in self.schema.makers.items():
            rows = (piece["maker"] == maker).to_numpy()
            if not rows.any():
                continue
            sub = piece.loc[rows, ["facility", "item", *fields.settings]].reset_index(drop=True)
            complete = sub[list(fields.settings)].notna().all(axis=1).to_numpy()
            sub = sub[complete].assign(one=1, position=position[rows][complete])
            # Per (facility, item, combination): count and first position; item NaN is its own group
            # (it counts for the facility's overall combination, not for any item's).
            self._combos.setdefault(maker, []).append(_aggregate(
                sub, ["facility", "item", *fields.settings], {"n": ("one", "sum"), "first": ("position", "min")}))

    def group_table(self, config: GroupingConfig) -> pd.DataFrame:
        """:func:`model_store.groups.group_table`, from the pieces."""
        counts = pd.concat(self._groups, ignore_index=True).groupby(GROUP_KEYS, as_index=False)[["rows", "lot_rows", "rate_sum"]].sum()
        lots = pd.concat(self._group_lots, ignore_index=True).drop_duplicates().groupby(GROUP_KEYS).size().rename("lots")
        table = counts.merge(lots.reset_index(), on=GROUP_KEYS, how="left")
        with np.errstate(invalid="ignore", divide="ignore"):
            table["lot_defect_rate"] = np.where(table["lot_rows"] > 0, table["rate_sum"] / table["lot_rows"], np.nan)
        table = table[[*GROUP_KEYS, "rows", "lots", "lot_rows", "lot_defect_rate"]].astype(
            {"rows": "int64", "lots": "int64", "lot_rows": "int64"})
        return assign_roles(table, config).sort_values(GROUP_KEYS).reset_index(drop=True)

    def facility_defaults(self) -> dict[str, dict[str, Any]]:
        """:func:`model_store.store_training.facility_defaults`, from the pieces."""
        items = pd.concat(self._items, ignore_index=True).groupby(["maker", "facility", "item"], as_index=False)["n"].sum()
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for maker, facility in sorted(self._facilities):
            mine = items[(items["maker"] == maker) & (items["facility"] == facility)]
            # Series.mode(): the most frequent item, the smallest of equals
            best = sorted(mine.loc[mine["n"] == mine["n"].max(), "item"].astype(str)) if len(mine) else []
            out[(maker, facility)] = {"item": best[0] if best else None}
        for maker, parts in self._combos.items():
            fields = list(self.schema.makers[maker].settings)
            combos = pd.concat(parts, ignore_index=True)
            merged = combos.groupby(["facility", "item", *fields], dropna=False, as_index=False).agg(n=("n", "sum"), first=("first", "min"))
            for facility, sub in merged.groupby("facility", sort=True):
                entry = out[(maker, str(facility))]
                overall = sub.groupby(fields, as_index=False).agg(n=("n", "sum"), first=("first", "min"))
                entry["settings"] = _mode_row(overall, fields)
                entry["settings_by_item"] = {
                    str(item): _mode_row(grp, fields) for item, grp in sub[sub["item"].notna()].groupby("item", sort=True)
                }
        return {facility: entry for (_, facility), entry in out.items()}


def _mode_row(counts: pd.DataFrame, fields: list[str]) -> list[float]:
    """The combination with the highest count; of equals, the one seen first (pandas' value_counts)."""
    best = counts.sort_values(["n", "first"], ascending=[False, True], kind="stable").iloc[0]
    return [float(best[f]) for f in fields]


# --- per-setting profiles: spilled by group, one bucket at a time ------------------------------------


def _bucket_of(frame: pd.DataFrame, buckets: int) -> np.ndarray:
    """Each row's bucket: a stable hash (CRC-32) of its group key, the same in every piece and run."""
    if len(frame) == 0:
        return np.zeros(0, dtype=np.int64)
    codes, uniques = pd.MultiIndex.from_frame(frame[GROUP_KEYS]).factorize()
    per_key = np.array([zlib.crc32("|".join(str(v) for v in key).encode()) % buckets for key in uniques], dtype=np.int64)
    return per_key[codes]


def spill_by_group(pieces: Iterable[pd.DataFrame], spill_dir: Path, buckets: int = DEFAULT_BUCKETS,
                   columns: list[str] | None = None) -> int:
    """Write the grouped rows (cluster >= 0, item known) of every piece to ``spill_dir/bucket=K/``
    (K = a hash of the group), keeping each group's rows in piece order. Returns pieces written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    count = 0
    for number, piece in enumerate(pieces):
        grouped = piece[(piece["cluster"] >= 0) & piece["item"].notna()]
        if columns is not None:
            grouped = grouped[columns]
        bucket = _bucket_of(grouped, buckets)
        for k in np.unique(bucket):
            folder = spill_dir / f"bucket={int(k):03d}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pandas(grouped[bucket == k], preserve_index=False), folder / f"piece-{number:06d}.parquet")
        count += 1
    return count


def profile_of(sub: pd.DataFrame, model: SettingModel, production: list[str]) -> dict[str, Any] | None:
    """One group's profile, as :func:`model_store.store_training.setting_profiles` computes it."""
    values = sub[production].to_numpy(dtype=float)
    median = np.nanmedian(values, axis=0)
    band_low, band_high = training_band(values)
    settings = scale_settings(sub[list(model.fields)].to_numpy(dtype=float), model)
    settings = settings[~np.isnan(settings).any(axis=1)]
    if len(settings) == 0:
        return None
    centroid = settings.mean(axis=0)
    radius = float(np.quantile(np.sqrt(((settings - centroid) ** 2).sum(axis=1)), 0.95))
    return {"median": [None if np.isnan(v) else float(v) for v in median],
            "setting_centroid": [float(v) for v in centroid], "setting_radius": radius,
            "band": {"low": band_low.tolist(), "high": band_high.tolist()}}


def profiles_from_spill(spill_dir: Path, schema: PlantSchema, models: dict[str, SettingModel],
                        min_rows: int) -> dict[str, list[dict[str, Any]]]:
    """:func:`model_store.store_training.setting_profiles` from a :func:`spill_by_group` folder, one bucket at a time."""
    import pyarrow.parquet as pq

    found: dict[str, list[dict[str, Any]]] = {}
    for folder in sorted(p for p in spill_dir.glob("bucket=*") if p.is_dir()):
        files = sorted(folder.glob("piece-*.parquet"))
        bucket = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
        for (maker, facility, item, cluster), sub in bucket.groupby(GROUP_KEYS, sort=True):
            if len(sub) < min_rows:
                continue
            profile = profile_of(sub, models[maker], list(schema.makers[maker].production))
            if profile is None:
                continue
            found.setdefault(str(maker), []).append(
                {"facility": str(facility), "item": str(item), "cluster": int(cluster), "rows": int(len(sub)), **profile})
        del bucket
    order = ("facility", "item", "cluster")
    ordered = {m: sorted(rows, key=lambda r: tuple(r[k] for k in order)) for m, rows in found.items()}
    return {m: ordered[m] for m in sorted(ordered)}
