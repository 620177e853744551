"""Training on a bounded history: whole lots, chosen per part, when the history is too large.

A plant keeps years of records and ``train`` holds what it trains on in memory (10 GB and more
per million shots over its processes, measured by ``bench/scale.py bounded``). Above ``max_rows`` records, training reads the
history twice in pieces (:func:`model_store.loaders.iter_table`), never whole:

1. the identifying columns only (record id, time, maker, machine, item, lot date), checked by the
   same rules as always, counted per lot (maker, machine, item, lot day);
2. every column, keeping the shots of the chosen lots (:func:`choose_lots`): the identifying
   columns are checked on every row, the production fields on the kept rows (a row training
   does not read cannot spoil it).

Lots are kept whole because lots are the quality signal: a lot's defect rate describes all its
shots, and the calibration matches alarms to lots. Every part (maker, machine, item) keeps the same
share of its lot days (at least ``min_lots`` of them, or all it has), chosen by a hash of the lot's
key: the same history gives the same sample every run, and a part's days are spread over its
whole history (the calibration's earlier/later split still sees both). The share is the largest
that keeps the sample within ``max_rows``. When even one lot per part is more (many parts, big
lots), every part keeps one lot and the same share of each lot's shots is kept, chosen by a hash
of the record id: the sample stays about ``max_rows`` (by chance, a few hundred either way) and
no part is left out.

Memory: one piece, the lot counts (one row per lot) and the sample; not the history's size.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_store.canonical import align_columns, canonical_records
from model_store.errors import DataError
from model_store.loaders import PIECE_ROWS, column_names, iter_table, read_table
from model_store.schema import PlantSchema

PART_KEYS = ["maker", "facility", "item"]
LOT_ROLE_KEYS = [*PART_KEYS, "lot_date"]
# Training at 1M rows of a 100-machine plant peaked at 11.3 GB over its processes (driver and 2 pool
# workers; bench/results/scale_bounded_max1M.json); at 400k it peaked at 5.1 GB
# (scale_bounded.json): within the 6 GB a machine like this one can give it.
DEFAULT_MAX_ROWS = 400_000
MIN_LOTS_PER_PART = 3
_BISECTION_STEPS = 40

Progress = Callable[[str, int, int | None], None]  # (pass, rows read so far, rows in all or None)


@dataclass(frozen=True)
class HistorySample:
    """What training read and what it kept (recorded in the store's manifest)."""

    rows: int  # records in the history
    lots: int
    kept_rows: int
    kept_lots: int
    max_rows: int
    min_lots: int  # the floor of lots a part kept (MIN_LOTS_PER_PART, or 1 where the cap needed it)
    shot_share: float = 1.0  # share of each kept lot's shots kept (< 1 when one lot per part is above the cap)

    @property
    def sampled(self) -> bool:
        return self.kept_rows < self.rows

    def describe(self) -> str:
        """One line for the operator: what was kept of how much, and by how much above the cap."""
        line = (f"The history holds {self.rows:,} records, more than --max-rows {self.max_rows:,}: training on the "
                f"{self.kept_rows:,} shots of {self.kept_lots:,} of its {self.lots:,} lots (whole lots, the same share of "
                f"every part's days, at least {self.min_lots} a part; the same lots every run).")
        if self.shot_share < 1.0:
            line += (f" One lot of each of the history's parts is already more than the cap, so {self.shot_share:.1%} of "
                     f"each kept lot's shots are kept (by a hash of the record id).")
        return line

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "lots": self.lots, "kept_rows": self.kept_rows, "kept_lots": self.kept_lots,
                "max_rows": self.max_rows, "min_lots_per_part": self.min_lots, "shot_share": self.shot_share}


def lot_text(frame: pd.DataFrame) -> list[str]:
    """Each row's lot key (maker, machine, item, day) as one string; a missing item is empty."""
    columns = [frame[k].tolist() for k in LOT_ROLE_KEYS]
    return ["\x1f".join("" if v is None or v != v else str(v) for v in row) for row in zip(*columns)]


def lot_order_key(lots: pd.DataFrame) -> np.ndarray:
    """A hash of each lot's key (maker, machine, item, day): the order lots are kept in, the same
    on every machine and run."""
    return np.fromiter((zlib.crc32(t.encode("utf-8")) for t in lot_text(lots)), dtype=np.int64, count=len(lots))


def choose_lots(lot_rows: pd.DataFrame, max_rows: int, min_lots: int = MIN_LOTS_PER_PART) -> tuple[pd.DataFrame, int]:
    """The lots to keep (rows of ``lot_rows``: maker, facility, item, lot_date, rows; in key order)
    so that their rows stay within ``max_rows``, and the per-part floor that held.

    Each part keeps its first ``k`` lots in :func:`lot_order_key` order, ``k`` = ``ceil(share x
    its lots)`` held between ``min(min_lots, its lots)`` and its lots, with the largest share for
    which the kept rows are at most ``max_rows``. When even the floor is above the cap, the floor
    drops to one lot; when one lot per part is still above it, one lot per part is kept."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    total = int(lot_rows["rows"].sum())
    if total <= max_rows:
        return lot_rows.sort_values(LOT_ROLE_KEYS, kind="stable").reset_index(drop=True), min_lots
    order = lot_rows.assign(_order=lot_order_key(lot_rows)).sort_values([*PART_KEYS, "_order", "lot_date"], kind="stable")
    order = order.reset_index(drop=True)
    part = order.groupby(PART_KEYS, sort=False, dropna=False).ngroup().to_numpy()
    starts = np.flatnonzero(np.r_[True, part[1:] != part[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    position = np.arange(len(order)) - np.repeat(starts, counts)
    cumulative = order.groupby(part)["rows"].cumsum().to_numpy()
    ends = starts + counts - 1

    def lots_kept(share: float, floor: int) -> np.ndarray:  # per part: ceil(share x its lots), held to [floor, all]
        return np.clip(np.ceil(share * counts - 1e-9).astype(np.int64), np.minimum(floor, counts), counts)

    def kept(share: float, floor: int) -> np.ndarray:
        return np.asarray(position < np.repeat(lots_kept(share, floor), counts))

    def rows_of(share: float, floor: int) -> int:
        k = lots_kept(share, floor)
        return int(np.where(k > 0, cumulative[np.minimum(starts + k - 1, ends)], 0).sum())

    floor = min_lots
    if rows_of(0.0, floor) > max_rows:
        floor = 1
    low, high = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if rows_of(middle, floor) <= max_rows:
            low = middle
        else:
            high = middle
    chosen = order[kept(low, floor)].drop(columns="_order").sort_values(LOT_ROLE_KEYS, kind="stable")
    return chosen.reset_index(drop=True), floor


def shot_share(chosen: pd.DataFrame, max_rows: int) -> float:
    """The share of each kept lot's shots to keep so that the lots :func:`choose_lots` chose stay
    within ``max_rows``: 1 unless one lot per part is already more."""
    rows = int(chosen["rows"].sum())
    return 1.0 if rows <= max_rows else max_rows / rows


def shot_kept(record_ids: list[str], share: float) -> np.ndarray:
    """Per record: kept when the hash of its id falls below ``share`` of the hash range (about that
    share of every lot's shots, the same ones on every run)."""
    if share >= 1.0:
        return np.ones(len(record_ids), dtype=bool)
    line = share * 2**32
    return np.fromiter((zlib.crc32(str(r).encode("utf-8")) < line for r in record_ids), dtype=bool, count=len(record_ids))


def read_history(source: str | Path, query: str | None, schema: PlantSchema, max_rows: int = DEFAULT_MAX_ROWS,
                 progress: Progress | None = None, piece_rows: int = PIECE_ROWS) -> tuple[pd.DataFrame, HistorySample]:
    """The canonical records to train on: the whole history when it holds at most ``max_rows``
    records (read as always), else the shots of the lots :func:`choose_lots` keeps, read in
    pieces. ``max_rows`` 0: no cap. Refusals name the source's row, as a whole read does."""
    label = str(source)
    if max_rows == 0:
        frame = canonical_records(read_table(source, query), schema, source=label)
        return frame, HistorySample(len(frame), _lot_count(frame), len(frame), _lot_count(frame), 0, MIN_LOTS_PER_PART)
    if max_rows < 0:
        raise DataError(f"--max-rows must be 0 (no cap) or a number of records, got {max_rows}")
    lot_rows = _count_lots(source, query, schema, progress, piece_rows)
    rows, lots = int(lot_rows["rows"].sum()), len(lot_rows)
    if rows <= max_rows:
        frame = canonical_records(read_table(source, query), schema, source=label)
        return frame, HistorySample(len(frame), lots, len(frame), lots, max_rows, MIN_LOTS_PER_PART)
    chosen, floor = choose_lots(lot_rows, max_rows)
    share = shot_share(chosen, max_rows)
    wanted = set(lot_text(chosen))
    kept: list[pd.DataFrame] = []
    offset = 0
    for piece in iter_table(source, query, piece_rows):
        # the keys first (cheap), then the whole rule on the kept rows only; a refused row is
        # named by its row in the source (the piece read again whole, on that path alone)
        keys = canonical_records(piece, schema, source=label, first_row=offset, keys_only=True)
        keep = np.fromiter((key in wanted for key in lot_text(keys)), dtype=bool, count=len(keys))
        if share < 1.0 and keep.any():
            keep[keep] = shot_kept(keys["record_id"].to_numpy()[keep].tolist(), share)
        if keep.any():
            try:
                kept.append(canonical_records(piece[keep].reset_index(drop=True), schema, source=label))
            except DataError:
                canonical_records(piece, schema, source=label, first_row=offset)
                raise
        offset += len(piece)
        if progress:
            progress("read the chosen lots", offset, rows)
    frame = pd.concat(kept, ignore_index=True)
    return frame, HistorySample(rows, lots, len(frame), len(chosen), max_rows, floor, share)


def _lot_count(frame: pd.DataFrame) -> int:
    return int(frame[LOT_ROLE_KEYS].drop_duplicates().shape[0]) if len(frame) else 0


def _count_lots(source: str | Path, query: str | None, schema: PlantSchema, progress: Progress | None,
                piece_rows: int) -> pd.DataFrame:
    """Pass 1: records per lot (maker, facility, item, lot_date), the identifying columns only."""
    roles = [schema.record_id, schema.timestamp, schema.facility, schema.item,
             *(c for c in (schema.maker_column, schema.lot_date) if c)]
    present = column_names(source)
    columns = None
    if present is not None:
        named = align_columns(pd.DataFrame(columns=present), roles, str(source)).columns
        columns = [original for original, name in zip(present, named) if name in roles]
    partial: list[pd.DataFrame] = []
    offset = 0
    for piece in iter_table(source, query, piece_rows, columns=columns):
        canonical = canonical_records(piece, schema, source=str(source), first_row=offset, keys_only=True)
        offset += len(piece)
        partial.append(canonical.groupby(LOT_ROLE_KEYS, dropna=False, sort=False).size().rename("rows").reset_index())
        if progress:
            progress("count the lots", offset, None)
    counts = pd.concat(partial, ignore_index=True)
    return counts.groupby(LOT_ROLE_KEYS, dropna=False, sort=True, as_index=False)["rows"].sum()


__all__ = ["HistorySample", "choose_lots", "shot_share", "shot_kept", "read_history", "lot_order_key", "DEFAULT_MAX_ROWS",
           "MIN_LOTS_PER_PART"]
