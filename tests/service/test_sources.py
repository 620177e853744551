"""Pure parts of the sources: Kafka value parsing, token classification, position compaction."""
from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from bson import ObjectId, json_util
from pymongo.errors import AutoReconnect, OperationFailure

from service.sources.kafka import KafkaSource, encode_document, parse_value
from service.sources.mongo import MongoPosition, MongoSource, token_unusable

DOC = {"_id": ObjectId("6b0518ffc15a762ceb0939d4"), "shot_id": "S1", "timestamp": datetime(2026, 1, 5, tzinfo=UTC), "x": 1.5}


def test_plain_documents_in_extended_json_become_bson_types():
    document, error, is_record = parse_value(encode_document(DOC))
    assert (error, is_record) == (None, True)
    assert document == DOC  # $oid -> ObjectId, $date -> aware UTC datetime


@pytest.mark.parametrize("operation", ["insert", "update", "replace"])
def test_change_event_envelopes_yield_their_full_document(operation):
    event = {"_id": {"_data": "826..."}, "operationType": operation, "fullDocument": DOC, "ns": {"db": "d", "coll": "c"},
             "documentKey": {"_id": DOC["_id"]}}
    assert parse_value(json_util.dumps(event).encode()) == (DOC, None, True)


def test_deletes_and_tombstones_carry_no_record():
    event = {"operationType": "delete", "documentKey": {"_id": 1}, "ns": {"db": "d", "coll": "c"}}
    assert parse_value(json.dumps(event).encode()) == (None, None, False)
    assert parse_value(None) == (None, None, False)


def test_connect_json_converter_envelope_and_double_encoded_strings_are_unwrapped():
    inner = json_util.dumps(DOC)
    wrapped = json.dumps({"schema": {"type": "string"}, "payload": inner}).encode()
    assert parse_value(wrapped)[0] == DOC
    assert parse_value(json.dumps(inner).encode())[0] == DOC


def test_values_that_are_not_json_are_reported_with_their_text():
    document, error, is_record = parse_value(b"\xff{not json")
    assert is_record and error.startswith("value is not JSON") and "not json" in document


def test_only_refusals_of_the_token_count_as_lost_history():
    assert token_unusable(OperationFailure("history lost", code=286), had_token=True)
    assert token_unusable(OperationFailure("bad token", code=260), had_token=True)
    assert token_unusable(OperationFailure("cannot parse resume token"), had_token=True)  # servers without codes
    assert not token_unusable(OperationFailure("auth", code=18), had_token=True)
    assert not token_unusable(OperationFailure("stepdown", code=11602), had_token=True)
    assert not token_unusable(OperationFailure("x", code=286), had_token=False)
    assert not token_unusable(AutoReconnect("network"), had_token=True)
    resumable = OperationFailure("retry me", code=1234, details={"errorLabels": ["ResumableChangeStreamError"]})
    assert not token_unusable(resumable, had_token=True)


def test_mongo_positions_compact_to_newest_token_and_newest_record():
    compact = MongoSource.compact(None, [  # type: ignore[arg-type]
        MongoPosition({"t": 1}, "ts1", "r1", True),
        MongoPosition({"t": 2}, "ts2", "r2", True),
        MongoPosition({"t": 3}),  # a marker: position moves, no record
    ])
    assert compact == [MongoPosition({"t": 3}, "ts2", "r2", True)]
    # While backfilling, the newest position has no token: the checkpoint must not get one.
    backfill = MongoSource.compact(None, [MongoPosition({"t": 9}), MongoPosition(None, "ts3", "r3", True)])  # type: ignore[arg-type]
    assert backfill == [MongoPosition(None, "ts3", "r3", True)]


def test_kafka_positions_compact_to_the_highest_offset_per_partition():
    positions = [("t", 0, 5), ("t", 1, 3), ("t", 0, 7), ("t", 1, 2)]
    assert sorted(KafkaSource.compact(None, positions)) == [("t", 0, 7), ("t", 1, 3)]  # type: ignore[arg-type]


class IdleStream:
    """A change stream with no events whose post-batch resume token keeps moving (a real server)."""

    def __init__(self, polls: int) -> None:
        self.polls, self.resume_token, self.alive = polls, None, True

    async def try_next(self):
        self.polls -= 1
        self.alive = self.polls > 0
        self.resume_token = {"_data": f"{self.polls:04d}"}
        await asyncio.sleep(0.05)
        return None


async def test_an_idle_stream_checkpoints_its_post_batch_token():
    from model_store.schema import parse_schema
    from service.config import WorkerSettings
    from service.metrics import WorkerMetrics

    schema = parse_schema({"record_id": "id", "timestamp": "ts", "facility": "f", "item": "i", "maker": {"constant": "m"},
                           "makers": {"m": {"settings": ["s"], "production": ["p"]}}})
    settings = WorkerSettings(_env_file=None, checkpoint_interval_s=0, mongo_uri="mongodb://127.0.0.1:9")  # type: ignore[call-arg]
    source = MongoSource(settings, schema, WorkerMetrics())
    emitted = []

    async def emit(message):
        emitted.append(message)

    try:
        await source._follow(IdleStream(polls=30), emit)  # ~1.5 s of idle polling
    finally:
        await source.close()
    assert emitted and all(m.marker and m.document is None for m in emitted)
    assert len(emitted) <= 2  # throttled: at most one token checkpoint a second
    assert emitted[-1].position.token["_data"] < "0030" and not emitted[-1].position.has_record


async def test_both_sources_have_the_whole_protocol_and_what_they_do_not_support_is_a_no_op(small_plant):
    from aiokafka import TopicPartition

    from service.config import WorkerSettings
    from service.metrics import WorkerMetrics
    from service.sources import Source

    settings = WorkerSettings(_env_file=None)  # type: ignore[call-arg]
    kafka, mongo = KafkaSource(settings, WorkerMetrics()), MongoSource(settings, small_plant.schema, WorkerMetrics())
    try:
        members = {name for name in vars(Source) if not name.startswith("_")} | set(Source.__annotations__)
        for source in (kafka, mongo):
            assert {m for m in members if not hasattr(source, m)} == set(), type(source).__name__
        positions = [MongoPosition({"t": 1}, "ts1", "r1", True)]
        assert mongo.offsets(positions) == {}  # a change stream has no consumer offsets...
        assert mongo.drop(positions, {TopicPartition("t", 0)}) == positions  # ...and no partitions to revoke
        assert await mongo.wait_materialized({("t", 0): 5}, 1.0) == []
        assert kafka.checkpoint_fields(("t", 0, 5)) is None  # its checkpoint is the consumer offsets
        assert mongo.checkpoint_fields(positions[0])["last_record_id"] == "r1"
    finally:
        await mongo.close()
