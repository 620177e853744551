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
    assert anomalies, "the sample should hold anomalies, or the alarm check proves nothing"


async def test_bad_documents_go_to_dead_letters_and_the_worker_keeps_going(mongo_server, kafka_server, trained_store, small_plant):
    name = unique("dlq")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name)
    schema = small_plant.schema
    good = plant_documents(small_plant, 60, name)
    bad = [
        {schema.record_id: f"{name}-bad-ts", schema.facility: "F01", schema.timestamp: "not a time"},
        {**good[0], schema.record_id: f"{name}-bad-maker", schema.maker_column: "ACME"},
        {schema.record_id: f"{name}-no-facility", schema.timestamp: good[0][schema.timestamp]},
        {"_id": f"{name}-empty"},
    ]
    client = AsyncMongoClient(mongo_server.uri)
    try:
        async with running_worker(settings) as worker:
            collection = client[settings.mongo_database][settings.mongo_collection]
            await collection.insert_many(good[:30])
            await collection.insert_many(bad)  # in the middle of the stream
            await collection.insert_many(good[30:])
            letters = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_dead_letters_topic, 4))
            verdicts = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 60))
            assert worker.liveness()[0]
    finally:
        await client.close()
    assert sorted(v["record_id"] for v in verdicts) == sorted(d[schema.record_id] for d in good)
    by_id = {(letter["document"].get(schema.record_id) or letter["document"].get("_id")): letter for letter in letters}
    assert len(letters) == 4
    assert by_id[f"{name}-bad-ts"]["reason"] == "invalid_field"
    assert by_id[f"{name}-bad-maker"]["reason"] == "unknown_maker"
    assert by_id[f"{name}-no-facility"]["reason"] == "missing_field"
    assert by_id[f"{name}-empty"]["reason"] == "missing_field"
    for letter in letters:
        assert letter["error"] and letter["worker"] == name
        assert "$date" in json.dumps(letter["document"]) or letter["document"].get(schema.timestamp) in (None, "not a time")
    assert metric(worker, "moldwatch_dead_letters_total") == 4
    assert metric(worker, "moldwatch_dead_letters_total", reason="missing_field") == 2


async def test_restart_resumes_from_the_checkpoint_with_no_record_missing(mongo_server, kafka_server, trained_store, small_plant):
    name = unique("restart")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name)
    schema = small_plant.schema
    documents = plant_documents(small_plant, 240, name)
    client = AsyncMongoClient(mongo_server.uri)
    collection = client[settings.mongo_database][settings.mongo_collection]
    try:
        async with running_worker(settings):
            await collection.insert_many(documents[:80])
            await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 80)
        checkpoint = await client[settings.mongo_database][settings.mongo_checkpoint_collection].find_one({"_id": name})
        assert checkpoint["resume_token"] is not None
        assert checkpoint["last_record_id"] == documents[79][schema.record_id]
        await collection.insert_many(documents[80:160])  # while no worker runs
        async with running_worker(settings):
            await collection.insert_many(documents[160:])
            verdicts = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 240))
    finally:
        await client.close()
    ids = [v["record_id"] for v in verdicts]
    assert set(ids) == {d[schema.record_id] for d in documents}
    assert len(ids) == 240  # a clean stop checkpoints everything: not even boundary duplicates


async def test_lost_history_is_backfilled_by_timestamp_never_skipped(mongo_server, kafka_server, trained_store, small_plant):
    """A checkpoint whose token the server refuses: backfill from the last processed record."""
    name = unique("lost")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name)
    schema = small_plant.schema
    documents = plant_documents(small_plant, 150, name)
    processed, missed, later = documents[:50], documents[50:120], documents[120:]
    client = AsyncMongoClient(mongo_server.uri)
    database = client[settings.mongo_database]
    try:
        await database[settings.mongo_collection].insert_many(processed + missed)
        await database[settings.mongo_checkpoint_collection].insert_one({
            "_id": name,
            "resume_token": {"_data": "not-a-token-this-server-knows"},
            "last_timestamp": processed[-1][schema.timestamp],
            "last_record_id": processed[-1][schema.record_id],
        })
        async with running_worker(settings) as worker:
            await database[settings.mongo_collection].insert_many(later)
            verdicts = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 100))
        checkpoint = await database[settings.mongo_checkpoint_collection].find_one({"_id": name})
    finally:
        await client.close()
    ids = [v["record_id"] for v in verdicts]
    assert set(ids) >= {d[schema.record_id] for d in missed + later}  # nothing after the checkpoint is lost
    assert not set(ids) & {d[schema.record_id] for d in processed}  # nothing before it is redone
    assert metric(worker, "moldwatch_change_stream_history_lost_total") == 1
    assert metric(worker, "moldwatch_backfilled_records_total") == len(missed)
    assert checkpoint["last_record_id"] == later[-1][schema.record_id]


def republish(store, version: str) -> None:
    """Publish the same models as a new store version the way training does: a staging directory
    renamed over the old one (whose files disappear under any engine still loading from them)."""
    from model_store.store import MANIFEST, StoreStaging

    raw = json.loads((store / MANIFEST).read_text())
    raw = {k: v for k, v in raw.items() if k not in ("artifacts", "store_format")}
    raw["model_version"] = version
    with StoreStaging(store) as staging:
        for path in store.rglob("*"):
            relative = path.relative_to(store)
            if path.is_file() and relative.as_posix() != MANIFEST:
                (staging.path / relative).parent.mkdir(parents=True, exist_ok=True)
                (staging.path / relative).write_bytes(path.read_bytes())
        staging.commit(raw)


async def test_hot_reload_swaps_the_store_under_load_with_no_record_missing(mongo_server, kafka_server, store_copy, small_plant):
    name = unique("reload")
    settings = worker_settings(mongo_server, kafka_server, store_copy, name, batch_size=20)
    schema = small_plant.schema
    documents = plant_documents(small_plant, 400, name)
    client = AsyncMongoClient(mongo_server.uri)
    collection = client[settings.mongo_database][settings.mongo_collection]

    async def insert_steadily() -> None:
        for start in range(0, len(documents), 10):
            await collection.insert_many(documents[start : start + 10])
            await asyncio.sleep(0.02)

    try:
        async with running_worker(settings) as worker:
            first_version = worker.model_version
            inserting = asyncio.create_task(insert_steadily())
            await asyncio.sleep(0.3)
            await asyncio.to_thread(republish, store_copy, "v2-hot")
            await wait_for(lambda: worker.model_version == "v2-hot", timeout=30)
            await inserting
            verdicts = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 400))
    finally:
        await client.close()
    assert sorted(v["record_id"] for v in verdicts) == sorted(d[schema.record_id] for d in documents)
    versions = [v["model_version"] for v in verdicts]
    assert versions[-1] == "v2-hot" and first_version in versions
    assert metric(worker, "moldwatch_model_reloads_total", outcome="ok") == 1
    assert metric(worker, "moldwatch_dead_letters_total") == 0
    assert metric(worker, "moldwatch_store_info", model_version="v2-hot") == 1


async def test_a_bad_new_store_is_rejected_and_the_old_one_kept(mongo_server, kafka_server, store_copy, small_plant):
    name = unique("badstore")
    settings = worker_settings(mongo_server, kafka_server, store_copy, name)
    documents = plant_documents(small_plant, 40, name)
    client = AsyncMongoClient(mongo_server.uri)
    collection = client[settings.mongo_database][settings.mongo_collection]
    try:
        async with running_worker(settings) as worker:
            version = worker.model_version
            manifest = store_copy / "manifest.json"
            manifest.write_text(manifest.read_text().replace('"groups"', '"groupz"', 1))  # a broken edit
            await wait_for(lambda: metric(worker, "moldwatch_model_reloads_total", outcome="failed") == 1, timeout=20)
            await collection.insert_many(documents)
            verdicts = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 40))
            ok, reasons = await worker.readiness()
    finally:
        await client.close()
    assert len(verdicts) == 40 and {v["model_version"] for v in verdicts} == {version}
    assert worker.model_version == version and ok, reasons
