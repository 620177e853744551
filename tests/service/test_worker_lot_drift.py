"""Lot drift in the running worker (real Kafka broker and MongoDB-protocol server): verdicts of two
lot days, the plant's lots arriving in a MongoDB collection, the closed lots judged."""
from __future__ import annotations

import pytest
from pymongo import AsyncMongoClient

from model_store.serving.lot_drift import lot_references_from_manifest
from model_store.serving.store import open_store
from tests.service.test_worker import acknowledged
from tests.support.worker_helpers import metric, plant_documents, running_worker, unique, wait_for, worker_settings

pytestmark = [pytest.mark.servers, pytest.mark.timeout(240)]


async def test_closed_lots_of_watched_parts_are_judged_as_the_lots_arrive(
        mongo_server, kafka_server, store_copy, small_plant) -> None:
    name = unique("lot-drift")
    settings = worker_settings(mongo_server, kafka_server, store_copy, name, lots_collection="lots", lots_poll_s=0.3)
    references = lot_references_from_manifest(open_store(store_copy, verify=False).raw["drift"])
    documents = plant_documents(small_plant, 300, name) + plant_documents(small_plant, 300, name, offset=20_000)
    schema = small_plant.schema
    watched = {(d.get(schema.facility), d.get(schema.item)) for d in documents[:300]} \
        & {(d.get(schema.facility), d.get(schema.item)) for d in documents[300:]} & set(references)
    assert watched, "the two lot days share watched parts"
    client = AsyncMongoClient(mongo_server.uri)
    try:
        async with running_worker(settings) as worker:
            await client[settings.mongo_database][settings.mongo_collection].insert_many(documents)
            await wait_for(acknowledged(worker, 600), timeout=60)
            assert metric(worker, "moldwatch_lot_drift_lots_total", outcome="judged") == 0  # no lots yet
            lots = small_plant.lots.rename(columns=dict(schema.lot_columns))
            await client[settings.mongo_database]["lots"].insert_many(lots.to_dict("records"))
            await wait_for(lambda: metric(worker, "moldwatch_lot_drift_lots_total", outcome="judged") >= len(watched),
                           timeout=30)
            assert metric(worker, "moldwatch_lot_drift_read_failures_total") == 0
    finally:
        await client.close()
