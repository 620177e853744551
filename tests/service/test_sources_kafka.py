"""The Kafka source (scale-out path): raw records from a topic, consumed as a consumer group."""
from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from bson import json_util

from service.sources.kafka import encode_document
from tests.support.worker_helpers import (
    VERDICT_SCHEMA,
    metric,
    plant_documents,
    produce,
    read_topic,
    running_worker,
    unique,
    values,
    worker_settings,
)

pytestmark = [pytest.mark.servers, pytest.mark.timeout(240)]


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return sum([(await consumer.committed(TopicPartition(topic, p))) or 0 for p in range(partitions)])
    finally:
        await consumer.stop()


def connector_messages(documents: list[dict], facility: str) -> list[tuple[bytes | None, bytes]]:
    """The shapes the MongoDB Kafka source connector produces, in turn: plain documents, change
    events, and change events wrapped by Kafka Connect's JsonConverter."""
    out = []
    for i, doc in enumerate(documents):
        key = str(doc[facility]).encode()
        if i % 3 == 0:
            value = encode_document(doc)
        elif i % 3 == 1:
            value = json_util.dumps({"_id": {"_data": f"{i:08x}"}, "operationType": "insert", "fullDocument": doc,
                                     "ns": {"db": "plant", "coll": "shots"}, "documentKey": {"_id": i}}).encode()
        else:
            value = json.dumps({"schema": {"type": "string"}, "payload": json_util.dumps(doc)}).encode()
        out.append((key, value))
    return out


async def test_kafka_source_scores_every_record_and_commits_offsets_after_acks(mongo_server, kafka_server, trained_store,
                                                                                small_plant):
    name = unique("ksrc")
    bootstrap = kafka_server.bootstrap_servers
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, source="kafka", start_from="beginning")
    schema = small_plant.schema
    documents = plant_documents(small_plant, 200, name)
    await create_topic(bootstrap, settings.kafka_records_topic, 1)
    payloads = connector_messages(documents[:150], schema.facility)
    payloads.insert(40, (b"F01", json.dumps({"operationType": "delete", "documentKey": {"_id": 1}, "ns": {}}).encode()))
    payloads.insert(80, (None, b"definitely not json"))
    await produce(bootstrap, settings.kafka_records_topic, payloads)
    async with running_worker(settings) as worker:
        verdicts = values(await read_topic(bootstrap, settings.kafka_verdicts_topic, 150))
        letters = values(await read_topic(bootstrap, settings.kafka_dead_letters_topic, 1, timeout=20))
        ready = await worker.readiness()
    assert ready[0], ready[1]
    assert sorted(v["record_id"] for v in verdicts) == sorted(d[schema.record_id] for d in documents[:150])
    for verdict in verdicts:
        jsonschema.validate(verdict, VERDICT_SCHEMA)
    assert [(d["reason"], d["document"]) for d in letters] == [("undecodable", "definitely not json")]
    assert await committed(bootstrap, settings.kafka_group_id, settings.kafka_records_topic, 1) == 152

    # A restarted worker of the same group continues after the committed offsets: no reprocessing.
    await produce(bootstrap, settings.kafka_records_topic, connector_messages(documents[150:], schema.facility))
    async with running_worker(settings) as worker:
        verdicts = values(await read_topic(bootstrap, settings.kafka_verdicts_topic, 200))
    assert sorted(v["record_id"] for v in verdicts) == sorted(d[schema.record_id] for d in documents)
    assert metric(worker, "moldwatch_records_in_total", source="kafka") == 50


async def test_two_workers_in_one_group_share_the_partitions(mongo_server, kafka_server, trained_store, small_plant):
    name = unique("kgroup")
    bootstrap = kafka_server.bootstrap_servers
    common = worker_settings(mongo_server, kafka_server, trained_store, name, source="kafka", start_from="beginning")
    schema = small_plant.schema
    documents = plant_documents(small_plant, 300, name)
    await create_topic(bootstrap, common.kafka_records_topic, 2)
    first = common.model_copy(update={"worker_name": f"{name}-a"})
    second = common.model_copy(update={"worker_name": f"{name}-b"})
    async with running_worker(first) as a, running_worker(second) as b:
        # Both members joined when each owns one partition.
        for _ in range(100):
            assignments = [len(w.source.consumer.assignment()) for w in (a, b)]  # type: ignore[union-attr]
            if assignments == [1, 1]:
                break
            await asyncio.sleep(0.2)
        assert assignments == [1, 1]
        await produce(bootstrap, common.kafka_records_topic, connector_messages(documents, schema.facility))
        verdicts = values(await read_topic(bootstrap, common.kafka_verdicts_topic, 300))
        shares = [metric(w, "moldwatch_records_in_total", source="kafka") for w in (a, b)]
    assert {v["record_id"] for v in verdicts} == {d[schema.record_id] for d in documents}
    assert sum(shares) >= 300 and min(shares) > 0, shares
