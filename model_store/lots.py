"""Lot defect rates: the only quality signal the plant keeps (daily good/bad totals per lot)."""
from __future__ import annotations

import numpy as np
import pandas as pd

LOT_KEYS = ["facility", "item", "lot_date"]


def lot_defect_rates(lots: pd.DataFrame) -> pd.DataFrame:
    """Per (facility, item, lot_date): totals and ``defect_rate = bad / (good + bad)``.

    Several rows for the same lot (e.g. two shifts exported apart) are summed first.
    """
    totals = lots.groupby(LOT_KEYS, as_index=False)[["good_qty", "bad_qty"]].sum()
    produced = totals["good_qty"] + totals["bad_qty"]
    totals["defect_rate"] = np.where(produced > 0, totals["bad_qty"] / produced.where(produced > 0, 1), np.nan)
    return totals


def row_lot_rates(records: pd.DataFrame, rates: pd.DataFrame) -> np.ndarray:
    """Each record's lot defect rate (NaN where no lot covers it)."""
    joined = records[LOT_KEYS].merge(rates[LOT_KEYS + ["defect_rate"]], on=LOT_KEYS, how="left")
    return joined["defect_rate"].to_numpy(dtype=float)


def lot_coverage(records: pd.DataFrame, lots: pd.DataFrame) -> tuple[int, int, float]:
    """(lots that match at least one record, lots, share of records whose lot is in ``lots``):
    what a plant engineer checks first when the lot table and the records disagree on names or days."""
    lot_keys = lots[LOT_KEYS].astype(str).drop_duplicates()
    record_keys = records[LOT_KEYS].astype(str)
    matched = lot_keys.merge(record_keys.drop_duplicates(), on=LOT_KEYS, how="inner")
    covered = record_keys.merge(lot_keys, on=LOT_KEYS, how="left", indicator=True)["_merge"].eq("both")
    return len(matched), len(lot_keys), float(covered.mean()) if len(covered) else 0.0
