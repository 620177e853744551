"""Per-group losses: imputed values are no evidence and never make a record look more normal."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.group_training import error_scale_of, loss_histogram
from model_store.models import AUTOENCODER
from model_store.serving.losses import group_losses


def _identity_net(x: np.ndarray) -> np.ndarray:
    return np.full_like(x, 0.5)  # reconstructs every field as 0.5: errors = |x - 0.5|


def test_rms_over_measured_fields_when_it_is_larger() -> None:
    scaled = np.array([[1.0, 0.5, 0.5, 0.5]], dtype=np.float32)  # one field off by 0.5
    scale = np.ones(4, dtype=np.float32)
    full, _ = group_losses(AUTOENCODER, _identity_net, scaled, np.zeros(4), scale)
    assert full[0] == pytest.approx(np.sqrt(0.25 / 4))
    gap = np.array([[False, True, True, False]])
    loss, errors = group_losses(AUTOENCODER, _identity_net, scaled, np.zeros(4), scale, gap)
    assert loss[0] == pytest.approx(np.sqrt(0.25 / 2))  # two measured fields: the mean-filled ones do not dilute
    assert errors[0].tolist() == [0.5, 0.0, 0.0, 0.0]  # an imputed field is never named


def test_rms_over_all_fields_when_that_is_larger() -> None:
    # the imputed field itself is far off (its mean sits far from the reconstruction): keep the full RMS
    scaled = np.array([[0.5, 1.5]], dtype=np.float32)
    scale = np.ones(2, dtype=np.float32)
    loss, _ = group_losses(AUTOENCODER, _identity_net, scaled, np.zeros(2), scale, np.array([[False, True]]))
    assert loss[0] == pytest.approx(np.sqrt(1.0 / 2))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=3, max_size=8), st.data())
def test_imputation_never_lowers_the_loss(values: list[float], data) -> None:
    scaled = np.array([values], dtype=np.float32)
    gap = np.array([data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values)))])
    scale = np.ones(len(values), dtype=np.float32)
    with_gap, _ = group_losses(AUTOENCODER, _identity_net, scaled, np.zeros(len(values)), scale, gap)
    plain, _ = group_losses(AUTOENCODER, _identity_net, scaled, np.zeros(len(values)), scale)
    assert with_gap[0] >= plain[0] - 1e-7


def test_error_scale_floor() -> None:
    raw = np.array([[0.0, 1.0], [0.0, 3.0]])
    assert error_scale_of(raw).tolist() == pytest.approx([0.05 * 1.0, 2.0])  # 5 % of the mean scale (1.0)


def test_loss_histogram_keeps_the_tail_apart() -> None:
    losses = np.r_[np.linspace(1.0, 2.0, 999), 1e6]
    hist = loss_histogram(losses, bins=10)
    assert hist["above"] >= 1 and hist["max"] == 1e6 and sum(hist["counts"]) == 1000
    assert hist["edges"][-1] < 10 and not hist["log"]  # the outlier does not stretch the bins
    wide = loss_histogram(np.geomspace(1e-3, 10, 1000), bins=10)
    assert wide["log"]
    assert loss_histogram(np.array([]))["counts"] == []
