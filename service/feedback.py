"""Operator feedback on verdicts: the contract, and how one answer is judged and joined.

Pure logic, no I/O. An operator who walked to the machine answers a verdict: the shot was a
``defect``, the alarm was a ``false_alarm``, or ``unsure``. :class:`FeedbackDesk` checks the answer
(fields, age, duplicates) and joins it to the verdict it answers, as the worker published it
(same model version, group and threshold), from a bounded memory of recent verdicts
(:class:`VerdictMemory`). The adapter (``service.feedback_intake``) publishes what comes out:
joined feedback to its own topic (durable, keyed by record id), refusals as dead letters.

Why each rule:

- **One answer per idempotency key**: a client that retries (a timeout, a resent Kafka message)
  must not count twice; a second answer with a new key is a new answer (an operator may change
  their mind: the later one is the one that counts downstream).
- **The verdict must be known**: feedback on a record the worker never answered (a typo, another
  plant's id) or answered too long ago to remember is refused as ``feedback_unknown_record``, not
  guessed; the memory holds the last ``feedback_memory`` verdicts (a few days at plant rates).
- **Not too late, not from the future**: an answer older than ``feedback_max_age_s`` no longer
  says anything about the line the verdict was judged against; a timestamp beyond
  ``feedback_future_skew_s`` ahead of the worker's clock is a broken client.
- **Nothing here moves an alarm line**: the joined answers are kept and counted per unit
  (``model_version``, ``group_id``), which is what a line adjustment will be judged on.
"""
from __future__ import annotations

import json
import math
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.dead_letter import FEEDBACK_REASONS

Label = Literal["defect", "false_alarm", "unsure"]
LABELS: tuple[str, ...] = ("defect", "false_alarm", "unsure")
REFUSALS: tuple[str, ...] = FEEDBACK_REASONS  # the dead-letter vocabulary's (service/dead_letter.py)


class FeedbackEvent(BaseModel):
    """One operator answer, as POST /feedback and the feedback topic take it."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    record_id: str = Field(min_length=1, max_length=256)
    label: Label
    fault_code: str | None = Field(None, max_length=64)
    operator: str = Field(min_length=1, max_length=64)
    at: datetime
    idempotency_key: str = Field(min_length=1, max_length=128)

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("needs a time zone (e.g. 2026-12-05T08:14:03Z)")
        return value.astimezone(UTC)


@dataclass(frozen=True)
class VerdictRef:
    """What a feedback answer is joined to: the verdict as it was published."""

    model_version: str | None
    group_id: str | None
    threshold: float | None
    score: float | None
    anomaly: bool
    scored_at: str | None
    facility: str | None
    item: str | None

    @classmethod
    def of(cls, verdict: Mapping[str, Any]) -> VerdictRef:
        def number(key: str) -> float | None:
            value = verdict.get(key)
            return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

        return cls(verdict.get("model_version"), verdict.get("group_id"), number("threshold"), number("score"),
                   bool(verdict.get("anomaly")), verdict.get("scored_at"), verdict.get("facility"), verdict.get("item"))

    def as_dict(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "group_id": self.group_id, "threshold": self.threshold,
                "score": self.score, "anomaly": self.anomaly, "scored_at": self.scored_at,
                "facility": self.facility, "item": self.item}


class VerdictMemory:
    """The last ``size`` published verdicts by record id (the newest answer for an id wins)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._refs: OrderedDict[str, VerdictRef] = OrderedDict()

    def remember(self, verdict: Mapping[str, Any]) -> None:
        if self.size <= 0:
            return
        record_id = verdict.get("record_id")
        if record_id is None:
            return
        key = str(record_id)
        self._refs[key] = VerdictRef.of(verdict)
        self._refs.move_to_end(key)
        if len(self._refs) > self.size:
            self._refs.popitem(last=False)

    def get(self, record_id: str) -> VerdictRef | None:
        return self._refs.get(record_id)

    def __len__(self) -> int:
        return len(self._refs)


@dataclass(frozen=True)
class Refusal:
    reason: str  # one of REFUSALS
    error: str


@dataclass(frozen=True)
class Joined:
    event: FeedbackEvent
    verdict: VerdictRef

    def record(self, received_at: datetime, via: str, token: str | None) -> dict[str, Any]:
        """The joined answer as it is kept (the feedback topic's contract)."""
        return {
            "feedback_version": 1,
            "record_id": self.event.record_id,
            "label": self.event.label,
            "fault_code": self.event.fault_code,
            "operator": self.event.operator,
            "at": self.event.at.isoformat(timespec="milliseconds"),
            "idempotency_key": self.event.idempotency_key,
            "received_at": received_at.isoformat(timespec="milliseconds"),
            "via": via,
            "token": token,
            "verdict": self.verdict.as_dict(),
        }


def parse_event(document: Any) -> FeedbackEvent | Refusal:
    """A feedback event from a decoded JSON document, or why not (one line naming the field)."""
    if not isinstance(document, dict):
        return Refusal("feedback_invalid", f"expected a JSON object, got {type(document).__name__}")
    try:
        return FeedbackEvent.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "document"
        message = str(first.get("msg", "")).removeprefix("Value error, ")
        return Refusal("feedback_invalid", f"{where}: {message}"[:300])


class FeedbackDesk:
    """Judges answers and joins them; counts the joined ones per unit and label."""

    def __init__(self, memory: VerdictMemory, max_age_s: float, future_skew_s: float, keys: int = 100_000) -> None:
        self.memory = memory
        self.max_age_s = max_age_s
        self.future_skew_s = future_skew_s
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._max_keys = keys
        # (model_version, group_id) -> Counter of (label, "alarm" | "no_alarm")
        self.units: dict[tuple[str | None, str | None], Counter[tuple[str, str]]] = {}

    def judge(self, event: FeedbackEvent, now: datetime) -> Joined | Refusal:
        if event.idempotency_key in self._keys:
            return Refusal("feedback_duplicate", f"idempotency_key {event.idempotency_key!r} was already answered")
        age = (now - event.at).total_seconds()
        if age > self.max_age_s:
            return Refusal("feedback_late", f"at {event.at.isoformat()} is {age / 3600:.1f} h old; answers older than "
                           f"{self.max_age_s / 3600:g} h (feedback_max_age_s) are not taken")
        if -age > self.future_skew_s:
            return Refusal("feedback_from_the_future", f"at {event.at.isoformat()} is {-age:.0f} s ahead of the worker's "
                           f"clock (at most {self.future_skew_s:g} s, feedback_future_skew_s)")
        verdict = self.memory.get(event.record_id)
        if verdict is None:
            return Refusal("feedback_unknown_record", f"record {event.record_id[:80]!r} has no verdict this worker "
                           f"remembers (the last {self.memory.size:,} it published)")
        return Joined(event, verdict)

    def accepted(self, joined: Joined) -> None:
        """Count a joined answer once it is kept durably (and only then mark its key answered)."""
        self._keys[joined.event.idempotency_key] = None
        if len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        unit = (joined.verdict.model_version, joined.verdict.group_id)
        self.units.setdefault(unit, Counter())[(joined.event.label, "alarm" if joined.verdict.anomaly else "no_alarm")] += 1


def latest_answers(answers: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Each record id's latest answer (by ``at``, then ``received_at``; the later of two equal
    ones in file order): what the operators last said about the shot."""
    latest: dict[str, tuple[tuple[str, str], Mapping[str, Any]]] = {}
    for answer in answers:
        record_id = str(answer["record_id"])
        when = (str(answer.get("at") or ""), str(answer.get("received_at") or ""))
        if record_id not in latest or when >= latest[record_id][0]:
            latest[record_id] = (when, answer)
    return {record_id: answer for record_id, (_, answer) in latest.items()}


def latest_labels(answers: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Each record id's latest label (:func:`latest_answers`)."""
    return {record_id: str(answer["label"]) for record_id, answer in latest_answers(answers).items()}


@dataclass(frozen=True)
class PartAnswers:
    """A part's latest answers on one store version's verdicts, as scores (feedback_lines' input)."""

    false_alarms: list[float]  # alarms answered false_alarm
    alarmed_defects: list[float]  # alarms answered defect
    defects: list[float]  # every shot answered defect, alarmed or not


def answers_by_part(answers: Iterable[Mapping[str, Any]], model_version: str,
                    since: str | None = None) -> dict[tuple[str, str], PartAnswers]:
    """The latest answer of each record (answers at or after ``since``, ISO 8601, when given), on
    verdicts of ``model_version`` (answers on another store's verdicts judge other lines), by part.
    ``unsure`` counts nowhere; a ``false_alarm`` on a verdict that did not alarm says nothing about
    a line and is left out; a verdict without a finite score is left out."""
    parts: dict[tuple[str, str], PartAnswers] = {}
    kept = (a for a in answers if since is None or str(a.get("at") or "") >= since)
    for answer in latest_answers(kept).values():
        verdict = answer.get("verdict")
        if not isinstance(verdict, Mapping) or verdict.get("model_version") != model_version:
            continue
        score, facility, item = verdict.get("score"), verdict.get("facility"), verdict.get("item")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) \
                or not isinstance(facility, str) or not isinstance(item, str):
            continue
        part = parts.setdefault((facility, item), PartAnswers([], [], []))
        alarmed = verdict.get("anomaly") is True
        if answer["label"] == "false_alarm" and alarmed:
            part.false_alarms.append(float(score))
        elif answer["label"] == "defect":
            part.defects.append(float(score))
            if alarmed:
                part.alarmed_defects.append(float(score))
    return parts


def confirmed_defects(answers: Iterable[Mapping[str, Any]]) -> set[str]:
    """Record ids whose latest answer (by ``at``, then ``received_at``) is ``defect``: what the next
    training leaves out. A later ``false_alarm`` or ``unsure`` takes a defect back."""
    return {record_id for record_id, label in latest_labels(answers).items() if label == "defect"}


def read_answers(lines: Iterable[str], source: str, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Kept feedback records (JSON lines, as on the feedback topic); raises ``DataError`` naming
    ``source:line`` (or the line's entry in ``names``, e.g. a topic/partition@offset) for a line
    that is not such a record."""
    from model_store.errors import DataError

    answers = []
    for number, line in enumerate(lines, start=1):
        where = names[number - 1] if names is not None else f"{source}:{number}"
        if not line.strip():
            continue
        try:
            answer = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{where}: not JSON ({str(exc)[:100]}); expected one kept feedback record per line") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("record_id"), (str, int)) \
                or answer.get("label") not in LABELS:
            raise DataError(f"{where}: expected a feedback record with record_id and label "
                            f"({', '.join(LABELS)}), as the feedback topic holds")
        answers.append(answer)
    return answers


def now_utc() -> datetime:
    return datetime.now(UTC)


__all__ = ["FeedbackEvent", "VerdictRef", "VerdictMemory", "FeedbackDesk", "Joined", "Refusal", "parse_event",
           "LABELS", "REFUSALS", "now_utc", "confirmed_defects", "latest_answers", "latest_labels", "read_answers",
           "PartAnswers", "answers_by_part"]
