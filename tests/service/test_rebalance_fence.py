"""The worker's side of a Kafka rebalance, without servers: records of a partition read after its
revocation began never enter a batch this member commits (their new owner reads them again from
the committed offset), the fence lifts when the partition comes back, and a batch being scored
counts as waiting, so a revocation waits for it."""
from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from service.commit import AtLeastOnce, ExactlyOnce
from service.config import WorkerSettings
from service.pipeline import SourceMessage
from service.worker import Worker

TOPIC = "plant.records"


def worker(**overrides) -> Worker:
    settings = WorkerSettings(_env_file=None, source="kafka", kafka_records_topic=TOPIC, rebalance_drain_s=0.2,  # type: ignore[call-arg]
                              **overrides)
    return Worker(settings)


def record(partition: int, offset: int) -> SourceMessage:
    return SourceMessage({"shot_id": f"p{partition}-{offset}"}, (TOPIC, partition, offset + 1))


async def test_records_of_a_partition_being_revoked_are_left_to_its_new_owner():
    w = worker()
    w.commit = strategy(AtLeastOnce, w, StubSource())
    flow = w.flow
    await flow.emit(record(0, 10))  # read before the revocation: drained and committed by this member
    revoking = asyncio.create_task(w.on_partitions_revoked({TopicPartition(TOPIC, 0)}))
    await asyncio.sleep(0)  # the revocation has begun (fence set), its drain waits on the queue
    await flow.emit(record(0, 11))  # the rest of a fetch, read after the revocation began
    await flow.emit(record(1, 5))  # a partition this member keeps
    assert [m.position for m in list(flow.queue._queue)] == [(TOPIC, 0, 11), (TOPIC, 1, 6)]  # type: ignore[attr-defined]
    assert flow.fenced_records == 1
    flow.queue.get_nowait()  # the scorer takes the records that were there (the drain then ends)
    flow.queue.get_nowait()
    await revoking
    await flow.emit(record(0, 12))
    assert flow.queue.qsize() == 0 and flow.fenced_records == 2
    await w.on_partitions_assigned({TopicPartition(TOPIC, 0)})  # back to this member: read again from the commit
    await flow.emit(record(0, 11))
    assert [m.position for m in list(flow.queue._queue)] == [(TOPIC, 0, 12)]  # type: ignore[attr-defined]
    assert flow.fenced_records == 2


async def test_a_batch_being_scored_counts_as_waiting():
    w = worker(batch_max_wait_ms=1)
    await w.flow.emit(record(2, 0))
    assert w.waiting() == 1
    batch, last = await w.flow.next_batch()
    assert [m.position for m in batch] == [(TOPIC, 2, 1)] and not last
    assert w.flow.queue.qsize() == 0 and w.waiting() == 1  # in hand: a revocation must wait for it


async def test_other_sources_positions_are_never_fenced():
    w = worker()
    w.flow.fenced = {(TOPIC, 0)}
    await w.flow.emit(SourceMessage({"shot_id": "m"}, {"_data": "8263A1"}))  # a MongoDB resume token
    await w.flow.emit(SourceMessage({"shot_id": "n"}, None))
    assert w.flow.queue.qsize() == 2


class StubSource:
    """The Kafka source's rebalance surface, recording what the worker asks of it."""

    position_store = None

    def __init__(self) -> None:
        self.waited: list[dict] = []

    def compact(self, positions):
        return positions

    async def commit(self, positions) -> None:
        pass

    def drop(self, positions, partitions):
        return []

    async def wait_materialized(self, offsets, timeout_s):
        self.waited.append(dict(offsets))
        return []


async def test_an_exactly_once_revocation_waits_until_its_last_offsets_are_visible_to_the_new_owner():
    """commit_transaction returns before the offsets are readable by another member; the
    revocation holds the partitions until they are, for the revoked partitions only."""
    w = worker(delivery="exactly-once")
    source = StubSource()
    w.commit = eos = strategy(ExactlyOnce, w, source)
    eos.committed_offsets = {(TOPIC, 0): 120, (TOPIC, 1): 80, (TOPIC, 2): 5}
    await w.on_partitions_revoked({TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)})
    assert source.waited == [{(TOPIC, 0): 120, (TOPIC, 1): 80}]
    w_alo = worker()
    source = StubSource()
    w_alo.commit = strategy(AtLeastOnce, w_alo, source)
    await w_alo.on_partitions_revoked({TopicPartition(TOPIC, 0)})
    assert source.waited == []  # at-least-once commits are synchronous: nothing to wait for


def strategy(kind, w: Worker, source: StubSource):
    """The worker's commit strategy over a stub source (what run() picks once the store is loaded)."""
    async def until_give_up(coro) -> bool:
        await coro
        return True

    return kind(w.settings, w.metrics, source, None, until_give_up)
