"""The plant generated piece by piece (model_store/simulate/stream.py) and written as a partitioned
Parquet dataset: the in-memory path's plan, the same distributions, deterministic, bounded memory."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from model_store.canonical import canonical_records
from model_store.errors import MoldwatchError
from model_store.schema import load_schema
from model_store.simulate import PlantStream, SimulatedPlant, SimulationConfig, simulate, write_plant_dataset
from model_store.simulate.stream import plan_chunks

MEDIUM = SimulationConfig(seed=3, days=14, facilities=12, items=20, shots=150_000)
SMALL = SimulationConfig(seed=7, days=5, facilities=6, items=10, shots=15_000)


@pytest.fixture(scope="module")
def in_memory() -> SimulatedPlant:
    return simulate(MEDIUM)


@pytest.fixture(scope="module")
def streamed() -> dict[str, pd.DataFrame]:
    stream = PlantStream(MEDIUM, chunk_shots=4_000)  # several pieces per day
    chunks = list(stream.chunks())
    assert len(chunks) > MEDIUM.days
    shots = sum(c.setting_shots for c in chunks)
    defects = sum(c.setting_defects for c in chunks)
    return {
        "records": pd.concat([c.records for c in chunks], ignore_index=True),
        "labels": pd.concat([c.labels for c in chunks], ignore_index=True),
        "lots": pd.concat([c.lots for c in chunks], ignore_index=True).sort_values(["facility", "item", "lot_date"]).reset_index(drop=True),
        "settings": stream.settings_truth(shots, defects),
    }


def test_plan_cuts_at_days_and_at_the_shot_budget() -> None:
    day = np.array([0, 0, 0, 1, 1, 2])
    n = np.array([5, 5, 5, 20, 1, 3])
    plans = plan_chunks(day, n, chunk_shots=10)
    assert [(p.day, p.part, p.first_block, p.end_block, p.shots) for p in plans] == [
        (0, 0, 0, 2, 10), (0, 1, 2, 3, 5), (1, 0, 3, 4, 20), (1, 1, 4, 5, 1), (2, 0, 5, 6, 3)]
    assert [p.index for p in plans] == list(range(5))
    assert len(plan_chunks(day, n, chunk_shots=10**9)) == 3  # one piece per day at most... and at least
    with pytest.raises(MoldwatchError):
        plan_chunks(day, n, chunk_shots=0)


def test_the_plan_is_the_in_memory_plan(in_memory: SimulatedPlant, streamed: dict[str, pd.DataFrame]) -> None:
    """Same shots (ids), on the same machine, part, lot day and true setting; same lots, each with
    the same number of shots; same columns and types."""
    a = streamed["records"].set_index("shot_id").sort_index()
    b = in_memory.records.set_index("shot_id").sort_index()
    assert a.index.equals(b.index)
    assert list(streamed["records"].columns) == list(in_memory.records.columns)
    assert streamed["records"].dtypes.equals(in_memory.records.dtypes)
    for column in ("maker", "facility", "lot_date"):
        assert (a[column] == b[column]).all(), column
    both = a["item"].notna() & b["item"].notna()
    assert (a.loc[both, "item"] == b.loc[both, "item"]).all()
    la = streamed["labels"].set_index("record_id").sort_index()
    lb = in_memory.labels.set_index("record_id").sort_index()
    assert (la["setting_id"] == lb["setting_id"]).all()
    lots = streamed["lots"]
    assert lots[["facility", "item", "lot_date"]].equals(in_memory.lots[["facility", "item", "lot_date"]])
    assert ((lots["good_qty"] + lots["bad_qty"]).to_numpy() == (in_memory.lots["good_qty"] + in_memory.lots["bad_qty"]).to_numpy()).all()
    assert (streamed["settings"]["shots"] == in_memory.settings["shots"]).all()
    assert streamed["settings"].drop(columns=["defects", "observed_defect_rate"]).equals(
        in_memory.settings.drop(columns=["defects", "observed_defect_rate"]))


def _cluster_z(a: pd.Series, b: pd.Series, block_a: pd.Series, block_b: pd.Series) -> float:
    """Difference of two means over its standard error, with machine-days as clusters (shots of
    one machine-day share drift, oil warm-up and resin lot, so they are not independent)."""
    ma, mb = a.groupby(block_a).mean().dropna(), b.groupby(block_b).mean().dropna()
    se = np.sqrt(ma.var() / len(ma) + mb.var() / len(mb))
    return float(abs(a.mean() - b.mean()) / se) if se > 0 else 0.0


def test_per_shot_values_have_the_in_memory_distribution(in_memory: SimulatedPlant, streamed: dict[str, pd.DataFrame]) -> None:
    """Per-shot draws differ (own random streams per piece: see the module docstring), so the
    comparison is by distribution: every numeric field's mean within 4.5 cluster standard errors,
    its spread within 15 %, the defect share and cause mix close."""
    a, b = streamed["records"], in_memory.records
    block_a, block_b = a["facility"] + a["lot_date"], b["facility"] + b["lot_date"]
    numeric = [c for c in a.columns if a[c].dtype.kind == "f"]
    assert len(numeric) > 30
    for column in numeric:
        assert _cluster_z(a[column], b[column], block_a, block_b) < 4.5, column
        assert 0.85 < a[column].std() / b[column].std() < 1.15, column
        assert abs(a[column].isna().mean() - b[column].isna().mean()) < 0.01, column
    la, lb = streamed["labels"], in_memory.labels
    assert abs(la["defect"].mean() - lb["defect"].mean()) < 0.25 * lb["defect"].mean()
    mix_a, mix_b = la["cause"].value_counts(normalize=True), lb["cause"].value_counts(normalize=True)
    assert set(mix_a.index) == set(mix_b.index)
    assert (mix_a - mix_b).abs().max() < 0.01
    # Per true setting the defect rate follows the same hazards: large settings agree closely.
    sa, sb = streamed["settings"], in_memory.settings
    big = sb["shots"] >= 2000
    assert np.corrcoef(sa.loc[big, "observed_defect_rate"], sb.loc[big, "observed_defect_rate"])[0, 1] > 0.9


def test_same_config_same_dataset_and_it_reads_back(tmp_path: Path) -> None:
    first = write_plant_dataset(PlantStream(SMALL, chunk_shots=2_000), tmp_path / "a", partition_by=("lot_date", "facility"))
    write_plant_dataset(PlantStream(SMALL, chunk_shots=2_000), tmp_path / "b", partition_by=("lot_date", "facility"))
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for relative in files_a:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    assert any(p.parts[:3] == ("records", "lot_date=2026-01-05", "facility=F01") for p in files_a)

    dataset = ds.dataset(first["records"], format="parquet", partitioning="hive")
    frame = dataset.to_table().to_pandas()
    memory = simulate(SMALL)
    assert len(frame) == len(memory.records)
    assert set(frame["shot_id"]) == set(memory.records["shot_id"])
    assert set(frame.columns) == set(memory.records.columns)  # the partition columns are in the files too
    one_day = dataset.to_table(filter=ds.field("lot_date") == "2026-01-06").to_pandas()
    assert len(one_day) == int((memory.records["lot_date"] == "2026-01-06").sum())
    schema = load_schema(first["schema"])
    canonical_records(frame, schema, source=str(first["records"]))  # the schema maps it
    lots = pd.read_csv(first["lots"])
    assert int((lots["good_qty"] + lots["bad_qty"]).sum()) == len(frame)
    labels = ds.dataset(first["labels"], format="parquet").to_table().to_pandas()
    assert int(labels["defect"].sum()) == int(lots["bad_qty"].sum())
    settings = pd.read_csv(first["settings"])
    assert int(settings["shots"].sum()) == len(frame)


def test_an_existing_dataset_is_not_overwritten_and_bad_partitions_are_refused(tmp_path: Path) -> None:
    write_plant_dataset(PlantStream(SMALL), tmp_path)
    before = sorted(p for p in (tmp_path / "records").rglob("*"))
    with pytest.raises(MoldwatchError, match="already exists"):
        write_plant_dataset(PlantStream(SMALL), tmp_path)
    assert sorted(p for p in (tmp_path / "records").rglob("*")) == before
    with pytest.raises(MoldwatchError, match="use lot_date, facility"):
        write_plant_dataset(PlantStream(SMALL), tmp_path / "other", partition_by=("item",))
    with pytest.raises(MoldwatchError, match="use lot_date, facility"):
        write_plant_dataset(PlantStream(SMALL), tmp_path / "other", partition_by=("lot_date", "lot_date"))


_PEAK = """
import json, resource, sys, tempfile, tracemalloc
from pathlib import Path
import pyarrow.parquet  # imported before measuring: its import is not the data
from model_store.simulate import PlantStream, SimulationConfig, simulate, write_plant, write_plant_dataset
mode, days = sys.argv[1], int(sys.argv[2])
config = SimulationConfig(seed=5, days=days, facilities=6, items=10, shots=6_000 * days)
tracemalloc.start()
with tempfile.TemporaryDirectory() as out:
    if mode == "stream":
        write_plant_dataset(PlantStream(config), Path(out))
    else:
        write_plant(simulate(config), Path(out))
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1], "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _peak(mode: str, days: int) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", _PEAK, mode, str(days)], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_streamed_peak_memory_does_not_grow_with_the_days() -> None:
    """A plant 4x as long (same shots per day): the streamed writer's traced peak (NumPy and
    Python allocations) stays within 1.5x, while the in-memory path's grows ~4x on the same
    measure (so the measure sees growth where there is some). The process's max RSS, which
    includes the interpreter and libraries, stays within 1.5x too."""
    small, large = _peak("stream", 4), _peak("stream", 16)
    assert large["peak"] < 1.5 * small["peak"], (small, large)
    assert large["maxrss_kb"] < 1.5 * small["maxrss_kb"], (small, large)
    whole_small, whole_large = _peak("memory", 4), _peak("memory", 16)
    assert whole_large["peak"] > 2.5 * whole_small["peak"], (whole_small, whole_large)
