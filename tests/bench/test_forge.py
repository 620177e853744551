"""forge, the independent plant simulator: determinism, the schema contract, lots, makers, recipes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.plants import ProvingPlant
from bench.plants.forge import FORGE_PLANTS, MAKERS, forge_plant
from model_store.canonical import canonical_lots, canonical_records


@pytest.fixture(scope="module")
def plant() -> ProvingPlant:
    return forge_plant(seed=3, shots=12_000, days=6, machines=6, name="forge_test")


@pytest.fixture(scope="module")
def night_plant() -> ProvingPlant:
    """Japanese naming, text timestamps, two-day lots and a shift that runs past midnight."""
    return forge_plant(seed=5, shots=8_000, days=6, machines=6, makers=("VALDOR", "KAZUMI"), naming="jp",
                       timestamp_text=True, lot_days=2, day_start_hour=15.0, sunday_off=False)


@pytest.fixture(scope="module")
def large_plant() -> ProvingPlant:
    return forge_plant(seed=0, shots=40_000, days=10, machines=6, defect_share=0.03)


def test_same_seed_same_plant_other_seed_other_plant() -> None:
    a = forge_plant(seed=9, shots=3_000, days=3, machines=6)
    b = forge_plant(seed=9, shots=3_000, days=3, machines=6)
    c = forge_plant(seed=10, shots=3_000, days=3, machines=6)
    pd.testing.assert_frame_equal(a.records, b.records)
    pd.testing.assert_frame_equal(a.labels, b.labels)
    pd.testing.assert_frame_equal(a.lots, b.lots)
    assert a.schema.hash() == b.schema.hash()
    assert not a.records.drop(columns=[a.schema.record_id]).equals(c.records.drop(columns=[c.schema.record_id]))


@pytest.mark.parametrize("which", ["plant", "night_plant"])
def test_schema_and_canonical_frames_accept_the_export(which: str, request: pytest.FixtureRequest) -> None:
    p: ProvingPlant = request.getfixturevalue(which)
    assert p.generator == "forge" and p.schema.source == f"forge:{p.name}"
    records = canonical_records(p.records, p.schema)
    lots = canonical_lots(p.lots, p.schema)
    assert len(records) == len(p.records) == p.notes["shots"]
    assert set(records["maker"]) == set(p.schema.makers)
    # the records' lot dates are the lots' keys, one lot per (facility, item, lot date)
    keys = records[["facility", "item", "lot_date"]].drop_duplicates()
    assert len(keys) == len(lots) == len(lots[["facility", "item", "lot_date"]].drop_duplicates())


@pytest.mark.parametrize("which", ["plant", "night_plant"])
def test_lot_bad_counts_are_the_defective_shots(which: str, request: pytest.FixtureRequest) -> None:
    p: ProvingPlant = request.getfixturevalue(which)
    s = p.schema
    truth = (p.records[[s.facility, s.item, s.lot_date]].assign(defect=p.labels["defect"].to_numpy())
             .groupby([s.facility, s.item, s.lot_date])["defect"].agg(["size", "sum"]).reset_index())
    lots = canonical_lots(p.lots, s)
    merged = lots.merge(truth.set_axis(["facility", "item", "lot_date", "size", "sum"], axis=1),
                        on=["facility", "item", "lot_date"], validate="one_to_one")
    assert len(merged) == len(lots) == len(truth)
    assert (merged["bad_qty"] == merged["sum"]).all()
    assert (merged["good_qty"] + merged["bad_qty"] == merged["size"]).all()


def test_labels_align_with_record_ids(plant: ProvingPlant) -> None:
    ids = plant.records[plant.schema.record_id]
    assert ids.is_unique
    assert list(plant.labels["record_id"]) == list(ids)
    assert set(plant.labels["defect"].unique()) <= {0, 1}
    assert plant.labels["defect"].dtype.kind == "i"
    ok = plant.labels["cause"] == "ok"
    assert (ok == (plant.labels["defect"] == 0)).all()


def test_each_maker_records_its_own_fields(plant: ProvingPlant) -> None:
    makers = plant.schema.makers
    assert len(makers) == 3
    names = [set(f.all) for f in makers.values()]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not a & b
    assert len({len(f.production) for f in makers.values()}) > 1  # different field counts too
    maker_col = plant.records[plant.schema.maker_column]
    for maker, f in makers.items():
        rows = plant.records[maker_col == maker]
        others = [c for m, g in makers.items() if m != maker for c in g.all]
        assert rows[others].isna().all().all()  # another maker's fields are empty on this maker's rows
        assert rows[list(f.settings)].notna().mean().min() > 0.99


def test_machines_switch_recipes_and_set_points_move(plant: ProvingPlant) -> None:
    s = plant.schema
    r = plant.records
    items_per_machine = r.groupby(s.facility)[s.item].nunique()
    assert (items_per_machine > 1).sum() >= 3
    # timestamps run forward on every machine
    ts = pd.to_datetime(r[s.timestamp])
    assert r.assign(_ts=ts).groupby(s.facility)["_ts"].apply(lambda x: x.is_monotonic_increasing).all()
    # within one machine and part, continuous set points wander and get nudged: many distinct values
    hold = {"HALDEN": "Nachdruck", "VALDOR": "hold_press_sp_mpa", "KAZUMI": "PH_KGF"}
    mold = {"HALDEN": "Wkz_Soll", "VALDOR": "mold_fixed_sp", "KAZUMI": "MOLD_T_SET"}
    for maker in s.makers:
        rows = r[r[s.maker_column] == maker]
        per_run = rows.groupby([s.facility, s.item])
        assert per_run[hold[maker]].nunique().max() > 10
        assert per_run[mold[maker]].nunique().max() > 10
    cycle = r["Zykluszeit"].dropna()
    assert 10 < cycle.median() < 90


def test_two_recipes_of_a_part_run_at_different_defect_shares(large_plant: ProvingPlant) -> None:
    labels = large_plant.labels.assign(part=large_plant.labels["recipe"].str.split("/").str[0])
    shares = labels.groupby(["part", "recipe"])["defect"].agg(["mean", "size"]).reset_index()
    shares = shares[shares["size"] >= 800]
    best = 0.0
    for _, g in shares.groupby("part"):
        if len(g) < 2:
            continue
        hi, lo = g.loc[g["mean"].idxmax()], g.loc[g["mean"].idxmin()]
        se = np.sqrt(hi["mean"] * (1 - hi["mean"]) / hi["size"] + lo["mean"] * (1 - lo["mean"]) / lo["size"])
        best = max(best, float((hi["mean"] - lo["mean"]) / max(se, 1e-9)))
    assert best > 4.0  # far beyond chance


def test_defect_share_and_mix_follow_the_knobs(large_plant: ProvingPlant, plant: ProvingPlant) -> None:
    assert large_plant.notes["defect_share"] == pytest.approx(0.03, rel=0.25)
    assert plant.notes["defect_share"] == pytest.approx(0.015, rel=0.35)
    causes = large_plant.notes["causes"]
    assert sum(causes.values()) == large_plant.labels["defect"].sum()
    assert sum(n > 0 for n in causes.values()) >= 7  # many mechanisms, not one


def test_night_shift_belongs_to_the_lot_it_started(night_plant: ProvingPlant) -> None:
    s = night_plant.schema
    ts = pd.to_datetime(night_plant.records[s.timestamp])
    lag = (ts.dt.normalize() - pd.to_datetime(night_plant.records[s.lot_date])).dt.days
    assert set(lag.unique()) <= {0, 1, 2, 3}  # two-day lots, plus a night past midnight
    assert (lag > 0).any() and (lag == 0).any()


def test_unknown_knob_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown knob"):
        forge_plant(seed=0, shots=1_000, days=2, bogus=1)


def test_named_plants_are_large_and_differ() -> None:
    assert len(FORGE_PLANTS) >= 3
    assert all(spec["shots"] >= 200_000 for spec in FORGE_PLANTS.values())
    assert len({spec["seed"] for spec in FORGE_PLANTS.values()}) == len(FORGE_PLANTS)
    assert all(set(spec.get("makers", MAKERS)) <= set(MAKERS) for spec in FORGE_PLANTS.values())
