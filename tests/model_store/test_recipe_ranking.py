"""The recipe ranking rule (model_store/recipe/ranking.py), pinned on small hand-built frames.

Every expected number here is worked out by hand in the comment next to it: counts, rates,
dispersions, the EM split of a mixed lot, the weighted blend of interval upper bounds, the
tolerance line. Interval ends come from :func:`wilson_interval` / :func:`beta_interval` at the
hand-computed (effective) counts; those functions are pinned to published values in
test_recipe_intervals.py, so what is checked here is which counts the ranking feeds them.
The property tests at the end check what the rule promises whatever the data: the pick is an
eligible candidate, row order does not matter, facility/items rank independently, and a worse
non-lowest cluster cannot move the pick.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.recipe.config import RecipeConfig
from model_store.recipe.intervals import beta_interval, wilson_interval
from model_store.recipe.ranking import rank_clusters, recommend

Z2 = 1.959963984540054**2  # z² of a two-sided 95 % interval

COLUMNS = [
    "facility", "item", "maker", "cluster", "rows", "lots", "days", "first_day", "last_day", "share", "scored",
    "anomalies", "predicted_rate", "predicted_dispersion", "predicted_low", "predicted_high", "lot_rate", "lot_parts",
    "lot_defects", "lot_dispersion", "lot_covered_rows", "lot_low", "lot_high", "basis", "credible_low",
    "credible_rate", "defect_rate", "eligible", "candidate", "recommended", "rank",
]
FLOATS = ["share", "predicted_rate", "predicted_dispersion", "predicted_low", "predicted_high", "lot_rate", "lot_parts",
          "lot_defects", "lot_dispersion", "lot_low", "lot_high", "credible_low", "credible_rate", "defect_rate"]
INTEGERS = ["cluster", "rows", "lots", "days", "scored", "anomalies", "lot_covered_rows", "rank"]
FLAGS = ["eligible", "candidate", "recommended"]


def block(n: int, cluster: int = 0, day: str = "D1", anomalies: int = 0, unscored: int = 0, lot_date: str | None = None,
          facility: str = "F1", item: str = "I1", maker: str = "M") -> pd.DataFrame:
    """``n`` scored shots of one cluster on one day, the first ``anomalies`` of them anomalous, plus
    ``unscored`` shots no model scored, flagged anomalous (a flag on an unscored shot must not count)."""
    scored = [True] * n + [False] * unscored
    anomaly = [i < anomalies for i in range(n)] + [True] * unscored
    return pd.DataFrame({"facility": facility, "item": item, "maker": maker, "cluster": cluster,
                         "lot_date": lot_date or day, "day": day, "scored": scored, "anomaly": anomaly})


def shots(*blocks: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(blocks, ignore_index=True)


def lots(*rows: tuple[str, int, int], facility: str = "F1", item: str = "I1") -> pd.DataFrame:
    """Lot table rows ``(lot_date, good, bad)`` of one facility/item."""
    return pd.DataFrame([{"facility": facility, "item": item, "lot_date": d, "good_qty": g, "bad_qty": b} for d, g, b in rows])


def by_cluster(table: pd.DataFrame, facility: str = "F1", item: str = "I1") -> pd.DataFrame:
    return table[(table["facility"] == facility) & (table["item"] == item)].set_index("cluster")


def wilson(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    low, high = wilson_interval(np.array([k]), np.array([n]), confidence)
    return float(low[0]), float(high[0])


def beta(k: float, n: float) -> tuple[float, float]:
    low, high = beta_interval(np.array([k]), np.array([n]))
    return float(low[0]), float(high[0])


def picks(table: pd.DataFrame) -> dict[tuple[str, str], int]:
    chosen = table[table["recommended"]]
    return {(f, i): int(c) for f, i, c in zip(chosen["facility"], chosen["item"], chosen["cluster"])}


NO_DISPERSION = RecipeConfig(overdispersion=False)
# Both kinds of evidence for a facility/item that has both (the default ranks such a one on its lots alone).
BLEND = RecipeConfig(overdispersion=False, evidence="blend")


# -- input -----------------------------------------------------------------------------------------
def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"^shots lack columns \['day', 'anomaly'\]$"):
        rank_clusters(block(3).drop(columns=["day", "anomaly"]), None, RecipeConfig())


def test_nothing_rankable_gives_the_empty_table_with_every_column():
    unknown = block(5, cluster=-1)
    for frame in (unknown, unknown.iloc[:0]):
        table = rank_clusters(frame, None, RecipeConfig())
        assert table.columns.tolist() == COLUMNS and len(table) == 0


def test_unknown_settings_and_rows_without_item_or_facility_are_not_ranked():
    frame = shots(block(4, cluster=0), block(3, cluster=-1), block(2, cluster=-3))
    frame = pd.concat([frame, block(5, cluster=1).assign(item=None), block(6, cluster=2).assign(facility=np.nan)],
                      ignore_index=True)
    table = rank_clusters(frame, None, NO_DISPERSION)
    assert table["cluster"].tolist() == [0] and table["rows"].tolist() == [4]
    assert table["share"].tolist() == [1.0]


def test_keys_come_out_as_strings_and_integer_clusters():
    # Facility codes read as numbers are the store's string keys ("7"), and a float cluster column an integer one.
    frame = block(10, anomalies=1).assign(facility=7, item=3, cluster=2.0)
    table = rank_clusters(frame, None, NO_DISPERSION, predicted_pairs={("7", "3")})
    assert table["facility"].tolist() == ["7"] and table["item"].tolist() == ["3"] and table["cluster"].tolist() == [2]
    assert table["cluster"].dtype == np.int64 and table["basis"].tolist() == ["predicted"]


def test_flags_given_as_numbers_count_like_booleans():
    # 0/1 floats (a CSV round trip): 10 scored shots, 2 of them anomalous, 2 unscored flagged anomalous.
    frame = block(10, anomalies=2, unscored=2)
    numeric = frame.assign(scored=frame["scored"].astype(float), anomaly=frame["anomaly"].astype(float))
    table = rank_clusters(numeric, None, NO_DISPERSION)
    assert (table["rows"].iloc[0], table["scored"].iloc[0], table["anomalies"].iloc[0]) == (12, 10, 2)
    pd.testing.assert_frame_equal(table, rank_clusters(frame, None, NO_DISPERSION))


def test_a_categorical_maker_with_unused_categories_adds_no_phantom_clusters():
    frame = shots(block(10, cluster=0, day="D1", anomalies=1), block(10, cluster=1, day="D2", anomalies=2))
    frame["maker"] = pd.Categorical(frame["maker"], categories=["M", "unused"])
    table = rank_clusters(frame, lots(("D1", 9, 1), ("D2", 8, 2)), NO_DISPERSION)
    assert table["cluster"].tolist() == [0, 1] and table["rows"].tolist() == [10, 10]
    assert by_cluster(table)["lot_rate"].tolist() == pytest.approx([0.1, 0.2])


# -- volume and output columns ---------------------------------------------------------------------
def test_volume_counts_rows_lots_days_and_the_span_of_each_cluster():
    # Cluster 0: 3 shots lot L1 day D1, 1 shot lot L1 day D2, 2 shots lot L2 day D3 -> 6 rows, 2 lots, 3 days.
    # Cluster 1: 4 shots lot L2 day D2 -> 4 rows, 1 lot, 1 day. Shares 6/10 and 4/10.
    frame = shots(block(3, 0, "D1", lot_date="L1"), block(1, 0, "D2", lot_date="L1"), block(2, 0, "D3", lot_date="L2"),
                  block(4, 1, "D2", lot_date="L2"))
    table = by_cluster(rank_clusters(frame, None, NO_DISPERSION))
    assert table.loc[0, ["rows", "lots", "days", "first_day", "last_day"]].tolist() == [6, 2, 3, "D1", "D3"]
    assert table.loc[1, ["rows", "lots", "days", "first_day", "last_day"]].tolist() == [4, 1, 1, "D2", "D2"]
    assert table["share"].tolist() == pytest.approx([0.6, 0.4])


def test_every_output_column_and_its_type():
    frame = shots(block(10, 0, anomalies=2), block(20, 1, anomalies=1))
    table = rank_clusters(frame, lots(("D1", 90, 10)), RecipeConfig())
    assert table.columns.tolist() == COLUMNS
    assert all(table[c].dtype == np.float64 for c in FLOATS)
    assert all(table[c].dtype == np.int64 for c in INTEGERS)
    assert all(table[c].dtype == bool for c in FLAGS)
    assert table.index.tolist() == [0, 1]


# -- predicted evidence ----------------------------------------------------------------------------
def test_predicted_rate_counts_scored_shots_only():
    # 10 scored shots, 2 anomalous; 2 unscored shots flagged anomalous do not count: 2 / 10.
    table = rank_clusters(block(10, anomalies=2, unscored=2), None, RecipeConfig())
    row = table.iloc[0]
    assert (row["rows"], row["scored"], row["anomalies"], row["predicted_rate"]) == (12, 10, 2, 0.2)
    # Wilson 2 / 10 (Newcombe's method 3): [0.0567, 0.5098]; one unit, no dispersion to estimate.
    assert row["predicted_dispersion"] == 1.0
    assert (round(row["predicted_low"], 4), round(row["predicted_high"], 4)) == (0.0567, 0.5098)
    # Pseudo-labels only: the credible interval is the predicted one, the point estimate 0.2.
    assert row["basis"] == "predicted"
    assert (row["credible_low"], row["credible_rate"], row["defect_rate"]) == (row["predicted_low"], row["predicted_high"], 0.2)


def test_without_lots_the_lot_columns_say_nothing_is_known():
    row = rank_clusters(block(10, anomalies=2), None, RecipeConfig()).iloc[0]
    assert math.isnan(row["lot_rate"])
    assert (row["lot_parts"], row["lot_defects"], row["lot_dispersion"], row["lot_covered_rows"]) == (0.0, 0.0, 1.0, 0)
    assert (row["lot_low"], row["lot_high"]) == (0.0, 1.0)


def test_the_interval_method_and_confidence_reach_the_predicted_interval():
    frame = block(10, anomalies=2)
    row = rank_clusters(frame, None, RecipeConfig(interval="beta")).iloc[0]
    assert (row["predicted_low"], row["predicted_high"]) == pytest.approx(beta(2, 10))
    assert row["predicted_high"] != pytest.approx(wilson(2, 10)[1], abs=1e-3)
    row = rank_clusters(frame, None, RecipeConfig(confidence=0.9)).iloc[0]
    assert (row["predicted_low"], row["predicted_high"]) == pytest.approx(wilson(2, 10, 0.9))


def test_one_scored_shot_is_evidence_and_none_is_not():
    # Cluster 0: one scored shot, anomalous: rate 1 / 1. Cluster 1: 3 shots, none scored: no rate, [0, 1].
    frame = shots(block(1, 0, anomalies=1), block(0, 1, unscored=3))
    table = by_cluster(rank_clusters(frame, None, RecipeConfig(min_rows=1)))
    assert table.loc[0, "predicted_rate"] == 1.0 and table.loc[0, "defect_rate"] == 1.0
    assert (table.loc[0, "predicted_low"], table.loc[0, "predicted_high"]) == pytest.approx((1 / (1 + Z2), 1.0))
    assert table.loc[1, "scored"] == 0 and math.isnan(table.loc[1, "predicted_rate"])
    assert (table.loc[1, "predicted_low"], table.loc[1, "predicted_high"]) == (0.0, 1.0)
    # The pair has pseudo-labels, so cluster 1 is judged on them too: the uninformative [0, 1].
    assert table.loc[1, "basis"] == "predicted" and table.loc[1, "credible_rate"] == 1.0
    assert math.isnan(table.loc[1, "defect_rate"])  # no evidence of its own: no point estimate


def test_day_to_day_dispersion_widens_the_predicted_interval():
    # Cluster 0: four days of 10 scored shots with 0, 4, 0, 4 anomalies: rate 8/40 = 0.2, 2 expected a day,
    # each day's Pearson term (±2)² / (10 · 0.2 · 0.8) = 2.5. Cluster 1: two days of 10 with 1 and 1: rate 0.1,
    # terms 0. chi² = 10 over 6 units - 2 rates = 4 degrees of freedom: phi = 2.5, for both clusters.
    f1 = [block(10, 0, d, anomalies=a) for d, a in zip(["D1", "D2", "D3", "D4"], [0, 4, 0, 4])]
    f1 += [block(10, 1, d, anomalies=1) for d in ["D1", "D2"]]
    # Another facility/item with its own, binomial-looking days (1 and 1 of 10): phi 1 there.
    f2 = [block(10, 0, d, anomalies=1, facility="F2") for d in ["D1", "D2"]]
    frame = shots(*f1, *f2)
    table = rank_clusters(frame, None, RecipeConfig())
    one = by_cluster(table)
    assert one["predicted_dispersion"].tolist() == pytest.approx([2.5, 2.5])
    # Counts deflated by phi: 8 of 40 -> 3.2 of 16; 2 of 20 -> 0.8 of 8.
    assert (one.loc[0, "predicted_low"], one.loc[0, "predicted_high"]) == pytest.approx(wilson(3.2, 16))
    assert (one.loc[1, "predicted_low"], one.loc[1, "predicted_high"]) == pytest.approx(wilson(0.8, 8))
    assert by_cluster(table, "F2")["predicted_dispersion"].tolist() == [1.0]
    assert by_cluster(table, "F2").loc[0, "predicted_high"] == pytest.approx(wilson(2, 20)[1])
    beta_table = by_cluster(rank_clusters(frame, None, RecipeConfig(interval="beta")))
    assert (beta_table.loc[0, "predicted_low"], beta_table.loc[0, "predicted_high"]) == pytest.approx(beta(3.2, 16))
    # Switched off: the plain binomial interval of 8 / 40.
    plain = by_cluster(rank_clusters(frame, None, NO_DISPERSION))
    assert plain["predicted_dispersion"].tolist() == [1.0, 1.0]
    assert (plain.loc[0, "predicted_low"], plain.loc[0, "predicted_high"]) == pytest.approx(wilson(8, 40))


def test_each_makers_cluster_is_one_fitted_rate_of_the_dispersion():
    # Cluster numbers restart for each maker: maker A's cluster 0 (days 0, 4, 0, 4 of 10) and maker B's
    # cluster 0 (1 and 1 of 10) are two rates, as clusters 0 and 1 above: phi = 10 / (6 - 2) = 2.5, not 10 / 5.
    frame = shots(*[block(10, 0, d, anomalies=a, maker="A") for d, a in zip(["D1", "D2", "D3", "D4"], [0, 4, 0, 4])],
                  *[block(10, 0, d, anomalies=1, maker="B") for d in ["D1", "D2"]])
    out = rank_clusters(frame, None, RecipeConfig()).set_index("maker")
    assert out["predicted_dispersion"].tolist() == pytest.approx([2.5, 2.5])
    assert out.loc["A", "predicted_high"] == pytest.approx(wilson(3.2, 16)[1])


# -- lot evidence ----------------------------------------------------------------------------------
def mixed_lots_frame() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cluster 0 ran alone on L1 (10 shots), shared L2 with cluster 1 (5 and 20 shots) and ran on L3,
    which has no lot counts (3 shots). Cluster 2 ran only on L3 (4 shots)."""
    frame = shots(block(10, 0, "L1", anomalies=1), block(5, 0, "L2", anomalies=1), block(3, 0, "L3"),
                  block(20, 1, "L2", anomalies=4), block(4, 2, "L3", anomalies=1))
    table = pd.concat([
        lots(("L1", 50, 2), ("L1", 45, 3), ("L2", 180, 20), ("L9", 1000, 500)),  # L1 in two rows: 95 good, 5 bad
        lots(("L1", 10, 90), facility="F9"),  # another facility's lot of the same day
    ], ignore_index=True)
    return frame, table


def test_lots_are_split_between_the_settings_that_ran_that_day():
    # Shares: L1 = (1, 0), L2 = (5/25, 20/25) = (0.2, 0.8). Two lots, two rates: the ML fit is exact,
    # p0 = 5 / 100 = 0.05 (L1) and 0.2 p0 + 0.8 p1 = 20 / 200 -> p1 = (0.1 - 0.01) / 0.8 = 0.1125.
    # Parts by volume: cluster 0 = 100 + 0.2 · 200 = 140, cluster 1 = 0.8 · 200 = 160; defects 7 and 18.
    frame, table = mixed_lots_frame()
    out = by_cluster(rank_clusters(frame, table, NO_DISPERSION))
    assert out.loc[0, "lot_rate"] == pytest.approx(0.05, rel=1e-6) and out.loc[1, "lot_rate"] == pytest.approx(0.1125, rel=1e-6)
    assert out.loc[[0, 1], "lot_parts"].tolist() == pytest.approx([140.0, 160.0])
    assert out.loc[[0, 1], "lot_defects"].tolist() == pytest.approx([7.0, 18.0], rel=1e-6)
    # Shots on days with lot counts: cluster 0: 10 + 5 (not the 3 of L3), cluster 1: 20.
    assert out["lot_covered_rows"].tolist() == [15, 20, 0]
    # Two lots, two rates fitted: no degree of freedom left to estimate a dispersion.
    assert out["lot_dispersion"].tolist() == [1.0, 1.0, 1.0]
    assert (out.loc[0, "lot_low"], out.loc[0, "lot_high"]) == pytest.approx(wilson(7, 140), rel=1e-6)
    assert (out.loc[1, "lot_low"], out.loc[1, "lot_high"]) == pytest.approx(wilson(18, 160), rel=1e-6)
    # Cluster 2 ran on no day with lot counts: nothing known.
    assert math.isnan(out.loc[2, "lot_rate"])
    assert out.loc[2, ["lot_parts", "lot_defects", "lot_low", "lot_high"]].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_credible_rate_is_the_weighted_mean_of_the_upper_bounds():
    frame, table = mixed_lots_frame()
    out = by_cluster(rank_clusters(frame, table, BLEND))
    assert set(out["basis"]) == {"predicted+lots"}
    # Predicted: cluster 0: 2 of 18, cluster 1: 4 of 20, cluster 2: 1 of 4.
    assert out["predicted_rate"].tolist() == pytest.approx([2 / 18, 0.2, 0.25])
    p0, p1, p2 = wilson(2, 18), wilson(4, 20), wilson(1, 4)
    l0, l1 = wilson(7, 140), wilson(18, 160)
    # Equal weights: the mean of the two upper (and two lower) bounds. Cluster 2 has no lots of its own
    # but its facility/item has: its lot evidence is [0, 1].
    assert out["credible_rate"].tolist() == pytest.approx([(p0[1] + l0[1]) / 2, (p1[1] + l1[1]) / 2, (p2[1] + 1.0) / 2], rel=1e-6)
    assert out["credible_low"].tolist() == pytest.approx([(p0[0] + l0[0]) / 2, (p1[0] + l1[0]) / 2, p2[0] / 2], rel=1e-6)
    # Point estimate: from the evidence each cluster has (cluster 2: its pseudo-labels alone).
    assert out["defect_rate"].tolist() == pytest.approx([(2 / 18 + 0.05) / 2, (0.2 + 0.1125) / 2, 0.25], rel=1e-6)
    # Weights 1 : 3 are normalised to 0.25 / 0.75.
    weighted = by_cluster(rank_clusters(frame, table,
                                        RecipeConfig(overdispersion=False, predicted_weight=1.0, lot_weight=3.0, evidence="blend")))
    assert weighted["credible_rate"].tolist() == pytest.approx(
        [0.25 * p0[1] + 0.75 * l0[1], 0.25 * p1[1] + 0.75 * l1[1], 0.25 * p2[1] + 0.75], rel=1e-6)
    assert weighted["credible_low"].tolist() == pytest.approx(
        [0.25 * p0[0] + 0.75 * l0[0], 0.25 * p1[0] + 0.75 * l1[0], 0.25 * p2[0]], rel=1e-6)
    assert weighted["defect_rate"].tolist() == pytest.approx(
        [0.25 * 2 / 18 + 0.75 * 0.05, 0.25 * 0.2 + 0.75 * 0.1125, 0.25], rel=1e-6)


def test_lots_first_ranks_a_facility_item_with_lots_on_them_alone_and_one_without_on_pseudo_labels():
    # The default evidence: F1/I1 has lots, so its pseudo-labels are not blended in (the same figures as
    # when its pseudo-labels may not be used at all); F2/I1 has no lot, so its pseudo-labels rank it.
    frame, table = mixed_lots_frame()
    frame = pd.concat([frame, block(30, 0, "D9", anomalies=3, facility="F2")], ignore_index=True)
    out = rank_clusters(frame, table, NO_DISPERSION)
    first, alone = by_cluster(out), by_cluster(rank_clusters(frame, table, NO_DISPERSION, predicted_pairs=[("F2", "I1")]))
    assert set(first["basis"]) == {"lots"}
    for column in ("credible_low", "credible_rate", "defect_rate"):
        assert first[column].tolist() == pytest.approx(alone[column].tolist(), rel=1e-12, nan_ok=True)
    other = by_cluster(out, "F2").loc[0]
    assert other["basis"] == "predicted" and other["credible_rate"] == pytest.approx(wilson(3, 30)[1], rel=1e-9)
    # A zero lot weight still means pseudo-labels only, lots or not.
    assert set(by_cluster(rank_clusters(frame, table, RecipeConfig(overdispersion=False, lot_weight=0.0)))["basis"]) == {"predicted+lots"}
    with pytest.raises(ValueError, match="evidence"):
        RecipeConfig(evidence="both")


def test_a_facility_item_without_pseudo_labels_is_ranked_on_lots_alone():
    frame, table = mixed_lots_frame()
    out = by_cluster(rank_clusters(frame, table, NO_DISPERSION, predicted_pairs=[("F2", "I1")]))
    assert set(out["basis"]) == {"lots"}
    assert out["credible_rate"].tolist() == pytest.approx([wilson(7, 140)[1], wilson(18, 160)[1], 1.0], rel=1e-6)
    assert out["credible_low"].tolist() == pytest.approx([wilson(7, 140)[0], wilson(18, 160)[0], 0.0], rel=1e-6)
    assert out.loc[[0, 1], "defect_rate"].tolist() == pytest.approx([0.05, 0.1125], rel=1e-6)
    assert math.isnan(out.loc[2, "defect_rate"])  # its pseudo-labels may not be used, and it has no lots


def test_no_evidence_at_all_means_no_credible_rate_and_no_pick():
    frame = shots(block(150, 0, anomalies=3), block(120, 1, anomalies=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both weights 0: the 0 / 0 is guarded, not computed and hidden as NaN
        out = by_cluster(rank_clusters(frame, None, RecipeConfig(), predicted_pairs=set()))
    assert set(out["basis"]) == {"none"}
    assert out[["credible_low", "credible_rate", "defect_rate"]].isna().all().all()
    assert not out["eligible"].any() and not out["candidate"].any() and not out["recommended"].any()
    assert out["rank"].tolist() == [1, 2]


def test_a_cluster_without_scored_shots_is_judged_on_its_lots():
    # F1/I1: cluster 0 scored (10 shots, none anomalous) on D1, no lots that day; cluster 1 never scored,
    # on D2 whose lot is 9 good, 1 bad. Each kind of evidence is used for the pair; each cluster lacks one.
    frame = shots(block(10, 0, "D1"), block(0, 1, "D2", unscored=10))
    out = by_cluster(rank_clusters(frame, lots(("D2", 9, 1)), BLEND))
    assert set(out["basis"]) == {"predicted+lots"}
    assert out.loc[1, "defect_rate"] == pytest.approx(0.1)  # its lots alone, not averaged with "no rate"
    assert out.loc[0, "defect_rate"] == 0.0
    z = wilson(0, 10)
    assert out["credible_rate"].tolist() == pytest.approx([(z[1] + 1.0) / 2, (1.0 + wilson(1, 10)[1]) / 2])
    assert out["credible_low"].tolist() == pytest.approx([z[0] / 2, wilson(1, 10)[0] / 2])


def test_a_single_part_is_lot_evidence():
    # One lot of 1 good part: the cluster's lot rate is 0 of 1, Wilson upper z² / (1 + z²) = 0.7935.
    out = rank_clusters(block(10), lots(("D1", 1, 0)), BLEND).iloc[0]
    assert (out["lot_rate"], out["lot_parts"], out["lot_covered_rows"]) == (0.0, 1.0, 10)
    assert out["basis"] == "predicted+lots"
    assert out["credible_rate"] == pytest.approx((wilson(0, 10)[1] + Z2 / (1 + Z2)) / 2)
    assert round(out["credible_rate"], 4) == round((0.2775 + 0.7935) / 2, 4)


def test_day_to_day_dispersion_widens_the_lot_interval():
    # One cluster on four days, each lot 100 parts with 0, 10, 0, 10 bad: rate 20 / 400 = 0.05, 5 expected
    # a lot, terms (±5)² / (100 · 0.05 · 0.95) = 25 / 4.75; chi² = 100 / 4.75 over 4 - 1 = 3: phi = 7.0175...
    days = ["D1", "D2", "D3", "D4"]
    frame = shots(*[block(5, 0, d) for d in days])
    table = lots(*[(d, 100 - b, b) for d, b in zip(days, [0, 10, 0, 10])])
    phi = 100 / 4.75 / 3
    out = rank_clusters(frame, table, RecipeConfig()).iloc[0]
    assert out["lot_dispersion"] == pytest.approx(phi) and round(phi, 4) == 7.0175
    assert out["lot_rate"] == pytest.approx(0.05)
    assert (out["lot_low"], out["lot_high"]) == pytest.approx(wilson(20 / phi, 400 / phi))
    beta_out = rank_clusters(frame, table, RecipeConfig(interval="beta")).iloc[0]
    assert (beta_out["lot_low"], beta_out["lot_high"]) == pytest.approx(beta(20 / phi, 400 / phi))
    plain = rank_clusters(frame, table, NO_DISPERSION).iloc[0]
    assert plain["lot_dispersion"] == 1.0
    assert (plain["lot_low"], plain["lot_high"]) == pytest.approx(wilson(20, 400))


def test_each_facility_item_gets_its_own_lots_even_after_one_without():
    # F1/I1 ran on a day without lot counts; F2/I1 (ranked after it) on a day with 2 bad of 100.
    frame = shots(block(10, 0, "D1"), block(10, 0, "D2", facility="F2"))
    out = rank_clusters(frame, lots(("D2", 98, 2), facility="F2"), BLEND)
    assert by_cluster(out, "F2").loc[0, "lot_rate"] == pytest.approx(0.02)
    assert by_cluster(out, "F2").loc[0, "basis"] == "predicted+lots" and by_cluster(out, "F1").loc[0, "basis"] == "predicted"


# -- the recommendation ----------------------------------------------------------------------------
def ranked(rows: list[tuple], config: RecipeConfig) -> pd.DataFrame:
    """:func:`recommend` on a hand-written table of (facility, cluster, rows, credible_rate)."""
    table = pd.DataFrame(rows, columns=["facility", "cluster", "rows", "credible_rate"]).assign(item="I1", maker="M")
    return recommend(table, config)


def test_candidates_reach_the_tolerance_line_inclusive():
    # Lowest eligible 0.25; line 0.25 · (1 + 1.0) + 0.125 = 0.625 exactly (binary fractions: no rounding).
    config = RecipeConfig(relative_tolerance=1.0, absolute_tolerance=0.125, min_rows=10)
    table = ranked([("F1", 0, 10, 0.25), ("F1", 1, 20, 0.625), ("F1", 2, 30, 0.625 + 2**-20)], config).set_index("cluster")
    assert table["candidate"].tolist() == [True, True, False]
    assert picks(table.reset_index()) == {("F1", "I1"): 1}  # on the line: in, and the most shots of those in


@pytest.mark.parametrize("relative, absolute", [(0.5, 0.0), (0.0, 0.125)])
def test_each_tolerance_alone_sets_the_line(relative, absolute):
    # 0.25 · 1.5 = 0.375 and 0.25 + 0.125 = 0.375: the same line reached either way.
    config = RecipeConfig(relative_tolerance=relative, absolute_tolerance=absolute, min_rows=1)
    table = ranked([("F1", 0, 10, 0.25), ("F1", 1, 20, 0.375), ("F1", 2, 30, 0.375 + 2**-20)], config)
    assert table["candidate"].tolist() == [True, True, False]
    assert picks(table) == {("F1", "I1"): 1}


def test_eligibility_needs_min_rows_and_a_credible_rate():
    config = RecipeConfig(min_rows=100, relative_tolerance=0.0, absolute_tolerance=0.0)
    table = ranked([("F1", 0, 99, 0.01), ("F1", 1, 100, 0.2), ("F1", 2, 500, np.nan), ("F1", 3, 100, 0.3)], config)
    out = table.set_index("cluster")
    assert out.loc[[0, 1, 2, 3], "eligible"].tolist() == [False, True, False, True]
    # The ineligible 0.01 does not set the lowest: cluster 1 (0.2) does, and is picked.
    assert out.loc[[0, 1, 2, 3], "candidate"].tolist() == [False, True, False, False]
    assert picks(table) == {("F1", "I1"): 1}


def test_a_worse_lowest_moves_the_line_and_can_let_a_bigger_cluster_in():
    """The tolerance is measured from the lowest eligible rate: making the lowest cluster worse (it was
    not the pick) raises the line. A consequence of the rule, pinned so that it is a known one."""
    config = RecipeConfig(relative_tolerance=0.5, absolute_tolerance=0.0, min_rows=1)
    before = ranked([("F1", 0, 10, 0.25), ("F1", 1, 20, 0.375), ("F1", 2, 30, 0.4)], config)
    after = ranked([("F1", 0, 10, 0.3), ("F1", 1, 20, 0.375), ("F1", 2, 30, 0.4)], config)  # line 0.45
    assert picks(before) == {("F1", "I1"): 1} and picks(after) == {("F1", "I1"): 2}


def test_ties_on_shots_go_to_the_lower_rate_then_the_lower_cluster():
    config = RecipeConfig(relative_tolerance=1.0, absolute_tolerance=0.0, min_rows=1)
    table = ranked([("F1", 0, 50, 0.1), ("F1", 1, 50, 0.09), ("F1", 5, 40, 0.05),
                    ("F2", 2, 50, 0.1), ("F2", 4, 50, 0.1)], config)
    assert picks(table) == {("F1", "I1"): 1, ("F2", "I1"): 2}
    assert table["recommended"].sum() == 2


def test_rank_orders_by_credible_rate_with_unknown_rates_last():
    config = RecipeConfig(min_rows=1)
    rows = [("F2", 0, 10, 0.3), ("F2", 1, 10, np.nan), ("F2", 2, 10, 0.1), ("F2", 3, 10, 0.1),
            ("F1", 7, 10, np.nan), ("F1", 8, 10, 0.2)]
    table = ranked(rows, config)
    assert table[["facility", "cluster", "rank"]].values.tolist() == [
        ["F1", 8, 1], ["F1", 7, 2], ["F2", 2, 1], ["F2", 3, 2], ["F2", 0, 3], ["F2", 1, 4]]
    assert table.index.tolist() == list(range(6)) and table["rank"].dtype == np.int64
    assert table["recommended"].dtype == bool and table["recommended"].tolist() == [True, False, True, False, False, False]
    assert "index" not in table.columns


def test_recommend_leaves_its_input_alone():
    table = pd.DataFrame({"facility": ["F1"], "item": ["I1"], "maker": ["M"], "cluster": [0], "rows": [5], "credible_rate": [0.1]})
    copy = table.copy()
    recommend(table, RecipeConfig(min_rows=1))
    pd.testing.assert_frame_equal(table, copy)


def test_min_rows_on_the_boundary_through_the_whole_ranking():
    # 100 shots with min_rows 100: eligible; 99: not, however clean.
    frame = shots(block(100, 0, anomalies=5), block(99, 1))
    out = by_cluster(rank_clusters(frame, None, RecipeConfig(min_rows=100))).loc[[0, 1]]
    assert out["eligible"].tolist() == [True, False] and out["recommended"].tolist() == [True, False]
    assert out.loc[1, "credible_rate"] < out.loc[0, "credible_rate"]  # the lower rate, but too few shots


# -- properties ------------------------------------------------------------------------------------
DAYS = ["D1", "D2", "D3"]


@st.composite
def histories(draw, with_lots: bool = True) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Up to two facility/items, up to four clusters, three days; small counts so rates differ visibly."""
    cells = draw(st.lists(st.tuples(st.sampled_from(["F1", "F2"]), st.integers(0, 3), st.sampled_from(DAYS),
                                    st.integers(1, 60), st.floats(0, 0.5), st.integers(0, 3)),
                          min_size=1, max_size=8, unique_by=lambda c: c[:3]))
    frame = shots(*[block(n, cluster, day, anomalies=int(n * share), unscored=unscored, facility=facility)
                    for facility, cluster, day, n, share, unscored in cells])
    if not with_lots or not draw(st.booleans()):
        return frame, None
    keys = sorted({(f, d) for f, _, d, *_ in cells})
    counts = draw(st.lists(st.tuples(st.integers(1, 300), st.integers(0, 30)), min_size=len(keys), max_size=len(keys)))
    table = pd.concat([lots((d, g, b), facility=f) for (f, d), (g, b) in zip(keys, counts)], ignore_index=True)
    return frame, table


CONFIGS = st.builds(RecipeConfig, overdispersion=st.booleans(), min_rows=st.integers(1, 60),
                    relative_tolerance=st.sampled_from([0.0, 0.1, 0.5]), interval=st.sampled_from(["wilson", "beta"]))


@settings(max_examples=12, deadline=None)
@given(histories(), CONFIGS)
def test_the_pick_is_an_eligible_candidate_with_the_most_shots(history, config):
    frame, table = history
    out = rank_clusters(frame, table, config)
    for _, pair in out.groupby(["facility", "item"]):
        eligible = pair[pair["eligible"]]
        assert eligible.equals(pair[(pair["rows"] >= config.min_rows) & pair["credible_rate"].notna()])
        chosen = pair[pair["recommended"]]
        assert len(chosen) == (1 if len(eligible) else 0)
        if len(chosen):
            line = eligible["credible_rate"].min() * (1 + config.relative_tolerance) + config.absolute_tolerance
            assert pair["candidate"].equals(pair["eligible"] & (pair["credible_rate"] <= line))
            assert chosen["candidate"].all() and chosen["rows"].iloc[0] == pair.loc[pair["candidate"], "rows"].max()
        assert sorted(pair["rank"]) == list(range(1, len(pair) + 1))
        assert pair.sort_values("rank")["credible_rate"].fillna(np.inf).is_monotonic_increasing


@settings(max_examples=6, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_row_order_does_not_matter(history, random):
    frame, table = history
    order = list(range(len(frame)))
    random.shuffle(order)
    shuffled = frame.iloc[order].reset_index(drop=True)
    pd.testing.assert_frame_equal(rank_clusters(shuffled, table, RecipeConfig()), rank_clusters(frame, table, RecipeConfig()))


@settings(max_examples=6, deadline=None)
@given(histories())
def test_facility_items_rank_independently(history):
    frame, table = history
    facility = frame["facility"].iloc[0]
    together = rank_clusters(frame, table, RecipeConfig())
    alone = rank_clusters(frame[frame["facility"] == facility], table, RecipeConfig())
    pd.testing.assert_frame_equal(together[together["facility"] == facility].reset_index(drop=True), alone)


@settings(max_examples=8, deadline=None)
@given(histories(with_lots=False), st.integers(1, 60))
def test_a_worse_cluster_above_the_lowest_never_moves_the_pick(history, extra):
    """Without dispersion (which the pair shares), more anomalies in a cluster that is neither the pick
    nor the lowest only raise its own credible rate: the pick stays."""
    frame, _ = history
    config = RecipeConfig(overdispersion=False, min_rows=20)
    out = rank_clusters(frame, None, config)
    best = out["credible_rate"].where(out["eligible"]).groupby([out["facility"], out["item"]]).transform("min")
    others = out[out["eligible"] & ~out["recommended"] & (out["credible_rate"] > best)]
    if others.empty:
        return  # nothing to make worse here (no filtering: each example costs two rankings)
    facility, cluster = others["facility"].iloc[0], others["cluster"].iloc[0]
    rows = np.flatnonzero((frame["facility"] == facility).to_numpy() & (frame["cluster"] == cluster).to_numpy()
                          & frame["scored"].to_numpy() & ~frame["anomaly"].to_numpy())[:extra]
    worse = frame.copy()
    worse.loc[rows, "anomaly"] = True
    assert picks(rank_clusters(worse, None, config)) == picks(out)


@settings(max_examples=6, deadline=None)
@given(histories(with_lots=False))
def test_fewer_anomalies_in_the_pick_keep_it_the_pick(history):
    frame, _ = history
    config = RecipeConfig(overdispersion=False, min_rows=20)
    chosen = picks(rank_clusters(frame, None, config))
    if not chosen:
        return
    better = frame.copy()
    for (facility, _), cluster in chosen.items():
        better.loc[(better["facility"] == facility) & (better["cluster"] == cluster), "anomaly"] = False
    assert picks(rank_clusters(better, None, config)) == chosen
