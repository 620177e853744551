"""A NumPy forward pass of exported AE / MemAE weights: the serving hot path.

One Keras ``predict`` call costs milliseconds of fixed overhead; a batch of a few hundred rows
through a few small dense layers costs microseconds in NumPy. Parity with Keras is tested.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

_EPS = 1e-12


def _relu(x: np.ndarray) -> np.ndarray:
    return cast("np.ndarray", np.maximum(x, 0.0))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # tanh form: no overflow warnings for large |x|


def _linear(x: np.ndarray) -> np.ndarray:
    return x


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"relu": _relu, "sigmoid": _sigmoid, "linear": _linear, "tanh": np.tanh}


@dataclass(frozen=True)
class DenseLayer:
    weights: np.ndarray
    bias: np.ndarray
    activation: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ACTIVATIONS[self.activation](x @ self.weights + self.bias)


@dataclass(frozen=True)
class MemoryLayer:
    """MemAE memory read: softmax addressing, hard shrinkage, L1 re-normalisation, weighted sum."""

    items: np.ndarray  # (N, latent)
    shrink_threshold: float

    def attention(self, z: np.ndarray) -> np.ndarray:
        logits = z @ self.items.T
        logits -= logits.max(axis=1, keepdims=True)
        w = np.exp(logits)
        w /= w.sum(axis=1, keepdims=True)
        shifted = w - self.shrink_threshold
        w = np.maximum(shifted, 0.0) * w / (np.abs(shifted) + _EPS)
        return cast("np.ndarray", w / (w.sum(axis=1, keepdims=True) + _EPS))

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return cast("np.ndarray", self.attention(z) @ self.items)


Layer = DenseLayer | MemoryLayer


@dataclass(frozen=True)
class ForwardNet:
    layers: tuple[Layer, ...]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(x, dtype=np.float32)
        for layer in self.layers:
            out = layer(out)
        return out

    def save(self, path: Path) -> None:
        spec: list[dict[str, Any]] = []
        arrays: dict[str, np.ndarray] = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, DenseLayer):
                spec.append({"kind": "dense", "activation": layer.activation})
                arrays[f"l{i}_w"], arrays[f"l{i}_b"] = layer.weights, layer.bias
            else:
                spec.append({"kind": "memory", "shrink_threshold": layer.shrink_threshold})
                arrays[f"l{i}_m"] = layer.items
        with open(path, "wb") as fh:
            np.savez(fh, spec=np.array(json.dumps(spec)), **arrays)  # type: ignore[arg-type]  # numpy's stub matches **arrays against allow_pickle

    @classmethod
    def load(cls, path: Path) -> ForwardNet:
        with np.load(path, allow_pickle=False) as data:
            spec = json.loads(str(data["spec"]))
            layers: list[Layer] = []
            for i, entry in enumerate(spec):
                if entry["kind"] == "dense":
                    if entry["activation"] not in ACTIVATIONS:
                        raise ValueError(f"{path}: unknown activation {entry['activation']!r}")
                    layers.append(
                        DenseLayer(data[f"l{i}_w"].astype(np.float32), data[f"l{i}_b"].astype(np.float32), entry["activation"])
                    )
                elif entry["kind"] == "memory":
                    layers.append(MemoryLayer(data[f"l{i}_m"].astype(np.float32), float(entry["shrink_threshold"])))
                else:
                    raise ValueError(f"{path}: unknown layer kind {entry['kind']!r}")
        return cls(tuple(layers))
