"""The batch step: raw messages -> verdicts and dead letters, with the real scoring core."""
from __future__ import annotations

import asyncio
import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_store.errors import StoreError
from model_store.serving.scoring import ScoringEngine
from model_store.serving.store import open_store
from service.decode import INVALID_FIELD, MISSING_FIELD, REASONS, SCORING_FAILED, UNDECODABLE, UNKNOWN_MAKER
from service.pipeline import Pipeline, SourceMessage
from tests.support.worker_helpers import VERDICT_SCHEMA, plant_documents


@pytest.fixture(scope="module")
def engine(trained_store) -> ScoringEngine:
    return ScoringEngine(open_store(trained_store))


@pytest.fixture(scope="module")
def documents(small_plant) -> list[dict[str, Any]]:
    return plant_documents(small_plant, 400, "pipe", offset=1000)


def messages(docs: list[Any]) -> list[SourceMessage]:
    return [SourceMessage(d) for d in docs]


def test_a_batch_yields_one_valid_verdict_per_good_record_and_dead_letters_for_the_rest(engine, documents, small_plant):
    schema = small_plant.schema
    bad = [
        {k: v for k, v in documents[0].items() if k != schema.timestamp},
        {**documents[1], schema.maker_column: "NOBODY"},
        {**documents[2], schema.makers[documents[2][schema.maker_column]].production[0]: "hot"},
        ["not", "a", "document"],
    ]
    batch = messages(documents[3:200] + bad) + [SourceMessage("{oops", error="value is not JSON")]
    result = Pipeline(engine).run_batch(batch)
    assert [v["record_id"] for v in result.verdicts] == [d[schema.record_id] for d in documents[3:200]]
    for verdict in result.verdicts:
        jsonschema.validate(verdict, VERDICT_SCHEMA)
        assert verdict["model_version"] == engine.model_version
    assert [d.reason for d in result.dead_letters] == [MISSING_FIELD, UNKNOWN_MAKER, INVALID_FIELD, "not_a_document", UNDECODABLE]
    assert not result.fallback and result.seconds > 0
    assert {v["resolution"] for v in result.verdicts} <= set(VERDICT_SCHEMA["properties"]["resolution"]["enum"])
    assert {v["resolution"] for v in result.verdicts} != {"unscorable"}  # the store judges its own plant


def test_markers_carry_positions_but_no_records(engine, documents):
    result = Pipeline(engine).run_batch([SourceMessage(None, position="t1", marker=True), SourceMessage(documents[5])])
    assert len(result.verdicts) == 1 and not result.dead_letters


def test_facility_memory_carries_state_across_batches(engine, documents, small_plant):
    schema = small_plant.schema
    pipeline = Pipeline(engine)
    first = documents[10]
    (complete,) = pipeline.run_batch(messages([first])).verdicts
    after_first = copy.deepcopy(pipeline.memory)
    maker = first[schema.maker_column]
    gap = {k: v for k, v in first.items() if k not in (schema.item, *schema.makers[maker].settings)}
    gap[schema.record_id] = "gap-1"
    (verdict,) = pipeline.run_batch(messages([gap])).verdicts
    assert verdict["item"] == first[schema.item]
    assert schema.item.lower() in verdict["imputed"] or "item" in verdict["imputed"]
    assert set(schema.makers[maker].settings) <= set(verdict["imputed"])
    # the remembered state is the machine's real one: the gap is judged exactly like the complete
    # record coming a second time (its part's running baseline has seen the first one)
    again = Pipeline(engine)
    again.memory = after_first
    (repeat,) = again.run_batch(messages([{**first, schema.record_id: "again-1"}])).verdicts
    for key in ("setting_cluster", "group_id", "resolution", "loss", "anomaly"):
        assert verdict[key] == repeat[key], key
    assert complete["group_id"] == verdict["group_id"] and complete["setting_cluster"] == verdict["setting_cluster"]


def test_score_document_reads_but_never_changes_the_stream_memory(engine, documents):
    pipeline = Pipeline(engine)
    pipeline.run_batch(messages(documents[20:25]))
    before = {f: dict(s) for f, s in pipeline.memory.items()}
    verdict = pipeline.score_document(documents[30])
    assert isinstance(verdict, dict) and verdict["record_id"] == documents[30]["shot_id"]
    assert pipeline.memory == before


class PoisonedEngine:
    """The real engine, except that it raises for any batch holding a record id starting 'poison'."""

    def __init__(self, engine: ScoringEngine, error: Exception) -> None:
        self._engine, self._error = engine, error
        self.schema, self.model_version = engine.schema, engine.model_version

    def score(self, records, **kwargs):
        if any(str(r).startswith("poison") for r in records["record_id"]):
            raise self._error
        return self._engine.score(records, **kwargs)


def test_a_batch_that_raises_is_rescored_record_by_record_and_only_offenders_dead_letter(engine, documents):
    pipeline = Pipeline(PoisonedEngine(engine, ValueError("boom")))  # type: ignore[arg-type]
    poisoned = {**documents[40], "shot_id": "poison-1"}
    result = pipeline.run_batch(messages(documents[41:60] + [poisoned]))
    assert result.fallback
    assert len(result.verdicts) == 19
    (letter,) = result.dead_letters
    assert letter.reason == SCORING_FAILED and "boom" in letter.error and letter.document is poisoned


def test_a_store_error_is_not_the_records_fault_and_propagates(engine, documents):
    pipeline = Pipeline(PoisonedEngine(engine, StoreError("artifact missing")))  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        pipeline.run_batch(messages([{**documents[0], "shot_id": "poison-2"}]))


def test_swap_serves_the_new_store_from_the_next_batch_and_keeps_memory(engine, trained_store, documents):
    pipeline = Pipeline(engine)
    pipeline.run_batch(messages(documents[60:70]))
    memory = pipeline.memory
    other = ScoringEngine(open_store(trained_store))
    other.model_version = "swapped"
    pipeline.swap(other)
    (verdict,) = pipeline.run_batch(messages([documents[70]])).verdicts
    assert verdict["model_version"] == "swapped" and pipeline.memory is memory


async def test_process_runs_in_the_executor(engine, documents):
    with ThreadPoolExecutor(1) as pool:
        pipeline = Pipeline(engine, pool)
        result = await pipeline.process(messages(documents[80:90]))
    assert len(result.verdicts) == 10
    assert asyncio.get_running_loop().is_running()


# -- property: anything in, exactly one verdict or one dead letter out, never an exception --------
json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
numbers = st.floats() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats(min_value=-1e6, max_value=1e6).map(str)


@st.composite
def plant_like(draw, base_docs, schema):
    """A real plant document with a few fields replaced (numbers, junk, deletions)."""
    doc = dict(draw(st.sampled_from(base_docs)))
    fields = sorted(doc)
    for name in draw(st.lists(st.sampled_from(fields), max_size=4, unique=True)):
        choice = draw(st.integers(0, 2))
        if choice == 0:
            doc.pop(name)
        elif choice == 1:
            doc[name] = draw(numbers)
        else:
            doc[name] = draw(json_like)
    return doc


def test_any_document_yields_a_verdict_or_a_dead_letter(engine, documents, small_plant):
    pipeline = Pipeline(engine)
    strategy = st.lists(st.one_of(json_like, plant_like(documents[:50], small_plant.schema)), min_size=1, max_size=8)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(strategy)
    def check(batch):
        result = pipeline.run_batch(messages(batch))
        assert len(result.verdicts) + len(result.dead_letters) == len(batch)
        for verdict in result.verdicts:
            jsonschema.validate(verdict, VERDICT_SCHEMA)
        for letter in result.dead_letters:
            # every message here was read fine and the scoring core must take whatever decodes:
            # "undecodable" or "scoring_failed" would be a bug, not the record's fault
            assert letter.reason in REASONS and letter.reason not in (UNDECODABLE, SCORING_FAILED), (letter.reason, letter.error)

    check()


# -- property: a valid mapped document always gets a verdict ---------------------------------------
padding = st.sampled_from(["", " ", "\t", "  "])
gap = st.sampled_from([None, "", "   ", "nan", float("nan")])


@st.composite
def valid_plant_document(draw, base_docs, schema):
    """A real plant document with numeric fields changed to other valid forms: numbers, padded
    numeric text, gaps, deletions; item and setting fields may be missing (imputed per facility)."""
    doc = dict(draw(st.sampled_from(base_docs)))
    maker = doc[schema.maker_column]
    numeric = [*schema.makers[maker].settings, *schema.makers[maker].production]
    for name in draw(st.lists(st.sampled_from(numeric), max_size=6, unique=True)):
        value = doc.get(name, 1.0)
        choice = draw(st.integers(0, 4))
        if choice == 0:
            doc.pop(name, None)
        elif choice == 1:
            doc[name] = draw(gap)
        elif choice == 2:
            doc[name] = draw(padding) + repr(float(value)) + draw(padding)
        elif choice == 3:
            doc[name] = draw(st.floats(-1e12, 1e12, allow_nan=False))
        else:
            doc[name] = int(value)
    if draw(st.booleans()):
        doc.pop(schema.item, None)
    return doc


def test_a_valid_document_always_yields_a_verdict(engine, documents, small_plant):
    pipeline = Pipeline(engine)
    strategy = st.lists(valid_plant_document(documents[:50], small_plant.schema), min_size=1, max_size=8)

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(strategy)
    def check(batch):
        result = pipeline.run_batch(messages(batch))
        assert [(d.reason, d.error) for d in result.dead_letters] == []
        assert [v["record_id"] for v in result.verdicts] == [d[small_plant.schema.record_id] for d in batch]
        assert not result.fallback  # no record made the batch raise
        for verdict in result.verdicts:
            jsonschema.validate(verdict, VERDICT_SCHEMA)

    check()


def test_a_misspelled_field_is_logged_once_with_the_field_it_resembles(engine, documents, small_plant):
    from structlog.testing import capture_logs

    schema = small_plant.schema
    field = schema.makers[documents[0][schema.maker_column]].production[0]
    typo = {k: v for k, v in documents[0].items() if k != field} | {field[:-1]: documents[0][field]}
    pipeline = Pipeline(engine)
    with capture_logs() as logs:
        first = pipeline.run_batch(messages([typo, documents[1]]))
        pipeline.run_batch(messages([typo]))
    warned = [e for e in logs if e["event"] == "record field not in the plant schema"]
    assert [(e["field"], e["did_you_mean"]) for e in warned] == [(field[:-1], field)]
    assert field in first.verdicts[0]["imputed"]  # the record is still scored, the gap imputed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 10**6), value=st.sampled_from([1e308, -1e308, 9223372036854775807, -9223372036854775808,
                                                           1e12, -1e12, "1e300", " -1e300 "]))
def test_a_set_point_far_beyond_anything_ever_run_is_never_silently_normal(engine, documents, small_plant, which, value):
    """A set point the maker never came near (a unit error, a corrupt register) is an alarm or a
    dead letter, whichever setting field it hits."""
    schema = small_plant.schema
    document = dict(documents[which % len(documents)])
    fields = schema.makers[document[schema.maker_column]].settings
    document[fields[which % len(fields)]] = value
    with np.errstate(all="raise"):  # no overflow warning on the way either
        result = Pipeline(engine).run_batch(messages([document]))
    assert len(result.verdicts) + len(result.dead_letters) == 1
    for verdict in result.verdicts:
        assert verdict["anomaly"] is True or verdict["resolution"] == "unscorable", verdict


def test_a_candidate_that_raises_loses_only_its_shadow_verdicts_and_says_so(engine, documents):
    """Shadow canary: a candidate store on trial that raises never touches the served verdicts;
    the batch says its shadow failed (the worker counts it in moldwatch_shadow_failed_batches)."""

    class Raising(ScoringEngine):
        def score(self, *_: Any, **__: Any) -> Any:
            raise RuntimeError("candidate broke")

    pipeline = Pipeline(engine)
    served = pipeline.run_batch(messages(documents[:50]), track=True)
    pipeline.shadow = copy.copy(engine)
    pipeline.shadow.__class__ = Raising
    pipeline.memory, pipeline.shadow_memory = {}, {}
    result = pipeline.run_batch(messages(documents[:50]), track=True)
    assert result.shadow_failed and result.shadow == [] and not result.fallback
    assert [v["score"] for v in result.verdicts] == [v["score"] for v in served.verdicts]
    pipeline.shadow = engine
    healthy = pipeline.run_batch(messages(documents[50:60]), track=True)
    assert not healthy.shadow_failed and len(healthy.shadow) == 10
