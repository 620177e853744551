"""Kafka sink: verdicts, alarms and dead letters through one idempotent producer.

Lifecycle (after quix-streams' sinks): :meth:`KafkaSink.setup` connects, :meth:`add_batch` hands
a scored batch's messages to the producer without waiting, :meth:`flush` returns only when every
one of them is acknowledged by the brokers (``acks=all``), :meth:`close` stops the producer.

A send that fails (broker down, request timed out) is counted and sent again with back-off until
it is acknowledged; :meth:`flush` does not return before that, so the worker cannot checkpoint past
an unacknowledged verdict. Only a flush deadline (shutdown) gives up, by raising :class:`SinkError`.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from bson import json_util

from service.config import WorkerSettings
from service.decode import DeadLetter
from service.kafka_ping import metadata_ping
from service.metrics import WorkerMetrics
from service.pipeline import BatchResult, dumps

log = structlog.get_logger("moldwatch.sink")

# Kafka's default max.message.bytes is ~1 MB; a dead letter quoting a larger document would be
# refused by the broker and block the stream, so the quoted original is cut at half of that.
MAX_QUOTED_DOCUMENT = 512 * 1024
RETRY_BACKOFF_S = (0.1, 5.0)  # first and largest pause between resends of failed messages
_JSON_OPTIONS = json_util.RELAXED_JSON_OPTIONS  # human-readable extended JSON ($oid, $date, ...)


class SinkError(RuntimeError):
    """Messages could not be acknowledged before a deadline."""


def document_json(document: Any) -> str:
    """The original document as JSON text: BSON types as extended JSON, anything odd as its repr."""
    try:
        if isinstance(document, (bytes, bytearray)):
            document = bytes(document).decode("utf-8", errors="replace")
        text = json_util.dumps(document, json_options=_JSON_OPTIONS, allow_nan=False)
    except (TypeError, ValueError, RecursionError, OverflowError) as exc:
        text = json.dumps({"$unserializable": type(exc).__name__, "$repr": _safe_repr(document)[:MAX_QUOTED_DOCUMENT]})
    if len(text) > MAX_QUOTED_DOCUMENT:
        text = json.dumps({"$truncated": True, "$text": text[:MAX_QUOTED_DOCUMENT]})
    return text


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001
        return f"<{type(value).__name__}>"


def dead_letter_value(letter: DeadLetter, worker: str, model_version: str | None) -> bytes:
    head = dumps({
        "reason": letter.reason,
        "error": letter.error,
        "worker": worker,
        "model_version": model_version,
        "dead_lettered_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    })
    # Splice the document in as JSON text: it is already serialised, and must stay valid JSON.
    return head[:-1] + b',"document":' + document_json(letter.document).encode() + b"}"


def facility_key(value: Any) -> bytes | None:
    return str(value).encode() if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) else None


@dataclass
class Outgoing:
    """One message until it is acknowledged."""

    topic: str
    key: bytes | None
    value: bytes
    on_ack: Callable[[float], None] | None = None
    future: asyncio.Future[Any] | None = None
    acked_at: float | None = None


@dataclass
class Delivery:
    """The messages of one batch; :meth:`KafkaSink.flush` resolves them all."""

    messages: list[Outgoing] = field(default_factory=list)

    @property
    def acked(self) -> bool:
        return all(m.acked_at is not None for m in self.messages)


class KafkaSink:
    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics, facility_column: str | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.facility_column = facility_column  # plant column for keying dead letters by facility
        self.producer: AIOKafkaProducer | None = None
        self._last_error = ""

    # -- lifecycle -------------------------------------------------------------------------------
    def _new_producer(self) -> AIOKafkaProducer:
        s = self.settings
        return AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=s.kafka_client_id,
            acks="all",
            enable_idempotence=True,  # broker-side dedupe of internal retries: no duplicates, per-key order
            linger_ms=s.kafka_linger_ms,
            request_timeout_ms=s.kafka_request_timeout_ms,
            **s.kafka_security_kwargs(),
        )

    async def setup(self, stopping: asyncio.Event | None = None) -> None:
        """Connect, retrying with back-off until the brokers answer (or ``stopping`` is set)."""
        pause = RETRY_BACKOFF_S[0]
        while True:
            producer = self._new_producer()
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                log.warning("kafka unreachable, retrying", error=str(exc), retry_in_s=pause)
                if stopping is not None and stopping.is_set():
                    raise SinkError(f"Kafka {self.settings.kafka_bootstrap_servers} unreachable: {exc}") from exc
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_BACKOFF_S[1])
                continue
            self.producer = producer
            log.info("kafka producer connected", bootstrap_servers=self.settings.kafka_bootstrap_servers)
            return

    async def close(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            await producer.stop()

    async def ping(self) -> str | None:
        """``None`` when the producer can reach a broker now, else the reason (readiness)."""
        if self.producer is None:
            return "kafka producer not connected"
        return await metadata_ping(self.producer.client, self.settings.ready_timeout_s, "kafka")

    # -- add ---------------------------------------------------------------------------------------
    async def add_batch(self, result: BatchResult, on_verdict_ack: Callable[[Any, float], None] | None = None) -> Delivery:
        """Queue a batch's verdicts, alarms and dead letters; returns without waiting for acks."""
        s = self.settings
        delivery = Delivery()
        for scored in result.scored:
            verdict = scored.verdict
            key = facility_key(verdict.get("facility"))
            value = scored.payload or dumps(verdict)
            callback = (lambda at, sc=scored: on_verdict_ack(sc, at)) if on_verdict_ack else None
            delivery.messages.append(Outgoing(s.kafka_verdicts_topic, key, value, callback))
            if verdict.get("anomaly"):
                delivery.messages.append(Outgoing(s.kafka_alarms_topic, key, value))
        for failed in result.failed:
            doc = failed.dead_letter.document
            key = facility_key(doc.get(self.facility_column)) if self.facility_column and isinstance(doc, dict) else None
            value = dead_letter_value(failed.dead_letter, s.worker_name, result.model_version)
            delivery.messages.append(Outgoing(s.kafka_dead_letters_topic, key, value))
        for message in delivery.messages:
            await self._send(message)
        return delivery

    async def _send(self, message: Outgoing) -> None:
        """Hand one message to the producer; a failure here is retried by :meth:`flush`."""
        if self.producer is None:
            return
        try:
            # Awaits only while the producer's buffer is full or the topic's metadata is unknown:
            # that wait is the backpressure that stops intake when Kafka is slow.
            future = await self.producer.send(message.topic, message.value, key=message.key)
        except KafkaError as exc:
            self._send_failed(message, exc)
            return
        message.future = future
        future.add_done_callback(lambda f, m=message: self._done(m, f))

    def _done(self, message: Outgoing, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # flush() sees the failure and resends
        message.acked_at = time.time()
        if message.on_ack is not None:
            message.on_ack(message.acked_at)

    def _send_failed(self, message: Outgoing, exc: BaseException) -> None:
        message.future = None
        self.metrics.kafka_send_errors.labels(message.topic).inc()
        self._last_error = f"{type(exc).__name__}: {exc}"

    # -- flush -------------------------------------------------------------------------------------
    async def flush(self, delivery: Delivery, timeout_s: float | None = None) -> None:
        """Return when every message of ``delivery`` is acknowledged; resend failures meanwhile.

        Raises :class:`SinkError` only when ``timeout_s`` passes first (shutdown with Kafka down).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause = RETRY_BACKOFF_S[0]
        while True:
            waiting = [m for m in delivery.messages if m.acked_at is None]
            if not waiting:
                return
            futures = [m.future for m in waiting if m.future is not None]
            if futures:
                await asyncio.wait(futures, timeout=_remaining(deadline))
            retry = False
            for message in waiting:
                future = message.future
                if future is None:
                    retry = True
                elif future.done():
                    exc = future.exception() if not future.cancelled() else asyncio.CancelledError()
                    if exc is not None:
                        self._send_failed(message, exc)
                        retry = True
            if deadline is not None and time.monotonic() >= deadline:
                left = sum(m.acked_at is None for m in delivery.messages)
                raise SinkError(f"{left} Kafka message(s) not acknowledged within {timeout_s} s")
            if retry:
                failed = sum(m.future is None and m.acked_at is None for m in waiting)
                # One line per resend round, not per message: an outage must not flood the logs.
                log.warning("kafka sends failed; resending", messages=failed, error=self._last_error, retry_in_s=pause)
                await asyncio.sleep(min(pause, _remaining(deadline) or pause))
                pause = min(pause * 2, RETRY_BACKOFF_S[1])
                for message in waiting:
                    if message.future is None and message.acked_at is None:
                        await self._send(message)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def ack_times(delivery: Delivery) -> Iterable[float]:
    return (m.acked_at for m in delivery.messages if m.acked_at is not None)


__all__ = ["KafkaSink", "Delivery", "SinkError", "dead_letter_value", "document_json", "dumps"]
