"""Operator feedback into Kafka: POST /feedback answers are judged by ``service.feedback``, kept
durably on ``kafka_feedback_topic`` (joined to the verdict they answer, key = record id) and
refused ones go to the dead-letter topic with the reason. A thin adapter: its own idempotent
producer (acks=all), so it never mixes with the verdict stream's transactions; an answer is
acknowledged to the client only after Kafka acknowledged it.
"""
from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry, Counter

from service.config import WorkerSettings
from service.decode import DeadLetter
from service.feedback import LABELS, REFUSALS, FeedbackDesk, Joined, Refusal, VerdictMemory, now_utc, parse_event
from service.sink import dead_letter_value, dumps

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
        except Exception as exc:  # noqa: BLE001 - any failure: the client retries with the same key
            raise FeedbackUnavailable(f"kafka did not take the answer: {type(exc).__name__}: {str(exc)[:200]}") from exc

    async def submit(self, document: Any, via: str, token: str | None) -> tuple[int, dict[str, Any]]:
        """Judge, keep or refuse one answer; return the HTTP status and body."""
        event = parse_event(document)
        outcome = event if isinstance(event, Refusal) else self.desk.judge(event, now_utc())
        if isinstance(outcome, Refusal):
            self.refused.labels(outcome.reason).inc()
            letter = DeadLetter(outcome.reason, outcome.error, document)
            await self._send(self.settings.kafka_dead_letters_topic, None,
                             dead_letter_value(letter, self.settings.worker_name, None, {"kind": via}))
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

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


__all__ = ["FeedbackIntake", "FeedbackUnavailable", "STATUS"]
