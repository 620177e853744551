"""Faults against the real servers: a Kafka outage and a hung broker (nothing lost, per-facility
order kept, readiness says why), an unreachable MongoDB (the reason names host:port and the
cause), and a worker SIGKILLed right after it reported ready (no gap before the first checkpoint).
"""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from pymongo import AsyncMongoClient

from service.devservers import free_port
from service.run_command import serve
from service.worker import Worker
from tests.support.worker_helpers import get, metric, plant_documents, running_worker, unique, wait_for, worker_settings
from tests.support.worker_process import WorkerProcess, order_violations, verdict_id, wait_for_ids

pytestmark = [pytest.mark.servers, pytest.mark.slow, pytest.mark.timeout(600)]


async def test_a_kafka_outage_loses_nothing_keeps_order_and_readiness_says_why(mongo_server, kafka_server, trained_store, small_plant):
    name = unique("outage")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, progress_timeout_s=3.0,
                               kafka_request_timeout_ms=3000, ready_timeout_s=2.0)
    schema = small_plant.schema
    documents = plant_documents(small_plant, 400, name)
    rank = {d[schema.record_id]: i for i, d in enumerate(documents)}
    client = AsyncMongoClient(mongo_server.uri)
    collection = client[settings.mongo_database][settings.mongo_collection]
    try:
        async with running_worker(settings) as worker:
            await collection.insert_many(documents[:100])
            await wait_for(lambda: metric(worker, "moldwatch_verdicts_total") >= 100, timeout=60)
            await asyncio.to_thread(kafka_server.stop)
            try:
                await collection.insert_many(documents[100:300])

                async def not_ready_for_progress() -> bool:
                    body = (await get(worker, "/readyz")).json()
                    return "progress" in body["reasons"] and "kafka" in body["reasons"]

                await wait_for(not_ready_for_progress, timeout=60, interval=0.3)
                reasons = (await get(worker, "/readyz")).json()["reasons"]
                assert kafka_server.bootstrap_servers in reasons["kafka"], reasons
                assert "nothing acknowledged" in reasons["progress"], reasons
                assert metric(worker, "moldwatch_stalled_seconds") >= 3.0
            finally:
                await asyncio.to_thread(kafka_server.start)
            await collection.insert_many(documents[300:])
            messages = await wait_for_ids(kafka_server.bootstrap_servers, [settings.kafka_verdicts_topic], verdict_id,
                                          set(rank), timeout=180)

            async def ready() -> bool:
                return (await get(worker, "/readyz")).status_code == 200

            await wait_for(ready, timeout=60, interval=0.3)
            await wait_for(lambda: metric(worker, "moldwatch_stalled_seconds") == 0.0, timeout=60)
    finally:
        await client.close()
    assert order_violations(messages, rank) == []


async def test_a_hung_broker_loses_nothing_and_keeps_per_facility_order(mongo_server, kafka_server, trained_store, small_plant):
    name = unique("hang")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, kafka_request_timeout_ms=2000)
    schema = small_plant.schema
    documents = plant_documents(small_plant, 450, name)
    rank = {d[schema.record_id]: i for i, d in enumerate(documents)}
    client = AsyncMongoClient(mongo_server.uri)
    collection = client[settings.mongo_database][settings.mongo_collection]
    pid = kafka_server.pid
    assert pid is not None
    try:
        async with running_worker(settings):
            await collection.insert_many(documents[:150])
            os.killpg(pid, signal.SIGSTOP)  # the broker hangs: connections stay open, nothing answers
            try:
                hang_until = time.monotonic() + 8  # four request timeouts: sends time out and are retried
                for start in range(150, 300, 10):
                    await collection.insert_many(documents[start:start + 10])
                    await asyncio.sleep(max(0.0, (hang_until - time.monotonic()) / 15))
                await asyncio.sleep(max(0.0, hang_until - time.monotonic()))
            finally:
                os.killpg(pid, signal.SIGCONT)
            await collection.insert_many(documents[300:])
            messages = await wait_for_ids(kafka_server.bootstrap_servers, [settings.kafka_verdicts_topic], verdict_id,
                                          set(rank), timeout=180)
    finally:
        await client.close()
    assert order_violations(messages, rank) == []


async def test_an_unreachable_mongodb_is_named_with_its_address_and_cause(kafka_server, trained_store, tmp_path):
    port = free_port()  # nothing listens here
    from service.config import WorkerSettings

    settings = WorkerSettings(_env_file=None, mongo_uri=f"mongodb://127.0.0.1:{port}/?directConnection=true", mongo_timeout_ms=500,
                              kafka_bootstrap_servers=kafka_server.bootstrap_servers, store=trained_store, http_port=0,
                              http_host="127.0.0.1", ready_cache_s=0.0, ready_timeout_s=3.0)  # type: ignore[call-arg]
    worker = Worker(settings)
    task = asyncio.create_task(serve(worker))
    try:
        async def named() -> bool:
            if worker.http_port is None:
                return False
            reason = (await get(worker, "/readyz")).json()["reasons"].get("mongodb", "")
            return f"127.0.0.1:{port}" in reason and "refused" in reason.lower()

        await wait_for(named, timeout=60, interval=0.3)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


async def test_no_gap_before_the_first_checkpoint(mongo_server, kafka_server, trained_store, small_plant, tmp_path):
    """Started without a checkpoint, SIGKILLed right after records arrive (long before its first
    regular checkpoint): the restarted worker still scores every record inserted after ready."""
    name = unique("firstgap")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, checkpoint_interval_s=3600, start_from="now")
    schema = small_plant.schema
    documents = plant_documents(small_plant, 60, name)
    client = AsyncMongoClient(mongo_server.uri)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.start()
        await worker.wait_ready()
        await client[settings.mongo_database][settings.mongo_collection].insert_many(documents)
        worker.kill()  # at once: whatever it read is unacknowledged or not checkpointed
        checkpoint = await client[settings.mongo_database][settings.mongo_checkpoint_collection].find_one({"_id": name})
        assert checkpoint is not None and checkpoint.get("last_record_id") is None  # only the starting position
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        await worker.wait_ready()
        await wait_for_ids(kafka_server.bootstrap_servers, [settings.kafka_verdicts_topic], verdict_id,
                           {d[schema.record_id] for d in documents}, timeout=120)
        assert worker.terminate() == 0, worker.tail()
    finally:
        worker.kill()
        await client.close()
