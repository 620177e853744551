"""Verdicts say where their record was read and which earlier verdict they replace (issue 17 item 8),
against the real Kafka broker and MongoDB-protocol server: an update in place and a shot id inserted
twice are marked ``supersedes`` with a greater position; a replay after a SIGKILL is not a new
supersede (same position, same answer); a late record moves the event-time lag, not the
processing-time latency the alert watches."""
from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
from pymongo import AsyncMongoClient

from service.sources.kafka import encode_document
from tests.service.test_sources_kafka import create_topic
from tests.service.test_worker import acknowledged, read_to_end
from tests.support.worker_helpers import (
    VERDICT_SCHEMA,
    metric,
    plant_documents,
    produce,
    read_topic,
    running_worker,
    unique,
    values,
    wait_for,
    worker_settings,
)
from tests.support.worker_process import WorkerProcess

pytestmark = [pytest.mark.servers, pytest.mark.timeout(240)]


def cluster(verdict: dict[str, Any]) -> tuple[int, int]:
    ct = verdict["source"]["cluster_time"]
    return ct["t"], ct["i"]


def bucket(worker: Any, name: str, le: str) -> float:
    return worker.metrics.registry.get_sample_value(f"{name}_bucket", {"le": le}) or 0.0


async def test_updates_and_repeated_ids_supersede_and_late_records_move_only_the_event_time_lag(
        mongo_server, kafka_server, trained_store, small_plant):
    name = unique("supersede")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name)
    schema = small_plant.schema
    documents = plant_documents(small_plant, 4, name)
    twin = {**documents[3], schema.record_id: documents[0][schema.record_id]}  # the same shot id, a second document
    late = plant_documents(small_plant, 1, f"{name}-late", start=datetime.now(UTC) - timedelta(hours=1),
                           offset=10)[0]
    updated = documents[1]
    field = schema.makers[updated[schema.maker_column]].production[0]
    client = AsyncMongoClient(mongo_server.uri)
    try:
        async with running_worker(settings) as worker:
            collection = client[settings.mongo_database][settings.mongo_collection]
            await collection.insert_many(documents[:3])
            await wait_for(acknowledged(worker, 3))  # the first answers are out before their revisions arrive
            await collection.insert_one(twin)
            await collection.update_one({"_id": updated["_id"]}, {"$set": {field: float(updated[field]) * 3 + 1}})
            await collection.insert_one(late)
            await wait_for(acknowledged(worker, 6))
            count = metric(worker, "moldwatch_processing_seconds_count")
            # The hour-old shot: processing and end-to-end stay far below the top of their range
            # (nothing in the 60 s+ buckets), the event-time lag has it past 15 minutes.
            assert count == 6
            assert bucket(worker, "moldwatch_processing_seconds", "60.0") == count
            assert bucket(worker, "moldwatch_end_to_end_seconds", "60.0") == count
            assert bucket(worker, "moldwatch_event_time_lag_seconds", "900.0") == count - 1
            assert bucket(worker, "moldwatch_event_time_lag_seconds", "14400.0") == count
    finally:
        await client.close()

    verdicts = values(await read_to_end(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic))
    assert len(verdicts) == 6
    for verdict in verdicts:
        jsonschema.validate(verdict, VERDICT_SCHEMA)
        assert verdict["source"]["kind"] == "mongodb" and verdict["source"]["event_id"]
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for verdict in sorted(verdicts, key=cluster):
        by_id[verdict["record_id"]].append(verdict)
    first, second = by_id[documents[0][schema.record_id]]
    assert first["supersedes"] is False and first["source"]["document_id"] == str(documents[0]["_id"])
    assert second["supersedes"] is True and second["source"]["document_id"] == str(twin["_id"])
    assert second["source"]["operation"] == "insert" and second["previous_source"] == first["source"]
    assert cluster(second) > cluster(first)
    original, revision = by_id[updated[schema.record_id]]
    # The server under test reports a $set as "update"; MongoDB too ("replace" for replace_one).
    assert revision["source"]["operation"] in ("update", "replace") and revision["supersedes"] is True
    assert revision["previous_source"] == original["source"] and cluster(revision) > cluster(original)
    assert revision["source"]["document_id"] == original["source"]["document_id"] == str(updated["_id"])
    (late_verdict,) = by_id[late[schema.record_id]]
    assert late_verdict["supersedes"] is False


async def test_a_replay_after_a_kill_repeats_each_position_with_the_same_supersede_answer(
        mongo_server, kafka_server, trained_store, small_plant, tmp_path):
    """At-least-once, SIGKILLed before any checkpoint after the start: the restarted worker re-reads
    every event. Each position's copies agree on ``supersedes`` and ``previous_source``: a replay is
    never a new supersede, and the genuine one (a repeated shot id) is found again."""
    name = unique("replay")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, checkpoint_interval_s=3600)
    schema = small_plant.schema
    documents = plant_documents(small_plant, 20, name)
    documents.append({**documents[5], schema.record_id: documents[2][schema.record_id]})  # the same shot id, again
    client = AsyncMongoClient(mongo_server.uri)
    bootstrap, topic = kafka_server.bootstrap_servers, settings.kafka_verdicts_topic

    def published(count: int) -> Any:
        async def condition() -> bool:
            return len(await read_to_end(bootstrap, topic)) >= count
        return condition

    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.start()
        await worker.wait_ready()
        await client[settings.mongo_database][settings.mongo_collection].insert_many(documents)
        await wait_for(published(len(documents)), timeout=120, interval=0.3)
        worker.kill()  # verdicts out, no checkpoint past the starting position: everything is read again
        first_run = len(await read_to_end(bootstrap, topic))
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        await worker.wait_ready()
        await wait_for(published(first_run + len(documents)), timeout=120, interval=0.3)
        assert worker.terminate() == 0, worker.tail()
    finally:
        worker.kill()
        await client.close()
    verdicts = values(await read_to_end(bootstrap, topic))
    by_position: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for verdict in verdicts:
        by_position[verdict["source"]["event_id"]].append(verdict)
    assert len(by_position) == len(documents) and all(len(copies) >= 2 for copies in by_position.values())
    for copies in by_position.values():
        answers = {json.dumps([v["supersedes"], v.get("previous_source")]) for v in copies}
        assert len(answers) == 1, copies  # same position, same answer, in both processes
    superseding = [copies[0] for copies in by_position.values() if copies[0]["supersedes"]]
    assert [v["record_id"] for v in superseding] == [documents[2][schema.record_id]]
    assert superseding[0]["previous_source"]["document_id"] != superseding[0]["source"]["document_id"]


async def test_kafka_source_verdicts_carry_topic_partition_offset_and_supersede_by_offset(
        mongo_server, kafka_server, trained_store, small_plant):
    name = unique("ksup")
    bootstrap = kafka_server.bootstrap_servers
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, source="kafka", start_from="beginning")
    schema = small_plant.schema
    documents = plant_documents(small_plant, 4, name)
    key = lambda doc: str(doc[schema.facility]).encode()  # the connector's key: the facility
    revision = json.dumps({"_id": {"_data": "01"}, "operationType": "update", "ns": {"db": "p", "coll": "shots"},
                           "documentKey": {"_id": 1}, "fullDocument": json.loads(encode_document(documents[1]))})
    payloads = [(key(d), encode_document(d)) for d in documents]
    payloads += [(key(documents[1]), revision.encode()), (key(documents[0]), encode_document(documents[0])),
                 (key(documents[0]), b"not json")]
    await create_topic(bootstrap, settings.kafka_records_topic, 1)
    await produce(bootstrap, settings.kafka_records_topic, payloads)
    async with running_worker(settings):
        verdicts = values(await read_topic(bootstrap, settings.kafka_verdicts_topic, 6))
        verdicts.sort(key=lambda v: v["source"]["offset"])  # the verdicts topic may have several partitions
        (letter,) = values(await read_topic(bootstrap, settings.kafka_dead_letters_topic, 1))
    for verdict in verdicts:
        jsonschema.validate(verdict, VERDICT_SCHEMA)
    topic = settings.kafka_records_topic
    assert [v["source"] for v in verdicts[:4]] == [{"kind": "kafka", "topic": topic, "partition": 0, "offset": k}
                                                    for k in range(4)]
    assert [v["supersedes"] for v in verdicts] == [False] * 4 + [True, True]
    update, again = verdicts[4:]
    assert update["record_id"] == documents[1][schema.record_id] and update["source"]["operation"] == "update"
    assert update["source"]["offset"] == 4 and update["previous_source"] == verdicts[1]["source"]
    assert again["record_id"] == documents[0][schema.record_id] and again["previous_source"]["offset"] == 0
    assert letter["source"] == {"kind": "kafka", "topic": topic, "partition": 0, "offset": 6}
