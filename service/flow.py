"""Records on their way from the source to a commit: the worker's scorer and committer.

::

    emit        a record read -> bounded queue (when full, the source stops reading: backpressure
                instead of memory growth); a record of a partition being revoked is left to its
                new owner (the fence)
    scorer      queue -> micro-batches (batch_size / batch_max_wait_ms) -> the served store
                (service/store_holder.py) -> CommitStrategy.stage -> bounded in-flight queue
    committer   in-flight batches in the order they were scored -> CommitStrategy.commit ->
                metrics and verdict watchers -> CommitStrategy.checkpoint when due

Because the committer takes batches in order and the strategy persists a position only with or
after its messages' acks, a checkpoint never passes an unacknowledged verdict. Everything read and
not yet acknowledged counts as waiting (:meth:`BatchFlow.waiting`): the progress clock, readiness
and a rebalance's drain read it.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from service.commit import CommitStrategy, OnVerdictAck
from service.config import WorkerSettings
from service.metrics import WorkerMetrics
from service.pipeline import BatchResult, SourceMessage
from service.readiness import ProgressClock
from service.sink import Delivery
from service.store_holder import StoreHolder

if TYPE_CHECKING:
    from aiokafka import TopicPartition

log = structlog.get_logger("moldwatch.worker")

END = SourceMessage(None, marker=True)  # queue sentinel: everything before it is drained


@dataclass
class InFlight:
    delivery: Delivery
    result: BatchResult
    positions: list[Any]


class BatchFlow:
    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics, store: StoreHolder,
                 observe: Callable[[dict[str, Any]], None], give_up: asyncio.Event,
                 on_verdict_ack: OnVerdictAck) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.observe = observe  # every acknowledged verdict (the verdict watchers)
        self.give_up = give_up  # the shutdown deadline: stop retrying a broken store
        self.on_verdict_ack = on_verdict_ack
        self.queue: asyncio.Queue[SourceMessage] = asyncio.Queue(settings.queue_size)
        self.in_flight: asyncio.Queue[InFlight | None] = asyncio.Queue(settings.in_flight_batches)
        metrics.watch_queue(self.queue.qsize, self.in_flight.qsize)
        self.progress = ProgressClock(self.waiting)
        metrics.watch_progress(self.progress.stalled_seconds)
        self.records_read = 0  # records (not markers) emitted by the source
        self._acking = False
        self._in_hand = False  # a batch taken from the queue and not yet handed to the committer
        # Kafka source: partitions being revoked (topic, partition). Records of them read after the
        # revocation began are left to the new owner (it resumes at the committed offset), so a
        # batch committed after the revocation never carries them: no verdict without its offset.
        self.fenced: set[tuple[str, int]] = set()
        self.fenced_records = 0
        self.final_checkpoint_written: bool | None = None  # set when the committer ends

    def waiting(self) -> int:
        """Records read but not scored, plus scored batches not yet acknowledged."""
        return self.queue.qsize() + self.in_flight.qsize() + (1 if self._acking else 0) + (1 if self._in_hand else 0)

    # -- intake ----------------------------------------------------------------------------------
    async def emit(self, message: SourceMessage) -> None:
        """The source's ``emit``: blocks while the queue is full."""
        if self.fenced and _partition_of(message.position) in self.fenced:
            self.fenced_records += 1  # read from a partition being handed over: its new owner reads it again
            return
        if not message.marker:
            self.records_read += 1
            self.metrics.child(self.metrics.records_in, self.settings.source).inc()
        self.progress.arriving()
        await self.queue.put(message)

    async def end(self) -> None:
        """No more records: the scorer drains what is queued, then it and the committer end."""
        await self.queue.put(END)

    def fence(self, partitions: set[TopicPartition]) -> None:
        self.fenced |= {(tp.topic, tp.partition) for tp in partitions}

    def lift(self, partitions: set[TopicPartition]) -> None:
        self.fenced -= {(tp.topic, tp.partition) for tp in partitions}

    async def next_batch(self) -> tuple[list[SourceMessage], bool]:
        """Up to batch_size messages, waiting at most batch_max_wait_ms after the first one; True
        once the end marker was taken."""
        first = await self.queue.get()
        if first is END:
            return [], True
        self._in_hand = True  # counted by waiting() until the committer has it (see score)
        batch = [first]
        deadline = time.monotonic() + self.settings.batch_max_wait_ms / 1000.0
        while len(batch) < self.settings.batch_size:
            try:
                message = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    message = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if message is END:
                return batch, True
            batch.append(message)
        return batch, False

    # -- the two tasks ---------------------------------------------------------------------------
    async def score(self, commit: CommitStrategy) -> None:
        """The scorer task: until the end marker."""
        last = False
        while not last:
            batch, last = await self.next_batch()
            if not batch:
                continue
            self.store.swap()
            result = await self.store.process(batch, self.give_up)
            self.metrics.batches.inc()
            self.metrics.batch_size.observe(len(batch))
            self.metrics.scoring_seconds.observe(result.seconds)
            if result.shadow_failed:
                self.metrics.shadow_failed_batches.inc()
            if result.fallback:
                self.metrics.batch_fallbacks.inc()
                log.warning("batch scoring failed; scored record by record", records=len(batch),
                            dead_letters=len(result.failed))
            delivery = await commit.stage(result, self.on_verdict_ack)
            positions = [m.position for m in batch if m.position is not None]
            await self.in_flight.put(InFlight(delivery, result, positions))
            self._in_hand = False
        await self.in_flight.put(None)

    async def commit(self, commit: CommitStrategy) -> None:
        """The committer task: until the scorer's last batch, then the final checkpoint."""
        while True:
            try:
                # Wake up at least once per interval, so the last positions of a burst are
                # checkpointed even when nothing follows it.
                item = await asyncio.wait_for(self.in_flight.get(), max(self.settings.checkpoint_interval_s, 0.05))
            except TimeoutError:
                await commit.checkpoint()
                continue
            if item is None:
                break
            self._acking = True
            try:
                await commit.commit(item.delivery, item.positions)
            finally:
                self._acking = False
            self.progress.moved()
            self._count(item.result, item.delivery)
            await commit.checkpoint(when_due=True)
        self.final_checkpoint_written = await commit.checkpoint()
        if not self.final_checkpoint_written:
            log.error("final checkpoint not written: the records since the last checkpoint are read again on restart",
                      positions=commit.held)

    def _count(self, result: BatchResult, delivery: Delivery) -> None:
        # dead-lettered by the sink (too large for Kafka): counted there
        self.metrics.observe_batch(result.verdict_columns(), skip=delivery.dead_lettered)
        for index, scored in enumerate(result.scored):
            if index not in delivery.dead_lettered:
                self.observe(scored.verdict)
        for verdict, _ in result.shadow:
            self.metrics.observe_shadow(verdict)
        for failed in result.failed:
            self.metrics.dead_letters.labels(failed.dead_letter.reason).inc()
        if result.failed:
            first = result.failed[0].dead_letter
            log.warning("records dead-lettered", count=len(result.failed), reason=first.reason, error=first.error)

    # -- rebalance (Kafka source) ----------------------------------------------------------------
    async def revoke(self, partitions: set[TopicPartition], commit: CommitStrategy, stopped: Callable[[], bool]) -> None:
        """Before the partitions go, let what was read from them be scored and committed (for at
        most the strategy's ``rebalance_drain_s``, or until ``stopped()``) and hand them over."""
        # Fence first: records of these partitions that the source reads from now on (the rest of
        # a fetch, a read blocked on the full queue) go to the new owner, never into a batch this
        # member commits once the partitions are gone. Then drain what was read before the fence
        # (the batch being scored included: waiting() counts it).
        self.fence(partitions)
        fenced_before = self.fenced_records
        deadline = time.monotonic() + commit.rebalance_drain_s
        # A poll, not an event: the three conditions change in three different places.
        while self.waiting() and time.monotonic() < deadline and not stopped():  # noqa: ASYNC110 - see above
            await asyncio.sleep(0.02)
        if self.waiting():
            log.warning("rebalance: records of revoked partitions still unacknowledged; their new owner scores them again",
                        waiting=self.waiting())
        await commit.hand_over(partitions, self.fenced)
        log.info("rebalance: revoked partitions committed and handed over",
                 left_to_new_owner=self.fenced_records - fenced_before)


def _partition_of(position: Any) -> tuple[str, int] | None:
    """(topic, partition) of a Kafka source position ``(topic, partition, next offset)``; None for
    any other source's position."""
    if isinstance(position, tuple) and len(position) == 3:
        return (position[0], position[1])
    return None


__all__ = ["BatchFlow", "InFlight", "END"]
