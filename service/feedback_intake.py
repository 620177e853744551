"""Operator feedback into Kafka: POST /feedback answers are judged by ``service.feedback``, kept
durably on ``kafka_feedback_topic`` (joined to the verdict they answer, key = record id) and
refused ones go to the dead-letter topic with the reason. A thin adapter: its own idempotent
producer (acks=all), so it never mixes with the verdict stream's transactions; an answer is
acknowledged to the client only after Kafka acknowledged it.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter

from service.backoff import Backoff
from service.config import WorkerSettings
from service.decode import DeadLetter
from service.feedback import LABELS, REFUSALS, FeedbackDesk, Joined, Refusal, VerdictMemory, now_utc, parse_event
from service.sink import RETRY_BACKOFF_S, dead_letter_value, dumps

log = structlog.get_logger("moldwatch.feedback")

# HTTP status of each refusal: the client's fault (4xx), each telling a different story.
STATUS = {"feedback_invalid": 422, "feedback_duplicate": 409, "feedback_unknown_record": 404, "feedback_late": 422,
          "feedback_from_the_future": 422}


class FeedbackUnavailable(Exception):
    """Kafka did not take the answer in time: the client should retry (same idempotency key)."""


class FeedbackIntake:
    def __init__(self, settings: WorkerSettings, memory: VerdictMemory, registry: CollectorRegistry) -> None:
        assert settings.kafka_feedback_topic, "feedback needs kafka_feedback_topic"
        self.settings = settings
        self.topic: str = settings.kafka_feedback_topic
        self.desk = FeedbackDesk(memory, settings.feedback_max_age_s, settings.feedback_future_skew_s)
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self.accepted = Counter("moldwatch_feedback", "Operator answers kept, by label and whether the verdict alarmed.",
                                ["label", "verdict"], registry=registry)
        self.refused = Counter("moldwatch_feedback_refused", "Operator answers refused (sent to the dead-letter "
                               "topic), by reason.", ["reason"], registry=registry)
        for label in LABELS:
            for verdict in ("alarm", "no_alarm"):
                self.accepted.labels(label, verdict)
        for reason in REFUSALS:
            self.refused.labels(reason)

    async def _producer_started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                from service.topics import ensure_topics

                await ensure_topics(self.settings, [self.topic])
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True,
                    client_id=f"{self.settings.kafka_client_id}-{self.settings.worker_name}-feedback",
                    request_timeout_ms=self.settings.kafka_request_timeout_ms, **self.settings.kafka_security_kwargs())
                await producer.start()
                self._producer = producer
            return self._producer

    async def _send(self, topic: str, key: bytes | None, value: bytes) -> None:
        try:
            producer = await self._producer_started()
            await asyncio.wait_for(await producer.send(topic, value, key=key),
                                   self.settings.kafka_request_timeout_ms / 1000)
        except Exception as exc:  # any failure: the client retries with the same key
            raise FeedbackUnavailable(f"kafka did not take the answer: {type(exc).__name__}: {str(exc)[:200]}") from exc

    async def submit(self, document: Any, via: str, token: str | None,
                     source: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """Judge, keep or refuse one answer; return the HTTP status and body. ``source``: where it
        was read (quoted in a dead letter)."""
        event = parse_event(document)
        outcome = event if isinstance(event, Refusal) else self.desk.judge(event, now_utc())
        if isinstance(outcome, Refusal):
            self.refused.labels(outcome.reason).inc()
            letter = DeadLetter(outcome.reason, outcome.error, document)
            await self._send(self.settings.kafka_dead_letters_topic, None,
                             dead_letter_value(letter, self.settings.worker_name, None, source or {"kind": via}))
            log.info("feedback refused", reason=outcome.reason, error=outcome.error, via=via, token=token)
            return STATUS[outcome.reason], {"reason": outcome.reason, "error": outcome.error}
        assert isinstance(outcome, Joined)
        record = outcome.record(now_utc(), via, token)
        await self._send(self.topic, outcome.event.record_id.encode(), dumps(record))
        self.desk.accepted(outcome)  # only once Kafka has it: a retry after a failed send is not a duplicate
        self.accepted.labels(outcome.event.label, "alarm" if outcome.verdict.anomaly else "no_alarm").inc()
        log.info("feedback kept", record_id=outcome.event.record_id, label=outcome.event.label, via=via, token=token,
                 group_id=outcome.verdict.group_id)
        return 201, record

    async def consume(self, stopping: asyncio.Event) -> None:
        """Answers arriving on ``kafka_feedback_in_topic``, judged like POST /feedback (a task).

        At least once: a partition's offset is committed after each answer in it was kept or
        refused; an answer re-read after a crash is refused as a duplicate while this process
        remembers its key, and kept again after a restart (the feedback topic's consumers dedupe
        by ``idempotency_key``)."""
        from aiokafka import AIOKafkaConsumer

        s = self.settings
        backoff = Backoff(*RETRY_BACKOFF_S)
        while True:
            consumer = AIOKafkaConsumer(
                s.kafka_feedback_in_topic, bootstrap_servers=s.kafka_bootstrap_servers,
                group_id=f"{s.kafka_group_id}-feedback", client_id=f"{s.kafka_client_id}-{s.worker_name}-feedback-in",
                enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed",
                **s.kafka_security_kwargs())
            try:
                await consumer.start()
                break
            except KafkaError as exc:
                await consumer.stop()
                log.warning("feedback topic unreachable, retrying", error=str(exc)[:200])
                if stopping.is_set():
                    return
                await asyncio.sleep(backoff.next())
        try:
            while not stopping.is_set():
                try:
                    await self._consume_once(consumer, backoff)
                except (KafkaError, OSError) as exc:  # feedback must never stop the verdict stream
                    log.warning("feedback topic read failed, retrying", error=f"{type(exc).__name__}: {str(exc)[:200]}")
                    await asyncio.sleep(backoff.next())
        finally:
            await consumer.stop()

    async def _consume_once(self, consumer: Any, backoff: Backoff) -> None:
        from aiokafka import TopicPartition

        batches = await consumer.getmany(timeout_ms=500, max_records=100)
        for tp, messages in batches.items():
            for message in messages:
                document = _decoded(message.value)
                while True:
                    try:
                        await self.submit(document, "kafka", None, {"kind": "kafka", "topic": message.topic,
                                                                   "partition": message.partition,
                                                                   "offset": message.offset})
                        break
                    except FeedbackUnavailable as exc:  # Kafka did not take it: the same answer again
                        log.warning("feedback not kept yet, retrying", error=str(exc)[:200])
                        await asyncio.sleep(backoff.next())
            await consumer.commit({TopicPartition(tp.topic, tp.partition): messages[-1].offset + 1})

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def _decoded(raw: bytes | None) -> Any:
    """A feedback message's JSON, or its text (refused as not an object, quoted in the dead letter)."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return raw.decode("utf-8", errors="replace")[:10_000]


__all__ = ["FeedbackIntake", "FeedbackUnavailable", "STATUS"]
