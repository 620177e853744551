"""``moldwatch lines`` on a real store and real feedback files: update, show, history, revert, and
``moldwatch score --lines`` judging at the lines; every bad input one line naming what to fix."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from model_store.canonical import canonical_records
from model_store.serving.drift import references_from_manifest
from model_store.serving.scoring import ScoringEngine
from model_store.serving.store import open_store
from model_store.serving.verdict import to_verdicts
from service.cli import app
from service.line_book_file import log_path, read_history, read_line_book

runner = CliRunner()


def moldwatch(*args: str) -> Any:
    return runner.invoke(app, [*args], catch_exceptions=False)


def error_line(result: Any) -> str:
    """The error, unwrapped (the console folds long lines)."""
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert text.count("error:") == 1, result.output
    return text[text.index("error:"):]


@pytest.fixture(scope="module")
def scored(forest_plant, forest_store) -> dict[str, Any]:
    """The forest store's verdicts of its own plant, and its one part with a lot reference."""
    manifest = open_store(forest_store)
    engine = ScoringEngine(manifest)
    records = canonical_records(forest_plant.records, forest_plant.schema)
    records = records.sort_values("timestamp", kind="stable").reset_index(drop=True)
    verdicts = to_verdicts(records, engine.score(records, memory={}, backward=False, explain=False), engine.model_version)
    references = references_from_manifest(manifest.raw["drift"])
    part = next(k for k, r in references.items() if r.alarm_quantiles is not None)
    return {"verdicts": verdicts, "part": part, "reference": references[part], "records": records}


def answers(verdicts: list[dict[str, Any]], label: str, at: str = "2026-12-05T08:00:00.000+00:00") -> list[dict[str, Any]]:
    return [{"feedback_version": 1, "record_id": v["record_id"], "label": label, "fault_code": None, "operator": "op-7",
             "at": at, "idempotency_key": f"{label}-{v['record_id']}", "received_at": at, "via": "http", "token": None,
             "verdict": {k: v[k] for k in ("model_version", "group_id", "threshold", "score", "anomaly", "scored_at",
                                            "facility", "item")}} for v in verdicts]


def write_answers(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def part_alarms(scored: dict[str, Any]) -> list[dict[str, Any]]:
    facility, item = scored["part"]
    return sorted((v for v in scored["verdicts"] if v["facility"] == facility and v["item"] == item and v["anomaly"]),
                  key=lambda v: v["score"])


def test_update_raises_a_part_within_its_bounds_then_reverts(scored, forest_store, tmp_path) -> None:
    alarms = part_alarms(scored)
    assert len(alarms) >= 40, "the forest plant's referenced part must give 40 alarms to answer"
    lines = tmp_path / "lines" / "lines.json"
    feedback = write_answers(tmp_path / "feedback.jsonl", answers(alarms[:40], "false_alarm"))

    dry = moldwatch("lines", "update", "--store", str(forest_store), "--feedback", str(feedback), "--lines", str(lines),
                    "--dry-run")
    assert dry.exit_code == 0 and "dry run: nothing written" in dry.output and not lines.exists()

    first = moldwatch("lines", "update", "--store", str(forest_store), "--feedback", str(feedback), "--lines", str(lines))
    assert first.exit_code == 0, first.output
    book = read_line_book(lines)
    facility, item = scored["part"]
    assert book.version == 1 and book.model_version == open_store(forest_store).model_version
    line = book.line_of(facility, item)
    # 40 false alarms: at most two steps of 1.25, at most the lots' half-volume score, at most the ceiling
    floor = scored["reference"].alarm_quantiles[4]
    assert 1.0 < line <= min(1.25 ** 2, floor, 2.0) + 1e-12
    assert f"{facility}/{item}: 1 -> {line:.4g}" in first.output

    again = moldwatch("lines", "update", "--store", str(forest_store), "--feedback", str(feedback), "--lines", str(lines))
    assert "unchanged: " in again.output and read_line_book(lines).version == 1  # same answers, same line: no version

    shown = moldwatch("lines", "show", "--lines", str(lines))
    assert f"{facility}/{item}: line {line:.4g}" in shown.output

    undone = moldwatch("lines", "revert", "--lines", str(lines), "--reason", "operator 7 marked real shorts false")
    assert undone.exit_code == 0, undone.output
    reverted = read_line_book(lines)
    assert reverted.version == 2 and reverted.parts == () and reverted.answers_since is not None
    assert reverted.change == "revert to version 0: operator 7 marked real shorts false"
    # the answers the revert undid no longer count: an update does not redo it
    redo = moldwatch("lines", "update", "--store", str(forest_store), "--feedback", str(feedback), "--lines", str(lines))
    assert "unchanged: " in redo.output and read_line_book(lines).version == 2

    back = moldwatch("lines", "revert", "--lines", str(lines), "--to", "1")
    assert back.exit_code == 0 and read_line_book(lines).line_of(facility, item) == line
    assert [b.version for b in read_history(lines)] == [1, 2, 3]
    history = moldwatch("lines", "history", "--lines", str(lines))
    assert "* version 3" in history.output and "revert to version 1" in history.output


def test_score_with_lines_judges_the_part_at_its_line(scored, forest_store, forest_plant, tmp_path) -> None:
    alarms = part_alarms(scored)
    lines = tmp_path / "lines.json"
    feedback = write_answers(tmp_path / "feedback.jsonl", answers(alarms[:40], "false_alarm"))
    assert moldwatch("lines", "update", "--store", str(forest_store), "--feedback", str(feedback), "--lines",
                     str(lines)).exit_code == 0
    line = read_line_book(lines).line_of(*scored["part"])
    records = tmp_path / "records.csv"
    forest_plant.records.to_csv(records, index=False)
    out = tmp_path / "verdicts.jsonl"
    result = moldwatch("score", "--store", str(forest_store), "--records", str(records), "--out", str(out),
                       "--lines", str(lines))
    assert result.exit_code == 0, result.output
    verdicts = [json.loads(row) for row in out.read_text().splitlines()]
    facility, item = scored["part"]
    mine = [v for v in verdicts if v["facility"] == facility and v["item"] == item and v["resolution"] != "unscorable"]
    others = [v for v in verdicts if (v["facility"], v["item"]) != (facility, item)]
    assert all(v["line"] == line and v["line_version"] == 1 and v["anomaly"] == (v["score"] > line) for v in mine)
    assert any(1.0 < v["score"] <= line for v in mine)  # some shots were silenced
    assert all(v["line"] == 1.0 and v["line_version"] is None for v in others)
    assert all(v["anomaly"] == (v["score"] is not None and v["score"] > 1.0) for v in others)


def test_confirmed_defects_hold_the_line_below_them(scored, forest_store, tmp_path) -> None:
    alarms = part_alarms(scored)
    lines = tmp_path / "lines.json"
    # the 40 lowest alarms called false, the next one a confirmed defect: the line stays below it
    rows = answers(alarms[:40], "false_alarm") + answers(alarms[40:41], "defect")
    feedback = write_answers(tmp_path / "feedback.jsonl", rows)
    moldwatch("lines", "update", "--store", str(forest_store), "--feedback", str(feedback), "--lines", str(lines))
    assert read_line_book(lines).line_of(*scored["part"]) < alarms[40]["score"]


def test_answers_on_another_store_version_or_unsure_move_nothing(scored, forest_store, tmp_path) -> None:
    alarms = part_alarms(scored)
    rows = answers(alarms[:40], "false_alarm")
    for row in rows[:30]:
        row["verdict"]["model_version"] = "some-older-store"
    rows += answers(alarms[40:80], "unsure")
    feedback = write_answers(tmp_path / "feedback.jsonl", rows)
    lines = tmp_path / "lines.json"
    result = moldwatch("lines", "update", "--store", str(forest_store), "--feedback", str(feedback), "--lines", str(lines))
    assert result.exit_code == 0 and "10 false alarms answered, 20 needed" in result.output
    assert not lines.exists() or read_line_book(lines).parts == ()


def test_a_book_for_another_store_is_stale_and_the_next_update_starts_afresh(scored, forest_store, forest_plant,
                                                                             tmp_path) -> None:
    alarms = part_alarms(scored)
    lines = tmp_path / "lines.json"
    feedback = write_answers(tmp_path / "feedback.jsonl", answers(alarms[:40], "false_alarm"))
    moldwatch("lines", "update", "--store", str(forest_store), "--feedback", str(feedback), "--lines", str(lines))
    raw = json.loads(lines.read_text())
    raw["model_version"] = "another-store"
    lines.write_text(json.dumps(raw))
    records = tmp_path / "records.csv"
    forest_plant.records.head(50).to_csv(records, index=False)
    out = tmp_path / "v.jsonl"
    warned = moldwatch("score", "--store", str(forest_store), "--records", str(records), "--out", str(out),
                       "--lines", str(lines))
    assert "holds lines for store another-store" in " ".join(warned.output.split())
    assert all(json.loads(r)["line"] == 1.0 for r in out.read_text().splitlines())
    fresh = moldwatch("lines", "update", "--store", str(forest_store), "--feedback", str(feedback), "--lines", str(lines))
    assert fresh.exit_code == 0 and read_line_book(lines).model_version == open_store(forest_store).model_version


@pytest.mark.parametrize("content, message", [
    ("not json\n", "feedback.jsonl:1: not JSON"),
    ('{"record_id": "r1"}\n', "feedback.jsonl:1: expected a feedback record with record_id and label"),
])
def test_bad_feedback_is_one_line_naming_the_line(forest_store, tmp_path, content: str, message: str) -> None:
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text(content)
    result = moldwatch("lines", "update", "--store", str(forest_store), "--feedback", str(feedback), "--lines",
                       str(tmp_path / "lines.json"))
    assert message in error_line(result)


def test_bad_arguments_and_books_are_one_line(forest_store, tmp_path) -> None:
    lines = tmp_path / "lines.json"
    feedback = write_answers(tmp_path / "feedback.jsonl", [])
    bad_bound = moldwatch("lines", "update", "--store", str(forest_store), "--feedback", str(feedback), "--lines",
                          str(lines), "--bound", "stepp=2")
    assert "--bound 'stepp=2': expected NAME=VALUE with NAME one of" in error_line(bad_bound)
    out_of_range = moldwatch("lines", "update", "--store", str(forest_store), "--feedback", str(feedback), "--lines",
                             str(lines), "--bound", "max_line=0.5")
    assert "--bound: feedback lines max_line must be a number >= 1" in error_line(out_of_range)
    missing = moldwatch("lines", "update", "--store", str(forest_store), "--feedback", str(tmp_path / "nope.jsonl"),
                        "--lines", str(lines))
    assert "nope.jsonl: feedback file not found" in error_line(missing)
    neither = moldwatch("lines", "update", "--store", str(forest_store), "--lines", str(lines))
    assert "give the answers as --feedback FILE or --feedback-topic TOPIC (one of the two)" in error_line(neither)
    lines.write_text('{"lines_format": 1, "version": 2, "change": "x", "parts": [{"facility": "F1"}]}')
    assert "lines.json: parts[0].item: expected a non-empty string" in error_line(moldwatch("lines", "show", "--lines",
                                                                                             str(lines)))
    lines.write_text("{")
    assert "lines.json: not JSON" in error_line(moldwatch("lines", "show", "--lines", str(lines)))
    lines.unlink()
    assert "no version -1 to revert to (kept: 0, none)" in error_line(moldwatch("lines", "revert", "--lines", str(lines)))
    assert "no version 7 to revert to" in error_line(moldwatch("lines", "revert", "--lines", str(lines), "--to", "7"))
    log_path(lines).write_text("{}\n")
    assert "lines.json.log.jsonl:1: lines_format" in error_line(moldwatch("lines", "history", "--lines", str(lines)))


def test_publish_is_atomic_and_logs_first(tmp_path) -> None:
    from model_store.serving.line_book import LineBook
    from service.line_book_file import publish

    lines = tmp_path / "lines.json"
    publish(lines, LineBook(1, "v1", "t", "first"))
    publish(lines, LineBook(2, "v1", "t", "second"))
    assert read_line_book(lines).change == "second"
    assert [b.change for b in read_history(lines)] == ["first", "second"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines.json", "lines.json.log.jsonl"]  # no staging left
    assert np.isclose(read_line_book(tmp_path / "missing.json").version, 0)
