"""The plant simulator: deterministic, schema-valid, physically plausible, with setting-dependent defects."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_store.canonical import canonical_lots, canonical_records
from model_store.schema import load_schema
from model_store.simulate import (
    MAKERS,
    SimulatedPlant,
    SimulationConfig,
    SimulationConfigError,
    continue_plant,
    define_plant,
    simulate,
    write_plant,
)

SMALL = SimulationConfig(seed=7, days=8, facilities=9, items=16, shots=30_000)


@pytest.fixture(scope="module")
def small() -> SimulatedPlant:
    return simulate(SMALL)


@pytest.fixture(scope="module")
def medium() -> SimulatedPlant:
    """Enough volume per setting for statistical checks, still a second or two."""
    return simulate(SimulationConfig(seed=3, days=14, facilities=12, items=20, shots=150_000))


@pytest.fixture(scope="module")
def full() -> SimulatedPlant:
    return simulate(SimulationConfig())


def _maker_rows(plant: SimulatedPlant, maker: str) -> pd.DataFrame:
    return plant.records[plant.records["maker"] == maker]


def test_same_seed_same_plant_and_other_seed_differs(small: SimulatedPlant) -> None:
    again = simulate(SMALL)
    pd.testing.assert_frame_equal(small.records, again.records)
    pd.testing.assert_frame_equal(small.labels, again.labels)
    pd.testing.assert_frame_equal(small.lots, again.lots)
    pd.testing.assert_frame_equal(small.settings, again.settings)
    other = simulate(SimulationConfig(seed=8, days=8, facilities=9, items=16, shots=30_000))
    assert not other.records["shot_id"].equals(small.records["shot_id"]) or not other.labels["defect"].equals(small.labels["defect"])


def test_each_maker_has_its_own_field_set(small: SimulatedPlant) -> None:
    schema = small.schema
    assert set(schema.makers) == {"HANIL", "DAESAN", "SUNGWOO"}
    seen: set[str] = set()
    for maker, fields in schema.makers.items():
        assert 6 <= len(fields.settings) <= 10, maker
        assert 8 <= len(fields.production) <= 14, maker
        assert not seen & set(fields.all), "makers must not share column names"
        seen |= set(fields.all)
        rows = _maker_rows(small, maker)
        assert len(rows) > 0
        others = [c for c in schema.numeric_fields if c not in fields.all]
        assert rows[others].isna().all().all(), f"{maker} rows carry other makers' fields"
        assert rows[list(fields.all)].notna().mean().min() > 0.9
    hanil, daesan = schema.makers["HANIL"], schema.makers["DAESAN"]
    assert "set_barrel_temp_1" in hanil.settings and "SV_NOZZLE_TEMP" in daesan.settings
    assert "InjSpeedSet" in schema.makers["SUNGWOO"].settings


def test_every_facility_belongs_to_one_maker_and_runs_several_items(small: SimulatedPlant) -> None:
    rec = small.records
    assert (rec.groupby("facility")["maker"].nunique() == 1).all()
    assert rec["facility"].nunique() == SMALL.facilities
    defn = define_plant(SMALL.seed, SMALL.facilities, SMALL.items)
    assert defn.pairs.groupby("item")["facility"].nunique().between(1, 3).all()
    assert defn.settings.groupby("pair").size().between(2, 5).all()
    assert (defn.pairs.groupby("facility").size() >= 1).all()


def test_canonical_loaders_accept_the_output(small: SimulatedPlant) -> None:
    canon = canonical_records(small.records, small.schema)
    assert len(canon) == len(small.records)
    assert canon["record_id"].is_unique
    assert set(canon["maker"]) == set(MAKERS)
    lots = canonical_lots(small.lots, small.schema)
    assert list(lots.columns) == ["facility", "item", "lot_date", "good_qty", "bad_qty"]


def test_lots_match_the_true_labels(small: SimulatedPlant) -> None:
    lots = small.lots
    assert (lots["good_qty"] + lots["bad_qty"]).sum() == len(small.records)
    assert lots["bad_qty"].sum() == small.labels["defect"].sum()
    assert not lots.duplicated(["facility", "item", "lot_date"]).any()
    truth = small.labels.merge(small.settings[["setting_id", "facility", "item"]], on="setting_id")
    truth["lot_date"] = small.records["lot_date"].to_numpy()
    bad = truth.groupby(["facility", "item", "lot_date"])["defect"].sum()
    merged = lots.set_index(["facility", "item", "lot_date"])["bad_qty"]
    pd.testing.assert_series_equal(bad.sort_index(), merged.sort_index(), check_names=False, check_dtype=False)


def test_labels_and_settings_truth_line_up(small: SimulatedPlant) -> None:
    labels, settings = small.labels, small.settings
    assert labels["record_id"].tolist() == small.records["shot_id"].tolist()
    assert set(labels["setting_id"]) <= set(settings["setting_id"])
    assert set(labels["cause"]) <= {"none", "short_shot", "flash", "sink_mark", "gas_burn", "contamination", "heater_drift", "sensor_spike"}
    assert (labels.loc[labels["cause"].isin(["none", "sensor_spike"]), "defect"] == 0).all()
    assert (labels.loc[~labels["cause"].isin(["none", "sensor_spike"]), "defect"] == 1).all()
    assert settings["true_defect_prob"].between(0, 0.6).all()
    assert settings.groupby("setting_id").size().max() == 1
    assert settings["shots"].sum() == len(labels)


def test_recorded_set_points_are_the_true_settings(small: SimulatedPlant) -> None:
    """Most shots of a setting carry exactly its set points; a few carry an operator's one-step nudge."""
    rec = small.records.assign(setting_id=small.labels["setting_id"].to_numpy())
    for maker, fields in small.schema.makers.items():
        cols = list(fields.settings)
        rows = rec[rec["maker"] == maker].dropna(subset=cols)
        truth = small.settings.set_index("setting_id")[cols]
        diff = rows[cols].to_numpy() - truth.loc[rows["setting_id"]].to_numpy()
        changed = (np.abs(diff) > 1e-9).sum(axis=1)
        assert changed.max() <= 1, maker  # a nudge touches one field...
        steps = np.array([10.0 ** -f.decimals for f in MAKERS[maker].settings])
        nudged = np.abs(diff[changed == 1]).sum(axis=1)
        assert np.allclose(nudged, (np.abs(diff[changed == 1]) > 1e-9) @ steps), maker  # ...by one step
        assert 0.5 < (changed == 0).mean() < 1.0, maker


def test_timestamps_are_ordered_per_machine_and_lots_follow_the_production_day(small: SimulatedPlant) -> None:
    rec = small.records
    assert rec["timestamp"].is_monotonic_increasing
    for _, ts in rec.groupby("facility")["timestamp"]:
        assert ts.is_monotonic_increasing and ts.is_unique
    lot = pd.to_datetime(rec["lot_date"])
    lag = (rec["timestamp"].dt.normalize() - lot).dt.days
    assert lag.isin([0, 1]).all()  # the night shift books into the day's lot
    assert (lag == 0).mean() > 0.8
    start = pd.Timestamp(SMALL.start)
    assert rec["timestamp"].min() >= start - pd.Timedelta(hours=1)
    assert rec["lot_date"].nunique() <= SMALL.days


def test_shot_volume_is_close_to_the_request(small: SimulatedPlant) -> None:
    assert 0.85 * SMALL.shots <= len(small.records) <= SMALL.shots


def test_setting_changes_happen_within_days(medium: SimulatedPlant) -> None:
    rec = medium.records.assign(setting_id=medium.labels["setting_id"].to_numpy())
    per_day = rec.groupby(["facility", "lot_date"])["setting_id"].nunique()
    assert (per_day >= 2).mean() > 0.3
    items_per_day = rec.groupby(["facility", "lot_date"])["item"].nunique()
    assert items_per_day.max() <= 2


def test_peak_pressure_rises_with_injection_speed_within_an_item(medium: SimulatedPlant) -> None:
    """Regress log peak pressure on log speed set and melt temperature, within (facility, item)."""
    rec = medium.records.loc[medium.records["maker"] == "HANIL"].dropna(
        subset=["set_inj_speed", "peak_inj_pressure", "melt_temp", "item"]
    )
    rec = rec[medium.labels.loc[rec.index, "cause"] == "none"]  # no defects, no sensor glitches
    frame = pd.DataFrame(
        {
            "speed": np.log(rec["set_inj_speed"]),
            "peak": np.log(rec["peak_inj_pressure"]),
            "melt": rec["melt_temp"],
        }
    )
    key = [rec["facility"], rec["item"]]
    within = frame - frame.groupby(key).transform("mean")
    coef, *_ = np.linalg.lstsq(within[["speed", "melt"]].to_numpy(), within["peak"].to_numpy(), rcond=None)
    assert coef[0] > 0.2, coef  # shear-thinning flow law: exponent ~0.55 unless the limit caps it
    assert coef[1] < 0, coef  # hotter melt flows more easily


def test_process_values_follow_their_settings(medium: SimulatedPlant) -> None:
    rec = medium.records
    hanil = rec[rec["maker"] == "HANIL"]
    assert hanil["cycle_time"].corr(hanil["set_cooling_time"]) > 0.7
    key = [hanil["facility"], hanil["item"]]
    melt = hanil["melt_temp"] - hanil.groupby(key)["melt_temp"].transform("mean")
    zone = hanil["set_barrel_temp_1"] - hanil.groupby(key)["set_barrel_temp_1"].transform("mean")
    assert melt.corr(zone) > 0.5
    sungwoo = rec[rec["maker"] == "SUNGWOO"]
    fill = sungwoo["InjTime"] * sungwoo["MaxInjSpeedAct"]  # stroke = time × speed, near-constant per part
    key = [sungwoo["facility"], sungwoo["item"]]
    assert (fill.groupby(key).std() / fill.groupby(key).mean()).median() < 0.1
    daesan = rec[rec["maker"] == "DAESAN"]
    assert (daesan["PV_HOLD_PRS"] - daesan["SV_HOLD_PRS"]).abs().median() < 0.03 * daesan["SV_HOLD_PRS"].median()


def test_measured_values_are_correlated_within_a_setting(medium: SimulatedPlant) -> None:
    """Shot-to-shot variation is not independent noise: melt temperature drives pressure."""
    rec = medium.records.assign(setting_id=medium.labels["setting_id"].to_numpy())
    good = rec[(rec["maker"] == "SUNGWOO") & (medium.labels["cause"].to_numpy() == "none")]
    cols = ["MeltTempAct", "InjPressPeak", "InjTime", "MaxInjSpeedAct"]
    dev = good[cols] - good.groupby("setting_id")[cols].transform("mean")
    corr = dev.corr()
    assert corr.loc["MeltTempAct", "InjPressPeak"] < -0.15
    assert corr.loc["InjTime", "MaxInjSpeedAct"] < -0.2


def test_defects_leave_a_signature_relative_to_their_setting(medium: SimulatedPlant) -> None:
    rec = medium.records.assign(setting_id=medium.labels["setting_id"].to_numpy(), cause=medium.labels["cause"].to_numpy())
    hanil = rec[rec["maker"] == "HANIL"]
    delta = hanil["cushion"] - hanil.groupby("setting_id")["cushion"].transform("median")
    assert delta[hanil["cause"] == "short_shot"].median() < -0.3
    assert abs(delta[hanil["cause"] == "none"].median()) < 0.05
    # ...yet inside the plant-wide spread: a global view would not see most of them.
    short = hanil.loc[hanil["cause"] == "short_shot", "cushion"]
    lo, hi = hanil["cushion"].quantile([0.01, 0.99])
    assert short.between(lo, hi).mean() > 0.5


def test_poor_settings_have_higher_defect_rates(medium: SimulatedPlant) -> None:
    st = medium.settings[medium.settings["shots"] >= 300]
    good = st[st["true_defect_prob"] < 0.008]
    poor = st[st["true_defect_prob"] >= 0.02]
    assert len(good) and len(poor)
    rate = lambda t: t["defects"].sum() / t["shots"].sum()
    assert rate(poor) > 3 * rate(good)
    assert st["true_defect_prob"].corr(st["observed_defect_rate"], method="spearman") > 0.4
    assert st["observed_defect_rate"].max() > 5 * st["observed_defect_rate"].median()


def test_plant_wide_defect_rate_and_group_sizes(full: SimulatedPlant) -> None:
    labels = full.labels
    assert 0.012 < labels["defect"].mean() < 0.035
    assert 0.03 < (labels["cause"] == "contamination").sum() / labels["defect"].sum() < 0.3  # invisible defects
    assert 450_000 < len(labels) <= 500_000
    sizes = labels.groupby("setting_id").size()
    assert (sizes > 15_000).sum() >= 1
    assert sizes.between(2_000, 15_000).sum() >= 20
    assert sizes.between(100, 500).sum() >= 10
    assert full.settings["true_defect_prob"].between(0.002, 0.008).sum() > 50
    assert (full.settings["true_defect_prob"] > 0.02).sum() > 20


def test_missing_values_at_the_configured_rates() -> None:
    plant = simulate(SimulationConfig(seed=2, days=5, facilities=6, items=10, shots=40_000, missing_rate=0.05, missing_item_rate=0.02))
    for maker, fields in plant.schema.makers.items():
        rows = _maker_rows(plant, maker)[list(fields.all)]
        assert 0.04 < rows.isna().mean().mean() < 0.06, maker
    assert 0.015 < plant.records["item"].isna().mean() < 0.025
    assert plant.records["facility"].notna().all()
    canonical_records(plant.records, plant.schema)  # gaps are allowed, not text


def test_no_gaps_when_rates_are_zero() -> None:
    plant = simulate(SimulationConfig(seed=2, days=3, facilities=4, items=6, shots=8_000, missing_rate=0.0, missing_item_rate=0.0))
    for maker, fields in plant.schema.makers.items():
        assert _maker_rows(plant, maker)[list(fields.all)].notna().all().all()
    assert plant.records["item"].notna().all()


def test_continuation_runs_the_same_plant_later(small: SimulatedPlant) -> None:
    later = continue_plant(small, days=2)
    assert later.records["timestamp"].min() > small.records["timestamp"].max() - pd.Timedelta(hours=1)
    assert later.records["lot_date"].min() > small.records["lot_date"].max()
    assert not set(later.records["shot_id"]) & set(small.records["shot_id"])
    assert set(later.labels["setting_id"]) <= set(small.settings["setting_id"])
    assert later.schema.hash() == small.schema.hash()
    assert later.first_day == SMALL.days and later.n_days == 2
    assert 0.5 * SMALL.shots / SMALL.days * 2 < len(later.records) <= SMALL.shots / SMALL.days * 2 + 1
    again = continue_plant(later, days=1)
    assert again.records["timestamp"].min() > later.records["timestamp"].min()
    assert again.first_day == SMALL.days + 2
    from_config = continue_plant(SMALL, days=2)
    pd.testing.assert_frame_equal(from_config.records, later.records)


def test_defect_boost_raises_the_defect_rate(small: SimulatedPlant) -> None:
    calm = continue_plant(small, days=2, shots=20_000)
    bad = continue_plant(small, days=2, shots=20_000, defect_boost=4.0)
    assert bad.labels["defect"].mean() > 2.5 * calm.labels["defect"].mean()
    assert (bad.settings["true_defect_prob"] >= calm.settings["true_defect_prob"]).all()


def test_write_plant_round_trips(small: SimulatedPlant, tmp_path: Path) -> None:
    paths = write_plant(small, tmp_path / "plant")
    assert {p.name for p in paths.values()} == {"records.parquet", "lots.csv", "schema.yaml", "labels.parquet", "settings.csv"}
    assert paths["labels"].parent.name == "truth"
    schema = load_schema(paths["schema"])
    assert schema.hash() == small.schema.hash()
    records = pd.read_parquet(paths["records"])
    pd.testing.assert_frame_equal(records, small.records, check_dtype=False)
    canonical_lots(pd.read_csv(paths["lots"]), schema)
    csv_paths = write_plant(small, tmp_path / "csv", fmt="csv")
    canon = canonical_records(pd.read_csv(csv_paths["records"]), schema)
    assert len(canon) == len(small.records)
    assert canon["timestamp"].iloc[5] == small.records["timestamp"].iloc[5]


def test_bad_arguments_are_one_line_errors(small: SimulatedPlant, tmp_path: Path) -> None:
    with pytest.raises(SimulationConfigError):
        SimulationConfig(days=0)
    with pytest.raises(SimulationConfigError):
        SimulationConfig(facilities=2)
    with pytest.raises(SimulationConfigError):
        SimulationConfig(missing_rate=0.7)
    with pytest.raises(SimulationConfigError):
        SimulationConfig(start="next monday")
    with pytest.raises(SimulationConfigError):
        continue_plant(small, days=0)
    with pytest.raises(Exception, match="unknown records format"):
        write_plant(small, tmp_path, fmt="xlsx")


def test_progress_is_reported() -> None:
    seen: list[tuple[str, float]] = []
    simulate(SimulationConfig(seed=1, days=2, facilities=3, items=4, shots=3_000), progress=lambda s, f: seen.append((s, f)))
    fractions = [f for _, f in seen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)
