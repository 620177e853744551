"""One model family per module; each trains on scaled [0, 1] inputs and exports what serving needs.

Serving never calls Keras or sklearn: AE and MemAE are exported to
:class:`~model_store.serving.forward.ForwardNet` (plain NumPy weights) and each IsolationForest to
:class:`~model_store.serving.forest.ForestArrays`. The fitted models (``.keras``, safe mode; ``.skops``)
are kept beside the exports for audit and the parity tests.
"""
from __future__ import annotations

IFOREST, AUTOENCODER, MEMAE = "iforest", "autoencoder", "memae"
MODEL_KINDS = (IFOREST, AUTOENCODER, MEMAE)


def kind_for_rows(rows: int, autoencoder_min_rows: int, memae_min_rows: int) -> str:
    """Model family by the amount of data (the original team's rule)."""
    if rows >= memae_min_rows:
        return MEMAE
    if rows >= autoencoder_min_rows:
        return AUTOENCODER
    return IFOREST
