"""Helpers shared by the worker tests (documents from the simulated plant, Kafka readers, a
running-worker context).
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from model_store.serving.verdict import VERDICT_SCHEMA_PATH
from model_store.simulate import as_documents
from service.config import WorkerSettings
from service.run_command import serve
from service.worker import Worker

VERDICT_SCHEMA = json.loads(Path(VERDICT_SCHEMA_PATH).read_text())


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def plant_documents(plant: Any, count: int, prefix: str, start: datetime | None = None, offset: int = 0) -> list[dict[str, Any]]:
    """``count`` raw documents in the plant's own format, as a plant would insert them into MongoDB.

    Each maker's document holds only its own fields (no NaN columns of other makers); ids are made
    unique per test; timestamps are fresh and increasing so that end-to-end latency and backfill by
    timestamp behave as in a live plant.
    """
    schema = plant.schema
    frame = plant.records.iloc[offset : offset + count]
    start = start or datetime.now(UTC)
    documents = as_documents(frame)
    for i, doc in enumerate(documents):
        doc[schema.record_id] = f"{prefix}-{offset + i:06d}"
        doc[schema.timestamp] = start + timedelta(milliseconds=i)
    return documents


def worker_settings(mongo: Any, kafka: Any, store: Path, name: str, **overrides: Any) -> WorkerSettings:
    """Settings with topics, database and checkpoint id unique to ``name`` (tests share servers)."""
    values: dict[str, Any] = dict(
        worker_name=name,
        mongo_uri=mongo.uri,
        mongo_database=name.replace("-", "_"),
        mongo_collection="shots",
        mongo_timeout_ms=2000,
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        kafka_verdicts_topic=f"{name}.verdicts",
        kafka_alarms_topic=f"{name}.alarms",
        kafka_dead_letters_topic=f"{name}.dead-letters",
        kafka_records_topic=f"{name}.records",
        kafka_group_id=f"{name}-group",
        store=store,
        store_poll_s=0.2,
        batch_max_wait_ms=10,
        checkpoint_interval_s=0.2,
        http_host="127.0.0.1",
        http_port=0,
        ready_cache_s=0.0,
        ready_timeout_s=3.0,  # tests share two busy cores; production probes keep the 0.5 s default
        shutdown_timeout_s=20,
    )
    values.update(overrides)
    return WorkerSettings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def running_worker(settings: WorkerSettings, listen_timeout: float = 60.0) -> AsyncIterator[Worker]:
    """A worker running in this loop, its HTTP server beside it (as ``moldwatch run`` serves it); on
    exit it is stopped gracefully and must exit 0."""
    worker = Worker(settings)
    task = asyncio.create_task(serve(worker))
    try:
        waiting = asyncio.create_task(worker.wait_listening(listen_timeout))
        done, _ = await asyncio.wait({waiting, task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            waiting.cancel()
            raise AssertionError(f"worker exited early with {task.result()}")
        waiting.result()
        yield worker
    finally:
        worker.stop()
        code = await asyncio.wait_for(task, 60)
    assert code == 0, f"worker exited with {code}"


async def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[Any]:
    """All messages of ``topic`` from the start: waits until ``expected`` arrived (or ``timeout``),
    then reads on to the end offsets the broker reports at that moment, so that every message
    already written (a duplicate included) is in the result. No fixed settling time."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                messages.extend(batch)
        partitions = consumer.assignment()
        while not partitions and time.monotonic() < deadline:  # the topic may not exist yet
            await consumer.getmany(timeout_ms=200)
            partitions = consumer.assignment()
        ends = await consumer.end_offsets(list(partitions)) if partitions else {}
        # positions past transaction markers count as read: compare positions, not message counts
        while time.monotonic() < deadline:
            behind = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
            if not behind:
                break
            for batch in (await consumer.getmany(*behind, timeout_ms=200)).values():
                messages.extend(batch)
    finally:
        await consumer.stop()
    return messages


def values(messages: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(m.value) for m in messages]


async def produce(bootstrap: str, topic: str, payloads: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in payloads:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def get(worker: Worker, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.http_port}", timeout=10) as client:
        return await client.get(path)


def _describe(predicate: Any) -> str:
    """The predicate's source line (a failed wait says which condition it was)."""
    try:
        return inspect.getsource(predicate).strip()[:300]
    except (OSError, TypeError):
        return repr(predicate)


async def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> None:
    """Poll an (async or sync) predicate until true or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {_describe(predicate)}")
        await asyncio.sleep(interval)


def metric(worker: Worker, name: str, **labels: str) -> float:
    """Sum of a metric's samples matching ``labels`` in the worker's registry."""
    total = 0.0
    for family in worker.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
