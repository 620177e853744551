"""IsolationForest for small groups: no training curve to overfit, robust on a few hundred rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import skops.io as sio
from sklearn.ensemble import IsolationForest

# Types an IsolationForest artifact may contain; anything else in a .skops file is refused.
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "builtins.")


def fit_iforest(x: np.ndarray, trees: int, seed: int) -> IsolationForest:
    return IsolationForest(n_estimators=trees, max_samples=min(256, len(x)), random_state=seed).fit(x)


def iforest_loss(model: IsolationForest, x: np.ndarray) -> np.ndarray:
    """Anomaly score where larger is worse (the negated sklearn score, in (0, 1])."""
    return -model.score_samples(x)


def save_iforest(model: IsolationForest, path: Path) -> None:
    sio.dump(model, path)


def load_iforest(path: Path) -> IsolationForest:
    untrusted = sio.get_untrusted_types(file=path)
    refused = [t for t in untrusted if not t.startswith(_TRUSTED_PREFIXES)]
    if refused:
        raise ValueError(f"{path}: refuses to load types {refused}")
    model = sio.load(path, trusted=untrusted)
    if not isinstance(model, IsolationForest):
        raise ValueError(f"{path}: holds {type(model).__name__}, expected IsolationForest")
    return model
