import numpy as np

from model_store.config import GroupingConfig
from model_store.settings import SettingModel, assign_clusters, fit_setting_model, scale_settings


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
