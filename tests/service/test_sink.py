"""Kafka sink: message encoding (pure), resend-until-acked (fake producer), and the real broker."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import pytest
from aiokafka.errors import KafkaTimeoutError
from bson import Decimal128, ObjectId

from service.config import WorkerSettings
from service.decode import DeadLetter
from service.metrics import WorkerMetrics
from service.pipeline import BatchResult, FailedRecord, ScoredRecord
from service.sink import MAX_QUOTED_DOCUMENT, KafkaSink, dead_letter_value, document_json, dumps
from tests.service.test_worker_support import read_topic, unique


def settings(**overrides) -> WorkerSettings:
    return WorkerSettings(_env_file=None, **overrides)  # type: ignore[call-arg]


def test_dead_letters_quote_bson_documents_as_extended_json():
    document = {"_id": ObjectId("6b0518ffc15a762ceb0939d4"), "ts": datetime(2026, 1, 5, tzinfo=timezone.utc),
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


class FlakyProducer:
    """Fails the first send of every message, then acknowledges: like a broker that was away."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self._seen: set[tuple[str, bytes]] = set()

    async def start(self) -> None:  # the sink replaces a producer whose sends failed
        pass

    async def stop(self) -> None:
        pass

    async def send(self, topic, value, key=None):
        future = asyncio.get_running_loop().create_future()
        if (topic, value) not in self._seen:
            self._seen.add((topic, value))
            future.set_exception(KafkaTimeoutError())
        else:
            self.sent.append((topic, value, key))
            future.set_result(None)
        return future


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
    class DeadProducer:
        async def send(self, topic, value, key=None):
            raise KafkaTimeoutError()

    sink = KafkaSink(settings(), WorkerMetrics())
    sink.producer = DeadProducer()  # type: ignore[assignment]
    delivery = await sink.add_batch(batch([{"record_id": "r", "facility": "F", "anomaly": False}]))
    from service.sink import SinkError

    with pytest.raises(SinkError, match="not acknowledged"):
        await sink.flush(delivery, timeout_s=0.5)


@pytest.mark.servers
async def test_real_broker_acknowledges_keyed_messages_on_their_topics(kafka_server):
    name = unique("sink")
    config = settings(kafka_bootstrap_servers=kafka_server.bootstrap_servers, kafka_verdicts_topic=f"{name}.v",
                      kafka_alarms_topic=f"{name}.a", kafka_dead_letters_topic=f"{name}.d")
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
    assert await sink.ping() == "kafka producer not connected"
    out = await read_topic(kafka_server.bootstrap_servers, f"{name}.v", 40)
    assert [json.loads(m.value)["record_id"] for m in out] == [v["record_id"] for v in verdicts]  # in order
    assert all(m.key == json.loads(m.value)["facility"].encode() for m in out)
    alarms = await read_topic(kafka_server.bootstrap_servers, f"{name}.a", 10)
    assert len(alarms) == 10
    (letter,) = await read_topic(kafka_server.bootstrap_servers, f"{name}.d", 1)
    assert letter.key == b"F1" and json.loads(letter.value)["reason"] == "unknown_maker"
