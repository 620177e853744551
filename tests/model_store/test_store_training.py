"""Training's preparation refuses lots that match no record before any model is fitted: the
store would otherwise be trained on groups whose defect rate nobody knows, then fail to write."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from model_store.canonical import canonical_lots, canonical_records
from model_store.config import TrainingConfig
from model_store.errors import DataError
from model_store.store_training import prepare


@pytest.fixture(scope="module")
def plant(small_plant):
    return (canonical_records(small_plant.records, small_plant.schema), canonical_lots(small_plant.lots, small_plant.schema),
            small_plant.schema)


def test_lots_of_another_year_are_refused_with_both_spans(plant) -> None:
    records, lots, schema = plant
    later = lots.assign(lot_date=(pd.to_datetime(lots["lot_date"]) + pd.DateOffset(years=1)).dt.strftime("%Y-%m-%d"))
    first, last = records["lot_date"].min(), records["lot_date"].max()
    with pytest.raises(DataError, match=re.escape(f"lots: none of the {len(later):,} lot rows matches a record's "
                                                  f"(facility, item, lot date)")) as refused:
        prepare(records, later, schema, TrainingConfig())
    text = str(refused.value)
    names = sorted(records["facility"].unique())
    assert f"Records: {first} to {last}, facilities {', '.join(map(repr, names[:3]))} and {len(names) - 3} more" in text
    assert f"lots: {later['lot_date'].min()} to {later['lot_date'].max()}" in text


def test_lots_that_name_the_machines_otherwise_are_refused(plant) -> None:
    records, lots, schema = plant
    with pytest.raises(DataError, match="lots: none of the"):
        prepare(records, lots.assign(facility=lots["facility"].str.lower()), schema, TrainingConfig())


def test_one_matching_lot_is_enough_to_go_on(plant) -> None:
    records, lots, schema = plant
    mixed = pd.concat([lots.iloc[:1], lots.iloc[1:].assign(facility="elsewhere")], ignore_index=True)
    prepared = prepare(records, mixed, schema, TrainingConfig())
    assert prepared.lot_rates[~pd.isna(prepared.lot_rates)].size > 0


def test_a_maker_whose_production_fields_are_all_empty_is_refused(plant) -> None:
    # e.g. maker: {constant: X} on a two-maker export: X's columns are empty on the other maker's rows
    records, lots, schema = plant
    maker = str(records["maker"].iloc[0])
    fields = list(schema.makers[maker].production)
    blank = records.copy()
    blank.loc[blank["maker"] == maker, fields] = float("nan")
    with pytest.raises(DataError, match=re.escape(f"records: none of maker {maker!r}'s production fields")):
        prepare(blank, lots, schema, TrainingConfig())


def test_a_machine_given_the_wrong_maker_is_named(plant) -> None:
    # maker: {constant: X} on a plant of two makers: the other maker's machines have none of X's fields
    records, lots, schema = plant
    maker = str(records["maker"].iloc[0])
    facility = str(records.loc[records["maker"] == maker, "facility"].iloc[0])
    blank = records.copy()
    blank.loc[blank["facility"] == facility, list(schema.makers[maker].production)] = float("nan")
    with pytest.raises(DataError, match=re.escape(f"records: facility {facility!r} is of maker {maker!r}, but none of")):
        prepare(blank, lots, schema, TrainingConfig())
