"""The line book: the feedback lines in effect (the file ``moldwatch lines`` writes, the worker reads).

One JSON document, replaced whole (atomic rename) on every change, each change a new ``version``;
every version is also appended to the book's log (``<file>.log.jsonl``) so that any earlier one can
be shown and reverted to. Lines belong to one store version (``model_version``): a worker serving
another store judges every part at its trained line and says so (the book is *stale*), because a
retrained store has its own lines and left the confirmed defects out.

``apply_lines`` is the one place a line changes a verdict, used by the worker, ``POST /score`` and
``moldwatch score`` alike: a judged record of a part in the book alarms when its score is above the
part's line instead of above 1; unjudged records and parts not in the book keep the trained line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from model_store.serving.feedback_lines import TERMS, TRAINED_LINE, LineBounds

if TYPE_CHECKING:
    from model_store.serving.scoring import ScoredBatch

LINES_FORMAT = 1


@dataclass(frozen=True)
class PartLine:
    facility: str
    item: str
    line: float
    bound: str  # the term of the rule that set it (feedback_lines.TERMS), or "revert"
    reason: str
    false_alarms: int = 0
    alarmed_defects: int = 0
    defects: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"facility": self.facility, "item": self.item, "line": self.line, "bound": self.bound,
                "reason": self.reason, "false_alarms": self.false_alarms, "alarmed_defects": self.alarmed_defects,
                "defects": self.defects}


@dataclass(frozen=True)
class LineBook:
    version: int  # 0: no book (every part at its trained line)
    model_version: str | None
    created_at: str | None
    change: str  # what made this version: an update from feedback, a revert
    bounds: LineBounds = field(default_factory=LineBounds)
    parts: tuple[PartLine, ...] = ()
    # answers given before this time no longer count (a revert discards the answers it undoes)
    answers_since: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lines", {(p.facility, p.item): p.line for p in self.parts})

    @property
    def lines(self) -> dict[tuple[str, str], float]:
        return self._lines  # type: ignore[attr-defined, no-any-return]  # set in __post_init__: a frozen dataclass has no other way

    def line_of(self, facility: str, item: str) -> float:
        return self.lines.get((facility, item), TRAINED_LINE)

    def to_dict(self) -> dict[str, Any]:
        return {"lines_format": LINES_FORMAT, "version": self.version, "model_version": self.model_version,
                "created_at": self.created_at, "change": self.change, "answers_since": self.answers_since,
                "bounds": self.bounds.to_dict(), "parts": [p.to_dict() for p in self.parts]}

    @classmethod
    def from_dict(cls, raw: Any) -> LineBook:
        """The book, or ValueError naming the field and what was expected."""
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
        if raw.get("lines_format") != LINES_FORMAT:
            raise ValueError(f"lines_format: expected {LINES_FORMAT}, got {raw.get('lines_format')!r} (written by another "
                             f"moldwatch version: rewrite it with moldwatch lines update)")
        version = raw.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError(f"version: expected a whole number >= 0, got {version!r}")
        for key in ("model_version", "created_at", "answers_since"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise ValueError(f"{key}: expected a string or null, got {type(raw[key]).__name__}")
        if not isinstance(raw.get("change"), str):
            raise ValueError("change: expected a string")
        try:
            bounds = LineBounds.from_dict(raw.get("bounds") or {})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bounds: {exc}") from None
        entries = raw.get("parts")
        if not isinstance(entries, list):
            raise ValueError("parts: expected a list")
        parts, seen = [], set()
        for n, entry in enumerate(entries):
            parts.append(_part(entry, n, bounds))
            part_key = (parts[-1].facility, parts[-1].item)
            if part_key in seen:
                raise ValueError(f"parts[{n}]: {part_key[0]}/{part_key[1]} appears twice")
            seen.add(part_key)
        if version == 0 and parts:
            raise ValueError("version: 0 is the empty book, but it lists parts")
        return cls(version, raw.get("model_version"), raw.get("created_at"), raw["change"], bounds, tuple(parts),
                   raw.get("answers_since"))


def _part(entry: Any, n: int, bounds: LineBounds) -> PartLine:
    where = f"parts[{n}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object")
    for key in ("facility", "item", "bound", "reason"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ValueError(f"{where}.{key}: expected a non-empty string")
    line = entry.get("line")
    # a line is only ever raised, and never past the ceiling the file itself states
    if isinstance(line, bool) or not isinstance(line, (int, float)) or not math.isfinite(line) \
            or not TRAINED_LINE <= line <= bounds.max_line:
        raise ValueError(f"{where}.line: expected a number from {TRAINED_LINE:g} to max_line {bounds.max_line:g}, "
                         f"got {line!r}")
    if entry["bound"] not in (*TERMS, "revert"):
        raise ValueError(f"{where}.bound: expected one of {', '.join((*TERMS, 'revert'))}, got {entry['bound']!r}")
    counts = {}
    for key in ("false_alarms", "alarmed_defects", "defects"):
        value = entry.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{where}.{key}: expected a whole number >= 0, got {value!r}")
        counts[key] = value
    return PartLine(entry["facility"], entry["item"], float(line), entry["bound"], entry["reason"], **counts)


EMPTY_BOOK = LineBook(0, None, None, "no feedback lines yet")


def lines_for(book: LineBook | None, model_version: str, facility: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Each record's line: its part's in ``book`` when the book is for ``model_version``, else 1."""
    if book is None or not book.lines or book.model_version != model_version:
        return np.full(len(facility), TRAINED_LINE)
    lines = book.lines
    return np.fromiter((lines.get((f, i), TRAINED_LINE) for f, i in zip(facility.tolist(), item.tolist())),
                       dtype=float, count=len(facility))


def apply_lines(anomaly: np.ndarray, score: np.ndarray, judged: np.ndarray, lines: np.ndarray,
                excursion: np.ndarray) -> np.ndarray:
    """The verdicts' anomaly flags under ``lines``: a judged record whose part has a raised line
    alarms when its score or its excursion ratio is above that line (NaN never does); every other
    record keeps the flag its store gave it (at the trained line, the same rule: score > 1).
    The ratio counts on its own because a lasting excursion scores just above 1 (see
    ``excursions.lasting_rank``): a value more than a line's worth of tolerances out alarms
    whatever the answers, as the ceiling promises."""
    above = (np.nan_to_num(np.asarray(score, dtype=float), nan=-np.inf) > lines) | \
        (np.nan_to_num(np.asarray(excursion, dtype=float), nan=-np.inf) > lines)
    return np.where(np.asarray(judged, dtype=bool) & (lines != TRAINED_LINE), above, np.asarray(anomaly, dtype=bool))


def judge_with_book(batch: ScoredBatch, book: LineBook | None, model_version: str) -> None:
    """Judge a scored batch at its parts' feedback lines (in place: ``anomaly``, ``line``,
    ``line_version``); a book for another store version, or none, leaves it as scored."""
    from model_store.serving.resolution import UNSCORABLE

    lines = lines_for(book, model_version, batch.facility, batch.item)
    if book is None or not (lines != TRAINED_LINE).any():
        return
    judged = batch.resolution != UNSCORABLE
    batch.anomaly = apply_lines(batch.anomaly, batch.score, judged, lines, batch.excursion)
    batch.line = np.where(judged, lines, TRAINED_LINE)
    batch.line_version = book.version


__all__ = ["LINES_FORMAT", "PartLine", "LineBook", "EMPTY_BOOK", "lines_for", "apply_lines", "judge_with_book"]
