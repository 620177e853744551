"""Progress on a log (service/progress.py): the lines an operator reads in a pipe or a job's
output, hand-computed at the interval's boundary; a terminal keeps the rich bar."""
from __future__ import annotations

import io

from rich.console import Console

from service.progress import LOG_EVERY_SECONDS, LogProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_stage_logs_its_start_at_most_every_interval_and_its_end_once() -> None:
    lines: list[str] = []
    clock = Clock()
    log = LogProgress(lines.append, every=30.0, clock=clock)
    log("train", 0, 63)
    clock.now = 129.999
    log("train", 10, 63)  # 29.999 s after the last line: nothing
    clock.now = 130.0
    log("train", 12, 63)  # exactly the interval: a line
    clock.now = 150.0
    log("train", 20, 63)  # 20 s after that one: nothing
    clock.now = 3_825.0
    log("train", 63, 63)
    log("train", 63, 63)  # done once
    clock.now = 4_000.0
    log("train", 63, 63)
    assert lines == ["Training group models: started (0 of 63)",
                     "Training group models: 12 of 63 (19%), 0:00:30 elapsed",
                     "Training group models: done (63 of 63) in 1:02:05"]


def test_stages_are_timed_apart_and_odd_counts_are_held_in_range() -> None:
    lines: list[str] = []
    clock = Clock()
    log = LogProgress(lines.append, clock=clock)
    log("prepare", 0, 1)
    log("my stage", -3, 0)  # a stage without a name of its own; a total of 0 is one step
    clock.now += LOG_EVERY_SECONDS
    log("prepare", 1, 1)
    log("my stage", 5, 0)
    assert lines == ["Lots, setting clusters, groups: started (0 of 1)", "my stage: started (0 of 1)",
                     "Lots, setting clusters, groups: done (1 of 1) in 0:00:30", "my stage: done (1 of 1) in 0:00:30"]


def test_a_console_that_is_not_a_terminal_gets_lines_and_a_terminal_the_bar() -> None:
    out = io.StringIO()
    with progress_bar(Console(file=out, force_terminal=False, width=120)) as progress:
        progress("score", 0, 4)
        progress("score", 4, 4)
    assert out.getvalue().splitlines()[0] == "Scoring records: started (0 of 4)"
    assert "Scoring records: done (4 of 4) in 0:00:0" in out.getvalue()
    tty = io.StringIO()
    with progress_bar(Console(file=tty, force_terminal=True, width=120)) as progress:
        progress("score", 4, 4)
    assert "started" not in tty.getvalue() and "4/4" in tty.getvalue()
