import json

import numpy as np
import pytest

from model_store.config import GroupingConfig
from model_store.serving.clusters import SettingModel, assign_clusters, scale_settings
from model_store.setting_clusters import _candidate_ks, fit_setting_model


def test_k_is_chosen_by_silhouette_and_recovers_settings() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[200, 40, 80], [230, 60, 120], [210, 80, 60], [250, 30, 100]], dtype=float)
    # 4 set-point combinations, each with small jitter (operators nudge set points)
    combos = np.vstack([c + rng.normal(0, 0.5, (6, 3)) for c in centres])
    rows = np.repeat(combos, 50, axis=0)
    model = fit_setting_model("M", ("a", "b", "c"), rows, GroupingConfig(max_clusters=10))
    assert model.k == 4
    labels = assign_clusters(scale_settings(combos, model), model.centroids)
    assert len(set(labels)) == 4 and all(len(set(labels[i * 6 : (i + 1) * 6])) == 1 for i in range(4))
    assert SettingModel.from_dict(model.to_dict()).k == 4


def test_constant_field_does_not_divide_by_zero() -> None:
    rows = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [10.0, 5.0]])
    model = fit_setting_model("M", ("a", "b"), rows, GroupingConfig())
    assert np.isfinite(scale_settings(rows, model)).all()


# -- boundaries of the setting model ------------------------------------------------------------
def test_candidate_ks_are_every_k_to_12_then_a_geometric_ladder() -> None:
    assert _candidate_ks(2, 5) == [2, 3, 4, 5]
    assert _candidate_ks(2, 12) == list(range(2, 13))
    assert _candidate_ks(2, 13) == [*range(2, 13), 13]
    # 12 -> 15 -> 19 (18.75) -> 24 (23.75) -> 30 -> 38 (37.5, half to even) -> 40 (capped)
    assert _candidate_ks(2, 40) == [*range(2, 13), 15, 19, 24, 30, 38, 40]


def test_scaling_is_min_max_per_field_and_not_clipped() -> None:
    rows = np.array([[10.0, 1.0], [20.0, 1.0], [30.0, 1.0]])
    model = fit_setting_model("M", ("a", "b"), rows, GroupingConfig())
    assert model.minimum.tolist() == [10.0, 1.0] and model.scale.tolist() == [20.0, 1.0]  # constant field: scale 1
    assert scale_settings(np.array([[40.0, 3.0], [0.0, 1.0]]), model).tolist() == [[1.5, 2.0], [-0.5, 0.0]]


def test_rows_with_a_missing_set_point_are_ignored_and_none_left_is_an_error() -> None:
    rows = np.array([[1.0, 2.0], [np.nan, 100.0], [3.0, 4.0]])
    model = fit_setting_model("M", ("a", "b"), rows, GroupingConfig())
    assert model.minimum.tolist() == [1.0, 2.0] and model.scale.tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match=r"maker M: no record has all setting fields \['a', 'b'\]"):
        fit_setting_model("M", ("a", "b"), np.array([[np.nan, 1.0]]), GroupingConfig())


def test_as_few_combinations_as_min_clusters_are_their_own_clusters() -> None:
    rows = np.repeat(np.array([[1.0, 5.0], [3.0, 9.0]]), 10, axis=0)
    model = fit_setting_model("M", ("a", "b"), rows, GroupingConfig(min_clusters=2))
    assert model.centroids.tolist() == [[0.0, 0.0], [1.0, 1.0]] and model.silhouette == {}


def test_one_combination_is_one_cluster() -> None:
    model = fit_setting_model("M", ("a",), np.full((5, 1), 7.0), GroupingConfig())
    assert model.k == 1 and model.centroids.tolist() == [[0.0]]


def test_k_never_exceeds_max_clusters_nor_the_combinations_minus_one() -> None:
    rng = np.random.default_rng(3)
    rows = rng.random((40, 2))  # 40 distinct combinations, no real structure
    assert fit_setting_model("M", ("a", "b"), rows, GroupingConfig(max_clusters=3)).k <= 3
    few = np.array([[0.0], [0.1], [0.5], [1.0]])
    model = fit_setting_model("M", ("a",), few, GroupingConfig(max_clusters=40))
    assert model.k <= 3 and set(model.silhouette) <= {2, 3}


def test_unique_combinations_are_subsampled_to_the_limit() -> None:
    rows = np.column_stack([np.arange(50.0), np.arange(50.0) % 7])
    model = fit_setting_model("M", ("a", "b"), rows, GroupingConfig(max_unique_settings=10, max_clusters=12))
    assert model.k <= 9  # at most n - 1 of the 10 kept combinations


def test_nearest_centroid_ties_go_to_the_first_and_empty_input_is_empty() -> None:
    centroids = np.array([[0.0], [1.0]])
    assert assign_clusters(np.array([[0.5], [0.2], [0.9]]), centroids).tolist() == [0, 0, 1]
    empty = assign_clusters(np.zeros((0, 1)), centroids)
    assert empty.shape == (0,) and empty.dtype == np.int64


def test_setting_model_round_trips_through_json() -> None:
    rows = np.repeat(np.array([[200.0, 40.0], [230.0, 60.0], [210.0, 80.0]]), 20, axis=0)
    model = fit_setting_model("M", ("a", "b"), rows + np.random.default_rng(0).normal(0, 0.1, rows.shape), GroupingConfig())
    again = SettingModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.maker == "M" and again.fields == ("a", "b") and again.k == model.k
    assert np.array_equal(again.centroids, model.centroids) and np.array_equal(again.scale, model.scale)
    assert again.silhouette == model.silhouette and all(isinstance(k, int) for k in again.silhouette)
