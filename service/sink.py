"""Kafka sink: verdicts, alarms and dead letters through one idempotent producer.

Lifecycle (after quix-streams' sinks): :meth:`KafkaSink.setup` connects, :meth:`add_batch` hands
a scored batch's messages to the producer without waiting, :meth:`flush` returns only when every
one of them is settled (acknowledged by the brokers with ``acks=all``), :meth:`close` stops the
producer.

Errors are **retriable** or **permanent** (:func:`is_permanent`):

- Permanent: the broker will never take this message as it is (larger than the message limit,
  corrupt or invalid record) or it cannot be written at all (serialisation). The message becomes a
  bounded dead letter (:func:`dead_letter_value`: truncated fields, the reason, the original's size
  and sha256) and the stream moves on. A verdict over ``kafka_max_message_bytes`` never reaches the
  producer: it is dead-lettered when the batch is added.
- Retriable (broker down, timeouts, a hung broker): retried until acknowledged; :meth:`flush`
  does not return before that, so the worker cannot checkpoint past an unacknowledged verdict.
  Only a flush deadline (shutdown) gives up, by raising :class:`SinkError`.

**Batches.** Messages are handed to the producer as record batches, one per topic-partition, of
up to ``kafka_batch_bytes`` (:func:`hand_over`): one future per batch instead of one per message,
which is most of the producer's per-message CPU. A batch the broker refuses permanently (too large,
corrupt) is not dead-lettered whole: its messages are sent again one per batch, in order, and only
the one that still fails alone becomes a dead letter.

**Order per facility.** Messages reach the producer strictly in the order they were added, per
partition (the facility is the key): when a batch cannot be handed over (the broker hangs),
nothing of its partition behind it is handed over until it is (a FIFO backlog, :meth:`_pump`).
Inside the producer, aiokafka keeps one request in flight per broker and the idempotent producer
retries a failed request in sequence, so one partition's messages are written in order without
duplicates. If a message the producer had
accepted still fails with a retriable error, the producer is replaced and *every* message not yet
acknowledged is sent again in the original order: later verdicts of a facility can never overtake
an earlier one.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnsupportedForMessageFormatError,
)
from aiokafka.partitioner import DefaultPartitioner
from bson import json_util

from service.backoff import Backoff
from service.client_internals import fail_buffered, keep_batches_until_acked, producer_metadata
from service.config import WorkerSettings
from service.dead_letter import MESSAGE_TOO_LARGE, REJECTED_BY_BROKER, SERIALIZATION_FAILED, DeadLetter, DeadLetterMessage
from service.kafka_acls import denied
from service.kafka_ping import connect_failure, metadata_ping, tcp_diagnosis
from service.metrics import WorkerMetrics
from service.pipeline import BatchResult, dumps

log = structlog.get_logger("moldwatch.sink")

# A dead letter must always fit the broker's limit (Kafka's default max.message.bytes is ~1 MB),
# or the dead letter itself would block the stream. The quoted original is cut at 256 KiB; each
# string in it at 1 KiB when the whole does not fit (the reader needs to recognise it, not have it:
# the original's size and sha256 identify it exactly).
MAX_QUOTED_DOCUMENT = 256 * 1024
MAX_QUOTED_STRING = 1024
MAX_QUOTED_ITEMS = 200  # list/dict entries kept per container when truncating
RETRY_BACKOFF_S = (0.1, 5.0)  # first and largest pause between resends of failed messages
MESSAGE_OVERHEAD = 512  # record headers, key, batch framing: what a message costs beyond its value
PARTITIONER = DefaultPartitioner()  # the producer's own default: murmur2 of the key, as Java clients
_JSON_OPTIONS = json_util.RELAXED_JSON_OPTIONS  # human-readable extended JSON ($oid, $date, ...)

# Errors about the record itself: resending the same bytes can never succeed.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, CorruptRecordException,
    UnsupportedForMessageFormatError, InvalidTopicError, TypeError, ValueError, UnicodeError,
)


class SinkError(RuntimeError):
    """Messages could not be acknowledged before a deadline."""


def is_permanent(exc: BaseException) -> bool:
    """Whether resending the same message can never succeed (then it is dead-lettered)."""
    return isinstance(exc, PERMANENT_ERRORS)


def permanent_reason(exc: BaseException) -> str:
    if isinstance(exc, (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)):
        return MESSAGE_TOO_LARGE
    if isinstance(exc, (TypeError, ValueError, UnicodeError)):
        return SERIALIZATION_FAILED
    return REJECTED_BY_BROKER


# -- dead letters ------------------------------------------------------------------------------
def _full_json(document: Any) -> str:
    if isinstance(document, (bytes, bytearray)):
        document = bytes(document).decode("utf-8", errors="replace")
    return json_util.dumps(document, json_options=_JSON_OPTIONS, allow_nan=False)


def _truncate(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` with long strings, bytes and containers cut (kept recognisable)."""
    if isinstance(value, str):
        return value if len(value) <= MAX_QUOTED_STRING else value[:MAX_QUOTED_STRING] + f"...(+{len(value) - MAX_QUOTED_STRING} chars)"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value[:MAX_QUOTED_STRING])
    if depth > 20:
        return f"<{type(value).__name__} nested too deep>"
    if isinstance(value, dict):
        items = list(value.items())
        out = {(_truncate(k, depth + 1) if isinstance(k, str) else k): _truncate(v, depth + 1) for k, v in items[:MAX_QUOTED_ITEMS]}
        if len(items) > MAX_QUOTED_ITEMS:
            out["$more_fields"] = len(items) - MAX_QUOTED_ITEMS
        return out
    if isinstance(value, (list, tuple)):
        kept = [_truncate(v, depth + 1) for v in value[:MAX_QUOTED_ITEMS]]
        if len(value) > MAX_QUOTED_ITEMS:
            kept.append(f"...(+{len(value) - MAX_QUOTED_ITEMS} items)")
        return kept
    return value


def quote_document(document: Any) -> tuple[str, int, str, bool]:
    """``(json_text, original_size, original_sha256, truncated)`` for a dead letter.

    The size and hash are of the original's full extended-JSON text (UTF-8), so an operator can
    match a truncated quote with the record in MongoDB or the raw topic.
    """
    try:
        text = _full_json(document)
    except (TypeError, ValueError, RecursionError, OverflowError) as exc:
        text = json.dumps({"$unserializable": type(exc).__name__, "$repr": _safe_repr(document)[:MAX_QUOTED_DOCUMENT]})
    raw = text.encode("utf-8", errors="replace")
    size, digest = len(raw), hashlib.sha256(raw).hexdigest()
    if len(raw) <= MAX_QUOTED_DOCUMENT:
        return text, size, digest, False
    try:
        cut = _truncate(document)
        if isinstance(cut, dict):
            cut = {"$truncated": True, **cut}
        short = _full_json(cut)
    except Exception:  # noqa: BLE001 - whatever the truncated copy trips on, the text cut below works
        short = ""
    if not short or len(short.encode("utf-8", errors="replace")) > MAX_QUOTED_DOCUMENT:
        short = json.dumps({"$truncated": True, "$text": text[: MAX_QUOTED_DOCUMENT // 2]})
    return short, size, digest, True


def document_json(document: Any) -> str:
    """The original document as JSON text (extended JSON), cut to fit a dead letter."""
    return quote_document(document)[0]


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ of any kind still gets a dead letter
        return f"<{type(value).__name__}>"


def dead_letter_value(letter: DeadLetter, worker: str, model_version: str | None, source: Any = None) -> bytes:
    """The dead-letter message of ``letter`` (service/dead_letter.py), its document quoted to fit."""
    text, size, digest, truncated = quote_document(letter.document)
    message = DeadLetterMessage(
        reason=letter.reason, error=letter.error, worker=worker, model_version=model_version,
        dead_lettered_at=datetime.now(UTC).isoformat(timespec="milliseconds"), original_size=size,
        original_sha256=digest, truncated=truncated, document_json=text,
        source=source)  # where the record was read, as in a verdict (service/supersede.py); bounded there
    return message.to_bytes(dumps)


def facility_key(value: Any) -> bytes | None:
    return str(value).encode() if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) else None


# -- messages ----------------------------------------------------------------------------------
@dataclass(eq=False)
class Outgoing:
    """One message until it is acknowledged (or settled as a dead letter)."""

    topic: str
    key: bytes | None
    value: bytes
    on_ack: Callable[[float], None] | None = None
    future: asyncio.Future[Any] | None = None
    acked_at: float | None = None
    origin: Any = None  # what a dead letter quotes if this message turns out permanently unsendable
    verdict_index: int | None = None  # position in BatchResult.scored (verdict messages only)
    failure: BaseException | None = None  # set when the producer gave up on it
    batch_records: int = 0  # messages in the record batch it was handed over in
    alone: bool = False  # refused permanently inside a larger batch: goes again in a batch of its own


@dataclass
class Delivery:
    """The messages of one batch; :meth:`KafkaSink.flush` settles them all."""

    messages: list[Outgoing] = field(default_factory=list)
    dead_lettered: dict[int, str] = field(default_factory=dict)  # verdict index -> reason (not a verdict after all)

    @property
    def acked(self) -> bool:
        return all(m.acked_at is not None for m in self.messages)


class KafkaSinkBase:
    """What both sinks share: a producer connected with retries (:meth:`setup`, :meth:`ping`,
    :meth:`close`), a scored batch built into messages (:meth:`build`), and messages the broker
    refuses for good turned into dead letters (:meth:`refused`, :meth:`dead_letter`).

    How the messages are sent is each sink's own: :class:`KafkaSink` streams them and
    :meth:`KafkaSink.flush` waits for the acks (at-least-once); ``TransactionalSink``
    (service/exactly_once.py) commits them in one transaction with the source position.
    """

    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics, facility_column: str | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.facility_column = facility_column  # plant column for keying dead letters by facility
        self.producer: AIOKafkaProducer | None = None
        self._last_error = ""
        self._connect_error = ""  # why the last start of the producer failed (broker and cause)
        self._model_version: str | None = None

    @property
    def last_error(self) -> str:
        """The last send error while messages still wait (empty once everything is acknowledged)."""
        return self._last_error

    @property
    def max_message_bytes(self) -> int:
        return self.settings.kafka_max_message_bytes

    # -- lifecycle -------------------------------------------------------------------------------
    def _new_producer(self) -> AIOKafkaProducer:
        """The producer :meth:`setup` starts: each sink configures its own."""
        raise NotImplementedError

    def _producer_options(self) -> dict[str, Any]:
        """The options both sinks' producers share."""
        s = self.settings
        return {
            "bootstrap_servers": s.kafka_bootstrap_servers,
            "client_id": s.kafka_client_id,
            "acks": "all",
            # Broker-side dedupe of the producer's own retries; with aiokafka's one request in
            # flight per broker, one partition's messages are written once and in order.
            "enable_idempotence": True,
            "linger_ms": s.kafka_linger_ms,
            "max_batch_size": s.producer_batch_bytes,
            "request_timeout_ms": s.kafka_request_timeout_ms,
            "max_request_size": s.kafka_max_message_bytes + MESSAGE_OVERHEAD,
            **s.kafka_security_kwargs(),
        }

    async def setup(self, stopping: asyncio.Event | None = None) -> None:
        """Connect, retrying with back-off until the brokers answer (or ``stopping`` is set)."""
        backoff = Backoff(*RETRY_BACKOFF_S)
        while True:
            producer = self._new_producer()
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                pause = backoff.next()
                # aiokafka says only "Unable to bootstrap": name the broker and the cause (wrong SASL
                # password, untrusted or expired certificate, refused), for the log and /readyz.
                self._connect_error = await connect_failure(self.settings, exc)
                log.warning("kafka unreachable, retrying", error=f"kafka {self._connect_error}", retry_in_s=pause)
                if stopping is not None and stopping.is_set():
                    raise SinkError(f"kafka {self._connect_error}") from exc
                await asyncio.sleep(pause)
                continue
            self._connect_error = ""
            self.producer = producer
            log.info("kafka producer connected", bootstrap_servers=self.settings.kafka_bootstrap_servers)
            return

    async def close(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            await producer.stop()

    async def ping(self) -> str | None:
        """``None`` when the producer can reach a broker now, else the reason (readiness)."""
        if self.producer is None and self._connect_error:
            return f"kafka producer not connected: {self._connect_error}"
        if self.producer is None:
            diagnosis = await tcp_diagnosis(self.settings.kafka_bootstrap_servers, min(self.settings.ready_timeout_s, 2.0),
                                            accepted="accepts connections (the producer is connecting)")
            return f"kafka producer not connected: {diagnosis}" if diagnosis else "kafka producer not connected"
        return await metadata_ping(producer_metadata(self.producer), self.settings.ready_timeout_s, "kafka",
                                   self.settings.kafka_bootstrap_servers)

    # -- messages ----------------------------------------------------------------------------------
    def build(self, result: BatchResult, on_verdict_ack: Callable[[Any, float], None] | None = None) -> Delivery:
        """A batch's verdicts, alarms and dead letters as messages; oversized verdicts are
        dead-lettered here (permanent: the broker would refuse them)."""
        s = self.settings
        self._model_version = result.model_version
        delivery = Delivery()
        limit = self.max_message_bytes
        columns = result.verdict_columns()
        for index, scored in enumerate(result.scored):
            verdict = scored.verdict
            key = facility_key(columns.facility[index])
            try:
                value = scored.payload or dumps(verdict)
            except (TypeError, ValueError, RecursionError) as exc:
                delivery.messages.append(self._letter(delivery, index, verdict, SERIALIZATION_FAILED,
                                                      f"verdict is not serialisable: {type(exc).__name__}: {str(exc)[:200]}"))
                continue
            if len(value) + len(key or b"") > limit:
                delivery.messages.append(self._letter(delivery, index, verdict, MESSAGE_TOO_LARGE,
                                                      f"verdict of {len(value)} bytes exceeds the Kafka message limit of {limit} bytes"))
                continue
            callback = (lambda at, sc=scored: on_verdict_ack(sc, at)) if on_verdict_ack else None
            delivery.messages.append(Outgoing(s.kafka_verdicts_topic, key, value, callback, origin=verdict, verdict_index=index))
            if columns.anomaly[index]:
                delivery.messages.append(Outgoing(s.kafka_alarms_topic, key, value, origin=verdict))
        if s.kafka_shadow_topic:
            for verdict, value in result.shadow:  # the candidate's: its own topic only, never alarms
                key = facility_key(verdict.get("facility"))
                if len(value) + len(key or b"") <= limit:
                    delivery.messages.append(Outgoing(s.kafka_shadow_topic, key, value))
        for failed in result.failed:
            doc = failed.dead_letter.document
            key = facility_key(doc.get(self.facility_column)) if self.facility_column and isinstance(doc, dict) else None
            value = dead_letter_value(failed.dead_letter, s.worker_name, result.model_version, failed.source)
            delivery.messages.append(Outgoing(s.kafka_dead_letters_topic, _bounded_key(key), value))
        return delivery

    def _letter(self, delivery: Delivery, index: int, verdict: Any, reason: str, error: str) -> Outgoing:
        delivery.dead_lettered[index] = reason
        self.metrics.dead_letters.labels(reason).inc()
        log.warning("verdict dead-lettered: the broker would never accept it", reason=reason, error=error)
        key = facility_key(verdict.get("facility")) if isinstance(verdict, dict) else None
        value = dead_letter_value(DeadLetter(reason, error, verdict), self.settings.worker_name, self._model_version)
        return Outgoing(self.settings.kafka_dead_letters_topic, _bounded_key(key), value)

    def refused(self, messages: list[Outgoing], exc: BaseException) -> None:
        """The broker refused ``messages`` (one record batch) for good. Which message is at fault
        is not known, so each goes again in a batch of its own; a message refused alone becomes a
        dead letter."""
        if len(messages) > 1:
            for message in messages:
                message.alone = True
        else:
            self.dead_letter(messages[0], exc)

    def dead_letter(self, message: Outgoing, exc: BaseException) -> None:
        """Turn ``message`` into a dead letter in place (its delivery still waits for it)."""
        reason = permanent_reason(exc)
        self.metrics.kafka_send_errors.labels(message.topic).inc()
        error = f"{message.topic}: {type(exc).__name__}: {str(exc)[:300]} (message of {len(message.value)} bytes)"
        if message.topic == self.settings.kafka_dead_letters_topic:
            # A dead letter refused itself: quote nothing but its size and hash.
            origin: Any = {"$refused_dead_letter_bytes": len(message.value),
                           "$sha256": hashlib.sha256(message.value).hexdigest()}
        else:
            origin = message.origin if message.origin is not None else message.value
        log.error("kafka refused a message permanently; dead-lettering it", topic=message.topic, reason=reason,
                  error=f"{type(exc).__name__}: {str(exc)[:200]}")
        self.metrics.dead_letters.labels(reason).inc()
        message.value = dead_letter_value(DeadLetter(reason, error, origin), self.settings.worker_name, self._model_version)
        message.topic = self.settings.kafka_dead_letters_topic
        message.key = _bounded_key(message.key)
        message.on_ack, message.origin, message.future, message.failure = None, None, None, None


class KafkaSink(KafkaSinkBase):
    """At-least-once sending: :meth:`add_batch` hands a batch over without waiting, :meth:`flush`
    returns once every message of it is acknowledged."""

    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics, facility_column: str | None = None) -> None:
        super().__init__(settings, metrics, facility_column)
        self._backlog: deque[Outgoing] = deque()  # added, not yet accepted by the producer (FIFO)
        self._outstanding: deque[Outgoing] = deque()  # accepted by the producer, not yet settled
        self._replace_producer = False
        self._pump_failed = False
        self._pump_lock = asyncio.Lock()
        self.new_producer: Callable[[], Any] = self._new_producer  # replaceable: tests use fakes

    @property
    def last_error(self) -> str:
        # An error stays recorded after its messages went through; only while some wait is it news.
        return self._last_error if (self._backlog or self._replace_producer) else ""

    # -- lifecycle -------------------------------------------------------------------------------
    def _new_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(**self._producer_options())
        keep_batches_until_acked(producer)
        return producer

    # -- add ---------------------------------------------------------------------------------------
    async def add_batch(self, result: BatchResult, on_verdict_ack: Callable[[Any, float], None] | None = None) -> Delivery:
        """Queue a batch's verdicts, alarms and dead letters; returns without waiting for acks."""
        delivery = self.build(result, on_verdict_ack)
        self._backlog.extend(delivery.messages)
        await self._pump()
        return delivery

    async def _pump(self) -> None:
        """Hand backlog messages to the producer in batches, in order per partition; stop at the
        first batch that cannot be handed over now (the broker is away): nothing may overtake it."""
        async with self._pump_lock:
            if self._replace_producer and not await self._renew_producer():
                return
            while self._outstanding and self._outstanding[0].acked_at is not None:
                self._outstanding.popleft()
            while self._backlog and self.producer is not None:
                pending = [m for m in self._backlog if m.acked_at is None]
                # Awaits only while a partition's previous batch waits for the sender, or the
                # topic's metadata is unknown: that wait is the backpressure that stops intake
                # when Kafka is slow.
                refused, exc = await hand_over(self.producer, pending, self._batch_settled)
                handed = [m for m in pending if m.future is not None]
                self._outstanding.extend(handed)
                # Keep what was not handed over (and whatever add_batch queued meanwhile) in order.
                self._backlog = deque(m for m in self._backlog if m.future is None and m.acked_at is None)
                if exc is None:
                    self._pump_failed = False
                    continue
                if is_permanent(exc):
                    self.refused(refused, exc)  # each alone, or a dead letter: sent on the next round
                    continue
                self._send_failed(refused[0], exc)
                self._pump_failed = True
                return

    def _batch_settled(self, messages: list[Outgoing], future: asyncio.Future[Any]) -> None:
        for message in messages:
            self._done(message, future)

    async def _renew_producer(self) -> bool:
        """Replace the producer and queue every unacknowledged message again, in order."""
        old, self.producer = self.producer, None
        if old is not None:
            # Fail what the old producer still holds instead of letting it trickle out behind
            # the resends below (that would put an older verdict after a newer one).
            with contextlib.suppress(Exception):
                fail_buffered(old, KafkaError("producer replaced"))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), 5)
        producer = self.new_producer()
        try:
            await producer.start()
        except KafkaError as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._pump_failed = True
            return False
        self.producer = producer
        pending = [m for m in self._outstanding if m.acked_at is None]
        self._outstanding.clear()
        for message in pending:
            message.future = None
        self._backlog.extendleft(reversed(pending))
        self._replace_producer = False
        log.warning("kafka producer replaced; resending unacknowledged messages in order", messages=len(pending))
        return True

    def _done(self, message: Outgoing, future: asyncio.Future[Any]) -> None:
        if future is not message.future or message.acked_at is not None:
            return  # a replaced send's late answer, or already settled by flush()
        if future.cancelled():
            message.failure = asyncio.CancelledError()
            return
        exc = future.exception()
        if exc is not None:
            message.failure = exc  # flush() decides: dead letter, or resend in order
            return
        message.acked_at = time.time()
        if message.on_ack is not None:
            message.on_ack(message.acked_at)

    def _send_failed(self, message: Outgoing, exc: BaseException) -> None:
        message.future = None
        self.metrics.kafka_send_errors.labels(message.topic).inc()
        self._last_error = denied(exc, self.settings) or f"{type(exc).__name__}: {exc}"  # a missing ACL: which one

    # -- flush -------------------------------------------------------------------------------------
    async def flush(self, delivery: Delivery, timeout_s: float | None = None) -> None:
        """Return when every message of ``delivery`` is settled; resend failures meanwhile.

        Raises :class:`SinkError` only when ``timeout_s`` passes first (shutdown with Kafka down).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        backoff = Backoff(*RETRY_BACKOFF_S)
        while True:
            waiting = [m for m in delivery.messages if m.acked_at is None]
            if not waiting:
                return
            for message in list(waiting):
                if message.future is not None and message.future.done() and message.failure is None:
                    self._done(message, message.future)  # settle now rather than after the callback
                if message.failure is None:
                    continue
                exc, message.failure = message.failure, None
                if is_permanent(exc) and message.batch_records > 1:
                    # Refused with its whole batch: which message is at fault is not known. Every
                    # unacknowledged message goes again, in order, this one in a batch of its own.
                    message.alone = True
                    self._send_failed(message, exc)
                    self._replace_producer = True
                elif is_permanent(exc):
                    self._outstanding = deque(m for m in self._outstanding if m is not message)
                    self.dead_letter(message, exc)
                    self._backlog.appendleft(message)  # a dead letter now: another topic, order unaffected
                else:
                    self._send_failed(message, exc)
                    self._replace_producer = True
            waiting = [m for m in waiting if m.acked_at is None]
            if not waiting:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise SinkError(f"{len(waiting)} Kafka message(s) not acknowledged within {timeout_s} s")
            if self._replace_producer or any(m.future is None for m in waiting):
                if self._pump_failed or self._replace_producer:
                    # One line per resend round, not per message: an outage must not flood the logs.
                    pause = backoff.next()
                    log.warning("kafka sends failed; resending in order", messages=len(waiting), error=self._last_error,
                                retry_in_s=pause)
                    await asyncio.sleep(min(pause, _remaining(deadline) or pause))
                await self._pump()
                continue
            futures = {m.future for m in waiting if m.future is not None and not m.future.done()}
            if futures:
                await asyncio.wait(futures, timeout=_remaining(deadline), return_when=asyncio.FIRST_EXCEPTION)
            else:
                await asyncio.sleep(0)  # never spin without yielding


async def hand_over(producer: AIOKafkaProducer, messages: list[Outgoing],
                    on_settled: Callable[[list[Outgoing], asyncio.Future[Any]], None] | None = None,
                    ) -> tuple[list[Outgoing], BaseException | None]:
    """Hand ``messages`` to ``producer`` as record batches, one topic-partition each, in order per
    partition (the producer's default partitioner: a key lands where ``send`` would put it, and where
    the verdicts of its facility always went).

    Every message handed over gets its batch's future in ``future`` and the batch's size in
    ``batch_records``; ``on_settled(batch, future)`` is called once the batch is settled. Returns
    ``([], None)`` when all were handed over, else the messages of the batch the producer did not
    take and why; those and every message whose batch was not submitted yet keep ``future=None``.
    A message marked ``alone`` travels in a batch of its own.
    """
    open_batches: dict[tuple[str, int], tuple[Any, list[Outgoing]]] = {}
    partitions: dict[tuple[str, bytes | None], int] = {}
    known_topics: dict[str, list[int]] = {}

    attempt: list[Outgoing] = []  # what a failure refuses: the batch being submitted, or one message

    async def submit(tp: tuple[str, int]) -> None:
        nonlocal attempt
        builder, batch = open_batches.pop(tp)
        builder.close()
        attempt = batch
        future = await producer.send_batch(builder, tp[0], partition=tp[1])
        for message in batch:
            message.future, message.failure, message.batch_records = future, None, len(batch)
        if on_settled is not None:
            future.add_done_callback(lambda f, b=batch: on_settled(b, f))

    try:
        for message in messages:
            attempt = [message]
            topic_partitions = known_topics.get(message.topic)
            if topic_partitions is None:
                topic_partitions = known_topics[message.topic] = sorted(await producer.partitions_for(message.topic))
            where = (message.topic, message.key)
            partition = partitions.get(where)
            if partition is None:
                partition = partitions[where] = PARTITIONER(message.key, topic_partitions, topic_partitions)
            tp = (message.topic, partition)
            if tp in open_batches and message.alone:
                await submit(tp)
            entry = open_batches.get(tp)
            if entry is None:
                entry = open_batches[tp] = (producer.create_batch(), [])
            if entry[0].append(key=message.key, value=message.value, timestamp=None) is None:
                await submit(tp)  # full
                entry = open_batches[tp] = (producer.create_batch(), [])
                entry[0].append(key=message.key, value=message.value, timestamp=None)  # a batch's first always fits
            entry[1].append(message)
            if message.alone:
                await submit(tp)
        for tp in list(open_batches):
            await submit(tp)
    except Exception as exc:  # noqa: BLE001 - the caller classifies it: permanent or retried
        return attempt, exc
    return [], None


def _bounded_key(key: bytes | None) -> bytes | None:
    return key if key is None or len(key) <= 1024 else hashlib.sha256(key).hexdigest().encode()


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def ack_times(delivery: Delivery) -> Iterable[float]:
    return (m.acked_at for m in delivery.messages if m.acked_at is not None)


__all__ = ["KafkaSinkBase", "KafkaSink", "Delivery", "Outgoing", "SinkError", "dead_letter_value", "document_json", "quote_document",
           "dumps", "is_permanent", "MAX_QUOTED_DOCUMENT"]
