"""The commit strategies (service/commit.py): the bookkeeping as pure logic over a stub source, and
each strategy against the real Kafka broker: at-least-once acknowledges, then checkpoints through
the source; exactly-once commits the verdicts with the consumer offsets or the position message in
one transaction, which a read_committed reader and the group's committed offsets both show."""
from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from bson import json_util

from service.commit import AtLeastOnce, CommitStrategy, ExactlyOnce, commit_strategy
from service.config import WorkerSettings
from service.exactly_once import KafkaPositionStore
from service.metrics import WorkerMetrics
from service.pipeline import BatchResult, ScoredRecord
from service.sink import Delivery, SinkError
from service.topics import ensure_topics
from tests.support.worker_helpers import unique
from tests.support.worker_process import read_to_end

TOPIC = "plant.records"


def settings(**overrides: Any) -> WorkerSettings:
    return WorkerSettings(_env_file=None, **overrides)  # type: ignore[call-arg]


class StubSource:
    """Kafka-like positions ``(topic, partition, next offset)``; records every commit."""

    position_store = None

    def __init__(self, fail_commits: int = 0, checkpoint: bool = False) -> None:
        self.commits: list[list[Any]] = []
        self.fail_commits = fail_commits
        self.checkpoint = checkpoint  # answer checkpoint_fields like a MongoDB source

    def compact(self, positions: list[Any]) -> list[Any]:
        latest: dict[tuple[str, int], int] = {}
        for topic, partition, offset in positions:
            latest[(topic, partition)] = max(offset, latest.get((topic, partition), 0))
        return [(t, p, o) for (t, p), o in sorted(latest.items())]

    async def commit(self, positions: list[Any]) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise OSError("checkpoint store away")
        self.commits.append(positions)

    def checkpoint_fields(self, position: Any) -> dict[str, Any] | None:
        return {"last": list(position)} if self.checkpoint else None

    def offsets(self, positions: list[Any]) -> dict[TopicPartition, int]:
        return {} if self.checkpoint else {TopicPartition(t, p): o for t, p, o in self.compact(positions)}

    def drop(self, positions: list[Any], partitions: set[TopicPartition]) -> list[Any]:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        return [p for p in positions if (p[0], p[1]) not in gone]

    async def wait_materialized(self, offsets: dict[tuple[str, int], int], timeout_s: float) -> list[tuple[str, int]]:
        return []


async def forever(coro: Any) -> bool:
    await coro
    return True


async def deadline_passed(coro: Any) -> bool:
    coro.close()  # Supervisor.until_give_up cancels what it was waiting for
    return False


def strategy(kind: Any, source: StubSource, until_give_up: Any = forever, **overrides: Any) -> Any:
    return kind(settings(**overrides), WorkerMetrics(), source, None, until_give_up)


# -- pure logic ------------------------------------------------------------------------------------
def test_the_delivery_setting_picks_the_strategy():
    for delivery, kind in (("at-least-once", AtLeastOnce), ("exactly-once", ExactlyOnce)):
        chosen: CommitStrategy = commit_strategy(settings(delivery=delivery), WorkerMetrics(), StubSource(), None, forever)
        assert type(chosen) is kind


async def test_at_least_once_holds_positions_until_the_checkpoint_is_due():
    source = StubSource()
    alo = strategy(AtLeastOnce, source, checkpoint_interval_s=3600)
    await alo.commit(Delivery(), [(TOPIC, 0, 5), (TOPIC, 1, 2)])
    await alo.commit(Delivery(), [(TOPIC, 0, 9)])
    assert await alo.checkpoint(when_due=True) and source.commits == [] and alo.held == 3  # not due for an hour
    assert await alo.checkpoint()  # the timeout tick, the final one, a rebalance: at once
    assert source.commits == [[(TOPIC, 0, 9), (TOPIC, 1, 2)]] and alo.held == 0


async def test_a_failed_checkpoint_keeps_the_compacted_positions_for_the_next_try():
    source = StubSource(fail_commits=1)
    alo = strategy(AtLeastOnce, source)
    await alo.commit(Delivery(), [(TOPIC, 0, 5), (TOPIC, 0, 6)])
    assert await alo.checkpoint() is False and alo.held == 1
    assert alo.metrics.registry.get_sample_value("moldwatch_checkpoint_failures_total") == 1
    await alo.commit(Delivery(), [(TOPIC, 0, 7)])
    assert await alo.checkpoint() and source.commits == [[(TOPIC, 0, 7)]]


async def test_at_least_once_hands_over_by_committing_then_forgetting_the_revoked_partitions():
    source = StubSource(fail_commits=1)  # the commit at the revocation fails: nothing of partition 0 stays held
    alo = strategy(AtLeastOnce, source)
    await alo.commit(Delivery(), [(TOPIC, 0, 5), (TOPIC, 1, 3)])
    await alo.hand_over({TopicPartition(TOPIC, 0)}, {(TOPIC, 0)})
    assert alo.held == 1 and await alo.checkpoint() and source.commits == [[(TOPIC, 1, 3)]]


async def test_exactly_once_holds_nothing_and_hands_over_only_the_fenced_partitions_offsets():
    waited: list[dict[tuple[str, int], int]] = []

    class Recording(StubSource):
        async def wait_materialized(self, offsets: dict[tuple[str, int], int], timeout_s: float) -> list[tuple[str, int]]:
            waited.append(dict(offsets))
            return []

    eos = strategy(ExactlyOnce, Recording())
    assert eos.held == 0 and await eos.checkpoint() and await eos.checkpoint(when_due=True)
    assert eos.rebalance_drain_s == float("inf")  # nothing read from a revoked partition may be committed later
    eos.committed_offsets = {(TOPIC, 0): 10, (TOPIC, 1): 4}
    await eos.hand_over({TopicPartition(TOPIC, 1)}, {(TOPIC, 1)})
    assert waited == [{(TOPIC, 1): 4}]


class RecordingSink:
    """Stands in for the transactional producer: records what each transaction would carry."""

    def __init__(self) -> None:
        self.transactions: list[tuple[Any, Any]] = []

    async def commit_batch(self, delivery: Delivery, position: Any = None, offsets: Any = None,
                           group_id: str | None = None) -> None:
        self.transactions.append((position, offsets))


async def test_exactly_once_puts_the_sources_position_in_each_transaction():
    kafka = strategy(ExactlyOnce, StubSource(), kafka_group_id="g")
    kafka.sink = RecordingSink()
    await kafka.commit(Delivery(), [(TOPIC, 0, 5), (TOPIC, 1, 2), (TOPIC, 0, 8)])
    await kafka.commit(Delivery(), [])  # markers only, no position: nothing but the messages
    assert kafka.sink.transactions == [(None, {TopicPartition(TOPIC, 0): 8, TopicPartition(TOPIC, 1): 2}), (None, None)]
    assert kafka.committed_offsets == {(TOPIC, 0): 8, (TOPIC, 1): 2}

    mongo = strategy(ExactlyOnce, StubSource(checkpoint=True), worker_name="w1", kafka_positions_topic="w1.positions")
    mongo.sink = RecordingSink()
    await mongo.commit(Delivery(), [(TOPIC, 0, 5)])
    await mongo.commit(Delivery(), [(TOPIC, 0, 3)])  # compacted with the previous position: it never goes back
    (first, none), (second, _) = mongo.sink.transactions
    assert none is None and first[:2] == ("w1.positions", b"w1")
    assert json_util.loads(first[2]) == json_util.loads(second[2]) == {"last": [TOPIC, 0, 5]}


async def test_a_passed_shutdown_deadline_is_an_error_in_both_modes():
    alo = strategy(AtLeastOnce, StubSource(), deadline_passed)
    with pytest.raises(SinkError, match="unacknowledged"):
        await alo.commit(Delivery(), [(TOPIC, 0, 1)])
    assert alo.held == 0  # not acknowledged: not to be checkpointed
    eos = strategy(ExactlyOnce, StubSource(), deadline_passed)
    eos.sink = RecordingSink()
    with pytest.raises(SinkError, match="transaction not committed"):
        await eos.commit(Delivery(), [(TOPIC, 0, 1)])
    assert eos.committed_offsets == {}


# -- against the real broker ------------------------------------------------------------------------
def batch(name: str, count: int) -> BatchResult:
    now = time.time()
    verdicts = [{"record_id": f"{name}-{i}", "facility": "F1", "anomaly": False} for i in range(count)]
    return BatchResult([ScoredRecord(v, now, now) for v in verdicts], [], "v1")


async def kafka_settings(kafka_server: Any, name: str) -> WorkerSettings:
    """Settings with this test's own topics, created (as the worker does before its first send)."""
    s = settings(kafka_bootstrap_servers=kafka_server.bootstrap_servers, worker_name=name,
                 kafka_verdicts_topic=f"{name}.verdicts", kafka_alarms_topic=f"{name}.alarms",
                 kafka_dead_letters_topic=f"{name}.dead", kafka_positions_topic=f"{name}.positions",
                 kafka_records_topic=f"{name}.records", kafka_group_id=f"{name}-group")
    await ensure_topics(s, [s.kafka_verdicts_topic, s.kafka_alarms_topic, s.kafka_dead_letters_topic,
                            s.kafka_records_topic])
    return s


@pytest.mark.servers
@pytest.mark.timeout(120)
async def test_at_least_once_acknowledges_every_message_before_the_source_checkpoints(kafka_server):
    name = unique("alo")
    source, acked = StubSource(), []
    alo = AtLeastOnce(await kafka_settings(kafka_server, name), WorkerMetrics(), source, None, forever)
    await alo.sink.setup()
    try:
        delivery = await alo.stage(batch(name, 5), lambda scored, at: acked.append(scored.verdict["record_id"]))
        await alo.commit(delivery, [(TOPIC, 0, 5)])
        assert delivery.acked and len(acked) == 5  # every verdict acknowledged by the broker...
        assert await alo.checkpoint() and source.commits == [[(TOPIC, 0, 5)]]  # ...before its position is
    finally:
        await alo.sink.close()
    verdicts = await read_to_end(kafka_server.bootstrap_servers, f"{name}.verdicts")
    assert [json.loads(m.value)["record_id"] for m in verdicts] == [f"{name}-{i}" for i in range(5)]


@pytest.mark.servers
@pytest.mark.timeout(180)
async def test_exactly_once_commits_verdicts_and_consumer_offsets_in_one_transaction(kafka_server):
    name = unique("eos-offsets")
    settings_ = await kafka_settings(kafka_server, name)
    records = settings_.kafka_records_topic
    source = StubSource()
    eos = ExactlyOnce(settings_, WorkerMetrics(), source, None, forever)
    await eos.sink.setup()
    try:
        delivery = await eos.stage(batch(name, 4), lambda scored, at: None)
        assert not any(m.future for m in delivery.messages)  # nothing sent outside the transaction
        await eos.commit(delivery, [(records, 0, 40), (records, 0, 44)])
        assert delivery.acked and eos.committed_offsets == {(records, 0): 44}
    finally:
        await eos.sink.close()
    verdicts = await read_to_end(kafka_server.bootstrap_servers, f"{name}.verdicts")  # read_committed
    assert [json.loads(m.value)["record_id"] for m in verdicts] == [f"{name}-{i}" for i in range(4)]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_server.bootstrap_servers, group_id=settings_.kafka_group_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        assert await consumer.committed(TopicPartition(records, 0)) == 44  # the offset went with the verdicts
    finally:
        await consumer.stop()


@pytest.mark.servers
@pytest.mark.timeout(180)
async def test_exactly_once_commits_a_checkpoint_document_on_the_positions_topic(kafka_server):
    name = unique("eos-position")
    settings_ = await kafka_settings(kafka_server, name)
    source = StubSource(checkpoint=True)
    eos = ExactlyOnce(settings_, WorkerMetrics(), source, None, forever)
    assert source.position_store is eos.positions  # the source reads its checkpoint back from there on start
    await eos.sink.setup()
    try:
        await eos.positions.ensure_topic()
        delivery = await eos.stage(batch(name, 3), lambda scored, at: None)
        await eos.commit(delivery, [(TOPIC, 2, 17)])
        assert await KafkaPositionStore(settings_, eos.sink).load() == {"last": [TOPIC, 2, 17]}
    finally:
        await eos.sink.close()
    verdicts = await read_to_end(kafka_server.bootstrap_servers, f"{name}.verdicts")
    assert len(verdicts) == 3
