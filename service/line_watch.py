"""The worker's feedback lines: the line book file, reloaded, handed to the pipeline, and measured.

The book is written by ``moldwatch lines`` (service/lines_command.py) and read here with the same
:class:`~service.reloader.Reloader` as the store and the recipes: a changed file is read once it
settles, a broken one is refused (the last good book stays, a log line and a counter say so), a
missing one is the empty book (every part at its trained line). A book for another store version
than the one served is kept but applies to nothing (``moldwatch_feedback_lines_stale`` 1) until
``moldwatch lines update`` writes one for the new store. Metrics, read at scrape time:

    moldwatch_feedback_line{facility,item}     the raised line of each part it applies to
    moldwatch_feedback_lines_version           the book version served (0: none)
    moldwatch_feedback_lines_stale             1 while the book is for another store version
    moldwatch_feedback_lines_loads_total{outcome}  ok / failed
    moldwatch_feedback_line_silenced_total     verdicts above the trained line (score > 1) that
                                               did not alarm because their part's line is higher
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from model_store.serving.line_book import LineBook
from service.line_book_file import read_line_book
from service.reloader import Reloader

log = structlog.get_logger("moldwatch.lines")


class LineWatch(Collector):
    def __init__(self, path: Path, poll_s: float, registry: CollectorRegistry,
                 on_book: Callable[[LineBook], None]) -> None:
        self.path = path
        self._on_book = on_book
        self.model_version: str | None = None
        self.reloader: Reloader[LineBook] = Reloader("feedback lines file", path, self._read, poll_s,
                                                     on_loaded=self._loaded, on_failed=self._failed,
                                                     describe=lambda b: b.version)
        self.loads = Counter("moldwatch_feedback_lines_loads", "Line book loads (start-up and changes), by outcome.",
                             ["outcome"], registry=registry)
        for outcome in ("ok", "failed"):
            self.loads.labels(outcome)
        self.silenced = Counter("moldwatch_feedback_line_silenced", "Verdicts above their store's trained line "
                                "(score > 1) that did not alarm because operators' feedback raised their part's line.",
                                registry=registry)
        registry.register(self)

    @property
    def book(self) -> LineBook | None:
        return self.reloader.value

    async def _read(self, path: Path, force: bool) -> LineBook:
        return await asyncio.to_thread(read_line_book, path)

    def _loaded(self, book: LineBook) -> None:
        self.loads.labels("ok").inc()
        self._on_book(book)
        log.info("feedback lines loaded", path=str(self.path), version=book.version, model_version=book.model_version,
                 raised=len(book.parts), change=book.change)
        self._check_stale()

    def _failed(self, exc: Exception) -> None:
        self.loads.labels("failed").inc()

    def use_store(self, model_version: str) -> None:
        """The store served from now on (its lines are the book's only when the versions agree)."""
        self.model_version = model_version
        self._check_stale()

    @property
    def stale(self) -> bool:
        book = self.book
        return book is not None and book.version > 0 and book.model_version != self.model_version

    def _check_stale(self) -> None:
        if self.stale and self.model_version is not None:
            assert self.book is not None
            log.warning("feedback lines were made for another store version: every part is judged at its trained line "
                        "until 'moldwatch lines update' runs for the served store", lines_version=self.book.version,
                        lines_store=self.book.model_version, serving=self.model_version)

    def observe(self, verdict: dict[str, Any]) -> None:
        """One acknowledged verdict: counted when a raised line kept it from alarming."""
        line, score = verdict.get("line"), verdict.get("score")
        if isinstance(line, float) and line > 1.0 and isinstance(score, (int, float)) and math.isfinite(score) \
                and 1.0 < score <= line:
            self.silenced.inc()

    def collect(self) -> Iterable[Any]:
        book = self.book
        version = GaugeMetricFamily("moldwatch_feedback_lines_version", "Line book version served (0: none).")
        version.add_metric([], float(book.version if book is not None else 0))
        stale = GaugeMetricFamily("moldwatch_feedback_lines_stale", "1 while the line book is for another store "
                                  "version than the one served (it applies to nothing).")
        stale.add_metric([], 1.0 if self.stale else 0.0)
        lines = GaugeMetricFamily("moldwatch_feedback_line", "A part's feedback line (alarms above it instead of 1), "
                                  "for the parts the served book raised.", labels=["facility", "item"])
        if book is not None and not self.stale:
            for part in book.parts:
                lines.add_metric([part.facility, part.item], part.line)
        yield from (version, stale, lines)


__all__ = ["LineWatch"]
