"""Recipe guidance: intervals, lot attribution, the ranking rule, the operating window, the lookup.

Pure logic on hand-made frames (no store, no files), then one check on the simulated plant, whose
per-setting true defect probabilities are known.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from model_store.errors import DataError
from model_store.recipe import RecipeBook, RecipeConfig, rank_clusters
from model_store.recipe.attribution import attribute_lots
from model_store.recipe.guard import spread_radius, within_spread, worse_than_history
from model_store.recipe.intervals import beta_interval, pearson_dispersion, wilson_interval
from model_store.recipe.window import centroid_raw, most_used_combination, operating_window, window_stats

DAYS = [f"2026-01-{d:02d}" for d in range(1, 21)]


def shots(cluster: int, n: int, anomalies: int, days: list[str], facility: str = "F1", item: str = "I1", seed: int = 0) -> pd.DataFrame:
    """``n`` shots of one cluster spread evenly over ``days``, exactly ``anomalies`` of them anomalous."""
    rng = np.random.default_rng([seed, cluster + 1])
    day = np.resize(days, n)
    anomaly = np.zeros(n, dtype=bool)
    anomaly[rng.choice(n, anomalies, replace=False)] = True
    return pd.DataFrame({"facility": facility, "item": item, "maker": "M", "cluster": cluster, "lot_date": day, "day": day,
                         "scored": True, "anomaly": anomaly})


def lots_from(frame: pd.DataFrame, bad_rate: dict[int, float]) -> pd.DataFrame:
    """Lots whose bad counts follow each cluster's (expected) true rate."""
    expected = frame.assign(bad=frame["cluster"].map(bad_rate))
    out = expected.groupby(["facility", "item", "lot_date"], as_index=False).agg(n=("bad", "size"), bad=("bad", "sum"))
    out["bad_qty"] = np.round(out["bad"]).astype(int)
    out["good_qty"] = out["n"] - out["bad_qty"]
    return out[["facility", "item", "lot_date", "good_qty", "bad_qty"]]


def pick(table: pd.DataFrame, facility: str = "F1", item: str = "I1") -> int:
    chosen = table[table["recommended"] & (table["facility"] == facility) & (table["item"] == item)]
    assert len(chosen) == 1
    return int(chosen["cluster"].iloc[0])


# -- intervals -----------------------------------------------------------------------------------
def test_wilson_interval_matches_the_closed_form_and_shrinks_small_samples():
    low, high = wilson_interval(np.array([0, 0, 10]), np.array([30, 3000, 1000]))
    z2 = 1.959963984540054**2
    assert low[0] == 0 and high[0] == pytest.approx(z2 / (30 + z2))  # 0 of 30: still up to ~11 %
    assert high[1] < 0.002  # 0 of 3000 is real evidence
    assert low[2] < 0.01 < high[2]


@pytest.mark.parametrize("interval", [wilson_interval, beta_interval])
def test_intervals_contain_the_rate_and_know_nothing_without_data(interval):
    k, n = np.array([0, 3, 50, 0]), np.array([10, 100, 50, 0])
    low, high = interval(k, n)
    rate = np.divide(k, n, out=np.zeros(4), where=n > 0)
    assert np.all((low[:3] <= rate[:3]) & (rate[:3] <= high[:3]))
    assert (low[3], high[3]) == (0.0, 1.0)
    _, narrow = interval(np.array([30]), np.array([3000]))
    _, wide = interval(np.array([3]), np.array([300]))
    assert narrow[0] < wide[0]


def test_dispersion_is_one_for_binomial_days_and_large_for_clumped_ones():
    rng = np.random.default_rng(1)
    n = np.full(200, 1000)
    assert pearson_dispersion(rng.binomial(n, 0.02), n, np.full(200, 0.02), 1) == pytest.approx(1.0, abs=0.3)
    clumped = np.where(np.arange(200) % 10 == 0, 200, 0)  # every defect on one day in ten
    assert pearson_dispersion(clumped, n, np.full(200, 0.02), 1) > 10
    assert pearson_dispersion(np.array([1]), np.array([10]), np.array([0.1]), 1) == 1.0  # too few units to tell


# -- lot attribution -----------------------------------------------------------------------------
def test_em_recovers_per_cluster_rates_from_mixed_days():
    rng = np.random.default_rng(2)
    share_a = rng.uniform(0, 1, 60)
    shares = np.column_stack([share_a, 1 - share_a])
    parts = np.full(60, 20_000)
    bad = np.round(parts * (shares @ np.array([0.004, 0.03]))).astype(int)
    fit = attribute_lots(shares, parts - bad, bad)
    assert fit.rate == pytest.approx([0.004, 0.03], rel=0.02)
    assert fit.parts.sum() == pytest.approx(parts.sum())


def test_em_keeps_pure_lots_exact_and_inseparable_clusters_pooled():
    pure = attribute_lots(np.array([[1.0, 0], [0, 1.0]]), np.array([990, 960]), np.array([10, 40]))
    assert pure.rate == pytest.approx([0.01, 0.04])
    together = attribute_lots(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([990, 960]), np.array([10, 40]))
    assert together.rate[0] == pytest.approx(together.rate[1])  # the data cannot rank them; neither do we


# -- ranking rule --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["wilson", "beta"])
def test_a_30_shot_cluster_cannot_win_on_luck(method):
    frame = pd.concat([shots(0, 30, 0, DAYS[:1]), shots(1, 20_000, 200, DAYS)])
    lots = lots_from(frame, {0: 0.0, 1: 0.01})
    table = rank_clusters(frame, lots, RecipeConfig(interval=method, min_rows=1))
    by = table.set_index("cluster")
    assert by.loc[0, "predicted_rate"] == 0.0 < by.loc[1, "predicted_rate"]  # on point estimates it would win
    assert by.loc[0, "credible_rate"] > by.loc[1, "credible_rate"]
    assert pick(table) == 1


def test_most_production_wins_among_equally_good_clusters():
    frame = pd.concat([shots(0, 4_000, 40, DAYS), shots(1, 12_000, 118, DAYS), shots(2, 8_000, 400, DAYS)])
    table = rank_clusters(frame, lots_from(frame, {0: 0.01, 1: 0.01, 2: 0.05}), RecipeConfig(evidence="blend"))
    by = table.set_index("cluster")
    assert by.loc[0, "candidate"] and by.loc[1, "candidate"] and not by.loc[2, "candidate"]
    assert pick(table) == 1


def test_a_clearly_better_cluster_beats_a_bigger_worse_one():
    frame = pd.concat([shots(0, 3_000, 3, DAYS[::3]), shots(1, 30_000, 600, DAYS)])
    table = rank_clusters(frame, lots_from(frame, {0: 0.002, 1: 0.02}), RecipeConfig())
    assert pick(table) == 0


def test_tolerance_decides_what_counts_as_lowest():
    frame = pd.concat([shots(0, 10_000, 80, DAYS), shots(1, 20_000, 200, DAYS)])
    lots = lots_from(frame, {0: 0.008, 1: 0.010})
    assert pick(rank_clusters(frame, lots, RecipeConfig(relative_tolerance=0.5, evidence="blend"))) == 1
    assert pick(rank_clusters(frame, lots, RecipeConfig(relative_tolerance=0.0, absolute_tolerance=0.0, evidence="blend"))) == 0


def test_min_rows_keeps_tiny_clusters_out_of_the_recommendation():
    frame = pd.concat([shots(0, 80, 0, DAYS[:2]), shots(1, 2_000, 100, DAYS)])
    table = rank_clusters(frame, None, RecipeConfig(min_rows=100, relative_tolerance=10.0))
    assert not table.set_index("cluster").loc[0, "eligible"]
    assert pick(table) == 1


def test_evidence_weights_are_configurable():
    # Pseudo-labels prefer cluster 0, the lots prefer cluster 1 (run on different days, so lots can tell).
    frame = pd.concat([shots(0, 10_000, 20, DAYS[:10]), shots(1, 10_000, 300, DAYS[10:])])
    lots = lots_from(frame, {0: 0.03, 1: 0.002})
    assert pick(rank_clusters(frame, lots, RecipeConfig(lot_weight=0.0))) == 0
    assert pick(rank_clusters(frame, lots, RecipeConfig(predicted_weight=0.0))) == 1
    lots_only = rank_clusters(frame, lots, RecipeConfig(), predicted_pairs=set())
    assert set(lots_only["basis"]) == {"lots"} and pick(lots_only) == 1
    mixed = pd.concat([shots(0, 10_000, 20, DAYS), shots(1, 10_000, 300, DAYS)])  # always 50/50 on the same days
    inseparable = rank_clusters(mixed, lots_from(mixed, {0: 0.03, 1: 0.002}), RecipeConfig(predicted_weight=0.0))
    assert inseparable["lot_rate"].nunique() == 1  # the lots cannot rank them: both get the day's rate


def test_without_lots_the_ranking_uses_pseudo_labels_and_pairs_rank_independently():
    frame = pd.concat([shots(0, 5_000, 10, DAYS), shots(1, 5_000, 200, DAYS),
                       shots(3, 5_000, 200, DAYS, facility="F2"), shots(4, 5_000, 10, DAYS, facility="F2")])
    table = rank_clusters(frame, None, RecipeConfig())
    assert set(table["basis"]) == {"predicted"}
    assert pick(table, "F1") == 0 and pick(table, "F2") == 4
    assert table.groupby(["facility", "item"])["share"].sum().tolist() == pytest.approx([1.0, 1.0])


def test_unknown_settings_and_unscored_shots_do_not_count():
    frame = pd.concat([shots(0, 5_000, 50, DAYS), shots(-1, 500, 0, DAYS)])
    frame.loc[frame.index[:100], "scored"] = False
    table = rank_clusters(frame, None, RecipeConfig())
    assert table["cluster"].tolist() == [0]
    assert table["scored"].iloc[0] == 5_000 - 100


def test_recipe_config_overrides_and_validation():
    config = RecipeConfig().with_overrides({"recipe.confidence": "0.9", "overdispersion": "false", "min_rows": "50"})
    assert (config.confidence, config.overdispersion, config.min_rows) == (0.9, False, 50)
    with pytest.raises(ValueError, match="unknown recipe setting"):
        RecipeConfig().with_overrides({"nope": "1"})
    with pytest.raises(ValueError):
        RecipeConfig(interval="normal")


# -- recommended setting and operating window ------------------------------------------------------
def test_most_used_exact_combination_ignores_incomplete_rows():
    settings = pd.DataFrame({"a": [1.0, 1.0, 2.0, 1.0, np.nan, np.nan, np.nan], "b": [5.0, 5.0, 6.0, 5.5, 6.0, 6.0, 6.0]})
    exact, rows, share = most_used_combination(settings)
    assert exact == {"a": 1.0, "b": 5.0} and rows == 2 and share == pytest.approx(2 / 4)
    assert most_used_combination(settings.iloc[4:]) == ({}, 0, 0.0)


def test_operating_window_describes_normal_production():
    values = np.arange(1.0, 101.0)
    production = pd.DataFrame({"x": values, "y": np.r_[np.full(99, 2.0), np.nan]})
    normal = values <= 90  # the ten largest x are pseudo-labelled anomalous
    window = operating_window(production, normal)
    x = window["fields"]["x"]
    assert window["rows"] == 90 and window["normal_only"]
    assert (x["min"], x["max"], x["mean"]) == (1.0, 90.0, 45.5)
    assert x["p5"] == pytest.approx(np.percentile(values[:90], 5)) and x["p95"] == pytest.approx(np.percentile(values[:90], 95))
    # p1 / p99 of 1..90 (linear interpolation): 1 + 0.01 * 89 = 1.89 and 1 + 0.99 * 89 = 89.11; 1 and 90 lie outside.
    assert (x["p1"], x["p99"], x["outliers"]) == (pytest.approx(1.89), pytest.approx(89.11), 2)
    assert window["fields"]["y"]["max"] == 2.0
    assert operating_window(production, np.zeros(100, bool))["rows"] == 100  # nothing normal: all shots
    assert window_stats(np.array([np.nan]))["mean"] is None


def test_a_sensor_spike_judged_normal_stays_outside_the_window():
    temps = np.r_[np.full(999, 223.0), 531.0]  # one spike the models let through
    stats = window_stats(temps)
    assert stats["max"] == 531.0 and stats["outliers"] == 1
    assert stats["p99"] == 223.0  # position 0.99 * 999 = 989.01 lies between two 223s


def test_window_plot_holds_p1_p99_and_marks_outliers_inside_the_axes():
    from model_store.plots import plt
    from model_store.recipe.report import _window_panel

    spiky = window_stats(np.r_[np.linspace(220.0, 226.0, 999), 531.0])
    calm = window_stats(np.linspace(210.0, 215.0, 500))
    ranking = pd.DataFrame({"cluster": [0, 1], "recommended": [True, False]})
    fig, ax = plt.subplots()
    _window_panel(ax, "nozzle_temp", ranking, {0: {"fields": {"nozzle_temp": spiky}}, 1: {"fields": {"nozzle_temp": calm}}})
    left, right = ax.get_xlim()
    assert left < calm["p1"] and spiky["p99"] < right < 300  # the spike does not stretch the axis
    xs = np.concatenate([np.ravel(line.get_xdata()) for line in ax.lines]
                        + [np.ravel([seg[:, 0] for seg in c.get_segments()]) for c in ax.collections])
    assert np.all((xs >= left) & (xs <= right))  # nothing drawn runs off the chart
    assert any(line.get_marker() == ">" for line in ax.lines)  # the spike is marked at the edge
    plt.close(fig)


# -- never worse than history, and inside the cluster's spread -------------------------------------
def test_equal_to_history_is_not_worse():
    assert worse_than_history(0.02, 0.01, 0.02, 0.01) is None
    assert worse_than_history(0.02, 0.01, 0.02 * (1 - 1e-12), 0.01) is None  # float noise of the same counts
    assert worse_than_history(0.019, 0.009, 0.02, 0.01) is None  # better on both


def test_worse_than_history_at_the_ranking_tolerance():
    # History credible 2 %, tolerance 10 % + 0.05 pp: the limit is 0.02 * 1.1 + 0.0005 = 0.0225 exactly.
    assert worse_than_history(0.0225, 0.01, 0.02, 0.01, relative=0.10, absolute=0.0005) is None  # on the limit: not worse
    assert "credible defect rate 2.26%" in worse_than_history(0.0226, 0.01, 0.02, 0.01, relative=0.10, absolute=0.0005)
    # Estimate 1.16 % vs history 1 %: limit 0.01 * 1.1 + 0.0005 = 0.0115.
    assert worse_than_history(0.02, 0.0115, 0.02, 0.01, relative=0.10, absolute=0.0005) is None
    assert "estimated defect rate 1.16%" in worse_than_history(0.02, 0.0116, 0.02, 0.01, relative=0.10, absolute=0.0005)


def test_credibly_or_expectedly_worse_than_history_keeps_current_practice():
    assert "credible defect rate 2.01%" in worse_than_history(0.0201, 0.009, 0.02, 0.01)
    assert "estimated defect rate 1.24%" in worse_than_history(0.019, 0.01236, 0.02, 0.01)  # the -23.6 % case
    assert worse_than_history(0.03, 0.02, None, float("nan")) is None  # no history to compare: not blocked


def test_history_is_ranked_like_one_more_cluster():
    """Two equally good clusters: the history (both, twice the shots) is credibly as good as either alone,
    so neither is credibly better; one clearly better cluster is."""
    from model_store.recipe.build import _history_ranking

    even = pd.concat([shots(0, 5_000, 50, DAYS), shots(1, 5_000, 52, DAYS)])
    ranked = rank_clusters(even, None, RecipeConfig())
    history = _history_ranking(even, None, RecipeConfig(), {("F1", "I1")}).loc[("F1", "I1")]
    best = ranked[ranked["recommended"]].iloc[0]
    # Wilson upper bound of 102 / 10,000 vs 50 / 5,000 (z = 1.96): the history's is lower (more shots).
    assert history["credible_rate"] == pytest.approx(wilson_interval(np.array([102]), np.array([10_000]))[1][0], rel=0.05)
    assert worse_than_history(best["credible_rate"], best["defect_rate"], history["credible_rate"], 0.0102) is not None
    # ... but within the ranking's tolerance: as good as the history, so still recommended.
    assert worse_than_history(best["credible_rate"], best["defect_rate"], history["credible_rate"], 0.0102, 0.10, 0.0005) is None
    better = pd.concat([shots(0, 5_000, 5, DAYS), shots(1, 5_000, 100, DAYS)])
    ranked = rank_clusters(better, None, RecipeConfig())
    history = _history_ranking(better, None, RecipeConfig(), {("F1", "I1")}).loc[("F1", "I1")]
    best = ranked[ranked["recommended"]].iloc[0]
    assert int(best["cluster"]) == 0
    assert worse_than_history(best["credible_rate"], best["defect_rate"], history["credible_rate"], 0.0105) is None


def test_spread_radius_and_boundary():
    centroid = np.array([0.0, 0.0])
    # Distances 0, 1, 2, 3, 4: the 0.75 quantile is 3 exactly, the 0.95 quantile 3.8 (linear interpolation).
    points = np.array([[0, 0], [1, 0], [0, 2], [3, 0], [0, 4]], dtype=float)
    assert spread_radius(points, centroid, 0.75) == pytest.approx(3.0)
    assert spread_radius(points, centroid, 0.95) == pytest.approx(3.8)
    assert within_spread(np.array([3.0, 0.0]), centroid, 3.0)  # on the boundary: inside
    assert within_spread(np.array([0.6, 0.8]), centroid, 1.0)  # a 3-4-5 triangle scaled: distance exactly 1
    assert not within_spread(np.array([3.0, 0.001]), centroid, 3.0)
    assert spread_radius(np.zeros((0, 2)), centroid) == 0.0


def test_a_combination_run_on_more_than_five_percent_of_the_shots_is_inside_the_spread():
    """Row-weighted p95: 94 shots at distance 0.1, 6 at distance 2 (one combination, 6 %): p95 is 2."""
    centroid = np.zeros(2)
    shots_ = np.vstack([np.tile([0.1, 0.0], (94, 1)), np.tile([0.0, 2.0], (6, 1))])
    radius = spread_radius(shots_, centroid, 0.95)
    assert radius == pytest.approx(2.0)
    assert within_spread(np.array([0.0, 2.0]), centroid, radius)
    rare = np.vstack([np.tile([0.1, 0.0], (96, 1)), np.tile([0.0, 2.0], (4, 1))])  # 4 %: an outlier of the cluster
    # p95 at position 94.05 of 0..99: between two 0.1s -> 0.1
    assert not within_spread(np.array([0.0, 2.0]), centroid, spread_radius(rare, centroid, 0.95))


def test_centroid_back_to_raw_units():
    assert centroid_raw([0.5, 0.0], np.array([200.0, 10.0]), np.array([40.0, 1.0]), ["t", "p"]) == {"t": 220.0, "p": 10.0}


# -- the worker's lookup -------------------------------------------------------------------------
RECIPES = [
    {"facility": "F1", "item": "I1", "setting_cluster": 3, "model_version": "v1", "_id": "mongo"},
    {"facility": "F2", "item": "I9", "setting_cluster": 0, "model_version": "v1"},
]


def test_recipe_book_lookup(tmp_path):
    book = RecipeBook(RECIPES)
    assert len(book) == 2 and "_id" not in book.get("F1", "I1")
    assert book.get("F1", "nope") is None
    assert book.on_recipe("F1", "I1", 3) is True
    assert book.on_recipe("F1", "I1", np.int64(2)) is False
    assert book.on_recipe("F1", "I1", -1) is None  # settings unknown
    assert book.on_recipe("F3", "I1", 3) is None  # no recipe
    assert book.on_recipe("F1", "I1", 3, model_version="v2") is None  # clusters of another store
    assert book.on_recipe("F1", "I1", 3, model_version="v1") is True
    batch = book.on_recipe_batch(np.array(["F1", "F1", "F2", "F9"], dtype=object), ["I1", "I1", "I9", "I1"], np.array([3, 1, 0, 0]))
    assert batch.tolist() == [True, False, True, None]
    path = tmp_path / "recipes.json"
    kept = {"facility": "F5", "item": "I5", "action": "keep current practice", "setting_cluster": 1, "_id": "m"}
    path.write_text(json.dumps({"recipes": RECIPES[1:], "keep_current_practice": [kept]}))
    from_file = RecipeBook.from_json(path)
    assert len(from_file) == 1 and len(RecipeBook.from_json(RECIPES)) == 2
    assert from_file.answer("F5", "I5") == {k: v for k, v in kept.items() if k != "_id"}  # the part's answer
    assert from_file.answer("F2", "I9") == from_file.get("F2", "I9") and from_file.answer("F9", "I9") is None
    assert from_file.get("F5", "I5") is None and from_file.on_recipe("F5", "I5", 1) is None  # never judges a shot
    assert "F5" not in {r["facility"] for r in from_file.recipes()}


def test_recipe_book_refuses_bad_input(tmp_path):
    with pytest.raises(DataError, match="not found"):
        RecipeBook.from_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="unreadable"):
        RecipeBook.from_json(tmp_path / "bad.json")
    with pytest.raises(DataError, match="setting_cluster"):
        RecipeBook([{"facility": "F1", "item": "I1"}])
    with pytest.raises(DataError, match=r"expected a recipes.json document"):
        RecipeBook.from_json({"recipes": [], "keep_current_practice": "nope"})


# -- all-or-nothing output -----------------------------------------------------------------------
def test_outputs_are_all_or_nothing(tmp_path):
    from model_store.recipe.build import RecipeResult
    from model_store.recipe.output import write_recipes

    result = RecipeResult("v1", "hash", RecipeConfig(), [], pd.DataFrame({"facility": [], "item": []}))
    out = tmp_path / "recipes"

    def boom(staged):
        assert (staged / "recipes.json").is_file()  # everything is staged before the last step runs
        raise RuntimeError("publishing failed")

    with pytest.raises(RuntimeError):
        write_recipes(result, out, before_commit=boom, report=False)
    assert list(tmp_path.iterdir()) == []  # no output, no staging directory left
    write_recipes(result, out, report=False)
    first = (out / "recipes.json").read_text()
    with pytest.raises(RuntimeError):
        write_recipes(RecipeResult("v2", "hash", RecipeConfig(), [], result.clusters), out, before_commit=boom, report=False)
    assert (out / "recipes.json").read_text() == first and len(list(tmp_path.iterdir())) == 1  # the old recipes stay
    write_recipes(RecipeResult("v2", "hash", RecipeConfig(), [], result.clusters), out, report=False)
    assert json.loads((out / "recipes.json").read_text())["model_version"] == "v2"


def test_window_stats_quantiles_are_ordered_and_the_mean_is_no_quantile() -> None:
    # 96 shots at 0, 4 at 100 (hand-computed): p95 interpolates between the 95th and 96th sorted
    # values (both 0), p99 between the 99th and 100th (both 100); the mean (4) lies above p95
    stats = window_stats(np.r_[np.zeros(96), np.full(4, 100.0)])
    assert (stats["min"], stats["p1"], stats["p5"], stats["p95"], stats["max"]) == (0.0, 0.0, 0.0, 0.0, 100.0)
    assert stats["p99"] == 100.0 and stats["mean"] == 4.0 > stats["p95"]
    assert stats["outliers"] == 0  # nothing below p1 or above p99
