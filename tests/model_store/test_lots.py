"""Lot defect rates: the only quality signal, summed per lot and joined to every record."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.lots import LOT_KEYS, lot_defect_rates, repeated_lot_rows, repeated_lots_warning, row_lot_rates


def _lots(rows: list[tuple[str, str, str, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[*LOT_KEYS, "good_qty", "bad_qty"])


def test_rate_is_bad_over_produced():
    rates = lot_defect_rates(_lots([("F1", "A", "2026-01-01", 90, 10), ("F1", "A", "2026-01-02", 0, 4)]))
    assert rates["defect_rate"].tolist() == [0.1, 1.0]
    assert list(rates.columns) == [*LOT_KEYS, "good_qty", "bad_qty", "defect_rate"]


def test_rows_of_the_same_lot_are_summed_before_the_rate():
    # two shifts exported apart: 15 bad of 200, not the mean of 10 % and 5 %
    rates = lot_defect_rates(_lots([("F1", "A", "2026-01-01", 90, 10), ("F1", "A", "2026-01-01", 95, 5),
                                    ("F2", "A", "2026-01-01", 50, 0)]))
    assert len(rates) == 2
    first = rates.set_index("facility").loc["F1"]
    assert (first["good_qty"], first["bad_qty"], first["defect_rate"]) == (185, 15, 0.075)
    assert rates.set_index("facility").loc["F2", "defect_rate"] == 0.0


def test_a_lot_that_produced_nothing_has_no_rate():
    rates = lot_defect_rates(_lots([("F1", "A", "2026-01-01", 0, 0), ("F1", "B", "2026-01-01", 1, 0)]))
    assert math.isnan(rates["defect_rate"].iloc[0]) and rates["defect_rate"].iloc[1] == 0.0


def test_lots_differing_in_any_key_are_separate():
    rates = lot_defect_rates(_lots([("F1", "A", "d1", 1, 1), ("F2", "A", "d1", 3, 1), ("F1", "B", "d1", 1, 3), ("F1", "A", "d2", 4, 0)]))
    assert sorted(rates["defect_rate"].tolist()) == [0.0, 0.25, 0.5, 0.75]


def test_each_record_gets_its_own_lots_rate_in_record_order():
    rates = lot_defect_rates(_lots([("F1", "A", "d1", 3, 1), ("F1", "A", "d2", 1, 1), ("F1", "B", "d1", 0, 0)]))
    records = pd.DataFrame({"facility": ["F1", "F1", "F9", "F1", "F1"], "item": ["A", "A", "A", "B", "A"],
                            "lot_date": ["d2", "d1", "d1", "d1", "d3"], "other": range(5)})
    got = row_lot_rates(records, rates)
    assert got.dtype == float and len(got) == 5
    assert got[:2].tolist() == [0.5, 0.25]
    assert np.isnan(got[2:]).all()  # no lot / a lot with no production / no lot that day


def test_summed_duplicate_lots_do_not_duplicate_records():
    rates = lot_defect_rates(_lots([("F1", "A", "d1", 3, 1), ("F1", "A", "d1", 3, 1)]))
    records = pd.DataFrame({"facility": ["F1"] * 3, "item": ["A"] * 3, "lot_date": ["d1"] * 3})
    assert row_lot_rates(records, rates).tolist() == [0.25, 0.25, 0.25]


def test_repeated_lot_rows_are_counted_only_when_every_key_and_count_repeats():
    lots = _lots([("F1", "A", "d1", 3, 1), ("F1", "A", "d1", 3, 1), ("F1", "A", "d1", 3, 1),  # twice repeated
                  ("F1", "A", "d1", 3, 2), ("F1", "A", "d1", 4, 1),  # another shift: a count differs
                  ("F2", "A", "d1", 3, 1), ("F1", "B", "d1", 3, 1), ("F1", "A", "d2", 3, 1)])  # another lot
    assert repeated_lot_rows(lots) == (2, [("F1", "A", "d1"), ("F1", "A", "d1")])
    assert repeated_lot_rows(lots.iloc[3:]) == (0, [])
    assert repeated_lots_warning(lots.iloc[3:]) is None
    assert repeated_lots_warning(lots).startswith("2 lot rows repeat an earlier row exactly (same facility, item, day and "
                                                  "counts; e.g. F1 A d1; F1 A d1).")
    assert repeated_lots_warning(lots.iloc[:2]).startswith("1 lot row repeats an earlier row exactly")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["F1", "F2"]), st.sampled_from(["A", "B"]), st.sampled_from(["d1", "d2"]),
                          st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=12))
def test_rates_match_totals_per_lot(rows):
    rates = lot_defect_rates(_lots(rows))
    for key, sub in rates.groupby(LOT_KEYS):
        good = sum(r[3] for r in rows if r[:3] == key)
        bad = sum(r[4] for r in rows if r[:3] == key)
        (rate,) = sub["defect_rate"]
        assert (sub["good_qty"].item(), sub["bad_qty"].item()) == (good, bad)
        assert (math.isnan(rate) if good + bad == 0 else rate == bad / (good + bad))
    assert len(rates) == len({r[:3] for r in rows})


def test_lot_coverage_counts_lots_that_meet_a_record_and_records_that_meet_a_lot():
    from model_store.lots import lot_coverage

    records = pd.DataFrame({"facility": ["F1", "F1", "F1", "F2"], "item": ["A", "A", "A", "B"],
                            "lot_date": ["2026-01-01", "2026-01-01", "2026-01-02", "2026-01-01"]})
    lots = pd.DataFrame({"facility": ["F1", "F1", "F9"], "item": ["A", "A", "A"],
                         "lot_date": ["2026-01-01", "2026-01-01", "2026-01-01"]})  # a lot exported twice counts once
    assert lot_coverage(records, lots) == (1, 2, 0.5)  # F1/A/01-01 matches; 2 of 4 records have their lot
