"""Progress of the offline pipeline's ``progress(stage, done, total)`` callbacks: a rich bar on a
terminal; on a log (a pipe, a file, a Kubernetes job's output) plain lines instead, since a bar
that only draws when the command ends shows an operator nothing for the minutes a training takes."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:  # a type only: model_store.store_training needs the train extra, `moldwatch score` must not
    from model_store.store_training import Progress as ProgressCallback

STAGES = {
    "prepare": "Lots, setting clusters, groups",
    "train": "Training group models",
    "conditional": "Fitting each maker's scorer",
    "calibrate": "Calibrating on the lots",
    "validate": "Scoring validation groups",
    "score": "Scoring records",
    "simulate": "Simulating the plant",
    "recipe": "Ranking settings",
}
LOG_EVERY_SECONDS = 30.0  # a log line per stage at most this often (plus its start and its end)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


@dataclass
class _Stage:
    started: float
    logged: float
    finished: bool = False


class LogProgress:
    """``progress(stage, done, total)`` as plain lines: when a stage starts, at most every
    ``every`` seconds while it runs (done of total, share, elapsed), and once when it completes."""

    def __init__(self, write: Callable[[str], None], every: float = LOG_EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write, self.every, self.clock = write, every, clock
        self.stages: dict[str, _Stage] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        name = STAGES.get(stage, stage)
        total = max(int(total), 1)
        done = min(max(int(done), 0), total)
        state = self.stages.get(stage)
        if state is None:
            state = self.stages[stage] = _Stage(started=now, logged=now)
            self.write(f"{name}: started ({done:,} of {total:,})")
        if state.finished:
            return
        if done >= total:
            state.finished = True
            self.write(f"{name}: done ({total:,} of {total:,}) in {_clock(now - state.started)}")
        elif now - state.logged >= self.every:
            state.logged = now
            self.write(f"{name}: {done:,} of {total:,} ({done / total:.0%}), {_clock(now - state.started)} elapsed")


@contextmanager
def progress_bar(console: Console | None = None) -> Iterator[ProgressCallback]:
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield LogProgress(lambda line: console.print(line, highlight=False, soft_wrap=True))
        return
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
