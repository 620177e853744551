"""Helpers shared by the benchmarks: results files, peak memory of a process tree, metrics."""
from __future__ import annotations

import json
import os
import platform
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "ran_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def process_tree(root: int) -> list[int]:
    """A process and all its live descendants (Linux /proc), parents first."""
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants."""
    total = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:")), 0)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


class PeakMemory:
    """Samples the RSS of a process tree every ``interval`` seconds and keeps the peak."""

    def __init__(self, pid: int | None = None, interval: float = 0.2):
        self.pid = pid or os.getpid()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_bytes(self.pid))
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _tree_rss_bytes(self.pid))


def detection_metrics(labels: np.ndarray, predicted: np.ndarray, score: np.ndarray) -> dict[str, float | None]:
    """Precision, recall and F1 at the system's own line; best-threshold F1, AUROC and PR-AUC of
    its score; alarm rate against the true defect share. Ranking figures are None when the
    labels hold a single class."""
    from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, precision_score, recall_score, roc_auc_score

    labels = np.asarray(labels, dtype=int)
    score = np.nan_to_num(np.asarray(score, dtype=float), nan=0.0, posinf=1e300)
    both = 0 < labels.sum() < len(labels)
    best_f1 = None
    if both:
        p, r, _ = precision_recall_curve(labels, score)
        best_f1 = float(np.max(2 * p * r / np.maximum(p + r, 1e-12)))
    defect_share = float(labels.mean()) if len(labels) else 0.0
    return {
        "rows": int(len(labels)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "best_f1": best_f1,
        "auroc": float(roc_auc_score(labels, score)) if both else None,
        "pr_auc": float(average_precision_score(labels, score)) if both else None,
        "flagged_share": float(np.mean(predicted)) if len(labels) else 0.0,
        "defect_share": defect_share,
        "alarm_to_defect_ratio": float(np.mean(predicted) / defect_share) if defect_share > 0 else None,
    }
