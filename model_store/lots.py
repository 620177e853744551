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
