"""What a training worker runs: one group's model or one maker's setting-conditioned unit.

Each fit takes a picklable task holding only its own rows and returns its manifest entry with the
artifacts as bytes (store-relative path -> content). The fit writes into a private temporary
folder on whatever machine runs it and reads the files back; the driver writes them into the
store's staging directory (:func:`write_files`). So a worker needs no access to the store, and
every dispatcher (:mod:`model_store.dispatch`) produces the same files.

A fit runs with one BLAS thread wherever it runs: a sum split over threads rounds differently
(a multi-threaded matrix product moved a unit's coefficients by 1e-13 between the driver and a
worker), and the same seeds must give the same store in-process, in a pool and on a cluster.
Parallelism comes from running fits side by side.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from model_store.config import ConditionalConfig
from model_store.group_training import GroupTask, train_group

Files = dict[str, bytes]
"""Store-relative POSIX path -> file content."""


def read_files(root: Path) -> Files:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_files(root: Path, files: Files) -> None:
    for relative, content in files.items():
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise ValueError(f"artifact path {relative!r} leaves the store")  # a worker's answer is input, not a trusted path
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


@dataclass(frozen=True)
class GroupResult:
    entry: dict[str, Any]
    files: Files


def fit_group(task: GroupTask) -> GroupResult:
    """:func:`model_store.group_training.train_group` into a private folder; its artifacts come back as bytes."""
    with threadpool_limits(limits=1), tempfile.TemporaryDirectory(prefix="moldwatch-fit-") as folder:
        entry = train_group(replace(task, out_dir=folder))
        return GroupResult(entry, read_files(Path(folder)))


# The columns fit_conditional reads besides the maker's settings and production fields: a task
# carries no others.
CONDITIONAL_COLUMNS = ("facility", "item", "timestamp", "lot_date")


@dataclass(frozen=True)
class MakerTask:
    maker: str
    artifact: str  # store-relative path of the unit's arrays, e.g. conditional/000-acme.npz
    features: tuple[str, ...]
    settings: tuple[str, ...]
    frame: pd.DataFrame  # the maker's state-imputed rows: CONDITIONAL_COLUMNS, settings, features
    lot_rate: np.ndarray  # per row
    config: ConditionalConfig


@dataclass(frozen=True)
class MakerResult:
    maker: str
    entry: dict[str, Any] | None  # None: too little history for a unit
    files: Files
    held_out_score: np.ndarray | None = None
    held_out_excursion: np.ndarray | None = None


def maker_task(maker: str, artifact: str, features: tuple[str, ...], settings: tuple[str, ...], records: pd.DataFrame,
               lot_rate: np.ndarray, config: ConditionalConfig) -> MakerTask:
    columns = list(dict.fromkeys([*CONDITIONAL_COLUMNS, *settings, *features]))
    return MakerTask(maker, artifact, features, settings, records[columns], lot_rate, config)


def fit_maker(task: MakerTask) -> MakerResult:
    """:func:`model_store.conditional_fit.fit_conditional` of one maker; the unit's arrays as bytes."""
    from model_store.conditional_fit import fit_conditional

    with threadpool_limits(limits=1):
        fitted = fit_conditional(task.maker, task.features, task.settings, task.frame, task.lot_rate, task.config)
    if fitted is None:
        return MakerResult(task.maker, None, {})
    with tempfile.TemporaryDirectory(prefix="moldwatch-fit-") as folder:
        target = Path(folder) / task.artifact
        target.parent.mkdir(parents=True, exist_ok=True)
        entry = fitted.unit.to_files(target)
        return MakerResult(task.maker, entry, read_files(Path(folder)), fitted.held_out_score, fitted.held_out_excursion)
