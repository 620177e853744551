"""Training without library noise: TensorFlow's start-up lines and NumPy's all-NaN warnings.

TensorFlow 2.21 writes its oneDNN notice through absl before absl is initialised, so
``TF_CPP_MIN_LOG_LEVEL`` does not reach it: the only way to keep it off a plant engineer's screen is
to mute file descriptor 2 while TensorFlow is imported (a Python error during the import is still
raised, and shown). A production field that one group never measured gives NumPy's "All-NaN slice"
and "Mean of empty slice" warnings; training handles those NaNs (means of 0, no band), so the
warnings say nothing a user can act on.
"""
from __future__ import annotations

import os
import sys
import warnings
from types import ModuleType

BENIGN_NUMPY_WARNINGS = ("All-NaN slice encountered", "Mean of empty slice", "All-NaN axis encountered")


def import_tensorflow() -> ModuleType:
    """``import tensorflow`` with stderr muted at the file-descriptor level (C++ log lines included)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (a daemon): nothing to mute
        import tensorflow
        return tensorflow
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tensorflow


def ignore_benign_numpy_warnings() -> None:
    for message in BENIGN_NUMPY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=RuntimeWarning)


__all__ = ["import_tensorflow", "ignore_benign_numpy_warnings", "BENIGN_NUMPY_WARNINGS"]
