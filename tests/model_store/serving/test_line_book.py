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
    ({"version": 0}, "^version: 0 is the empty book, but it lists parts$"),
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
    none = np.zeros(6)
    # equal to the line: no alarm; above: alarm; NaN never; unjudged and trained-line rows untouched
    assert apply_lines(anomaly, score, judged, lines, none).tolist() == [False, True, False, False, True, True]
    # the excursion ratio counts on its own, by the same boundary (a lasting excursion scores ~1.001)
    excursion = np.array([1.4, 1.4000001, 2.5, math.nan, 0.0, 0.0])
    score = np.array([1.001, 1.001, 1.001, 1.001, 3.0, 1.2])
    assert apply_lines(anomaly, score, judged, lines, excursion).tolist() == [False, True, True, False, True, True]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.floats(1.0, 2.0), st.booleans()), min_size=1, max_size=50))
def test_a_raised_line_only_ever_silences(rows: list[tuple[float, float, bool]]) -> None:
    score = np.array([r[0] for r in rows])
    lines = np.array([r[1] for r in rows])
    judged = np.array([r[2] for r in rows])
    trained = score > 1.0
    applied = apply_lines(trained, score, judged, lines, score)
    assert not (applied & ~trained).any()  # never an alarm the store did not raise
    assert (applied[score > 2.0] == trained[score > 2.0]).all()  # beyond the ceiling nothing changes
    # a lasting excursion (scored just above 1) beyond the ceiling alarms at any line too
    lasting = apply_lines(trained | (score > 2.0), np.minimum(score, 1.001), judged, lines, score)
    assert lasting[score > 2.0].all()


def test_every_field_round_trips_including_the_revert_time() -> None:
    raw = book(answers_since="2026-12-05T11:00:00.000+00:00", created_at="2026-12-05T11:00:00.000+00:00")
    raw["bounds"] = LineBounds(step=1.5).to_dict()
    parsed = LineBook.from_dict(raw)
    assert parsed.answers_since == "2026-12-05T11:00:00.000+00:00" and parsed.bounds.step == 1.5
    assert parsed.to_dict() == raw and set(raw) == {"lines_format", "version", "model_version", "created_at", "change",
                                                    "answers_since", "bounds", "parts"}


@pytest.mark.parametrize("raw, message", [
    ([], "expected a JSON object, got list"),
    ({"lines_format": 1, "version": 1, "change": "x", "parts": [], "created_at": 7}, "created_at: expected a string or null, got int"),
    ({"lines_format": 1, "version": 1, "change": "x", "parts": [], "answers_since": 7},
     "answers_since: expected a string or null, got int"),
    ({"lines_format": 1, "version": 1, "change": 3, "parts": []}, "change: expected a string"),
    ({"lines_format": 1, "version": 1, "change": "x", "parts": None}, "parts: expected a list"),
])
def test_messages_are_exact(raw: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        LineBook.from_dict(raw)
    assert str(caught.value) == message


def test_a_revert_entry_and_missing_counts_read_as_zero() -> None:
    raw = book()
    raw["parts"][0]["bound"] = "revert"
    for key in ("false_alarms", "alarmed_defects", "defects"):
        del raw["parts"][0][key]
    part = LineBook.from_dict(raw).parts[0]
    assert part.bound == "revert" and (part.false_alarms, part.alarmed_defects, part.defects) == (0, 0, 0)


def judged_batch(facility: list[str], score: list[float], resolution: list[str]) -> Any:
    from tests.model_store.serving.test_verdict import batch_of

    n = len(facility)
    return batch_of(n, facility=np.array(facility, dtype=object), item=np.array(["ITM-1"] * n, dtype=object),
                    score=np.array(score), anomaly=np.array(score) > 1.0, resolution=np.array(resolution, dtype=object))


def test_judge_with_book_applies_its_parts_lines_and_version() -> None:
    from model_store.serving.line_book import judge_with_book

    parsed = LineBook.from_dict(book())  # F01/ITM-1 at 1.4
    batch = judged_batch(["F01", "F01", "F01", "F09", "F01"], [1.3, 1.5, 1.4, 1.3, 1.3],
                         ["exact", "exact", "part", "exact", "unscorable"])
    batch.anomaly[4] = False  # as the scorer leaves an unscorable record
    judge_with_book(batch, parsed, "v1")
    assert batch.anomaly.tolist() == [False, True, False, True, False]
    assert batch.line.tolist() == [1.4, 1.4, 1.4, 1.0, 1.0] and batch.line_version == 3


def test_judge_with_book_keeps_a_lasting_excursion_beyond_the_line_alarming() -> None:
    from model_store.serving.line_book import judge_with_book

    parsed = LineBook.from_dict(book())  # F01/ITM-1 at 1.4
    # scored just above 1 (a lasting excursion), its ratio 5 and 1.3 tolerances out
    batch = judged_batch(["F01", "F01"], [1.002, 1.002], ["exact", "exact"])
    batch.excursion = np.array([5.0, 1.3])
    judge_with_book(batch, parsed, "v1")
    assert batch.anomaly.tolist() == [True, False]


@pytest.mark.parametrize("which", ["no book", "another store", "no raised part in the batch"])
def test_judge_with_book_leaves_the_batch_as_scored(which: str) -> None:
    from model_store.serving.line_book import judge_with_book

    parsed = None if which == "no book" else LineBook.from_dict(book())
    batch = judged_batch(["F09", "F01"] if which == "no raised part in the batch" else ["F01", "F01"], [1.3, 0.5],
                         ["exact", "exact"])
    if which == "no raised part in the batch":
        batch.facility = np.array(["F09", "F08"], dtype=object)
    judge_with_book(batch, parsed, "v2" if which == "another store" else "v1")
    assert batch.anomaly.tolist() == [True, False] and batch.line.tolist() == [1.0, 1.0] and batch.line_version == 0


def test_lines_for_reads_each_record_in_order() -> None:
    parsed = LineBook.from_dict(book())
    facility = np.array(["F02", "F01"], dtype=object)
    item = np.array(["ITM-2", "ITM-1"], dtype=object)
    lines = lines_for(parsed, "v1", facility, item)
    assert lines.dtype == np.float64 and lines.tolist() == [2.0, 1.4]


def test_apply_lines_takes_lists_and_leaves_trained_rows_alone() -> None:
    # unjudged rows keep their flag even where a line is set; judged rows at line 1 keep theirs too
    out = apply_lines([1, 0, 1], [0.5, 3.0, 1.2], [0, 0, 1], np.array([1.5, 1.5, 1.0]), [0.0, 0.0, 0.0])
    assert out.dtype == bool and out.tolist() == [True, False, True]
