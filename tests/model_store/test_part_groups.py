"""Each part's pooled group: its cleanest lots, at the boundaries of the selection rule."""
import numpy as np
import pandas as pd
import pytest

from model_store.config import GroupingConfig
from model_store.groups import DROPPED, PART_CLUSTER, TRAIN, GroupKey, part_groups


def _records(lots: dict[str, tuple[int, float]]) -> tuple[pd.DataFrame, np.ndarray]:
    """One part (F1, I1): per lot date, (shots, lot defect rate)."""
    rows, rates = [], []
    for day, (shots, rate) in lots.items():
        rows += [{"maker": "M", "facility": "F1", "item": "I1", "lot_date": day}] * shots
        rates += [rate] * shots
    return pd.DataFrame(rows), np.array(rates)


CONFIG = GroupingConfig(normal_defect_rate=0.01, min_group_rows=100, part_max_lot_rate=0.03)


def test_clean_lots_only_when_they_are_enough() -> None:
    records, rates = _records({"d1": (60, 0.0), "d2": (60, 0.009), "d3": (60, 0.01), "d4": (60, 0.02)})
    table, positions = part_groups(records, rates, CONFIG)
    row = table.iloc[0]
    assert row["role"] == TRAIN and row["cluster"] == PART_CLUSTER and row["rows"] == 120  # 0.01 is not below 1 %
    assert sorted(set(records.iloc[positions[("M", "F1", "I1", PART_CLUSTER)]]["lot_date"])) == ["d1", "d2"]
    assert row["lot_defect_rate"] == pytest.approx(0.0045)


def test_next_cleanest_lots_fill_up_to_the_floor() -> None:
    records, rates = _records({"d1": (40, 0.0), "d2": (50, 0.025), "d3": (50, 0.015), "d4": (50, 0.03)})
    table, positions = part_groups(records, rates, CONFIG)
    days = sorted(set(records.iloc[positions[("M", "F1", "I1", PART_CLUSTER)]]["lot_date"]))
    assert days == ["d1", "d2", "d3"]  # 40 clean + 50 (1.5 %) = 90 < 100, + 50 (2.5 %) = 140; 3 % never
    assert table.iloc[0]["rows"] == 140


def test_dirty_part_is_dropped() -> None:
    records, rates = _records({"d1": (80, 0.0), "d2": (500, 0.03), "d3": (500, 0.05)})
    table, positions = part_groups(records, rates, CONFIG)
    assert table.iloc[0]["role"] == DROPPED and positions == {}  # 3 % is not below the ceiling


def test_exactly_the_floor_is_enough() -> None:
    records, rates = _records({"d1": (100, 0.0)})
    table, _ = part_groups(records, rates, CONFIG)
    assert table.iloc[0]["role"] == TRAIN
    records, rates = _records({"d1": (99, 0.0)})
    assert part_groups(records, rates, CONFIG)[0].iloc[0]["role"] == DROPPED


def test_rows_without_item_or_lot_are_left_out() -> None:
    records, rates = _records({"d1": (120, 0.0)})
    records.loc[:9, "item"] = None
    rates[10:20] = np.nan
    table, positions = part_groups(records, rates, CONFIG)
    assert table.iloc[0]["rows"] == 100 and len(positions[("M", "F1", "I1", PART_CLUSTER)]) == 100


def test_pooled_group_id() -> None:
    assert GroupKey("M", "F 1", "I/1", PART_CLUSTER).id == "M__F_1~e8c5caca__I_1~f59da6c6__all"
    assert GroupKey("M", "F1", "I1", 3).id == "M__F1__I1__c3"
