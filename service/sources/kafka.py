"""Kafka source for scale-out: raw records from a topic, shared by the workers of a consumer group.

Values are what the MongoDB Kafka source connector (or Debezium) produces: the plain document
(``publish.full.document.only=true``), a change event with ``fullDocument``, either possibly
wrapped by Kafka Connect's JsonConverter (``{"schema": ..., "payload": ...}``) or encoded twice
as a JSON string. Extended JSON (``{"$date": ...}``, ``{"$oid": ...}``) is decoded to BSON types.

Offsets are committed only through :meth:`KafkaSource.commit`, after the verdicts of every earlier
record are acknowledged; auto-commit is off.

Rebalances (:class:`_Rebalance`): before partitions are revoked, the worker lets what was read
from them be acknowledged (bounded by ``rebalance_drain_s``) and commits it, then the positions of
the revoked partitions are dropped: a commit only ever names partitions this member owns (a
commit for a partition owned by another member fails, and would fail forever). Records that were
not acknowledged in time are scored again by the new owner (at-least-once; exactly-once mode
commits offsets in the verdicts' transaction instead).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from bson import json_util
from bson.json_util import JSONOptions

from service.backoff import Backoff
from service.config import WorkerSettings
from service.kafka_ping import connect_failure, metadata_ping
from service.metrics import WorkerMetrics
from service.pipeline import SourceMessage
from service.sources import Emit, PositionStore

OnRevoked = Callable[[set[TopicPartition]], Awaitable[None]]


CONNECT_BACKOFF_S = (0.2, 10.0)  # first pause and cap (s) while the source's brokers are unreachable

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
    return parse_change(raw)[:3]


def parse_change(raw: bytes | None) -> tuple[Any, str | None, bool, str | None]:
    """:func:`parse_value` and the change event's ``operationType`` (None for a plain document):
    an update or replace published by the connector says so in the verdict's ``source``."""
    if raw is None:
        return None, None, False, None  # a tombstone (compacted topic): nothing to score
    try:
        value: Any = json_util.loads(raw, json_options=_JSON)
    except (ValueError, TypeError) as exc:
        text = raw.decode("utf-8", errors="replace")
        return text, f"value is not JSON: {str(exc)[:200]}", True, None
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
        operation = value.get("operationType")
        if operation in RECORD_EVENTS and isinstance(document, dict):
            return document, None, True, operation
        return None, None, False, None
    return value, None, True, None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka ships no type hints; subscribe() wants this base
    """Commit what is acknowledged before partitions go; forget what is not ours any more."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        partitions = set(revoked)
        if not partitions:
            return
        log.info("partitions revoked", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions))
        self.source.revoking = partitions
        try:
            if self.source.on_revoked is not None:
                await self.source.on_revoked(partitions)
        finally:
            self.source.revoking = set()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        if self.source.on_assigned is not None:
            await self.source.on_assigned(set(assigned))


class KafkaSource:
    name = "kafka"

    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics, on_revoked: OnRevoked | None = None,
                 on_assigned: OnRevoked | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.listening = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self.on_revoked = on_revoked
        self.on_assigned = on_assigned
        self.revoking: set[TopicPartition] = set()  # during a revocation, still ours to commit
        self.connect_error = ""  # why the last start of the consumer failed (broker and cause)
        # Unused: this source's checkpoint is its group's committed offsets, which exactly-once
        # commits inside the transaction (:meth:`offsets`), not a checkpoint document.
        self.position_store: PositionStore | None = None

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.kafka_group_id,
            client_id=f"{s.kafka_client_id}-{s.worker_name}",
            enable_auto_commit=False,  # offsets move only after verdicts are acknowledged
            auto_offset_reset="earliest" if s.start_from == "beginning" else "latest",
            max_poll_records=s.batch_size,
            # Records written by a transactional producer count only once committed.
            isolation_level="read_committed",
            **s.kafka_security_kwargs(),
        )
        consumer.subscribe([s.kafka_records_topic], listener=_Rebalance(self))
        return consumer

    async def _connect(self) -> AIOKafkaConsumer:
        backoff = Backoff(*CONNECT_BACKOFF_S)
        while True:
            consumer = self._new_consumer()
            try:
                await consumer.start()
            except KafkaError as exc:
                await consumer.stop()
                self.metrics.source_errors.labels(self.name).inc()
                pause = backoff.next()
                self.connect_error = await connect_failure(self.settings, exc)  # names the broker and the cause
                log.warning("kafka source unreachable, retrying", error=f"kafka {self.connect_error}", retry_in_s=pause)
                await asyncio.sleep(pause)
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
            self.metrics.child(self.metrics.stream_lag, self.name).set(max(0.0, time.time() - event_time))
        document, error, is_record, operation = parse_change(message.value)
        if not is_record:
            return SourceMessage(None, position, event_time=event_time, marker=True)
        # The verdict's ``source`` (service/supersede.py): the record's own offset (the position
        # above is the next one, what Kafka commits).
        source: dict[str, Any] = {"kind": "kafka", "topic": message.topic, "partition": message.partition,
                                  "offset": message.offset}
        if operation is not None:
            source["operation"] = operation
        return SourceMessage(document, position, event_time=event_time, error=error, source=source)

    def compact(self, positions: list[Any]) -> list[Any]:
        latest: dict[tuple[str, int], int] = {}
        for topic, partition, offset in positions:
            key = (topic, partition)
            latest[key] = max(offset, latest.get(key, 0))
        return [(t, p, o) for (t, p), o in latest.items()]

    def checkpoint_fields(self, position: Any) -> dict[str, Any] | None:
        """None: the checkpoint of a Kafka source is its consumer offsets (:meth:`offsets`)."""
        return None

    def owned(self) -> set[TopicPartition]:
        if self.consumer is None:
            return set()
        return set(self.consumer.assignment()) | self.revoking

    def drop(self, positions: list[Any], partitions: set[Any]) -> list[Any]:
        """``positions`` without those of ``partitions`` (revoked: another member commits them now)."""
        gone = {(tp.topic, tp.partition) for tp in partitions}
        return [p for p in positions if (p[0], p[1]) not in gone]

    def offsets(self, positions: list[Any]) -> dict[TopicPartition, int]:
        """Offsets to commit for ``positions``, only for partitions this member owns."""
        owned = self.owned()
        offsets = {TopicPartition(t, p): o for t, p, o in self.compact(positions)}
        dropped = [tp for tp in offsets if tp not in owned]
        if dropped:
            log.info("not committing offsets of partitions this worker no longer owns",
                     partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in dropped))
        return {tp: o for tp, o in offsets.items() if tp in owned}

    async def wait_materialized(self, offsets: dict[tuple[str, int], int], timeout_s: float) -> list[tuple[str, int]]:
        """Wait until the group's committed offsets (as a new owner will fetch them) reach
        ``offsets``; return the partitions still behind after ``timeout_s``."""
        if not offsets or self.consumer is None:
            return []
        deadline = time.monotonic() + timeout_s
        behind = dict(offsets)
        while True:
            for key, offset in list(behind.items()):
                try:
                    remaining = max(0.1, deadline - time.monotonic())
                    committed = await asyncio.wait_for(self.consumer.committed(TopicPartition(*key)), remaining)
                except (TimeoutError, KafkaError):
                    committed = None
                if committed is not None and committed >= offset:
                    del behind[key]
            if not behind or time.monotonic() >= deadline:
                return sorted(behind)
            await asyncio.sleep(0.01)

    async def commit(self, positions: list[Any]) -> None:
        if not positions or self.consumer is None:
            return
        offsets = self.offsets(positions)
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under this commit: the partitions' new owner resumes from the
            # last committed offsets (at-least-once). Nothing to retry: the positions are dropped.
            log.warning("offset commit refused after a rebalance", error=str(exc)[:300])

    async def ping(self) -> str | None:
        if self.consumer is None:
            return f"kafka source not connected: {self.connect_error}" if self.connect_error else "kafka source not connected"
        return await metadata_ping(self.consumer.topics(), self.settings.ready_timeout_s, "kafka source",
                                   self.settings.kafka_bootstrap_servers)

    async def close(self) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            await consumer.stop()


def encode_document(document: Any) -> bytes:
    """A document as the MongoDB Kafka source connector writes it (relaxed extended JSON)."""
    return json_util.dumps(document, json_options=json_util.RELAXED_JSON_OPTIONS).encode()


__all__ = ["KafkaSource", "parse_value", "parse_change", "encode_document"]
