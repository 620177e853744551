"""The worker's HTTP surface: probes, metrics and POST /score, served inside the worker's loop."""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from service.config import WorkerSettings
from service.devservers import free_port
from service.run_command import serve
from service.worker import Worker
from tests.support.worker_helpers import (
    VERDICT_SCHEMA,
    get,
    metric,
    plant_documents,
    read_topic,
    running_worker,
    unique,
    values,
    wait_for,
    worker_settings,
)


def jsonable(document: dict) -> dict:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in document.items()}


@contextlib.asynccontextmanager
async def serving_offline(store: Path, **overrides: Any) -> AsyncIterator[Worker]:
    """A worker whose MongoDB and Kafka do not exist: HTTP and the store work, nothing is ready."""
    dead = f"127.0.0.1:{free_port()}"
    settings = WorkerSettings(  # type: ignore[call-arg]
        _env_file=None, store=store, http_host="127.0.0.1", http_port=0, ready_cache_s=0,
        kafka_bootstrap_servers=dead, mongo_uri=f"mongodb://{dead}/?directConnection=true", mongo_timeout_ms=300,
        **overrides,
    )
    worker = Worker(settings)
    task = asyncio.create_task(serve(worker))
    try:
        await wait_for(lambda: worker.http_port is not None and worker.pipeline is not None, timeout=30)
        yield worker
    finally:
        worker.stop()
        assert await asyncio.wait_for(task, 30) == 0


@pytest_asyncio.fixture(loop_scope="function")
async def offline_worker(trained_store):
    async with serving_offline(trained_store) as worker:
        yield worker


async def test_liveness_metrics_and_unready_reasons_without_servers(offline_worker):
    health = await get(offline_worker, "/healthz")
    assert health.status_code == 200 and health.json()["alive"] is True
    ready = await get(offline_worker, "/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["ready"] is False and "kafka" in body["reasons"] and "mongodb" in body["reasons"]
    # each reason names the address and the cause, as the logs do (issue: both read the same before)
    dead = offline_worker.settings.kafka_bootstrap_servers
    assert body["reasons"]["kafka"] == f"kafka producer not connected: {dead}: connection refused", body["reasons"]
    assert dead in body["reasons"]["mongodb"] and "refused" in body["reasons"]["mongodb"], body["reasons"]
    assert body["model_version"] == offline_worker.model_version
    exposition = await get(offline_worker, "/metrics")
    assert exposition.status_code == 200 and exposition.headers["content-type"].startswith("text/plain")
    for name in ("moldwatch_records_in", "moldwatch_verdicts", "moldwatch_dead_letters_total", "moldwatch_end_to_end_seconds",
                 "moldwatch_model_cache_hits_total", "moldwatch_checkpoint_age_seconds", "moldwatch_store_info",
                 "moldwatch_resolutions_total", "moldwatch_change_stream_lag_seconds", "process_resident_memory_bytes",
                 "process_cpu_seconds_total", "process_start_time_seconds"):
        assert name in exposition.text, name
    # Counters whose labels are known at start exist at 0, so rate() sees their first event.
    settings = offline_worker.settings
    for topic in (settings.kafka_verdicts_topic, settings.kafka_alarms_topic, settings.kafka_dead_letters_topic):
        assert f'moldwatch_kafka_send_errors_total{{topic="{topic}"}} 0.0' in exposition.text, topic
    assert 'moldwatch_source_errors_total{source="mongo"} 0.0' in exposition.text
    assert 'moldwatch_records_in_total{source="mongo"} 0.0' in exposition.text
    assert "moldwatch_ready 0.0" in exposition.text  # set by the /readyz above
    assert "moldwatch_recipe_checks_total{" not in exposition.text  # no recipes file: nothing checked


async def test_post_score_returns_a_verdict_or_422_with_the_reason(offline_worker, small_plant):
    document = jsonable(plant_documents(small_plant, 1, "http", offset=2000)[0])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{offline_worker.http_port}") as client:
        scored = await client.post("/score", json=document)
        assert scored.status_code == 200, scored.text
        jsonschema.validate(scored.json(), VERDICT_SCHEMA)
        assert scored.json()["record_id"] == document[small_plant.schema.record_id]
        invalid = await client.post("/score", json={**document, small_plant.schema.timestamp: "soon"})
        assert invalid.status_code == 422
        assert invalid.json()["reason"] == "invalid_field" and small_plant.schema.timestamp in invalid.json()["error"]
        not_json = await client.post("/score", content=b"{nope", headers={"content-type": "application/json"})
        assert not_json.status_code == 422 and not_json.json()["reason"] == "not_a_document"
        array = await client.post("/score", json=[document])
        assert array.status_code == 422 and array.json()["reason"] == "not_a_document"
    assert "on_recipe" not in scored.json()  # no recipes file: not checked (not the same as "can't tell")


async def test_get_recipes_without_a_recipes_file_says_so(offline_worker):
    response = await get(offline_worker, "/recipes/F01/ITM-001")
    assert response.status_code == 404
    assert response.json()["reason"] == "recipes_not_configured" and "MOLDWATCH_RECIPES" in response.json()["error"]


async def test_get_recipes_serves_a_recipes_file_that_appears_after_start(trained_store, small_plant, tmp_path):
    """Missing at start: the worker serves anyway (404 recipes_not_loaded, on_recipe null); once the
    file is written (as 'moldwatch recipe --out DIR' does) the worker reads it."""
    document = jsonable(plant_documents(small_plant, 1, "http-recipe", offset=2000)[0])
    async with serving_offline(trained_store, recipes=tmp_path / "out", store_poll_s=0.1) as worker:
        before = await get(worker, "/recipes/F01/ITM-001")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.http_port}") as client:
            unjudged = (await client.post("/score", json=document)).json()
            (tmp_path / "out").mkdir()  # DIR of 'moldwatch recipe --out DIR': its recipes.json is read
            recipe = {"facility": unjudged["facility"], "item": unjudged["item"], "maker": unjudged["maker"],
                      "setting_cluster": unjudged["setting_cluster"], "model_version": worker.model_version}
            staged = tmp_path / "staged.json"
            staged.write_text(json.dumps({"recipes": [recipe]}))
            staged.rename(tmp_path / "out" / "recipes.json")
            await wait_for(lambda: metric(worker, "moldwatch_recipes") == 1, timeout=20)
            judged = (await client.post("/score", json=document)).json()
            found = await client.get(f"/recipes/{recipe['facility']}/{recipe['item']}")
            other = await client.get(f"/recipes/{recipe['facility']}/ITM/with-a-slash")
    assert before.status_code == 404 and before.json()["reason"] == "recipes_not_loaded"
    assert "not found" in before.json()["error"]
    assert metric(worker, "moldwatch_recipe_loads_total", outcome="failed") == 1
    assert unjudged["on_recipe"] is None and judged["on_recipe"] is True
    jsonschema.validate(judged, VERDICT_SCHEMA)
    assert found.status_code == 200 and found.json() == recipe
    assert other.status_code == 404 and other.json()["reason"] == "no_recipe" and other.json()["item"] == "ITM/with-a-slash"


@pytest.mark.servers
@pytest.mark.timeout(300)
async def test_readyz_flips_when_mongodb_stops_and_recovers(mongo_server, kafka_server, trained_store):
    name = unique("ready-mongo")
    async with running_worker(worker_settings(mongo_server, kafka_server, trained_store, name)) as worker:
        assert (await get(worker, "/readyz")).status_code == 200
        await asyncio.to_thread(mongo_server.stop)
        try:
            response = await get(worker, "/readyz")
            assert response.status_code == 503 and "mongodb" in response.json()["reasons"], response.text
            assert (await get(worker, "/healthz")).status_code == 200  # not ready, but alive
        finally:
            await asyncio.to_thread(mongo_server.start)
        await wait_for(lambda: _status(worker, "/readyz", 200), timeout=60, interval=0.5)


@pytest.mark.servers
@pytest.mark.timeout(300)
async def test_readyz_flips_when_kafka_stops_reading_stops_and_nothing_is_lost(mongo_server, kafka_server, trained_store,
                                                                               small_plant):
    name = unique("ready-kafka")
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, queue_size=50, batch_size=10,
                               in_flight_batches=2, shutdown_timeout_s=60)
    documents = plant_documents(small_plant, 300, name)
    client = AsyncMongoClient(mongo_server.uri)
    try:
        async with running_worker(settings) as worker:
            collection = client[settings.mongo_database][settings.mongo_collection]
            await collection.insert_many(documents[:20])
            await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 20)
            assert (await get(worker, "/readyz")).status_code == 200
            await asyncio.to_thread(kafka_server.stop)
            try:
                response = await get(worker, "/readyz")
                assert response.status_code == 503 and "kafka" in response.json()["reasons"], response.text
                await collection.insert_many(documents[20:])
                # Backpressure: with no acks, scoring stalls, the bounded queue fills up and the
                # source blocks on it instead of buffering everything.
                await wait_for(lambda: metric(worker, "moldwatch_queue_records") >= settings.queue_size, timeout=60)
                read = metric(worker, "moldwatch_records_in_total")
                assert read < 300 and read <= 20 + 50 + 10 * (2 + 2) + 10, read
            finally:
                await asyncio.to_thread(kafka_server.start)
            await wait_for(lambda: _status(worker, "/readyz", 200), timeout=90, interval=0.5)
            verdicts = values(await read_topic(kafka_server.bootstrap_servers, settings.kafka_verdicts_topic, 300, timeout=90))
    finally:
        await client.close()
    assert {v["record_id"] for v in verdicts} == {d[small_plant.schema.record_id] for d in documents}


async def _status(worker: Worker, path: str, code: int) -> bool:
    try:
        return (await get(worker, path)).status_code == code
    except httpx.HTTPError:
        return False


async def test_a_stop_while_kafka_is_unreachable_is_a_clean_exit(trained_store, monkeypatch):
    # The sink stops retrying once told to stop and says so by raising; that lands in the same
    # turn as the stop itself, and must read as a stop (exit 0), never as a failed worker.
    from service.sink import KafkaSink, SinkError

    told_to_stop = asyncio.Event()

    async def setup_until_told_to_stop(self: KafkaSink, stopping: asyncio.Event | None = None) -> None:
        assert stopping is not None
        await stopping.wait()
        told_to_stop.set()
        raise SinkError("Kafka unreachable, and told to stop")

    monkeypatch.setattr(KafkaSink, "setup", setup_until_told_to_stop)
    for _ in range(3):  # the race has two outcomes; both must be a clean stop
        async with serving_offline(trained_store) as worker:
            assert worker.commit is not None and worker.commit.sink is not None
    assert told_to_stop.is_set()
