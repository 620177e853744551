"""Kafka sink: message encoding (pure), resend-until-acked (fake producer), and the real broker."""
from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, OutOfOrderSequenceNumber
from bson import Decimal128, ObjectId
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from service.config import WorkerSettings
from service.decode import DeadLetter
from service.metrics import WorkerMetrics
from service.pipeline import BatchResult, FailedRecord, ScoredRecord
from service.sink import MAX_QUOTED_DOCUMENT, PARTITIONER, KafkaSink, dead_letter_value, document_json, dumps
from tests.support.fake_producer import FakeProducer
from tests.support.worker_helpers import read_topic, unique


def settings(**overrides) -> WorkerSettings:
    return WorkerSettings(_env_file=None, **overrides)  # type: ignore[call-arg]


def test_dead_letters_quote_bson_documents_as_extended_json():
    document = {"_id": ObjectId("6b0518ffc15a762ceb0939d4"), "ts": datetime(2026, 1, 5, tzinfo=UTC),
                "v": Decimal128("1.5"), "nan": float("nan"), "raw": b"\x00\x01"}
    value = json.loads(dead_letter_value(DeadLetter("invalid_field", "v: bad", document), "w1", "v1"))
    assert value["reason"] == "invalid_field" and value["error"] == "v: bad" and value["worker"] == "w1"
    assert value["model_version"] == "v1" and value["dead_lettered_at"]
    assert value["document"]["_id"] == {"$oid": "6b0518ffc15a762ceb0939d4"}
    assert value["document"]["ts"] == {"$date": "2026-01-05T00:00:00Z"}
    assert value["document"]["nan"] == {"$numberDouble": "NaN"}


@pytest.mark.parametrize("document", [{(1, 2): "tuple key"}, object(), "plain text", None, [1, {"a": float("inf")}]])
def test_any_document_is_quoted_as_valid_json(document):
    json.loads(document_json(document))
    json.loads(dead_letter_value(DeadLetter("undecodable", "x", document), "w", None))


def test_huge_documents_are_truncated_below_the_broker_limit():
    text = document_json({"blob": "x" * (2 * MAX_QUOTED_DOCUMENT)})
    assert len(text) < MAX_QUOTED_DOCUMENT + 100 and json.loads(text)["$truncated"] is True


def test_non_finite_numbers_become_null_rather_than_invalid_json():
    assert json.loads(dumps({"a": float("nan"), "b": [float("inf"), 1.0]})) == {"a": None, "b": [None, 1.0]}


class FlakyProducer(FakeProducer):
    """Fails the first batch holding any message it has not seen, then acknowledges: like a broker
    that was away."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self._seen: set[tuple[str, bytes]] = set()

    async def deliver(self, topic, messages):
        new = [(topic, value) for _, value in messages if (topic, value) not in self._seen]
        if new:
            self._seen.update(new)
            return self.settled(KafkaTimeoutError())
        self.sent.extend((topic, value, key) for key, value in messages)
        return self.settled()


def batch(verdicts: list[dict], letters: list[DeadLetter] = ()) -> BatchResult:
    return BatchResult([ScoredRecord(v, 0.0, 0.0) for v in verdicts], [FailedRecord(d, 0.0) for d in letters], "v1")


async def test_flush_resends_failed_messages_until_acknowledged_and_counts_errors():
    metrics = WorkerMetrics()
    sink = KafkaSink(settings(), metrics, facility_column="fac")
    flaky = sink.producer = FlakyProducer()  # type: ignore[assignment]
    sink.new_producer = lambda: flaky  # the "replacement" is the same flaky producer
    acked: list[str] = []
    result = batch([{"record_id": "r1", "facility": "F1", "anomaly": True}, {"record_id": "r2", "facility": "F2", "anomaly": False}],
                   [DeadLetter("missing_field", "ts: is missing", {"fac": "F9"})])
    delivery = await sink.add_batch(result, lambda scored, at: acked.append(scored.verdict["record_id"]))
    await asyncio.wait_for(sink.flush(delivery), 10)
    assert delivery.acked and sorted(acked) == ["r1", "r2"]
    topics = [(t, k) for t, _, k in sink.producer.sent]  # type: ignore[attr-defined]
    assert sorted(topics) == sorted([("moldwatch.verdicts", b"F1"), ("moldwatch.verdicts", b"F2"),
                                     ("moldwatch.alarms", b"F1"), ("moldwatch.dead-letters", b"F9")])
    errors = sum(s.value for m in metrics.kafka_send_errors.collect() for s in m.samples if s.name.endswith("_total"))
    assert errors == 4


async def test_flush_gives_up_only_at_its_deadline():
    class DeadProducer(FakeProducer):
        async def deliver(self, topic, messages):
            raise KafkaTimeoutError()

    sink = KafkaSink(settings(), WorkerMetrics())
    sink.producer = DeadProducer()  # type: ignore[assignment]
    delivery = await sink.add_batch(batch([{"record_id": "r", "facility": "F", "anomaly": False}]))
    from service.sink import SinkError

    with pytest.raises(SinkError, match="not acknowledged"):
        await sink.flush(delivery, timeout_s=0.5)


class PartitionedProducer(FakeProducer):
    """Several partitions; batches holding a record in ``late`` fail after hand-over with a
    permanent error (the broker refused the batch), those holding one in ``stall`` fail
    retriably once. Like the idempotent producer's broker, a partition takes nothing after a
    failed batch (its sequence has a gap) until a new producer starts."""

    def __init__(self, partitions: int = 3, late: set[str] = frozenset(), stall: set[str] = frozenset()) -> None:
        self.partitions, self.late, self.stall = partitions, set(late), set(stall)
        self.written: list[tuple[str, int, bytes | None, dict]] = []
        self.batches: list[tuple[str, int, int]] = []  # topic, partition, messages
        self.gap: set[tuple[str, int]] = set()

    async def start(self) -> None:
        self.gap.clear()  # a new producer id: sequences start again

    async def send_batch(self, batch, topic, *, partition):
        records = [json.loads(value) for _, value in batch.messages]
        ids = {r.get("record_id") for r in records}
        self.batches.append((topic, partition, len(records)))
        if (topic, partition) in self.gap:
            return self.settled(OutOfOrderSequenceNumber())
        if ids & self.late and topic.endswith("verdicts"):
            self.gap.add((topic, partition))
            return self.settled(MessageSizeTooLargeError())
        if ids & self.stall:
            self.stall -= ids
            self.gap.add((topic, partition))
            return self.settled(KafkaTimeoutError())
        self.written.extend((topic, partition, key, r) for (key, _), r in zip(batch.messages, records))
        return self.settled()


def _verdicts(facilities: list[int]) -> list[dict]:
    return [{"record_id": f"r{i}", "facility": f"F{f}", "anomaly": False} for i, f in enumerate(facilities)]


async def test_messages_go_in_batches_of_one_partition_each_and_a_key_keeps_its_partition():
    sink = KafkaSink(settings(), WorkerMetrics())
    producer = sink.producer = PartitionedProducer(partitions=3)  # type: ignore[assignment]
    verdicts = _verdicts([i % 5 for i in range(40)])
    delivery = await sink.add_batch(batch(verdicts))
    await asyncio.wait_for(sink.flush(delivery), 10)
    assert sorted(r["record_id"] for *_, r in producer.written) == sorted(v["record_id"] for v in verdicts)
    assert len(producer.batches) < len(verdicts)  # batched: 40 messages, at most 16 per batch, 3 partitions
    assert all(n <= FakeProducer.batch_limit for *_, n in producer.batches)
    where = {}
    for _, partition, key, _ in producer.written:
        assert where.setdefault(key, partition) == partition  # one facility, one partition
    expected = {f"F{f}".encode(): PARTITIONER(f"F{f}".encode(), [0, 1, 2], [0, 1, 2]) for f in range(5)}
    assert where == expected  # where aiokafka's send() would have put it (murmur2 of the key)


async def test_a_batch_the_broker_refuses_is_split_and_only_the_refused_message_is_dead_lettered():
    sink = KafkaSink(settings(), WorkerMetrics())
    producer = sink.producer = PartitionedProducer(partitions=1, late={"r3"})  # type: ignore[assignment]
    sink.new_producer = lambda: producer
    delivery = await sink.add_batch(batch(_verdicts([0] * 8)))
    await asyncio.wait_for(sink.flush(delivery), 10)
    await asyncio.wait_for(sink.flush(delivery), 10)
    verdicts = [r["record_id"] for t, _, _, r in producer.written if t.endswith("verdicts")]
    letters = [r for t, _, _, r in producer.written if t.endswith("dead-letters")]
    assert verdicts == ["r0", "r1", "r2", "r4", "r5", "r6", "r7"]  # in order, nothing else lost
    assert [(d["reason"], d["document"]["record_id"]) for d in letters] == [("message_too_large", "r3")]
    assert delivery.acked


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(facilities=st.lists(st.integers(0, 6), min_size=1, max_size=60), partitions=st.integers(1, 4),
       stalled=st.sets(st.integers(0, 59), max_size=5), late=st.sets(st.integers(0, 59), max_size=2))
async def test_per_facility_order_survives_stalls_and_refusals_in_any_mix(facilities, partitions, stalled, late):
    sink = KafkaSink(settings(), WorkerMetrics())
    sink.producer = producer = PartitionedProducer(partitions, late={f"r{i}" for i in late},  # type: ignore[assignment]
                                                   stall={f"r{i}" for i in stalled})
    sink.new_producer = lambda: producer
    verdicts = _verdicts(facilities)
    deliveries = [await sink.add_batch(batch(verdicts[i:i + 10])) for i in range(0, len(verdicts), 10)]
    for delivery in deliveries:
        await asyncio.wait_for(sink.flush(delivery, timeout_s=60), 60)
    refused = {f"r{i}" for i in late if i < len(verdicts)}
    written = [r for t, *_, r in producer.written if t.endswith("verdicts")]
    for facility in set(facilities):
        mine = [v["record_id"] for v in verdicts if v["facility"] == f"F{facility}" and v["record_id"] not in refused]
        got = [r["record_id"] for r in written if r["facility"] == f"F{facility}"]
        # Resending after a failure may write a message twice (at-least-once), never out of order:
        # dropping repeats of the last written leaves exactly the facility's verdicts, in order.
        assert _collapse_resends(got, mine) == mine
    letters = sorted(r["document"]["record_id"] for t, *_, r in producer.written if t.endswith("dead-letters"))
    assert letters == sorted(refused)


def _collapse_resends(got: list[str], expected: list[str]) -> list[str]:
    """The first write of every id, in write order: after a producer replacement every
    unacknowledged message goes again (at-least-once), so an id may be written twice; what must
    hold is that no verdict is first written before an earlier one of its facility."""
    seen: dict[str, None] = {}
    for record in got:
        seen.setdefault(record, None)
    return list(seen)


@pytest.mark.servers
@pytest.mark.parametrize("batch_bytes", [256 * 1024, 1024])  # the default, and batches of about one message
async def test_real_broker_acknowledges_keyed_messages_on_their_topics(kafka_server, batch_bytes):
    name = unique("sink")
    config = settings(kafka_bootstrap_servers=kafka_server.bootstrap_servers, kafka_verdicts_topic=f"{name}.v",
                      kafka_alarms_topic=f"{name}.a", kafka_dead_letters_topic=f"{name}.d", kafka_batch_bytes=batch_bytes)
    sink = KafkaSink(config, WorkerMetrics(), facility_column="fac")
    await sink.setup()
    try:
        assert await sink.ping() is None
        verdicts = [{"record_id": f"r{i}", "facility": f"F{i % 3}", "anomaly": i % 4 == 0} for i in range(40)]
        delivery = await sink.add_batch(batch(verdicts, [DeadLetter("unknown_maker", "maker X", {"fac": "F1"})]))
        await sink.flush(delivery)
        assert delivery.acked
    finally:
        await sink.close()
    assert await sink.ping() == (f"kafka producer not connected: {kafka_server.bootstrap_servers}: "
                                 "accepts connections (the producer is connecting)")
    out = await read_topic(kafka_server.bootstrap_servers, f"{name}.v", 40)
    assert [json.loads(m.value)["record_id"] for m in out] == [v["record_id"] for v in verdicts]  # in order
    assert all(m.key == json.loads(m.value)["facility"].encode() for m in out)
    alarms = await read_topic(kafka_server.bootstrap_servers, f"{name}.a", 10)
    assert len(alarms) == 10
    (letter,) = await read_topic(kafka_server.bootstrap_servers, f"{name}.d", 1)
    assert letter.key == b"F1" and json.loads(letter.value)["reason"] == "unknown_maker"
