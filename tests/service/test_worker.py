"""The worker against the real Kafka broker and MongoDB-protocol server (tests/fixtures/servers.py)."""
from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
from pymongo import AsyncMongoClient

from tests.service.test_worker_support import (
    VERDICT_SCHEMA,
    metric,
    plant_documents,
    read_topic,
    running_worker,
    unique,
    values,
    wait_for,
    worker_settings,
)

pytestmark = [pytest.mark.servers, pytest.mark.timeout(240)]


async def test_every_record_yields_one_valid_verdict_and_anomalies_raise_alarms(
    mongo_server, kafka_server, trained_store, small_plant
):
    name = unique("flow")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name)
    documents = plant_documents(small_plant, 300, name)
    client = AsyncMongoClient(mongo_server.uri)
    try:
        async with running_worker(settings) as worker:
            collection = client[settings.mongo_database][settings.mongo_collection]
            await collection.insert_many(documents[:150])
            for doc in documents[150:]:  # one by one too: small batches take the same path
                await collection.insert_one(doc)
            verdicts = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 300))
            await wait_for(lambda: metric(worker, "moldwatch_checkpoints_total") > 0)
    finally:
        await client.close()

    ids = [v["record_id"] for v in verdicts]
    assert sorted(ids) == sorted(d[small_plant.schema.record_id] for d in documents)  # exactly one each
    for verdict in verdicts:
        jsonschema.validate(verdict, VERDICT_SCHEMA)
    anomalies = {v["record_id"] for v in verdicts if v["anomaly"]}
    alarms = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_alarms_topic, len(anomalies), timeout=10))
    assert {a["record_id"] for a in alarms} == anomalies
    assert len(alarms) == len(anomalies)
    assert metric(worker, "moldwatch_verdicts_total") == 300
    assert metric(worker, "moldwatch_records_in_total", source="mongo") == 300
    assert metric(worker, "moldwatch_end_to_end_seconds_count") == 300
    # Verdict keys are the facility, so one machine's verdicts stay in order on one partition.
    messages = await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 300, timeout=10)
    assert all(m.key.decode() == json.loads(m.value)["facility"] for m in messages)
