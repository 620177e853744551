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


def repeated_lot_rows(lots: pd.DataFrame) -> tuple[int, list[tuple[str, str, str]]]:
    """(rows that repeat an earlier row exactly, the first few of their lots): two shifts with the
    very same counts are rare, a lot export run twice over one window is not, and summing its rows
    would double that lot's counts. The caller warns; the rows stay (the plant decides)."""
    repeated = lots.duplicated(subset=LOT_KEYS + ["good_qty", "bad_qty"], keep="first").to_numpy()
    examples = lots.loc[repeated, LOT_KEYS].astype(str).head(3).itertuples(index=False, name=None)
    return int(repeated.sum()), [tuple(row) for row in examples]


def repeated_lots_warning(lots: pd.DataFrame) -> str | None:
    """The line train and recipe print when a lot table repeats rows (None when it does not)."""
    repeated, examples = repeated_lot_rows(lots)
    if not repeated:
        return None
    shown = "; ".join(" ".join(lot) for lot in examples)
    return (f"{repeated:,} lot {'row repeats' if repeated == 1 else 'rows repeat'} an earlier row exactly (same facility, "
            f"item, day and counts; e.g. {shown}). Rows of one lot are summed as separate shifts, so a repeated export "
            f"doubles that lot's counts: if the export repeated them, remove the repeats.")


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
