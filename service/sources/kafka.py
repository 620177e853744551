"""Kafka source for scale-out: raw records from a topic, shared by the workers of a consumer group.

Values are what the MongoDB Kafka source connector (or Debezium) produces: the plain document
(``publish.full.document.only=true``), a change event with ``fullDocument``, either possibly
wrapped by Kafka Connect's JsonConverter (``{"schema": ..., "payload": ...}``) or encoded twice
as a JSON string. Extended JSON (``{"$date": ...}``, ``{"$oid": ...}``) is decoded to BSON types.

Offsets are committed only through :meth:`KafkaSource.commit`, after the verdicts of every earlier
record are acknowledged; auto-commit is off. A rebalance may hand a partition to another worker
before its last offsets were committed: those records are scored again there (at-least-once).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from bson import json_util
from bson.json_util import JSONOptions

from service.config import WorkerSettings
from service.metrics import WorkerMetrics
from service.kafka_ping import metadata_ping
from service.pipeline import SourceMessage
from service.sources import Emit

log = structlog.get_logger("moldwatch.source.kafka")

RECORD_EVENTS = frozenset({"insert", "update", "replace"})
_JSON = JSONOptions(tz_aware=True)  # $date values become UTC datetimes
POLL_MS = 200  # an empty poll returns after this long: bounds how long a stop waits for a read
STANDBY_AFTER_S = 15.0  # longer than a group join with the broker's default rebalance delay (3 s)


def parse_value(raw: bytes | None) -> tuple[Any, str | None, bool]:
    """``(document, error, is_record)`` from a message value.

    ``error`` is set when the value is not JSON (``document`` is then its text); ``is_record`` is
    False for change events that carry no record (deletes, drops) and for tombstones.
    """
    if raw is None:
        return None, None, False  # a tombstone (compacted topic): nothing to score
    try:
        value: Any = json_util.loads(raw, json_options=_JSON)
    except (ValueError, TypeError) as exc:
        text = raw.decode("utf-8", errors="replace")
        return text, f"value is not JSON: {str(exc)[:200]}", True
    for _ in range(2):  # JsonConverter envelope and/or a JSON document encoded as a JSON string
        if isinstance(value, dict) and set(value) == {"schema", "payload"}:
            value = value["payload"]
        if isinstance(value, str):
            try:
                value = json_util.loads(value, json_options=_JSON)
            except (ValueError, TypeError):
                break
    if isinstance(value, dict) and "operationType" in value and ("documentKey" in value or "ns" in value):
        document = value.get("fullDocument")
        if value.get("operationType") in RECORD_EVENTS and isinstance(document, dict):
            return document, None, True
        return None, None, False
    return value, None, True


class KafkaSource:
    name = "kafka"

    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.listening = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            s.kafka_records_topic,
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.kafka_group_id,
            client_id=f"{s.kafka_client_id}-{s.worker_name}",
            enable_auto_commit=False,  # offsets move only after verdicts are acknowledged
            auto_offset_reset="earliest" if s.start_from == "beginning" else "latest",
            max_poll_records=s.batch_size,
            **s.kafka_security_kwargs(),
        )

    async def _connect(self) -> AIOKafkaConsumer:
        pause = 0.2
        while True:
            consumer = self._new_consumer()
            try:
                await consumer.start()
            except KafkaError as exc:
                await consumer.stop()
                self.metrics.source_errors.labels(self.name).inc()
                log.warning("kafka source unreachable, retrying", error=str(exc), retry_in_s=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            log.info("kafka source connected", topic=self.settings.kafka_records_topic, group=self.settings.kafka_group_id)
            return consumer

    async def run(self, emit: Emit) -> None:
        self.consumer = await self._connect()
        started = time.monotonic()
        while True:
            batches = await self.consumer.getmany(timeout_ms=POLL_MS, max_records=self.settings.batch_size)
            # Listening once partitions are assigned; a member left without partitions (more
            # workers than partitions) is a healthy standby after a while, not "not ready".
            if self.consumer.assignment() or time.monotonic() - started > STANDBY_AFTER_S:
                self.listening.set()
            if not batches:
                self.metrics.stream_lag.labels(self.name).set(0.0)  # caught up
            for messages in batches.values():
                for message in messages:
                    await emit(self._to_message(message))

    def _to_message(self, message: ConsumerRecord) -> SourceMessage:
        position = (message.topic, message.partition, message.offset + 1)  # Kafka commits the *next* offset
        event_time = message.timestamp / 1000.0 if message.timestamp and message.timestamp > 0 else None
        if event_time is not None:
            self.metrics.stream_lag.labels(self.name).set(max(0.0, time.time() - event_time))
        document, error, is_record = parse_value(message.value)
        if not is_record:
            return SourceMessage(None, position, event_time=event_time, marker=True)
        return SourceMessage(document, position, event_time=event_time, error=error)

    def compact(self, positions: list[Any]) -> list[Any]:
        latest: dict[tuple[str, int], int] = {}
        for topic, partition, offset in positions:
            key = (topic, partition)
            latest[key] = max(offset, latest.get(key, 0))
        return [(t, p, o) for (t, p), o in latest.items()]

    async def commit(self, positions: list[Any]) -> None:
        if not positions or self.consumer is None:
            return
        offsets = {TopicPartition(t, p): o for t, p, o in self.compact(positions)}
        try:
            await self.consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group rebalanced: these partitions belong to another member now, which resumes
            # from the last committed offsets (at-least-once). Nothing to retry here.
            log.warning("offset commit refused after a rebalance", error=str(exc)[:300])

    async def ping(self) -> str | None:
        if self.consumer is None:
            return "kafka source not connected"
        return await metadata_ping(self.consumer._client, self.settings.ready_timeout_s, "kafka source")

    async def close(self) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            await consumer.stop()


def encode_document(document: Any) -> bytes:
    """A document as the MongoDB Kafka source connector writes it (relaxed extended JSON)."""
    return json_util.dumps(document, json_options=json_util.RELAXED_JSON_OPTIONS).encode()


__all__ = ["KafkaSource", "parse_value", "encode_document"]
