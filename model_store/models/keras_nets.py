"""Keras definitions of the AutoEncoder and the Memory-Augmented AutoEncoder (Gong et al., 2019).

Imported only where training or the parity test needs Keras: serving uses the NumPy export.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from model_store.models.quiet import import_tensorflow

import_tensorflow()  # before keras: its start-up lines would reach the user's terminal

import keras  # noqa: E402 - after the muted TensorFlow import above
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402

from model_store.serving.forward import DenseLayer, ForwardNet, MemoryLayer  # noqa: E402

_EPS = 1e-12


@keras.saving.register_keras_serializable(package="moldwatch")
class MemoryModule(layers.Layer):
    """Memory of ``items`` latent prototypes; the decoder only sees combinations of them.

    Addressing is a softmax over dot products with the items (as the authors' released code),
    sparsified by hard shrinkage at ``shrink_threshold`` and re-normalised (L1). The entropy of the
    addressing weights, times ``entropy_weight``, is added to the loss to push it sparser still.
    Anomalies cannot be composed from normal prototypes, so they reconstruct badly.
    """

    def __init__(self, items: int, shrink_threshold: float, entropy_weight: float, **kwargs):
        super().__init__(**kwargs)
        self.items = int(items)
        self.shrink_threshold = float(shrink_threshold)
        self.entropy_weight = float(entropy_weight)

    def build(self, input_shape):
        self.memory = self.add_weight(
            name="memory",
            shape=(self.items, int(input_shape[-1])),
            initializer=keras.initializers.RandomUniform(-1.0 / np.sqrt(self.items), 1.0 / np.sqrt(self.items)),
        )

    def call(self, z):
        w = ops.softmax(ops.matmul(z, ops.transpose(self.memory)), axis=-1)
        shifted = w - self.shrink_threshold
        w = ops.relu(shifted) * w / (ops.abs(shifted) + _EPS)
        w = w / (ops.sum(w, axis=-1, keepdims=True) + _EPS)
        entropy = ops.sum(-w * ops.log(w + _EPS), axis=-1)
        self.add_loss(self.entropy_weight * ops.mean(entropy))
        return ops.matmul(w, self.memory)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "items": self.items,
            "shrink_threshold": self.shrink_threshold,
            "entropy_weight": self.entropy_weight,
        }


def layer_sizes(features: int) -> tuple[int, int]:
    """Hidden width and latent size: narrow enough that the net cannot learn the identity."""
    return max(16, 2 * features), max(2, round(features / 3))


def build_autoencoder(features: int, memory: tuple[int, float, float] | None = None) -> keras.Model:
    hidden, latent = layer_sizes(features)
    inputs = keras.Input(shape=(features,), name="scaled")
    x = layers.Dense(hidden, activation="relu", name="enc_1")(inputs)
    z = layers.Dense(latent, activation="linear", name="latent")(x)
    if memory is not None:
        z = MemoryModule(*memory, name="memory")(z)
    x = layers.Dense(hidden, activation="relu", name="dec_1")(z)
    outputs = layers.Dense(features, activation="sigmoid", name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="memae" if memory else "autoencoder")


def export_forward(model: keras.Model) -> ForwardNet:
    """Copy a trained model's weights into a :class:`ForwardNet`."""
    exported: list[DenseLayer | MemoryLayer] = []
    for layer in model.layers:
        if isinstance(layer, layers.Dense):
            w, b = layer.get_weights()
            exported.append(DenseLayer(w.astype(np.float32), b.astype(np.float32), layer.activation.__name__))
        elif isinstance(layer, MemoryModule):
            exported.append(MemoryLayer(layer.get_weights()[0].astype(np.float32), layer.shrink_threshold))
        elif isinstance(layer, layers.InputLayer):
            continue
        else:
            raise TypeError(f"cannot export layer {layer.name} of type {type(layer).__name__}")
    return ForwardNet(tuple(exported))


def fit_autoencoder(
    x: np.ndarray,
    *,
    memory: tuple[int, float, float] | None,
    epochs: int,
    batch_size: int,
    patience: int,
    validation_split: float,
    learning_rate: float,
    seed: int,
) -> tuple[keras.Model, dict]:
    """Train on scaled rows with a held-out split, early stopping and best weights restored."""
    keras.utils.set_random_seed(seed)
    model = build_autoencoder(x.shape[1], memory)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    rng = np.random.default_rng(seed)
    x = x[rng.permutation(len(x))].astype(np.float32)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    history = model.fit(
        x, x, epochs=epochs, batch_size=batch_size, validation_split=validation_split,
        callbacks=[stop], verbose=0, shuffle=True,
    )
    val = history.history["val_loss"]
    best = int(np.argmin(val))
    return model, {"epochs_run": len(val), "best_epoch": best + 1, "best_val_loss": float(val[best])}
