"""The NumPy forward pass must match Keras: serving uses it instead of model.predict."""
import numpy as np
import pytest

from model_store.serving.forward import ForwardNet


@pytest.mark.slow
@pytest.mark.parametrize("memory", [None, (20, 0.05, 0.0002)], ids=["autoencoder", "memae"])
def test_numpy_forward_matches_keras(tmp_path, memory) -> None:
    # Imported here, not skipped: TensorFlow is a dependency, and a broken import must fail this
    # test loudly instead of silently skipping the module; the NumPy-only tests below need none of it.
    from model_store.models import keras_nets

    rng = np.random.default_rng(1)
    z = rng.normal(size=(600, 2))
    x = (1 / (1 + np.exp(-(z @ rng.normal(size=(2, 6)))))).astype(np.float32)
    model, info = keras_nets.fit_autoencoder(
        x, memory=memory, epochs=3, batch_size=64, patience=2, validation_split=0.2, learning_rate=1e-3, seed=0
    )
    assert info["epochs_run"] >= 1
    net = keras_nets.export_forward(model)
    net.save(tmp_path / "forward.npz")
    loaded = ForwardNet.load(tmp_path / "forward.npz")
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(loaded(x), expected, atol=1e-5)
    model.save(tmp_path / "model.keras")
    import keras

    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, atol=1e-6)


def test_memory_attention_is_sparse_and_normalised() -> None:
    from model_store.serving.forward import MemoryLayer

    items = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    w = MemoryLayer(items, shrink_threshold=0.1).attention(np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32) * 3)
    assert np.allclose(w.sum(axis=1), 1.0, atol=1e-5)
    assert (w == 0).mean() > 0.3


def test_forest_arrays_match_sklearn(tmp_path) -> None:
    from sklearn.ensemble import IsolationForest

    from model_store.serving.forest import ForestArrays

    rng = np.random.default_rng(0)
    x = rng.random((2000, 7)).astype(np.float32)
    model = IsolationForest(n_estimators=50, max_samples=256, random_state=0).fit(x)
    forest = ForestArrays.from_sklearn(model)
    forest.save(tmp_path / "forest.npz")
    probe = np.vstack([rng.random((300, 7)), rng.normal(0.5, 2.0, (50, 7))]).astype(np.float32)
    np.testing.assert_allclose(ForestArrays.load(tmp_path / "forest.npz").loss(probe), -model.score_samples(probe), atol=1e-12)
