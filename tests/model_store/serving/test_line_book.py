"""The line book contract (model_store/serving/line_book.py): what a file may say, refused by field,
and the one rule that applies it to verdicts."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_store.serving.feedback_lines import LineBounds
from model_store.serving.line_book import EMPTY_BOOK, LineBook, PartLine, apply_lines, lines_for


def book(**changes: Any) -> dict[str, Any]:
    raw = LineBook(3, "v1", "2026-12-05T10:00:00.000+00:00", "update from feedback.jsonl (60 answers)", LineBounds(),
                   (PartLine("F01", "ITM-1", 1.4, "target", "raised", 30, 2, 3),
                    PartLine("F02", "ITM-2", 2.0, "ceiling", "raised", 90, 0, 0))).to_dict()
    raw.update(changes)
    return raw


def test_a_book_round_trips() -> None:
    raw = book()
    parsed = LineBook.from_dict(json.loads(json.dumps(raw)))
    assert parsed.to_dict() == raw
    assert parsed.line_of("F01", "ITM-1") == 1.4 and parsed.line_of("F01", "ITM-2") == 1.0
    assert LineBook.from_dict(EMPTY_BOOK.to_dict()) == EMPTY_BOOK


@pytest.mark.parametrize("changes, message", [
    ({"lines_format": 2}, "lines_format: expected 1, got 2"),
    ({"version": -1}, "version: expected a whole number >= 0"),
    ({"version": True}, "version: expected a whole number >= 0"),
    ({"version": 0}, "version: 0 is the empty book, but it lists parts"),
    ({"model_version": 5}, "model_version: expected a string or null"),
    ({"change": None}, "change: expected a string"),
    ({"bounds": {"step": 0.5}}, "bounds: feedback lines step must be a number >= 1"),
    ({"bounds": {"nope": 1}}, "bounds: unknown feedback line bounds"),
    ({"parts": {}}, "parts: expected a list"),
    ({"parts": ["x"]}, r"parts\[0\]: expected an object"),
])
def test_bad_books_are_refused_naming_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LineBook.from_dict(book(**changes))


@pytest.mark.parametrize("line", [0.99, 2.0000001, math.nan, math.inf, "1.5", True, None])
def test_a_line_outside_one_to_the_stated_ceiling_is_refused(line: Any) -> None:
    raw = book()
    raw["parts"][0]["line"] = line
    with pytest.raises(ValueError, match=r"parts\[0\]\.line: expected a number from 1 to max_line 2"):
        LineBook.from_dict(raw)


def test_the_line_boundaries_themselves_are_allowed() -> None:
    raw = book()
    raw["parts"][0]["line"] = 1.0
    raw["parts"][1]["line"] = 2.0
    assert LineBook.from_dict(raw).line_of("F02", "ITM-2") == 2.0


@pytest.mark.parametrize("key, value, message", [
    ("facility", "", r"parts\[1\]\.facility: expected a non-empty string"),
    ("bound", "magic", r"parts\[1\]\.bound: expected one of target, step, ceiling, defects, lots, revert"),
    ("false_alarms", -1, r"parts\[1\]\.false_alarms: expected a whole number >= 0"),
    ("defects", 1.5, r"parts\[1\]\.defects: expected a whole number >= 0"),
])
def test_bad_part_fields_are_refused_by_name(key: str, value: Any, message: str) -> None:
    raw = book()
    raw["parts"][1][key] = value
    with pytest.raises(ValueError, match=message):
        LineBook.from_dict(raw)


def test_a_part_listed_twice_is_refused() -> None:
    raw = book()
    raw["parts"][1].update(facility="F01", item="ITM-1")
    with pytest.raises(ValueError, match=r"parts\[1\]: F01/ITM-1 appears twice"):
        LineBook.from_dict(raw)


def test_lines_apply_only_to_their_store_version() -> None:
    parsed = LineBook.from_dict(book())
    facility = np.array(["F01", "F02", "F01", "F09"], dtype=object)
    item = np.array(["ITM-1", "ITM-2", "ITM-2", "ITM-1"], dtype=object)
    assert lines_for(parsed, "v1", facility, item).tolist() == [1.4, 2.0, 1.0, 1.0]
    assert lines_for(parsed, "v2", facility, item).tolist() == [1.0] * 4
    assert lines_for(None, "v1", facility, item).tolist() == [1.0] * 4


def test_apply_lines_boundaries() -> None:
    score = np.array([1.4, 1.4000001, 1.2, math.nan, 3.0, 1.2])
    anomaly = np.array([True, True, True, False, True, True])
    judged = np.array([True, True, True, True, False, True])
    lines = np.array([1.4, 1.4, 1.4, 1.4, 1.4, 1.0])
    # equal to the line: no alarm; above: alarm; NaN never; unjudged and trained-line rows untouched
    assert apply_lines(anomaly, score, judged, lines).tolist() == [False, True, False, False, True, True]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.floats(1.0, 2.0), st.booleans()), min_size=1, max_size=50))
def test_a_raised_line_only_ever_silences(rows: list[tuple[float, float, bool]]) -> None:
    score = np.array([r[0] for r in rows])
    lines = np.array([r[1] for r in rows])
    judged = np.array([r[2] for r in rows])
    trained = score > 1.0
    applied = apply_lines(trained, score, judged, lines)
    assert not (applied & ~trained).any()  # never an alarm the store did not raise
    assert (applied[score > 2.0] == trained[score > 2.0]).all()  # beyond the ceiling nothing changes
