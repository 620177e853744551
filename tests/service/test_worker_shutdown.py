"""Graceful stop: stop reading, drain what was read, flush Kafka, checkpoint, exit 0."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from pymongo import AsyncMongoClient

from service.devservers import free_port
from service.worker import Worker
from tests.support.worker_helpers import metric, plant_documents, read_topic, unique, values, wait_for, worker_settings

pytestmark = [pytest.mark.servers, pytest.mark.timeout(240)]


async def test_stop_drains_queued_records_flushes_and_checkpoints(mongo_server, kafka_server, trained_store, small_plant):
    name = unique("drain")
    # One record per batch: the queue is still full of read records when stop() comes.
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, batch_size=1, checkpoint_interval_s=5)
    schema = small_plant.schema
    documents = plant_documents(small_plant, 300, name)
    client = AsyncMongoClient(mongo_server.uri)
    try:
        worker = Worker(settings)
        task = asyncio.create_task(worker.run())
        await worker.wait_listening(60)
        await client[settings.mongo_database][settings.mongo_collection].insert_many(documents)
        await wait_for(lambda: metric(worker, "moldwatch_records_in_total") == 300, timeout=30, interval=0.005)
        unscored_at_stop = 300 - metric(worker, "moldwatch_verdicts_total")
        worker.stop()
        assert await asyncio.wait_for(task, 60) == 0
        checkpoint = await client[settings.mongo_database][settings.mongo_checkpoint_collection].find_one({"_id": name})
    finally:
        await client.close()
    assert unscored_at_stop > 0, "stop came after everything was done; the drain was not exercised"
    # Every record read before the stop has its outcome in Kafka: a verdict, or a dead letter.
    letters = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_dead_letters_topic, 0, timeout=2))
    verdicts = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 300 - len(letters), timeout=20))
    outcomes = [v["record_id"] for v in verdicts] + [d["document"].get(schema.record_id) for d in letters]
    assert sorted(outcomes) == sorted(d[schema.record_id] for d in documents)
    assert checkpoint["last_record_id"] == documents[-1][schema.record_id]
    assert metric(worker, "moldwatch_verdicts_total") + metric(worker, "moldwatch_dead_letters_total") == 300


def test_sigterm_on_moldwatch_run_drains_and_exits_zero(mongo_server, kafka_server, trained_store, small_plant, tmp_path):
    name = unique("sigterm")
    port = free_port()
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, http_port=port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLDWATCH_")}
    for key, value in settings.safe_summary().items():
        if value is not None and "password" not in key:
            env[f"MOLDWATCH_{key.upper()}"] = str(value)
    env["MOLDWATCH_KAFKA_SASL_PASSWORD"] = "hunter2-should-never-be-logged"  # no mechanism: unused, but loaded
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "moldwatch"), "run", "--log-format", "json"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            documents = plant_documents(small_plant, 50, name)
            from pymongo import MongoClient

            with MongoClient(mongo_server.uri) as client:
                client[settings.mongo_database][settings.mongo_collection].insert_many(documents)
                # SIGTERM stops intake at once: wait until the worker has read them all (not scored).
                while 'moldwatch_records_in_total{source="mongo"} 50.0' not in httpx.get(f"http://127.0.0.1:{port}/metrics").text:
                    assert time.monotonic() < deadline + 30
                    time.sleep(0.01)
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(60)
                checkpoint = client[settings.mongo_database][settings.mongo_checkpoint_collection].find_one({"_id": name})
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = log_path.read_text()
    assert code == 0, output[-3000:]
    verdicts = values(asyncio.run(read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 50, timeout=20)))
    assert len({v["record_id"] for v in verdicts}) == 50
    assert checkpoint["last_record_id"] == documents[-1][small_plant.schema.record_id]
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "drained, flushed and checkpointed" for e in events), output[-2000:]
    assert "hunter2" not in output
