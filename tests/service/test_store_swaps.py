"""Promotions and rollbacks while the worker is SIGKILLed again and again: the kill loop of the fault
tests (tests/support/worker_process.py) with the served store swapped underneath it every second.
Nothing is lost in either mode, nothing repeated with exactly-once, and the verdicts come from several
store versions (the swaps landed mid-stream)."""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from model_store.generations import promote, rollback
from model_store.serving.store import open_store
from tests.support.plants import versioned_store
from tests.support.worker_helpers import plant_documents, unique, worker_settings
from tests.support.worker_process import kill_loop, read_to_end

pytestmark = [pytest.mark.servers, pytest.mark.slow, pytest.mark.timeout(900)]

RECORDS = 6_000
KILLS = 3


async def keep_swapping(store: Path, work: Path, stop: asyncio.Event) -> list[str]:
    """Promote a new version of the served store every ~second, rolling back every third time."""
    done: list[str] = []
    n = 0
    while not stop.is_set():
        n += 1
        current = open_store(store, verify=False).model_version
        candidate = await asyncio.to_thread(versioned_store, store, work / f"candidate-{n}", f"{current.split('+')[0]}+{n}")
        await asyncio.to_thread(promote, store, candidate, "test: swap under kills", 3)
        done.append("promote")
        if n % 3 == 0:
            await asyncio.to_thread(rollback, store, None, "test: roll back under kills")
            done.append("rollback")
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass
    return done


@pytest.mark.parametrize("delivery", ["exactly-once", "at-least-once"])
async def test_swaps_under_a_kill_loop_lose_nothing_and_exactly_once_repeats_nothing(
        delivery, mongo_server, kafka_server, store_copy, small_plant, tmp_path) -> None:
    name = unique("swap-" + delivery.split("-")[0])
    settings = worker_settings(mongo_server, kafka_server, store_copy, name, delivery=delivery,
                               kafka_positions_topic=f"{name}.positions", checkpoint_interval_s=0.5)
    documents = plant_documents(small_plant, RECORDS, name)
    ids = {d[small_plant.schema.record_id] for d in documents}
    client = AsyncMongoClient(mongo_server.uri)
    stop = asyncio.Event()
    swapper = asyncio.create_task(keep_swapping(store_copy, tmp_path, stop))
    try:
        verdicts = await kill_loop(settings, client[settings.mongo_database][settings.mongo_collection], documents, ids,
                                   kafka_server.bootstrap_servers, tmp_path / "worker.log", KILLS, timeout=400)
    finally:
        stop.set()
        swaps = await swapper
        await client.close()
    assert set(verdicts) == ids  # nothing lost
    if delivery == "exactly-once":
        assert sum(n - 1 for n in verdicts.values()) == 0  # nothing repeated
    versions = Counter(json.loads(m.value)["model_version"]
                       for m in await read_to_end(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic))
    assert swaps.count("promote") >= 3 and "rollback" in swaps
    assert len(versions) >= 2, versions  # the swaps landed while records streamed
