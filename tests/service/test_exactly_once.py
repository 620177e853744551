"""Kill loop: a worker SIGKILLed again and again while 20,000 records stream in loses none of them;
with ``--delivery exactly-once`` a read-committed consumer also sees no record twice."""
from __future__ import annotations

import pytest
from pymongo import AsyncMongoClient

from tests.support.worker_helpers import plant_documents, unique, worker_settings
from tests.support.worker_process import kill_loop

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
    try:
        verdicts = await kill_loop(settings, client[settings.mongo_database][settings.mongo_collection], documents, ids,
                                   kafka_server.bootstrap_servers, tmp_path / "worker.log", KILLS, timeout=400)
    finally:
        await client.close()
    assert set(verdicts) == ids  # nothing lost, nothing foreign
    duplicates = sum(n - 1 for n in verdicts.values())
    if delivery == "exactly-once":
        assert duplicates == 0
    print(f"{delivery}: {RECORDS} records, {KILLS} SIGKILLs, {duplicates} duplicate verdicts")
