"""The worker against the real Kafka broker and MongoDB-protocol server (tests/support/servers.py)."""
from __future__ import annotations

import asyncio
import json
import shutil
import time
from typing import Any

import jsonschema
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo import AsyncMongoClient

from tests.support.worker_helpers import (
    VERDICT_SCHEMA,
    metric,
    plant_documents,
    running_worker,
    unique,
    values,
    wait_for,
    worker_settings,
)

pytestmark = [pytest.mark.servers, pytest.mark.timeout(240)]


async def read_to_end(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Any]:
    """Every message of ``topic`` up to its end offsets as they are now.

    Called after the worker stopped (a graceful stop flushes every send), the end offsets cover
    everything it ever produced: duplicates are counted exactly, without waiting a fixed time.
    """
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    deadline = time.monotonic() + timeout
    try:
        while not consumer.assignment():  # the topic's partitions, once its metadata arrived
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: no partitions assigned within {timeout} s")
            await consumer.getmany(timeout_ms=100)
        partitions = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        messages: list[Any] = []
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: did not reach the end offsets {ends} within {timeout} s")
            for batch in (await consumer.getmany(*partitions, timeout_ms=200)).values():
                messages.extend(m for m in batch if m.offset < ends[TopicPartition(m.topic, m.partition)])
        return messages
    finally:
        await consumer.stop()


def acknowledged(worker: Any, count: int) -> Any:
    """Condition: Kafka acknowledged ``count`` verdicts of this worker."""
    return lambda: metric(worker, "moldwatch_verdicts_total") >= count


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
            await wait_for(acknowledged(worker, 300), timeout=60)
            await wait_for(lambda: metric(worker, "moldwatch_checkpoints_total") > 0)
    finally:
        await client.close()

    messages = await read_to_end(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic)
    verdicts = values(messages)
    ids = [v["record_id"] for v in verdicts]
    assert sorted(ids) == sorted(d[small_plant.schema.record_id] for d in documents)  # exactly one each
    for verdict in verdicts:
        jsonschema.validate(verdict, VERDICT_SCHEMA)
    anomalies = {v["record_id"] for v in verdicts if v["anomaly"]}
    alarms = values(await read_to_end(kafka_server.bootstrap_servers, settings.kafka_alarms_topic))
    assert {a["record_id"] for a in alarms} == anomalies
    assert len(alarms) == len(anomalies)
    assert metric(worker, "moldwatch_verdicts_total") == 300
    assert metric(worker, "moldwatch_records_in_total", source="mongo") == 300
    assert metric(worker, "moldwatch_end_to_end_seconds_count") == 300
    # Verdict keys are the facility, so one machine's verdicts stay in order on one partition.
    assert all(m.key.decode() == json.loads(m.value)["facility"] for m in messages)
    assert anomalies, "the sample should hold anomalies, or the alarm check proves nothing"
    # Drift watch saw each judged verdict once: a watched part's in its blocks, any other as unreferenced.
    watch = worker.watchers.drift.watch
    judged = [v for v in verdicts if isinstance(v["score"], (int, float))]
    fed = sum(p.blocks * p.reference.block + p.shots for p in watch.parts.values())
    watched = sum(1 for v in judged if (v["facility"], v["item"]) in watch.parts)
    assert watch.parts and watched and fed == watched
    assert metric(worker, "moldwatch_drift_watched_parts") == len(watch.parts)
    assert metric(worker, "moldwatch_drift_unreferenced_verdicts_total") == len(judged) - watched


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
            await wait_for(acknowledged(worker, 60), timeout=60)
            await wait_for(lambda: metric(worker, "moldwatch_dead_letters_total") >= 4, timeout=60)
            assert worker.liveness()[0]
    finally:
        await client.close()
    letters = values(await read_to_end(kafka_server.bootstrap_servers, settings.kafka_dead_letters_topic))
    verdicts = values(await read_to_end(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic))
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
        async with running_worker(settings) as worker:
            await collection.insert_many(documents[:80])
            await wait_for(acknowledged(worker, 80), timeout=60)
        checkpoint = await client[settings.mongo_database][settings.mongo_checkpoint_collection].find_one({"_id": name})
        assert checkpoint["resume_token"] is not None
        assert checkpoint["last_record_id"] == documents[79][schema.record_id]
        await collection.insert_many(documents[80:160])  # while no worker runs
        async with running_worker(settings) as worker:
            await collection.insert_many(documents[160:])
            await wait_for(acknowledged(worker, 160), timeout=60)  # the 80 missed while down, and 80 new
    finally:
        await client.close()
    ids = [v["record_id"] for v in values(await read_to_end(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic))]
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
            await wait_for(acknowledged(worker, len(missed + later)), timeout=60)
        checkpoint = await database[settings.mongo_checkpoint_collection].find_one({"_id": name})
    finally:
        await client.close()
    ids = [v["record_id"] for v in values(await read_to_end(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic))]
    assert set(ids) >= {d[schema.record_id] for d in missed + later}  # nothing after the checkpoint is lost
    assert not set(ids) & {d[schema.record_id] for d in processed}  # nothing before it is redone
    assert metric(worker, "moldwatch_change_stream_history_lost_total") == 1
    assert metric(worker, "moldwatch_backfilled_records_total") == len(missed)
    assert checkpoint["last_record_id"] == later[-1][schema.record_id]


def republish(store, version: str) -> None:
    """Publish the same models as a new store version the way training does: a staging directory
    renamed over the old one (whose files disappear under any engine still loading from them)."""
    from model_store.serving.store import MANIFEST
    from model_store.store import StoreStaging

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

    async def insert_steadily(start: int, stop: int) -> None:
        # Ten at a time, each once the worker read the previous ones: records keep flowing
        # through the reload, at the worker's own pace.
        for first in range(start, stop, 10):
            await collection.insert_many(documents[first : first + 10])
            await wait_for(lambda first=first: metric(worker, "moldwatch_records_in_total") >= first + 10, timeout=90, interval=0.01)

    try:
        async with running_worker(settings) as worker:
            first_version = worker.model_version
            inserting = asyncio.create_task(insert_steadily(0, 200))
            await wait_for(acknowledged(worker, 20), timeout=90)  # the first version judged some
            await asyncio.to_thread(republish, store_copy, "v2-hot")
            # The swap lands when the store is loaded, whether records are flowing then or not.
            await wait_for(lambda: worker.model_version == "v2-hot"
                           or metric(worker, "moldwatch_model_reloads_total", outcome="failed") > 0, timeout=90)
            assert worker.model_version == "v2-hot", f"the new store was rejected: {worker.store.reloader.error}"
            await inserting
            await insert_steadily(200, 400)  # and what comes after it is judged by the new store
            await wait_for(acknowledged(worker, 400), timeout=60)
    finally:
        await client.close()
    verdicts = values(await read_to_end(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic))
    assert sorted(v["record_id"] for v in verdicts) == sorted(d[schema.record_id] for d in documents)
    versions = [v["model_version"] for v in verdicts]
    assert versions[-1] == "v2-hot" and first_version in versions
    assert metric(worker, "moldwatch_model_reloads_total", outcome="ok") == 1
    assert metric(worker, "moldwatch_dead_letters_total") == 0
    assert metric(worker, "moldwatch_store_info", model_version="v2-hot") == 1
    assert worker.watchers.drift.model_version == "v2-hot"  # the drift watch started afresh on the new store


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
            await wait_for(acknowledged(worker, 40), timeout=60)
            ok, reasons = await worker.readiness()
    finally:
        await client.close()
    verdicts = values(await read_to_end(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic))
    assert len(verdicts) == 40 and {v["model_version"] for v in verdicts} == {version}
    assert worker.model_version == version and ok, reasons


async def test_a_store_copied_in_the_wrong_order_is_served_once_its_last_file_lands(mongo_server, kafka_server, store_copy,
                                                                                    small_plant, tmp_path):
    """A copy that writes the new manifest first and a file after it: the store is rejected while
    incomplete (shown in /readyz warnings and moldwatch_store_rejected, still serving the old one),
    and served at the first poll after the last file lands, with nothing else changing."""
    import httpx

    from model_store.serving.store import MANIFEST

    staged = tmp_path / "staged"
    shutil.copytree(store_copy, staged)
    await asyncio.to_thread(republish, staged, "v2-late")
    settings = worker_settings(mongo_server, kafka_server, store_copy, unique("order"))
    report = (store_copy / "report.html").read_bytes()
    async with running_worker(settings) as worker:
        version = worker.model_version
        failed = metric(worker, "moldwatch_model_reloads_total", outcome="failed")
        (store_copy / "report.html").write_bytes(report[: len(report) // 2])  # a file still being copied
        (store_copy / MANIFEST).write_bytes((staged / MANIFEST).read_bytes())  # the manifest landed first
        await wait_for(lambda: metric(worker, "moldwatch_model_reloads_total", outcome="failed") > failed, timeout=30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.http_port}") as client:
            body = (await client.get("/readyz")).json()
        assert body["ready"] is True and worker.model_version == version
        assert "rejected" in body["warnings"]["store"] and f"serving {version}" in body["warnings"]["store"]
        assert metric(worker, "moldwatch_store_rejected") == 1
        polls = worker.store.reloader.polls
        (store_copy / "report.html").write_bytes(report)  # the last file lands
        await wait_for(lambda: worker.model_version == "v2-late", timeout=30)
        assert worker.store.reloader.polls - polls <= 2  # the first poll that sees it (one more if it landed mid-poll)
        assert metric(worker, "moldwatch_store_rejected") == 0 and worker.readiness_warnings() == {}


@pytest.mark.parametrize("margin_s", [0.0, 3600.0])
async def test_late_records_after_lost_history_are_found_by_insertion_order(mongo_server, kafka_server, trained_store,
                                                                           small_plant, margin_s):
    """History lost while the worker was down; meanwhile records were inserted with timestamps ten
    minutes older than the last one answered (a buffered machine) and current ones. Every one of
    them gets a verdict; with no clock margin nothing answered before is scored again, with a
    margin (inserting clients' clocks may differ) only what was inserted within it."""
    from datetime import timedelta

    name = unique("late")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, backfill_id_margin_s=margin_s)
    schema = small_plant.schema
    documents = plant_documents(small_plant, 250, name)
    processed, late, current = documents[:50], documents[50:150], documents[150:]
    for doc in late:
        doc[schema.timestamp] = processed[-1][schema.timestamp] - timedelta(minutes=10)
    client = AsyncMongoClient(mongo_server.uri)
    database = client[settings.mongo_database]
    try:
        await database[settings.mongo_collection].insert_many(processed)  # pymongo gives each an ObjectId _id
        await database[settings.mongo_checkpoint_collection].insert_one({
            "_id": name, "resume_token": None,
            "last_timestamp": processed[-1][schema.timestamp], "last_record_id": processed[-1][schema.record_id],
            "last_oid": processed[-1]["_id"],
        })
        await database[settings.mongo_collection].insert_many(late + current)
        async with running_worker(settings) as worker:
            await wait_for(acknowledged(worker, len(late + current)), timeout=90)
        checkpoint = await database[settings.mongo_checkpoint_collection].find_one({"_id": name})
    finally:
        await client.close()
    ids = [v["record_id"] for v in values(await read_to_end(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic))]
    assert set(ids) >= {d[schema.record_id] for d in late + current}  # the late ones too
    redone = set(ids) & {d[schema.record_id] for d in processed}
    assert redone == (set() if margin_s == 0 else {d[schema.record_id] for d in processed[:-1]})
    assert len(ids) == len(set(ids))
    assert checkpoint["last_oid"] == current[-1]["_id"]
