"""Source positions and ``supersedes`` (issue 17 item 8): the answered-ids memory as pure logic, and
the pipeline marking verdicts with the real scoring core (no servers: the adapters' side is proved
in test_worker.py and test_sources_kafka.py against the real ones)."""
from __future__ import annotations

from typing import Any

import jsonschema
import orjson
import pytest

from model_store.serving.scoring import ScoringEngine
from model_store.serving.store import open_store
from service.metrics import WorkerMetrics
from service.pipeline import Pipeline, SourceMessage
from service.supersede import AnsweredIds, is_older, mongo_document_id
from tests.support.worker_helpers import VERDICT_SCHEMA, plant_documents


def kafka(offset: int, partition: int = 0, topic: str = "raw") -> dict[str, Any]:
    return {"kind": "kafka", "topic": topic, "partition": partition, "offset": offset}


def mongo(t: int, i: int, operation: str = "insert", doc: str = "a" * 24) -> dict[str, Any]:
    return {"kind": "mongodb", "operation": operation, "cluster_time": {"t": t, "i": i},
            "event_id": f"{t:08x}{i:08x}", "document_id": doc}


def backfill(doc: str = "a" * 24) -> dict[str, Any]:
    return {"kind": "mongodb", "operation": "backfill", "cluster_time": None, "event_id": None, "document_id": doc}


def test_a_later_position_supersedes_and_names_the_earlier_one():
    ids = AnsweredIds(10)
    assert ids.answer("r1", mongo(100, 1)) is None
    assert ids.answer("r1", mongo(100, 2, "update")) == mongo(100, 1)
    assert ids.answer("r1", mongo(101, 1, "replace")) == mongo(100, 2, "update")
    assert ids.answer("r2", kafka(5)) is None
    assert ids.answer("r2", kafka(9)) == kafka(5)


def test_a_replay_at_the_same_position_gets_the_same_answer_as_the_first_time():
    ids = AnsweredIds(10)
    assert ids.answer("r1", kafka(5)) is None
    assert ids.answer("r1", kafka(5)) is None  # re-scored after a store reload: not a supersede
    assert ids.answer("r1", kafka(9)) == kafka(5)
    assert ids.answer("r1", kafka(9)) == kafka(5)  # the superseding verdict replayed: still superseding the same one


def test_a_partition_re_read_from_an_older_offset_supersedes_nothing():
    ids = AnsweredIds(10)
    ids.answer("r1", kafka(5))
    ids.answer("r1", kafka(9))
    assert ids.answer("r1", kafka(5)) is None  # a rebalance re-read behind what was answered since
    assert ids.answer("r1", kafka(9)) == kafka(5)  # the memory still holds the newest answer
    # Another partition is another stream: no order between them, so a later answer supersedes.
    assert ids.answer("r1", kafka(1, partition=3)) == kafka(9)


def test_backfilled_positions_have_no_order_and_supersede_stream_ones():
    ids = AnsweredIds(10)
    ids.answer("r1", mongo(100, 1))
    assert not is_older(backfill(), mongo(100, 1)) and not is_older(mongo(100, 1), backfill())
    assert ids.answer("r1", backfill()) == mongo(100, 1)
    assert ids.answer("r1", backfill()) == mongo(100, 1)  # the same document backfilled again: a replay


def test_the_memory_is_bounded_least_recently_answered_first():
    ids = AnsweredIds(2)
    ids.answer("r1", kafka(1))
    ids.answer("r2", kafka(2))
    ids.answer("r1", kafka(3))  # r1 is the most recent now
    ids.answer("r3", kafka(4))  # evicts r2
    assert len(ids) == 2
    assert ids.answer("r2", kafka(5)) is None  # forgotten: the durable signals are operation and position
    assert ids.answer("r3", kafka(6)) == kafka(4)  # r2's return evicted r1, the least recent; r3 is still known
    assert AnsweredIds(0).answer("r1", kafka(1)) is None and AnsweredIds(0).answer("r1", kafka(2)) is None


def test_document_ids_are_bounded_and_json_safe():
    from bson import ObjectId

    oid = ObjectId()
    assert mongo_document_id(oid) == str(oid)
    assert mongo_document_id(42) == 42 and mongo_document_id(2**60) == str(2**60)
    assert len(mongo_document_id("x" * 10_000)) == 256


@pytest.fixture(scope="module")
def engine(trained_store) -> ScoringEngine:
    return ScoringEngine(open_store(trained_store))


def test_the_pipeline_marks_sources_and_supersedes_and_a_replayed_batch_serialises_identically(
        engine, small_plant, trained_store):
    schema = small_plant.schema
    docs = plant_documents(small_plant, 4, "sup", offset=2000)
    again = dict(docs[1])  # the same shot id inserted a second time, later in the same batch
    batch = [SourceMessage(d, source=kafka(k)) for k, d in enumerate(docs)] + [SourceMessage(again, source=kafka(7))]
    bad = SourceMessage({schema.record_id: "sup-bad"}, source=kafka(8))  # a dead letter keeps its source too
    pipeline = Pipeline(engine, answered=AnsweredIds(100))
    result = pipeline.run_batch(batch + [bad])
    verdicts = result.verdicts
    for verdict in verdicts:
        jsonschema.validate(verdict, VERDICT_SCHEMA)
    assert [v["source"]["offset"] for v in verdicts] == [0, 1, 2, 3, 7]
    assert [v["supersedes"] for v in verdicts] == [False, False, False, False, True]
    assert verdicts[4]["record_id"] == docs[1][schema.record_id] and verdicts[4]["previous_source"] == kafka(1)
    assert result.failed[0].source == kafka(8)
    # Re-scored (the store broke under the batch, a partition re-read): byte for byte the same
    # source and supersede fields.
    replay = pipeline.run_batch(batch)
    keep = ("record_id", "source", "supersedes", "previous_source")
    assert [{k: v for k, v in orjson.loads(s.payload).items() if k in keep} for s in replay.scored] == \
           [{k: v for k, v in orjson.loads(s.payload).items() if k in keep} for s in result.scored]
    # POST /score: source http, never supersedes, leaves the memory alone.
    answered = len(pipeline.answered)
    scored = pipeline.score_document(docs[0])
    assert scored["source"] == {"kind": "http"} and "supersedes" not in scored
    jsonschema.validate(scored, VERDICT_SCHEMA)
    assert len(pipeline.answered) == answered
    # Without a source (benches, offline callers) a verdict is as it was.
    assert "source" not in Pipeline(engine).run_batch([SourceMessage(docs[0])]).verdicts[0]


def test_late_records_move_the_event_time_lag_not_the_processing_or_end_to_end_latency():
    metrics = WorkerMetrics()
    now = 1_800_000_000.0
    # An hour-old shot, read at once from a fresh change event and acknowledged 20 ms later.
    metrics.observe_latency(record_time=now - 3600, received_at=now, acked_at=now + 0.02, event_time=now - 0.5)
    # A source clock ahead of ours never makes end-to-end shorter than processing.
    metrics.observe_latency(record_time=now, received_at=now, acked_at=now + 0.02, event_time=now + 5)
    sample = metrics.registry.get_sample_value
    assert sample("moldwatch_processing_seconds_bucket", {"le": "0.025"}) == 2
    assert sample("moldwatch_end_to_end_seconds_bucket", {"le": "0.5"}) == 1
    assert sample("moldwatch_end_to_end_seconds_bucket", {"le": "1.0"}) == 2
    assert sample("moldwatch_event_time_lag_seconds_bucket", {"le": "900.0"}) == 1
    assert sample("moldwatch_event_time_lag_seconds_bucket", {"le": "3600.0"}) == 1
    assert sample("moldwatch_event_time_lag_seconds_bucket", {"le": "14400.0"}) == 2
