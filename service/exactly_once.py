"""``--delivery exactly-once``: one Kafka transaction per micro-batch.

Each batch's verdicts, alarms and dead letters *and* its source position are committed together:

- MongoDB source: the checkpoint (resume token, last record) is a message on a compacted topic
  (``kafka_positions_topic``, key = worker name) inside the transaction; :class:`KafkaPositionStore`
  reads the last committed one back on start.
- Kafka source: the consumer offsets go through ``send_offsets_to_transaction``.

A consumer that reads with ``isolation.level=read_committed`` therefore sees each record's verdict
exactly once across crashes: a transaction open at a crash is aborted (the restarted worker's
producer, with the same ``transactional.id``, fences and aborts it), and the restarted worker resumes
from the position of the last committed transaction. The transactional id is derived from the
worker name, so two workers must never share a name (the second would fence the first).

Failures: a retriable one (broker down, timeouts) aborts the transaction and sends the same
messages again in a new one, in order; a permanent one for a single message turns it into a dead
letter (as in at-least-once mode) before the retry; a fatal one (fenced by another instance with
the same name) stops the worker, which must not write any more.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, ProducerFenced, TopicAlreadyExistsError
from bson import json_util

from service.backoff import Backoff
from service.client_internals import fail_buffered
from service.config import WorkerSettings
from service.kafka_acls import denied, transactional_id
from service.redact import one_line
from service.sink import RETRY_BACKOFF_S, Delivery, KafkaSinkBase, Outgoing, SinkError, hand_over, is_permanent
from service.sources import CheckpointUnavailable

log = structlog.get_logger("moldwatch.exactly_once")
_JSON = json_util.JSONOptions(tz_aware=True, json_mode=json_util.JSONMode.CANONICAL)  # exact round trip of tokens


class FencedError(SinkError):
    """Another worker with the same transactional id took over: this one must stop writing."""


class TransactionalSink(KafkaSinkBase):
    """The sink of exactly-once mode: :meth:`commit_batch` writes a delivery (built by
    :meth:`~service.sink.KafkaSinkBase.build`) and a position in one transaction. Nothing is sent
    outside a transaction, so there is no streaming ``add_batch``/``flush`` here."""

    def _new_producer(self) -> AIOKafkaProducer:
        s = self.settings
        return AIOKafkaProducer(**self._producer_options(), transactional_id=transactional_id(s),
                                transaction_timeout_ms=s.kafka_transaction_timeout_ms)

    async def setup(self, stopping: asyncio.Event | None = None) -> None:
        await super().setup(stopping)
        assert self.producer is not None
        # Register the transactional id now (an empty transaction): this fences the previous
        # incarnation of this worker and aborts its open transaction before any position is read.
        await self.producer.begin_transaction()
        await self.producer.commit_transaction()

    async def commit_batch(self, delivery: Delivery, position: tuple[str, bytes, bytes] | None = None,
                           offsets: dict[TopicPartition, int] | None = None, group_id: str | None = None) -> None:
        """Write ``delivery`` (+ the position message or the consumer offsets) in one transaction;
        retry in a new transaction until it commits."""
        backoff = Backoff(*RETRY_BACKOFF_S)
        while True:
            try:
                await self._transaction(delivery, position, offsets, group_id)
                self._last_error = ""  # committed: nothing waits (last_error's contract)
                return
            except ProducerFenced as exc:
                raise FencedError(f"fenced by another worker with transactional id {transactional_id(self.settings)}: "
                                  f"{one_line(exc)}") from exc
            except Exception as exc:  # noqa: BLE001 - aborted; the same messages go again in a new transaction
                self._last_error = denied(exc, self.settings) or one_line(exc)  # a missing ACL: which one
                pause = backoff.next()
                self.metrics.kafka_send_errors.labels(self.settings.kafka_verdicts_topic).inc()
                log.warning("transaction failed; retrying the batch in a new transaction", error=self._last_error,
                            retry_in_s=pause)
                await self._reset_after_failure()
                await asyncio.sleep(pause)

    async def _transaction(self, delivery: Delivery, position: tuple[str, bytes, bytes] | None,
                           offsets: dict[TopicPartition, int] | None, group_id: str | None) -> None:
        if self.producer is None:
            await self.setup()
        producer = self.producer
        assert producer is not None
        # aiokafka's transaction context: begins; on exit commits, or aborts unless the producer's
        # error is fatal (fenced: no abort is possible). Entered and left by hand so that the
        # abort is bounded: it waits for a broker that may be gone.
        transaction = producer.transaction()
        await transaction.__aenter__()
        try:
            for message in delivery.messages:
                message.future = None  # a retried transaction hands everything over again
            while True:
                refused, exc = await hand_over(producer, [m for m in delivery.messages if m.future is None])
                if exc is None:
                    break
                if not is_permanent(exc):
                    raise exc
                self.refused(refused, exc)
            futures: dict[Any, list[Outgoing]] = {}
            for message in delivery.messages:
                futures.setdefault(message.future, []).append(message)
            if position is not None:
                topic, key, value = position
                futures[await producer.send(topic, value, key=key)] = []
            if offsets:
                await producer.send_offsets_to_transaction(offsets, group_id)
            results = await asyncio.gather(*futures, return_exceptions=True)
            for messages, outcome in zip(futures.values(), results):
                if isinstance(outcome, BaseException):
                    if messages and is_permanent(outcome):
                        self.refused(messages, outcome)  # the next attempt sends them apart / as dead letters
                    raise outcome
            await transaction.__aexit__(None, None, None)  # commits
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(transaction.__aexit__(type(exc), exc, exc.__traceback__),
                                       self.settings.kafka_request_timeout_ms / 1000 * 3)
            raise
        now = time.time()
        for message in delivery.messages:
            message.acked_at = now
            if message.on_ack is not None:
                message.on_ack(now)

    async def _reset_after_failure(self) -> None:
        """A transactional producer in an unknown state after a failure: start a new one (same id:
        it fences and aborts whatever the old one left open)."""
        producer, self.producer = self.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                fail_buffered(producer, KafkaError("transaction aborted"))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)


class KafkaPositionStore:
    """The MongoDB change-stream checkpoint on a compacted Kafka topic (exactly-once mode)."""

    def __init__(self, settings: WorkerSettings, sink: TransactionalSink) -> None:
        self.settings = settings
        self.sink = sink
        self.topic = settings.kafka_positions_topic
        self.key = settings.worker_name.encode()

    def message(self, fields: dict[str, Any]) -> tuple[str, bytes, bytes]:
        """The position as a message for :meth:`TransactionalSink.commit_batch`."""
        return self.topic, self.key, json_util.dumps(fields, json_options=_JSON).encode()

    async def ensure_topic(self) -> list[int]:
        """The positions topic's partitions; the topic is created (compacted) when it does not
        exist, and then holds no position yet: no partitions to read."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                    request_timeout_ms=self.settings.kafka_request_timeout_ms,
                                    **self.settings.kafka_security_kwargs())
        await admin.start()
        try:
            # Every topic, as list_topics asks: naming this one could make the broker auto-create
            # it (not compacted).
            topics = {t["topic"]: t for t in await admin.describe_topics()}
            if self.topic in topics:
                described = topics[self.topic]
                return sorted(p["partition"] for p in described["partitions"]) if described["error_code"] == 0 else []
            brokers = len((await admin.describe_cluster()).get("brokers", [])) or 1
            result = await admin.create_topics([NewTopic(self.topic, num_partitions=1, replication_factor=min(3, brokers),
                                                         topic_configs={"cleanup.policy": "compact"})])
            for _, code, *rest in getattr(result, "topic_errors", []) or []:
                if code not in (0, TopicAlreadyExistsError.errno):
                    log.warning("positions topic not created", topic=self.topic, error_code=code, detail=rest)
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()
        return []

    async def load(self) -> dict[str, Any] | None:
        """:meth:`_load`, its Kafka errors as :class:`CheckpointUnavailable` (the source retries)."""
        try:
            return await self._load()
        except KafkaError as exc:
            raise CheckpointUnavailable(f"kafka positions topic {self.topic}: {one_line(exc)}") from exc

    async def _load(self) -> dict[str, Any] | None:
        """The last committed position of this worker, or None (read_committed, to the end).

        Waits until no transaction is open on the topic (its last stable offset reaches the high
        watermark): a committed transaction whose markers are not written yet would otherwise hide
        the newest position, and resuming from an older one duplicates verdicts. The sink's
        producer fenced this worker's previous incarnation at start-up, so an abandoned transaction
        is aborted and this wait is short.
        """
        partitions = [TopicPartition(self.topic, p) for p in await self.ensure_topic()]
        if not partitions:
            return None
        kwargs = dict(bootstrap_servers=self.settings.kafka_bootstrap_servers, group_id=None, enable_auto_commit=False,
                      **self.settings.kafka_security_kwargs())
        consumer = AIOKafkaConsumer(isolation_level="read_committed", **kwargs)
        probe = AIOKafkaConsumer(isolation_level="read_uncommitted", **kwargs)
        await consumer.start()
        await probe.start()
        try:
            deadline = time.monotonic() + self.settings.kafka_transaction_timeout_ms / 1000 + 10
            while True:
                stable, high = await consumer.end_offsets(partitions), await probe.end_offsets(partitions)
                if stable == high or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            consumer.assign(partitions)
            seek = consumer.seek_to_beginning(*partitions)
            if asyncio.iscoroutine(seek):  # a coroutine in older aiokafka releases
                await seek
            found: dict[str, Any] | None = None
            while [tp for tp in partitions if await consumer.position(tp) < stable[tp]]:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    for record in batch:
                        if record.key == self.key:
                            found = None if record.value is None else json_util.loads(record.value, json_options=_JSON)
            return found
        finally:
            await consumer.stop()
            await probe.stop()

    async def save(self, fields: dict[str, Any]) -> None:
        """A position alone in its own transaction (the starting position)."""
        try:
            await self.sink.commit_batch(Delivery(), position=self.message(fields))
        except KafkaError as exc:
            raise CheckpointUnavailable(f"kafka positions topic {self.topic}: {one_line(exc)}") from exc


__all__ = ["TransactionalSink", "KafkaPositionStore", "FencedError", "transactional_id"]
