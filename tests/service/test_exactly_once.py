"""Kill loop: a worker SIGKILLed again and again while 20,000 records stream in loses none of them;
with ``--delivery exactly-once`` a read-committed consumer also sees no record twice."""
from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from pymongo import AsyncMongoClient

from tests.service.test_worker_support import plant_documents, unique, worker_settings
from tests.service.worker_process import WorkerProcess, read_to_end, verdict_id, wait_for_ids

pytestmark = [pytest.mark.servers, pytest.mark.slow, pytest.mark.timeout(900)]

RECORDS = 20_000
KILLS = 5


@pytest.mark.parametrize("delivery", ["exactly-once", "at-least-once"])
async def test_kill_loop_loses_nothing_and_exactly_once_duplicates_nothing(
    delivery, mongo_server, kafka_server, trained_store, small_plant, tmp_path
):
    name = unique("kill-" + delivery.split("-")[0])
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, delivery=delivery,
                               kafka_positions_topic=f"{name}.positions", checkpoint_interval_s=0.5)
    schema = small_plant.schema
    documents = plant_documents(small_plant, RECORDS, name)
    ids = {d[schema.record_id] for d in documents}
    client = AsyncMongoClient(mongo_server.uri)
    collection = client[settings.mongo_database][settings.mongo_collection]
    log = tmp_path / "worker.log"
    worker = WorkerProcess(settings, log).start()
    kills = 0
    try:
        await worker.wait_ready()
        chunk = RECORDS // (KILLS + 1)
        for start in range(0, RECORDS, chunk):
            await collection.insert_many(documents[start:start + chunk])
            if kills < KILLS:
                # Kill while the chunk is being scored and published: some of it is in flight.
                await wait_metric(worker, "moldwatch_verdicts_total", 1)
                worker.kill()
                kills += 1
                worker = WorkerProcess(settings, log).start()
                await worker.wait_ready()
        await wait_for_ids(kafka_server.bootstrap_servers, [settings.kafka_verdicts_topic], verdict_id, ids, timeout=400)
        assert worker.terminate() == 0, worker.tail()
    finally:
        worker.kill()
        await client.close()
    assert kills == KILLS
    verdicts = Counter(verdict_id(m) for m in await read_to_end(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic))
    assert set(verdicts) == ids  # nothing lost, nothing foreign
    duplicates = sum(n - 1 for n in verdicts.values())
    if delivery == "exactly-once":
        assert duplicates == 0
    print(f"{delivery}: {RECORDS} records, {KILLS} SIGKILLs, {duplicates} duplicate verdicts")


async def wait_metric(worker: WorkerProcess, name: str, at_least: float, timeout: float = 120.0) -> None:
    """Until the worker's /metrics shows ``name`` (summed) >= ``at_least``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        text = await asyncio.to_thread(worker.metrics)
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))
        if total >= at_least:
            return
        assert loop.time() < deadline, f"{name} < {at_least} after {timeout} s\n{worker.tail()}"
        await asyncio.sleep(0.05)
