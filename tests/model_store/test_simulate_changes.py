"""The plant that changes (model_store.simulate.changes): what each change does, and only there."""
import numpy as np
import pandas as pd
import pytest

from model_store.canonical import canonical_records
from model_store.simulate.changes import CHANGES, PlantChange, apply_change, plan_change


@pytest.fixture(scope="module")
def records(forest_plant) -> pd.DataFrame:
    return canonical_records(forest_plant.records, forest_plant.schema).sort_values("timestamp", kind="stable").reset_index(drop=True)


def _busiest(records: pd.DataFrame) -> tuple[str, str]:
    facility, item = records.groupby(["facility", "item"]).size().idxmax()
    return str(facility), str(item)


@pytest.mark.parametrize("kind", [k for k in CHANGES if k != "new_part"])
def test_a_change_moves_only_its_part_after_its_start_by_its_size(kind: str, records, forest_plant) -> None:
    facility, item = _busiest(records)
    start = pd.to_datetime(records["timestamp"]).iloc[len(records) // 2]
    change = plan_change(kind, records, forest_plant.schema, facility, item, start, np.random.default_rng(3), size=2.0)
    changed, touched = apply_change(records, change)
    when = pd.to_datetime(records["timestamp"])
    expected = ((records["facility"] == facility) & (records["item"] == item) & (when >= start)).to_numpy()
    assert (touched == expected).all() and touched.any()
    part = records[(records["facility"] == facility) & (records["item"] == item)]
    for field, shift in zip(change.fields, change.shifts):
        factor = {"sensor_recalibration": 1.0, "heater_ageing": 2.0, "mold_swap": 1.5}[kind]
        assert abs(shift) == pytest.approx(factor * 2.0 * part[field].std())
        delta = changed[field].to_numpy(dtype=float) - records[field].to_numpy(dtype=float)
        assert np.allclose(np.nan_to_num(delta[~touched]), 0.0)  # nothing else moves
        moved = delta[touched]
        if kind == "heater_ageing":  # a ramp: 0 at the start, the full shift after ramp_days
            elapsed = ((when[touched] - start) / pd.Timedelta(days=1)).to_numpy()
            ok = np.isfinite(moved)
            assert np.allclose(moved[ok], np.clip(elapsed[ok] / change.ramp_days, 0, 1) * shift)
        else:
            assert np.allclose(moved[np.isfinite(moved)], shift)
    assert kind != "mold_swap" or len(change.fields) == 3
    assert kind != "heater_ageing" or all("temp" in f.lower() for f in change.fields)


def test_a_new_part_takes_a_new_item_id_from_its_start(records, forest_plant) -> None:
    facility, item = _busiest(records)
    start = pd.to_datetime(records["timestamp"]).iloc[len(records) // 2]
    change = plan_change("new_part", records, forest_plant.schema, facility, item, start, np.random.default_rng(0))
    changed, touched = apply_change(records, change)
    assert (changed.loc[touched, "item"] == f"{item}-NEW").all()
    assert changed.loc[~touched].equals(records.loc[~touched])
    assert change.describe()["new_item"] == f"{item}-NEW"


def test_bad_requests_name_what_is_wrong(records, forest_plant) -> None:
    start = pd.Timestamp("2025-01-01")
    with pytest.raises(ValueError, match="unknown plant change 'flood'"):
        plan_change("flood", records, forest_plant.schema, "F1", "I1", start, np.random.default_rng(0))
    with pytest.raises(ValueError, match="NOPE/NADA has no history"):
        plan_change("mold_swap", records, forest_plant.schema, "NOPE", "NADA", start, np.random.default_rng(0))


def test_a_change_after_the_last_record_touches_nothing(records) -> None:
    facility, item = _busiest(records)
    late = PlantChange("sensor_recalibration", facility, item, pd.Timestamp("2100-01-01"), (records.columns[-1],), (5.0,))
    changed, touched = apply_change(records, late)
    assert not touched.any() and changed.equals(records)
