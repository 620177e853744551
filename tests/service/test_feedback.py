"""Operator feedback as pure logic: the contract, the boundaries of each refusal, the join."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.feedback import FeedbackDesk, Joined, Refusal, VerdictMemory, parse_event

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
VERDICT = {"record_id": "F07-1", "model_version": "v1", "group_id": "HANIL__F07__ITM-012__c4", "threshold": 38.2,
           "score": 1.7, "anomaly": True, "scored_at": "2026-12-05T11:59:00+00:00", "facility": "F07", "item": "ITM-012"}


def answer(**overrides):
    base = {"record_id": "F07-1", "label": "false_alarm", "operator": "kim", "at": (NOW - timedelta(minutes=5)).isoformat(),
            "idempotency_key": "k-1", "fault_code": None}
    base.update(overrides)
    return base


def desk(memory_size: int = 10) -> FeedbackDesk:
    memory = VerdictMemory(memory_size)
    memory.remember(VERDICT)
    return FeedbackDesk(memory, max_age_s=3600.0, future_skew_s=60.0)


def judged(d: FeedbackDesk, **overrides):
    event = parse_event(answer(**overrides))
    assert not isinstance(event, Refusal), event
    return d.judge(event, NOW)


def test_an_answer_is_joined_to_the_verdict_as_published():
    outcome = judged(desk())
    assert isinstance(outcome, Joined)
    record = outcome.record(NOW, "http", "line-3-lead")
    assert record["verdict"] == {k: VERDICT[k] for k in ("model_version", "group_id", "threshold", "score", "anomaly",
                                                         "scored_at", "facility", "item")}
    assert record["label"] == "false_alarm" and record["token"] == "line-3-lead" and record["via"] == "http"
    assert record["at"] == "2026-12-05T11:55:00.000+00:00"


@pytest.mark.parametrize("age_s, reason", [
    (3600.0, None),  # exactly the line: still taken
    (3600.001, "feedback_late"),
    (-60.0, None),  # exactly the allowed skew ahead
    (-60.001, "feedback_from_the_future"),
])
def test_age_and_skew_lines_are_inclusive(age_s, reason):
    outcome = judged(desk(), at=(NOW - timedelta(seconds=age_s)).isoformat())
    assert (outcome.reason if isinstance(outcome, Refusal) else None) == reason


def test_an_idempotency_key_counts_once_and_only_after_it_was_kept():
    d = desk()
    first = judged(d)
    assert isinstance(first, Joined)
    assert isinstance(judged(d), Joined)  # not kept yet (e.g. Kafka failed): a retry is not a duplicate
    d.accepted(first)
    again = judged(d)
    assert isinstance(again, Refusal) and again.reason == "feedback_duplicate" and "k-1" in again.error
    assert isinstance(judged(d, idempotency_key="k-2", label="defect"), Joined)  # a new answer: taken
    assert d.units == {("v1", VERDICT["group_id"]): {("false_alarm", "alarm"): 1}}


def test_an_unknown_or_forgotten_record_is_refused():
    d = desk(memory_size=2)
    d.memory.remember({**VERDICT, "record_id": "F07-2"})
    d.memory.remember({**VERDICT, "record_id": "F07-3"})  # F07-1 is forgotten (the memory holds 2)
    outcome = judged(d)
    assert isinstance(outcome, Refusal) and outcome.reason == "feedback_unknown_record" and "last 2" in outcome.error
    assert isinstance(judged(d, record_id="F07-3"), Joined)
    assert len(d.memory) == 2


def test_the_newest_verdict_for_a_record_is_the_one_answered():
    d = desk()
    d.memory.remember({**VERDICT, "anomaly": False, "model_version": "v2"})
    outcome = judged(d)
    assert isinstance(outcome, Joined) and outcome.verdict.model_version == "v2" and outcome.verdict.anomaly is False


@pytest.mark.parametrize("document, where", [
    (answer(label="bad"), "label"),
    (answer(at="2026-12-05T11:55:00"), "at: needs a time zone"),
    (answer(at="yesterday"), "at"),
    (answer(record_id=""), "record_id"),
    (answer(record_id="x" * 257), "record_id"),
    (answer(operator="o" * 65), "operator"),
    (answer(fault_code="f" * 65), "fault_code"),
    (answer(idempotency_key=""), "idempotency_key"),
    (answer(extra="x"), "extra"),
    ({k: v for k, v in answer().items() if k != "operator"}, "operator"),
    ([answer()], "expected a JSON object, got list"),
    ("text", "expected a JSON object, got str"),
])
def test_an_invalid_answer_names_the_field(document, where):
    outcome = parse_event(document)
    assert isinstance(outcome, Refusal) and outcome.reason == "feedback_invalid"
    assert outcome.error.startswith(where) or where in outcome.error, outcome.error
    assert "\n" not in outcome.error and len(outcome.error) <= 300


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=50) | st.integers(),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children,
                                                                                      max_size=6), max_leaves=20))
def test_any_json_value_is_parsed_or_refused_never_raised(value):
    outcome = parse_event(value)
    assert isinstance(outcome, Refusal) or outcome.record_id


def test_non_finite_numbers_in_a_verdict_are_not_kept_as_numbers():
    memory = VerdictMemory(1)
    memory.remember({**VERDICT, "score": float("nan"), "threshold": float("inf")})
    ref = memory.get("F07-1")
    assert ref is not None and ref.score is None and ref.threshold is None


def test_the_kept_record_is_the_whole_contract():
    outcome = judged(desk(), fault_code="SHORT-SHOT")
    assert isinstance(outcome, Joined)
    assert outcome.record(NOW, "kafka", None) == {
        "feedback_version": 1, "record_id": "F07-1", "label": "false_alarm", "fault_code": "SHORT-SHOT", "operator": "kim",
        "at": "2026-12-05T11:55:00.000+00:00", "idempotency_key": "k-1", "received_at": "2026-12-05T12:00:00.000+00:00",
        "via": "kafka", "token": None,
        "verdict": {"model_version": "v1", "group_id": VERDICT["group_id"], "threshold": 38.2, "score": 1.7,
                    "anomaly": True, "scored_at": VERDICT["scored_at"], "facility": "F07", "item": "ITM-012"}}


def test_each_refusal_says_exactly_why():
    late = judged(desk(), at=(NOW - timedelta(hours=5)).isoformat())
    assert late.error == ("at 2026-12-05T07:00:00+00:00 is 5.0 h old; answers older than 1 h (feedback_max_age_s) "
                          "are not taken")
    ahead = judged(desk(), at=(NOW + timedelta(minutes=10)).isoformat())
    assert ahead.error == ("at 2026-12-05T12:10:00+00:00 is 600 s ahead of the worker's clock (at most 60 s, "
                           "feedback_future_skew_s)")
    unknown = judged(desk(), record_id="x" * 100)
    assert unknown.error == f"record {'x' * 80!r} has no verdict this worker remembers (the last 10 it published)"
    invalid = parse_event(answer(label="bad"))
    assert invalid.error == "label: Input should be 'defect', 'false_alarm' or 'unsure'"
    missing = parse_event({})
    assert missing.error == "record_id: Field required"
    long_field = parse_event({**answer(), "y" * 500: 1})
    assert len(long_field.error) == 300 and long_field.error.startswith("y" * 100)


def test_idempotency_keys_are_remembered_up_to_their_bound_oldest_forgotten_first():
    d = FeedbackDesk(VerdictMemory(10), max_age_s=3600.0, future_skew_s=60.0, keys=2)
    d.memory.remember(VERDICT)
    for key in ("a", "b", "c"):
        d.accepted(judged(d, idempotency_key=key))
    assert isinstance(judged(d, idempotency_key="a"), Joined)  # forgotten: the bound is 2
    assert isinstance(judged(d, idempotency_key="b"), Refusal) and isinstance(judged(d, idempotency_key="c"), Refusal)
    assert FeedbackDesk(VerdictMemory(1), 1.0, 1.0)._max_keys == 100_000


def test_answers_are_counted_per_unit_label_and_whether_the_verdict_alarmed():
    d = desk()
    d.memory.remember({**VERDICT, "record_id": "F07-2", "anomaly": False})
    d.accepted(judged(d))
    d.accepted(judged(d, record_id="F07-2", label="defect", idempotency_key="k-2"))
    d.accepted(judged(d, label="unsure", idempotency_key="k-3"))
    assert d.units == {("v1", VERDICT["group_id"]): {("false_alarm", "alarm"): 1, ("defect", "no_alarm"): 1,
                                                     ("unsure", "alarm"): 1}}


def test_a_memory_of_size_zero_remembers_nothing():
    memory = VerdictMemory(0)
    memory.remember(VERDICT)
    assert len(memory) == 0 and memory.get("F07-1") is None
    memory = VerdictMemory(1)
    memory.remember({k: v for k, v in VERDICT.items() if k != "record_id"})  # no id: nothing to answer
    assert len(memory) == 0


def test_the_clock_is_utc():
    from service.feedback import now_utc

    assert now_utc().utcoffset() == timedelta(0)


def test_counts_add_up_and_ages_are_told_to_a_tenth_of_an_hour():
    d = FeedbackDesk(VerdictMemory(10), max_age_s=60.0, future_skew_s=60.0)
    d.memory.remember(VERDICT)
    d.memory.remember({**VERDICT, "record_id": "F07-2"})
    d.max_age_s = 3600.0
    d.accepted(judged(d))
    d.accepted(judged(d, record_id="F07-2", idempotency_key="k-2"))
    assert d.units[("v1", VERDICT["group_id"])][("false_alarm", "alarm")] == 2
    d.max_age_s = 60.0
    late = judged(d, at=(NOW - timedelta(seconds=3780)).isoformat(), idempotency_key="k-9")
    assert "is 1.1 h old" in late.error  # 1.05 h, rounded up


def test_the_latest_answer_decides_what_training_leaves_out():
    from service.feedback import confirmed_defects

    answers = [
        {"record_id": "a", "label": "defect", "at": "2026-12-05T10:00:00.000+00:00"},
        {"record_id": "b", "label": "defect", "at": "2026-12-05T10:00:00.000+00:00"},
        {"record_id": "b", "label": "false_alarm", "at": "2026-12-05T11:00:00.000+00:00"},  # taken back
        {"record_id": "c", "label": "unsure", "at": "2026-12-05T10:00:00.000+00:00"},
        {"record_id": "d", "label": "defect", "at": "2026-12-05T12:00:00.000+00:00"},
        {"record_id": "d", "label": "false_alarm", "at": "2026-12-05T11:00:00.000+00:00"},  # older: does not count
        {"record_id": "e", "label": "false_alarm", "at": "2026-12-05T10:00:00.000+00:00", "received_at": "1"},
        {"record_id": "e", "label": "defect", "at": "2026-12-05T10:00:00.000+00:00", "received_at": "2"},  # same at: later kept
        {"record_id": 7, "label": "defect", "at": "2026-12-05T10:00:00.000+00:00"},
    ]
    assert confirmed_defects(answers) == {"a", "d", "e", "7"}


@pytest.mark.parametrize("line, expected", [
    ("{nope", "f.jsonl:2: not JSON"),
    ('{"record_id": "a"}', "f.jsonl:2: expected a feedback record with record_id and label (defect, false_alarm, unsure)"),
    ('{"record_id": null, "label": "defect"}', "f.jsonl:2: expected a feedback record"),
    ("[1]", "f.jsonl:2: expected a feedback record"),
])
def test_a_bad_feedback_line_is_named(line, expected):
    from model_store.errors import DataError
    from service.feedback import read_answers

    good = '{"record_id": "a", "label": "defect"}'
    assert read_answers([good, "", "  "], "f.jsonl") == [{"record_id": "a", "label": "defect"}]
    with pytest.raises(DataError) as caught:
        read_answers([good, line], "f.jsonl")
    assert str(caught.value).startswith(expected)


def _answer(record_id: str, label: str, score, anomaly=True, model_version="v1", at="2026-12-05T08:00:00.000+00:00",
            facility="F1", item="I1") -> dict:
    return {"record_id": record_id, "label": label, "at": at, "received_at": at,
            "verdict": {"model_version": model_version, "score": score, "anomaly": anomaly, "facility": facility,
                        "item": item}}


def test_answers_by_part_counts_the_latest_answer_of_each_shot_on_the_served_store():
    from service.feedback import answers_by_part

    answers = [
        _answer("a", "false_alarm", 1.5), _answer("b", "false_alarm", 1.6),
        _answer("b", "defect", 1.6, at="2026-12-05T09:00:00.000+00:00"),  # changed mind: a confirmed defect
        _answer("c", "defect", 0.4, anomaly=False),  # a defect found by hand: guards the line, no alarm
        _answer("d", "false_alarm", 0.7, anomaly=False),  # "false alarm" on no alarm: says nothing
        _answer("e", "unsure", 3.0), _answer("f", "false_alarm", 2.0, model_version="v0"),
        _answer("g", "false_alarm", float("nan")), _answer("h", "false_alarm", "1.5"), _answer("i", "false_alarm", True),
        _answer("j", "false_alarm", 1.9, facility=7),
    ]
    parts = answers_by_part(answers, "v1")
    assert list(parts) == [("F1", "I1")]
    part = parts[("F1", "I1")]
    assert part.false_alarms == [1.5] and part.alarmed_defects == [1.6] and sorted(part.defects) == [0.4, 1.6]
    later = answers_by_part(answers, "v1", since="2026-12-05T08:30:00.000+00:00")
    assert later[("F1", "I1")].false_alarms == [] and later[("F1", "I1")].alarmed_defects == [1.6]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "record_id": st.text(max_size=5), "label": st.sampled_from(["defect", "false_alarm", "unsure"]),
    "at": st.text(max_size=30),
    "verdict": st.one_of(st.none(), st.text(max_size=3), st.fixed_dictionaries({
        "model_version": st.sampled_from(["v1", "v2", None]),
        "score": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                           st.booleans(), st.integers()),
        "anomaly": st.one_of(st.booleans(), st.none(), st.integers()),
        "facility": st.one_of(st.text(max_size=3), st.integers(), st.none()),
        "item": st.one_of(st.text(max_size=3), st.none())}))}), max_size=30))
def test_answers_by_part_never_raises_and_keeps_only_finite_scores(answers):
    import math

    from service.feedback import answers_by_part

    for part in answers_by_part(answers, "v1").values():
        for scores in (part.false_alarms, part.alarmed_defects, part.defects):
            assert all(isinstance(s, float) and math.isfinite(s) for s in scores)
        assert len(part.alarmed_defects) <= len(part.defects)
