"""How a scored batch becomes durable: the delivery mode as one commit strategy, chosen at start.

A batch is durable once its messages (verdicts, alarms, dead letters) are acknowledged by Kafka and
the source position after it is persisted. The position is never persisted before the messages, so
a restart never skips a record whose verdict was lost.

- :class:`AtLeastOnce` (the default): the sink streams each batch's messages as soon as it is scored
  and :meth:`~AtLeastOnce.commit` waits for their acks; the positions are held and written by the
  source itself (the resume-token checkpoint, the consumer-group offsets) at most every
  ``checkpoint_interval_s``. A crash re-reads what came after the last checkpoint.
- :class:`ExactlyOnce` (``--delivery exactly-once``): nothing is sent until the batch's turn;
  then its messages and its position go in one Kafka transaction (service/exactly_once.py): the
  position as a message on the positions topic (MongoDB source) or as the consumer offsets (Kafka
  source). A ``read_committed`` reader sees each record once.

The worker calls the same steps on either, in this order per batch: :meth:`CommitStrategy.stage`
(the scorer, as soon as a batch is scored), :meth:`~CommitStrategy.commit` (the committer, batches
in the order they were scored), :meth:`~CommitStrategy.checkpoint` (the committer, when due, and
once more at stop) and, on a Kafka rebalance, :meth:`~CommitStrategy.hand_over`.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from service.config import WorkerSettings
from service.exactly_once import KafkaPositionStore, TransactionalSink
from service.metrics import WorkerMetrics
from service.pipeline import BatchResult, ScoredRecord
from service.redact import one_line
from service.sink import Delivery, KafkaSink, KafkaSinkBase, SinkError
from service.sources import Source

if TYPE_CHECKING:
    from aiokafka import TopicPartition

log = structlog.get_logger("moldwatch.worker")

OnVerdictAck = Callable[[ScoredRecord, float], None]
# Awaits a coroutine unless the shutdown deadline passes first (then False): Supervisor.until_give_up.
UntilGiveUp = Callable[[Coroutine[Any, Any, Any]], Awaitable[bool]]
Partition = tuple[str, int]  # (topic, partition)


class CommitStrategy(Protocol):
    @property
    def sink(self) -> KafkaSinkBase:
        """The producer: the worker sets it up, pings it for readiness and closes it."""
        ...

    # How long a revocation waits for what was read from the revoked partitions to be committed.
    rebalance_drain_s: float

    @property
    def held(self) -> int:
        """Positions acknowledged but not persisted yet (what a restart would read again)."""
        ...

    async def stage(self, result: BatchResult, on_verdict_ack: OnVerdictAck) -> Delivery:
        """A scored batch's messages, handed to Kafka as far as the mode allows before its commit."""
        ...

    async def commit(self, delivery: Delivery, positions: list[Any]) -> None:
        """Return once the batch's messages are acknowledged and its positions persisted or held;
        raises :class:`SinkError` when the shutdown deadline passes first."""
        ...

    async def checkpoint(self, when_due: bool = False) -> bool:
        """Persist the held positions (``when_due``: only every ``checkpoint_interval_s``); False
        when that failed (they stay held for the next try)."""
        ...

    async def hand_over(self, partitions: set[TopicPartition], fenced: set[Partition]) -> None:
        """Rebalance: make what this member committed for the revoked ``partitions`` (and the
        ``fenced`` ones still handed over) final for their next owner, and forget their positions."""
        ...


def commit_strategy(settings: WorkerSettings, metrics: WorkerMetrics, source: Source, facility_column: str | None,
                    until_give_up: UntilGiveUp) -> CommitStrategy:
    """The strategy of ``settings.delivery``: the one place the two modes are told apart."""
    kind = ExactlyOnce if settings.delivery == "exactly-once" else AtLeastOnce
    return kind(settings, metrics, source, facility_column, until_give_up)


class AtLeastOnce:
    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics, source: Source, facility_column: str | None,
                 until_give_up: UntilGiveUp) -> None:
        self.settings = settings
        self.metrics = metrics
        self.source = source
        self.sink = KafkaSink(settings, metrics, facility_column=facility_column)
        self.rebalance_drain_s = settings.rebalance_drain_s
        self._until_give_up = until_give_up
        self._positions: list[Any] = []
        self._checkpointed_at = time.monotonic()

    @property
    def held(self) -> int:
        return len(self._positions)

    async def stage(self, result: BatchResult, on_verdict_ack: OnVerdictAck) -> Delivery:
        return await self.sink.add_batch(result, on_verdict_ack)  # sent now; commit() waits for the acks

    async def commit(self, delivery: Delivery, positions: list[Any]) -> None:
        if not await self._until_give_up(self.sink.flush(delivery)):
            left = sum(m.acked_at is None for m in delivery.messages)
            raise SinkError(f"shutdown deadline passed with {left} Kafka message(s) unacknowledged; "
                            "they are re-read from the last checkpoint on restart")
        self._positions.extend(positions)

    async def checkpoint(self, when_due: bool = False) -> bool:
        if when_due and time.monotonic() - self._checkpointed_at < self.settings.checkpoint_interval_s:
            return True
        if not self._positions:
            return True
        positions = self.source.compact(self._positions)
        try:
            await asyncio.wait_for(self.source.commit(positions), self.settings.mongo_timeout_ms / 1000 + 1)
        except Exception as exc:  # noqa: BLE001 - keep the positions; the next checkpoint retries
            self._positions = positions
            self.metrics.checkpoint_failures.inc()
            log.warning("checkpoint failed; will retry", error=one_line(exc, 200))
            return False
        self._positions = []
        self._checkpointed_at = time.monotonic()
        self.metrics.checkpointed()
        return True

    async def hand_over(self, partitions: set[TopicPartition], fenced: set[Partition]) -> None:
        # Commit what was acknowledged while the partitions are still ours; the rest of their
        # positions is the new owner's to commit.
        await self.checkpoint()
        self._positions = self.source.drop(self._positions, partitions)


class ExactlyOnce:
    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics, source: Source, facility_column: str | None,
                 until_give_up: UntilGiveUp) -> None:
        self.settings = settings
        self.metrics = metrics
        self.source = source
        self.sink = TransactionalSink(settings, metrics, facility_column=facility_column)
        # A source whose checkpoint is a document (MongoDB) keeps it on the positions topic, so
        # that it is written in the batch's transaction; a Kafka source leaves it unused.
        self.positions = KafkaPositionStore(settings, self.sink)
        source.position_store = self.positions
        # Records of revoked partitions must not be committed by this member after the revocation
        # (their new owner scores them: a duplicate), so a revocation waits for everything read.
        self.rebalance_drain_s = float("inf")
        self._until_give_up = until_give_up
        self._committed_position: Any = None  # the source position of the last committed transaction
        # Kafka source: the offset each partition's last committed transaction carried.
        self.committed_offsets: dict[Partition, int] = {}

    @property
    def held(self) -> int:
        return 0  # every commit is a checkpoint

    async def stage(self, result: BatchResult, on_verdict_ack: OnVerdictAck) -> Delivery:
        return self.sink.build(result, on_verdict_ack)  # nothing is sent outside a transaction

    async def commit(self, delivery: Delivery, positions: list[Any]) -> None:
        position, offsets, last = None, None, None
        if positions:
            offsets = self.source.offsets(positions) or None  # a Kafka source's position; none for MongoDB
            # With the previous position first: a batch of markers only keeps the last record's
            # timestamp and id (what a lost-history backfill starts from).
            earlier = [self._committed_position] if self._committed_position is not None else []
            last = self.source.compact(earlier + positions)[-1]
            fields = self.source.checkpoint_fields(last)  # MongoDB's checkpoint; None for Kafka
            position = self.positions.message(fields) if fields is not None else None
        committed = self.sink.commit_batch(delivery, position, offsets, self.settings.kafka_group_id)
        if not await self._until_give_up(committed):
            raise SinkError("shutdown deadline passed with a transaction not committed; "
                            "its records are read again from the last committed position on restart")
        if position is not None:
            self._committed_position = last
        for tp, offset in (offsets or {}).items():
            self.committed_offsets[(tp.topic, tp.partition)] = offset
        if positions:
            self.metrics.checkpointed()

    async def checkpoint(self, when_due: bool = False) -> bool:
        return True  # the position went with the batch's transaction

    async def hand_over(self, partitions: set[TopicPartition], fenced: set[Partition]) -> None:
        # commit_transaction returns once the commit is decided, before its markers reach the
        # offsets topic; a new owner fetching offsets before then (aiokafka's OffsetFetch cannot
        # ask for stable offsets) would read the previous ones and score a batch again.
        mine = {key: offset for key, offset in self.committed_offsets.items() if key in fenced}
        lagging = await self.source.wait_materialized(mine, self.settings.rebalance_drain_s)
        if lagging:
            log.warning("rebalance: committed offsets not visible to the new owner yet; it may score a few "
                        "records again", partitions=sorted(f"{t}[{p}]" for t, p in lagging))


__all__ = ["CommitStrategy", "AtLeastOnce", "ExactlyOnce", "commit_strategy", "UntilGiveUp"]
