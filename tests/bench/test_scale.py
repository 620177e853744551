"""The scale projection's arithmetic: each term from the measured runs, hand-computed."""
from __future__ import annotations

import pytest

scale = pytest.importorskip("bench.scale")

STAGES = ["Lots, setting clusters, groups: done (1 of 1) in 0:00:10",
          "Training group models: done (499 of 499) in 0:01:00",
          "Fitting each maker's scorer: done (1 of 1) in 0:00:10",
          "Calibrating on the lots: done (2 of 2) in 0:00:20"]


def run(millions: float, cap: int, wall: float, training: float, tree_mb: float, kept_lots: int = 500, stages: bool = True) -> dict:
    return {"history_rows": int(millions * 1e6), "max_rows": cap, "workers": 2, "wall_seconds": wall, "training_seconds": training,
            "peak_rss_mb_tree": tree_mb, "facilities": 100, "exit": 0,
            "history_sample": {"kept_lots": kept_lots, "min_lots_per_part": 1}, "stage_lines": STAGES if stages else []}


def test_stage_seconds_reads_trains_done_lines() -> None:
    assert scale.stage_seconds(STAGES + ["The history holds ...", "Training group models: done (3 of 3) in 1:02:03"]) == {
        "Lots, setting clusters, groups": 10.0, "Training group models": 3723.0, "Fitting each maker's scorer": 10.0,
        "Calibrating on the lots": 20.0}


def test_each_term_of_the_projection_comes_from_the_runs() -> None:
    runs = [run(10, 400_000, wall=500, training=200, tree_mb=5000),  # reading 300 s
            run(50, 400_000, wall=1500, training=200, tree_mb=6000),  # reading 1300 s: 25 s per million + 50
            run(10, 1_000_000, wall=1400, training=1100, tree_mb=11000, stages=False)]  # the cap's cost
    got = scale.project(runs, shots=1e9, machines=600, workers=[1, 2, 4], rows_per_part=500)
    assert got["read_seconds_per_million"] == pytest.approx(25.0) and got["read_fixed_seconds"] == pytest.approx(50.0)
    assert got["parts_estimated"] == 3000  # 5 parts a machine (one lot per part kept)
    cap = 1_500_000  # 3000 parts x 500 shots, above the measured default
    # memory: fixed + 25 MB per million of history + 1/100 MB per trained row (solved exactly by the three runs)
    assert got["peak_mb_terms"] == {"fixed": 750, "per_million_history": 25.0, "per_trained_row": 0.01}
    assert got["peak_mb_tree"] == round(750 + 25 * 1000 + 0.01 * cap)
    # training: 200 s at 400k, 1100 s at 1M -> 1.5e-3 s a row, -400 s; the fits are 60 of 100 stage seconds
    at_pool = -400 + 1.5e-3 * cap
    assert got["training_seconds_at_pool"] == round(at_pool) and got["group_fit_share_of_training"] == 0.6
    by = {row["workers"]: row for row in got["by_workers"]}
    assert by[2]["training_hours"] == round(at_pool / 3600, 2)
    assert by[4]["training_hours"] == round(at_pool * (0.6 * 2 / 4 + 0.4) / 3600, 2)
    assert by[1]["training_hours"] == round(at_pool * (0.6 * 2 + 0.4) / 3600, 2)
    assert by[1]["read_hours"] == by[4]["read_hours"] == round((50 + 25 * 1000) / 3600, 2)  # the driver reads alone
    assert all(row["max_rows"] == cap for row in got["by_workers"])


def test_without_a_second_history_size_memory_is_the_measured_peak() -> None:
    got = scale.project([run(10, 400_000, wall=500, training=200, tree_mb=5000)], 1e9, 100, [2], 100)
    assert got["peak_mb_tree"] == 5000 and got["read_seconds_per_million"] == pytest.approx(30.0)
    assert got["by_workers"][0]["max_rows"] == 400_000  # 500 parts x 100 shots is below the default: the default


def test_a_history_measured_lighter_is_not_extrapolated_as_a_fall() -> None:
    runs = [run(10, 400_000, wall=500, training=200, tree_mb=6000), run(50, 400_000, wall=1500, training=200, tree_mb=5800),
            run(10, 1_000_000, wall=1400, training=1100, tree_mb=12000, stages=False)]
    got = scale.project(runs, shots=1e9, machines=100, workers=[2], rows_per_part=0)
    assert got["peak_mb_terms"]["per_million_history"] == 0.0
    # the cap's line through the three runs: 400k at their mean 5900, 1M at 12000 -> 6100 MB per 600k rows
    assert got["peak_mb_terms"]["per_trained_row"] == pytest.approx(6100 / 600_000, abs=1e-5)
    assert got["peak_mb_tree"] == pytest.approx(5900, abs=1)  # at the default cap: the measured mean
