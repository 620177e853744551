"""A rich progress bar that the offline pipeline's ``progress(stage, done, total)`` callbacks drive."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:  # a type only: model_store.store_training needs the train extra, `moldwatch score` must not
    from model_store.store_training import Progress as ProgressCallback

STAGES = {
    "prepare": "Lots, setting clusters, groups",
    "train": "Training group models",
    "validate": "Scoring validation groups",
    "score": "Scoring records",
    "simulate": "Simulating the plant",
    "recipe": "Ranking settings",
}


@contextmanager
def progress_bar(console: Console | None = None) -> Iterator[ProgressCallback]:
    console = console or Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=False,
    ) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(STAGES.get(stage, stage), total=max(total, 1))
            bar.update(tasks[stage], completed=done, total=max(total, 1))

        yield update
