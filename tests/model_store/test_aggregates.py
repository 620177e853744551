"""Training's whole-history aggregates computed piece by piece (model_store/aggregates.py) equal
the in-memory ones (groups.group_table, training.facility_defaults, training.setting_profiles),
wherever the pieces are cut."""
from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_store.aggregates import HistoryAggregates, buckets_for, lot_rates_of, profiles_from_spill, spill_by_group
from model_store.canonical import canonical_lots, canonical_records
from model_store.config import TrainingConfig
from model_store.groups import group_table
from model_store.lots import lot_defect_rates
from model_store.simulate import SimulationConfig, simulate
from model_store.store_training import PreparedData, facility_defaults, prepare, setting_profiles

CONFIG = TrainingConfig().with_overrides({"grouping.min_group_rows": "200"})


@pytest.fixture(scope="module")
def plant() -> tuple[PreparedData, pd.DataFrame, object]:
    sim = simulate(SimulationConfig(seed=11, days=8, facilities=12, items=20, shots=40_000, extra_settings=2))
    records = canonical_records(sim.records, sim.schema)
    lots = canonical_lots(sim.lots, sim.schema)
    return prepare(records, lots, sim.schema, CONFIG), lots, sim.schema


def _cut(frame: pd.DataFrame, cuts: list[int]) -> list[pd.DataFrame]:
    edges = [0, *sorted({c % (len(frame) + 1) for c in cuts}), len(frame)]
    return [frame.iloc[a:b] for a, b in itertools.pairwise(edges) if b > a]


def _aggregates(data: PreparedData, lots: pd.DataFrame, schema: object, cuts: list[int]) -> HistoryAggregates:
    agg = HistoryAggregates(schema, lot_rates_of(_cut(lots, [len(lots) // 3, len(lots) // 2])))
    for piece in _cut(data.records, cuts):
        agg.add(piece)
    return agg


def test_lot_rates_from_pieces(plant) -> None:
    _, lots, _ = plant
    doubled = pd.concat([lots, lots.iloc[::7]], ignore_index=True)  # a lot exported in two rows is summed
    expected = lot_defect_rates(doubled)
    pd.testing.assert_frame_equal(lot_rates_of(_cut(doubled, [5, 17, 400])), expected)


def test_group_table_and_facility_defaults_equal_the_in_memory_ones(plant) -> None:
    data, lots, schema = plant
    agg = _aggregates(data, lots, schema, [1000, 5000, 5001, 17_000, 39_000])
    expected = group_table(data.records, data.lot_rates, CONFIG.grouping)
    got = agg.group_table(CONFIG.grouping)
    assert len(expected) > 25 and set(expected["role"]) == {"train", "validation", "dropped"}
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12)
    assert agg.facility_defaults() == facility_defaults(data.records, schema)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, 45_000), max_size=8))
def test_wherever_the_pieces_are_cut(plant, cuts: list[int]) -> None:
    data, lots, schema = plant
    agg = _aggregates(data, lots, schema, cuts)
    expected = group_table(data.records, data.lot_rates, CONFIG.grouping)
    pd.testing.assert_frame_equal(agg.group_table(CONFIG.grouping), expected, check_exact=False, rtol=1e-12)
    assert agg.facility_defaults() == facility_defaults(data.records, schema)


def test_ties_between_setting_combinations_go_to_the_first_seen(plant) -> None:
    """Two combinations with the same count: pandas' value_counts keeps the one seen first, and so
    do the pieces, even when the other one's rows come in an earlier piece's later part."""
    data, lots, schema = plant
    maker = str(data.records["maker"].iloc[0])
    fields = list(schema.makers[maker].settings)
    base = data.records[data.records["maker"] == maker].iloc[:6].copy()
    base["facility"], base["item"] = "FX", "ITX"
    base[fields] = 1.0
    base.loc[base.index[[1, 3, 5]], fields[0]] = 2.0  # 3 rows of (2, 1, ...) after the first (1, 1, ...)
    frame = pd.concat([data.records, base], ignore_index=True)
    expected = facility_defaults(frame, schema)["FX"]
    assert expected["settings"][0] == 1.0
    for cuts in ([], [len(frame) - 5], [len(frame) - 4, len(frame) - 1]):
        agg = HistoryAggregates(schema, lot_rates_of([lots]))
        for piece in _cut(frame, cuts):
            agg.add(piece)
        assert agg.facility_defaults()["FX"] == expected


@pytest.mark.parametrize("buckets", [1, 7, 32])
def test_profiles_from_the_spill_equal_the_in_memory_ones(plant, tmp_path: Path, buckets: int) -> None:
    data, _, schema = plant
    spill_by_group(_cut(data.records, [3000, 9000, 9001, 20_000]), tmp_path, buckets=buckets)
    assert len(list(tmp_path.glob("bucket=*"))) <= buckets
    min_rows = CONFIG.grouping.min_profile_rows
    got = profiles_from_spill(tmp_path, schema, data.setting_models, min_rows)
    expected = setting_profiles(data, schema, min_rows)
    assert sum(len(v) for v in expected.values()) > 25
    assert got == expected


def test_buckets_grow_with_the_history() -> None:
    assert buckets_for(0) == 1 and buckets_for(1) == 1
    assert buckets_for(250_000) == 1 and buckets_for(250_001) == 2
    assert buckets_for(10**9) == 4000
    assert buckets_for(1000, bucket_rows=300) == 4
