"""The worker's line watch without servers: stale books, metrics, what counts as silenced."""
from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from model_store.serving.line_book import EMPTY_BOOK, LineBook, PartLine
from service.line_book_file import publish
from service.line_watch import LineWatch


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels or None)


def test_a_book_for_another_store_applies_to_nothing_and_says_so(tmp_path: Path) -> None:
    registry, handed = CollectorRegistry(), []
    watch = LineWatch(tmp_path / "lines.json", 1.0, registry, handed.append)
    asyncio.run(watch.reloader.load(force=True))
    assert handed == [EMPTY_BOOK] and sample(registry, "moldwatch_feedback_lines_version") == 0
    publish(tmp_path / "lines.json", LineBook(4, "v1", "t", "update", parts=(PartLine("F1", "I1", 1.5, "target", "r"),)))
    asyncio.run(watch.reloader.load())
    watch.use_store("v1")
    assert sample(registry, "moldwatch_feedback_lines_stale") == 0
    assert sample(registry, "moldwatch_feedback_line", facility="F1", item="I1") == 1.5
    watch.use_store("v2")
    assert watch.stale and sample(registry, "moldwatch_feedback_lines_stale") == 1
    assert sample(registry, "moldwatch_feedback_line", facility="F1", item="I1") is None
    assert sample(registry, "moldwatch_feedback_lines_version") == 4
    assert sample(registry, "moldwatch_feedback_lines_loads_total", outcome="ok") == 2


def test_only_verdicts_between_one_and_their_line_count_as_silenced(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    watch = LineWatch(tmp_path / "lines.json", 1.0, registry, lambda book: None)
    for verdict in ({"line": 1.5, "score": 1.2}, {"line": 1.5, "score": 1.5},  # silenced (equal to the line too)
                    {"line": 1.5, "score": 1.0}, {"line": 1.5, "score": 1.6},  # at the store's line / alarming
                    {"line": 1.0, "score": 1.2}, {"line": 1.5, "score": None}, {"score": 1.2}):
        watch.observe(verdict)
    assert sample(registry, "moldwatch_feedback_line_silenced_total") == 2
