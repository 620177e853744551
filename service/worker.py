"""The streaming worker: source -> bounded queue -> micro-batches -> pipeline -> Kafka -> checkpoint.

Tasks on one event loop, each with one job::

    reader     source.run(emit)         emit = put into a bounded queue: when it is full, reading
                                        stops (backpressure instead of memory growth)
    scorer     queue -> micro-batches (batch_size / batch_max_wait_ms) -> pipeline (executor)
               -> sink.add_batch -> bounded in-flight queue (in_flight_batches)
    committer  in-flight batches in order -> sink.flush (every message acked) -> metrics ->
               source.commit(positions) at most every checkpoint_interval_s
    store      a Reloader (service/reloader.py) polls the store's manifest; a new version is loaded
               aside (a thread) and swapped in by the scorer between two batches; a bad store is
               logged and the old one kept
    recipes    (with a recipes file) a second Reloader; a changed file is loaded in a thread and
               replaces the pipeline's RecipeBook (verdicts' on_recipe, GET /recipes); a broken one
               is logged, counted, and the previous book kept

The tasks are spawned and watched by a Supervisor (service/supervisor.py): one that dies stops
the worker with exit code 1. Readiness is the worker's check behind a cached probe and a progress
clock (service/readiness.py). The HTTP server and the signal handlers belong to the process, not
to this class: ``service.run_command.serve`` starts them beside :meth:`Worker.run`.

Because the committer handles batches in order and commits only after their acks, a checkpoint
never passes an unacknowledged verdict. ``stop()`` (SIGTERM/SIGINT) stops the reader, lets the
scorer drain what was read, waits for the acks, writes the final checkpoint and returns 0.

Embedding (tests, demo, bench)::

    worker = Worker(WorkerSettings(...))
    task = asyncio.create_task(worker.run())       # or serve(worker): with /healthz /readyz /metrics /score
    await worker.wait_listening(30)      # the source reads from a definite position now
    ...
    worker.stop(); exit_code = await task
    worker.metrics.registry / worker.metrics.latencies.quantiles((0.5, 0.99))
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from model_store.errors import StoreError
from model_store.serving.recipe_book import RecipeBook
from model_store.serving.scoring import ScoringEngine
from model_store.serving.store import MANIFEST, open_store
from service.backoff import Backoff
from service.config import WorkerSettings
from service.decode import DeadLetter
from service.recipe_holder import RecipeHolder
from service.shadow_candidate import ShadowCandidate
from service.verdict_watch import VerdictWatchers
from service.feedback import VerdictMemory
from service.feedback_intake import FeedbackIntake
from service.metrics import WorkerMetrics
from service.pipeline import BatchResult, Pipeline, ScoredRecord, SourceMessage
from service.readiness import CachedProbe, ProgressClock, Reasons
from service.redact import SCRUB, one_line, scrub
from service.reloader import Reloader, tree_signature
from service.sink import RETRY_BACKOFF_S, Delivery, KafkaSink, SinkError
from service.sources import Source
from service.supersede import AnsweredIds
from service.supervisor import Supervisor

log = structlog.get_logger("moldwatch.worker")

_STOP = SourceMessage(None, marker=True)  # queue sentinel: everything before it is drained
LOOP_TICK_S = 0.5  # loop-lag probe period
# Pauses between re-scoring a batch whose store broke under the engine (after one immediate retry):
# a store being replaced takes seconds, a broken one an operator.
STORE_RETRY_BACKOFF_S = (0.2, 10.0)


def load_engine(store: Path, cache_size: int) -> ScoringEngine:
    """Open (verify every hash) and index a store: blocking, run it in a thread."""
    return ScoringEngine(open_store(store), cache_size=cache_size)


@dataclass
class InFlight:
    delivery: Delivery
    result: BatchResult
    positions: list[Any]


class Worker:
    def __init__(self, settings: WorkerSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        SCRUB.register(settings.secret_values())  # before anything can log or answer a probe
        self.metrics = WorkerMetrics(registry)
        self.metrics.expect(settings.source, (settings.kafka_verdicts_topic, settings.kafka_alarms_topic,
                                              settings.kafka_dead_letters_topic))
        self.queue: asyncio.Queue[SourceMessage] = asyncio.Queue(settings.queue_size)
        self._in_flight: asyncio.Queue[InFlight | None] = asyncio.Queue(settings.in_flight_batches)
        self.metrics.watch_queue(self.queue.qsize, self._in_flight.qsize)
        # One thread: scoring is CPU-bound numpy; a second thread would only contend for the GIL
        # and the two cores the brokers also need.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="moldwatch-score")
        self.supervisor = Supervisor(on_failure=self._task_failed)
        self.pipeline: Pipeline | None = None
        self.sink: KafkaSink | None = None
        self.source: Source | None = None
        self.http_port: int | None = None  # set by whoever serves HTTP beside the worker (run_command.serve)
        self.exit_code = 0
        # The whole directory is the signature and there is no debounce: a store copied file by
        # file fails verification until its last file lands, and is served at the next poll after.
        self.store: Reloader[ScoringEngine] = Reloader(
            "model store", Path(settings.store) / MANIFEST, self._open_store, settings.store_poll_s, debounce=False,
            on_loaded=lambda engine: self._swap_store(),
            on_failed=lambda exc: self.metrics.reloads.labels("failed").inc(), describe=lambda e: e.model_version,
            signature=lambda manifest: tree_signature(manifest.parent, MANIFEST))
        self.metrics.store_rejected.set_function(lambda: 1.0 if self.store.rejected() else 0.0)
        self.metrics.broken_groups.set_function(
            lambda: float(len(self.pipeline.engine.broken_groups)) if self.pipeline is not None else 0.0)
        self._store_broken: str | None = None  # the scorer found the serving store unusable
        self.recipe_holder = RecipeHolder(settings, self.metrics, self._recipes_loaded)
        # Drift watch, lot drift and feedback lines: they follow the served store and read every
        # acknowledged verdict.
        self.watchers = VerdictWatchers(settings, self.metrics.registry, self._lines_loaded)
        # Operator feedback (POST /feedback), joined to the verdicts this worker published.
        self.answered = VerdictMemory(settings.feedback_memory)
        self.feedback: FeedbackIntake | None = None
        if settings.kafka_feedback_topic:
            self.feedback = FeedbackIntake(settings, self.answered, self.metrics.registry)
        self._positions: list[Any] = []
        self._checkpointed_at = time.monotonic()
        self.progress = ProgressClock(self.waiting)
        self.metrics.watch_progress(self.progress.stalled_seconds)
        self._probe = CachedProbe(self._check_readiness, settings.ready_cache_s,
                                  on_result=lambda ok: self.metrics.ready.set(1 if ok else 0))
        self._loop_lag = 0.0
        self._acking = False
        self._in_hand = False  # a batch taken from the queue and not yet handed to the committer
        # Kafka source: partitions being revoked (topic, partition). Records of them read after the
        # revocation began are left to the new owner (it resumes at the committed offset), so a
        # batch committed after the revocation never carries them: no verdict without its offset.
        self._fenced: set[tuple[str, int]] = set()
        self.fenced_records = 0
        # Exactly-once, Kafka source: the offset each partition's last committed transaction carried.
        self._txn_offsets: dict[tuple[str, int], int] = {}
        self.positions: Any = None  # exactly-once with the MongoDB source: the Kafka position store
        self._committed_position: Any = None  # exactly-once: the position of the last committed transaction

    # -- public surface ------------------------------------------------------------------------
    @property
    def exactly_once(self) -> bool:
        return self.settings.delivery == "exactly-once"

    @property
    def model_version(self) -> str | None:
        return self.pipeline.engine.model_version if self.pipeline else None

    @property
    def recipes(self) -> RecipeBook | None:
        """The recipes served now (None without a recipes file, or before one was read)."""
        return self.recipe_holder.book

    def stop(self) -> None:
        """Ask for a graceful stop (safe from a signal handler). A second call stops waiting for
        Kafka acknowledgements: what is unacknowledged is re-read from the checkpoint on restart."""
        self.supervisor.stop()

    async def wait_listening(self, timeout: float = 60.0) -> None:
        """Until the source reads from a definite position (records inserted after this are seen)."""
        deadline = time.monotonic() + timeout
        while self.source is None or not self.source.listening.is_set():
            if self.supervisor.failed or time.monotonic() > deadline:
                raise TimeoutError(f"worker not listening after {timeout} s (failed task: {self.supervisor.failed})")
            await asyncio.sleep(0.02)

    async def score_document(self, document: Any) -> dict[str, Any] | DeadLetter:
        """Score one document now (``POST /score``); raises LookupError before a store is loaded."""
        if self.pipeline is None:
            raise LookupError("model store not loaded yet")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.pipeline.score_document, document)

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        failed = self.supervisor.failed
        return failed is None, {"alive": failed is None, "loop_lag_s": round(self._loop_lag, 4), "failed_task": failed}

    async def readiness(self) -> tuple[bool, Reasons]:
        """(ready, reasons). Pings are cached for ``ready_cache_s``: probe storms stay cheap."""
        return await self._probe()

    def readiness_warnings(self) -> dict[str, str]:
        """What is wrong but does not stop serving (``/readyz`` shows it, still 200): a newer store
        on disk that was rejected while the last good one keeps serving."""
        warnings: dict[str, str] = {}
        rejected = self.store.rejected()
        if rejected:
            warnings["store"] = scrub(f"newer store at {self.settings.store} rejected ({rejected}); "
                                      f"serving {self.model_version}")
        broken = dict(self.pipeline.engine.broken_groups) if self.pipeline is not None else {}
        if broken:
            named = ", ".join(sorted(broken)[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
            first = broken[sorted(broken)[0]]
            warnings["groups"] = scrub(f"{len(broken)} setting group model(s) cannot be loaded, their records are "
                                       f"unscorable: {named} ({first}); publish a good store")
        return warnings

    async def _check_readiness(self) -> Reasons:
        reasons: Reasons = {}
        store_problem = self.store.reason() or self._store_broken
        if store_problem:
            reasons["store"] = store_problem
        source_key = "mongodb" if self.settings.source == "mongo" else "kafka_source"
        pings: dict[str, Any] = {}
        if self.sink is None:
            reasons["kafka"] = "kafka producer not started"
        else:
            pings["kafka"] = self.sink.ping()  # not connected yet: names each broker address and why
        if self.source is None:
            reasons[source_key] = "source not started"
        else:
            pings[source_key] = self.source.ping()
        results = await asyncio.gather(*pings.values())
        for key, reason in zip(pings, results):
            if reason:
                reasons[key] = reason
        if self.source is not None and source_key not in reasons and not self.source.listening.is_set():
            reasons[source_key] = "source reachable but not reading yet"
        stalled = self.stalled_seconds()
        if stalled >= self.settings.progress_timeout_s:
            reasons["progress"] = (f"{self.waiting()} record(s) or batch(es) waiting and nothing acknowledged for "
                                   f"{stalled:.0f} s (progress_timeout_s={self.settings.progress_timeout_s:g})"
                                   + (f"; last Kafka error: {self.sink.last_error}" if self.sink and self.sink.last_error else ""))
        if self.supervisor.failed:
            reasons["worker"] = f"task {self.supervisor.failed} failed"
        elif self.supervisor.stopping.is_set():
            reasons["worker"] = "shutting down"
        return {key: scrub(reason) for key, reason in reasons.items()}

    # -- progress ------------------------------------------------------------------------------
    def waiting(self) -> int:
        """Records read but not scored, plus scored batches not yet acknowledged."""
        return self.queue.qsize() + self._in_flight.qsize() + (1 if self._acking else 0) + (1 if self._in_hand else 0)

    def stalled_seconds(self) -> float:
        """Seconds that work has been waiting without any acknowledgement (0 while idle or moving)."""
        return self.progress.stalled_seconds()

    # -- run -----------------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until :meth:`stop`; return the exit code (0 = drained and checkpointed).

        Raises :class:`StoreError` when the store cannot be loaded at start-up.
        """
        log.info("worker starting", **self.settings.safe_summary())
        spawn = self.supervisor.spawn
        try:
            spawn("loop-monitor", self._monitor_loop())
            try:
                await self._load_store()
            except StoreError as exc:
                self.exit_code = 2  # what the run command exits with: the closing log line must agree
                log.error("model store unusable; not starting", error=str(exc))
                raise
            assert self.pipeline is not None
            await self.recipe_holder.start(spawn)
            await self.watchers.start(spawn, self.supervisor.stopping)
            schema = self.pipeline.engine.schema
            self.source = self._make_source(schema)
            if self.exactly_once:
                from service.exactly_once import KafkaPositionStore, TransactionalSink

                self.sink = TransactionalSink(self.settings, self.metrics, facility_column=schema.facility)
                if self.settings.source == "mongo":
                    self.positions = KafkaPositionStore(self.settings, self.sink)
                    self.source.position_store = self.positions  # type: ignore[attr-defined]
            else:
                self.sink = KafkaSink(self.settings, self.metrics, facility_column=schema.facility)
            try:
                connected = await self.supervisor.until_stopping(self.sink.setup(self.supervisor.stopping))
            except SinkError:
                if not self.supervisor.stopping.is_set():
                    raise
                connected = False  # it gave up retrying because it was told to stop: a clean stop
            if not connected:
                return self.exit_code
            if not await self._ensure_topics():
                return self.exit_code
            spawn("reader", self.source.run(self._emit))
            spawn("scorer", self._score_loop(), may_finish=True)  # both end after the drain marker
            spawn("committer", self._commit_loop(), may_finish=True)
            spawn("store-watcher", self.store.watch())
            if self.settings.candidate_store is not None:
                candidate = ShadowCandidate(Path(self.settings.candidate_store), self.settings.store_poll_s,
                                            lambda path: load_engine(path, self.settings.cache_size), self.metrics)
                spawn(ShadowCandidate.TASK, candidate.watch(self.pipeline, self.supervisor.until_stopping,
                                                            self.supervisor.stopping))
            if self.feedback is not None and self.settings.kafka_feedback_in_topic:
                spawn("feedback-intake", self.feedback.consume(self.supervisor.stopping))
            await self.supervisor.stopping.wait()
            await self._shutdown()
            return self.exit_code
        finally:
            await self._close()

    async def _ensure_topics(self) -> bool:
        """Output topics exist before the first send (created where allowed); False on a stop."""
        from service.topics import TopicError, ensure_topics

        s = self.settings
        topics = (s.kafka_verdicts_topic, s.kafka_alarms_topic, s.kafka_dead_letters_topic,
                  *((s.kafka_shadow_topic,) if s.kafka_shadow_topic else ()))
        backoff = Backoff(*RETRY_BACKOFF_S)
        while not self.supervisor.stopping.is_set():
            try:
                return await self.supervisor.until_stopping(ensure_topics(s, topics))
            except TopicError as exc:
                self.exit_code = 2
                log.error("kafka topic missing; not starting", error=str(exc))
                raise
            except KafkaError as exc:  # the brokers went away between connecting and this check
                pause = backoff.next()
                log.warning("kafka topics not checked, retrying", error=str(exc), retry_in_s=pause)
                await self.supervisor.until_stopping(asyncio.sleep(pause))
        return False

    def _make_source(self, schema: Any) -> Source:
        if self.settings.source == "kafka":
            from service.sources.kafka import KafkaSource

            return KafkaSource(self.settings, self.metrics, on_revoked=self.on_partitions_revoked,
                               on_assigned=self.on_partitions_assigned)
        from service.sources.mongo import MongoSource

        return MongoSource(self.settings, schema, self.metrics)

    def _task_failed(self, name: str, exc: BaseException | None) -> None:
        self.exit_code = 1

    async def _monitor_loop(self) -> None:
        gauge = self.metrics.loop_lag
        while True:
            started = time.monotonic()
            await asyncio.sleep(LOOP_TICK_S)
            self._loop_lag = max(0.0, time.monotonic() - started - LOOP_TICK_S)
            gauge.set(self._loop_lag)

    async def _emit(self, message: SourceMessage) -> None:
        if self._fenced and _partition_of(message.position) in self._fenced:
            self.fenced_records += 1  # read from a partition being handed over: its new owner reads it again
            return
        if not message.marker:
            self.metrics.child(self.metrics.records_in, self.settings.source).inc()
        self.progress.arriving()
        await self.queue.put(message)  # blocks when full: the source stops reading

    # -- scoring -------------------------------------------------------------------------------
    async def _next_batch(self) -> tuple[list[SourceMessage], bool]:
        """Up to batch_size messages, waiting at most batch_max_wait_ms after the first one."""
        first = await self.queue.get()
        if first is _STOP:
            return [], True
        self._in_hand = True  # counted by waiting() until the committer has it (see _score_loop)
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
                except asyncio.TimeoutError:
                    break
            if message is _STOP:
                return batch, True
            batch.append(message)
        return batch, False

    async def _score_loop(self) -> None:
        assert self.sink is not None
        last = False
        while not last:
            batch, last = await self._next_batch()
            if not batch:
                continue
            self._swap_store()
            result = await self._score(batch)
            self.metrics.batches.inc()
            self.metrics.batch_size.observe(len(batch))
            self.metrics.scoring_seconds.observe(result.seconds)
            if result.fallback:
                self.metrics.batch_fallbacks.inc()
                log.warning("batch scoring failed; scored record by record", records=len(batch),
                            dead_letters=len(result.failed))
            delivery = await self.sink.add_batch(result, self._on_verdict_ack)
            positions = [m.position for m in batch if m.position is not None]
            await self._in_flight.put(InFlight(delivery, result, positions))
            self._in_hand = False
        await self._in_flight.put(None)

    async def _score(self, batch: list[SourceMessage]) -> BatchResult:
        """Score; on a store that changed or broke under the engine, reload and retry (records are
        never dead-lettered for the store's fault)."""
        assert self.pipeline is not None
        backoff, attempt = Backoff(*STORE_RETRY_BACKOFF_S), 0
        while True:
            try:
                result = await self.pipeline.process(batch)
                self._store_broken = None
                return result
            except StoreError as exc:
                self._store_broken = f"model store unusable: {exc}"
                log.error("model store changed or broke under the engine; reloading before retrying the batch",
                          error=str(exc), records=len(batch))
                await self.store.load(force=True)
                self._swap_store()
                if self.supervisor.give_up.is_set():
                    raise
                if attempt:  # the first retry is immediate: a reload usually fixed it
                    await asyncio.sleep(backoff.next())
                attempt += 1

    def _on_verdict_ack(self, scored: ScoredRecord, acked_at: float) -> None:
        self.metrics.observe_latency(scored.record_time, scored.received_at, acked_at, scored.event_time)
        if self.feedback is not None:
            self.answered.remember(scored.verdict)  # published: an operator may now answer it

    # -- acks and checkpoints ------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        assert self.sink is not None
        interval = self.settings.checkpoint_interval_s
        while True:
            try:
                # Wake up at least once per interval, so the last positions of a burst are
                # checkpointed even when nothing follows it.
                item = await asyncio.wait_for(self._in_flight.get(), max(interval, 0.05))
            except asyncio.TimeoutError:
                await self._checkpoint()
                continue
            if item is None:
                break
            self._acking = True
            try:
                if self.exactly_once:
                    await self._commit_transaction(item)
                else:
                    await self._await_acks(item.delivery)
            finally:
                self._acking = False
            self.progress.moved()
            self._count(item.result, item.delivery)
            if self.exactly_once:
                self._checkpointed_at = time.monotonic()
                if item.positions:
                    self.metrics.checkpointed()
                continue
            self._positions.extend(item.positions)
            if time.monotonic() - self._checkpointed_at >= interval:
                await self._checkpoint()
        if not await self._checkpoint():
            self.exit_code = 1
            log.error("final checkpoint not written: the records since the last checkpoint are read again on restart",
                      positions=len(self._positions))

    async def _commit_transaction(self, item: InFlight) -> None:
        """Exactly-once: the batch's messages and its source position in one Kafka transaction."""
        from service.exactly_once import TransactionalSink

        assert isinstance(self.sink, TransactionalSink) and self.source is not None
        position = offsets = None
        if item.positions and self.positions is not None:
            # With the previous position first: a batch of markers only keeps the last record's
            # timestamp and id (what a lost-history backfill starts from).
            earlier = [self._committed_position] if self._committed_position is not None else []
            (last,) = self.source.compact(earlier + item.positions)
            position = self.positions.message(self.source.checkpoint_fields(last))  # type: ignore[attr-defined]
        elif item.positions:
            offsets = self.source.offsets(item.positions)  # type: ignore[attr-defined]
        commit = self.sink.commit_batch(item.delivery, position, offsets, self.settings.kafka_group_id)
        if not await self.supervisor.until_give_up(commit):
            raise SinkError("shutdown deadline passed with a transaction not committed; "
                            "its records are read again from the last committed position on restart")
        if position is not None:
            self._committed_position = last
        for tp, offset in (offsets or {}).items():
            self._txn_offsets[(tp.topic, tp.partition)] = offset

    async def _await_acks(self, delivery: Delivery) -> None:
        assert self.sink is not None
        if not await self.supervisor.until_give_up(self.sink.flush(delivery)):
            left = sum(m.acked_at is None for m in delivery.messages)
            raise SinkError(f"shutdown deadline passed with {left} Kafka message(s) unacknowledged; "
                            "they are re-read from the last checkpoint on restart")

    def _count(self, result: BatchResult, delivery: Delivery | None = None) -> None:
        dropped = delivery.dead_lettered if delivery is not None else {}
        for index, scored in enumerate(result.scored):
            if index not in dropped:  # dead-lettered by the sink (too large for Kafka): counted there
                self.metrics.observe_verdict(scored.verdict)
                self.watchers.observe(scored.verdict)
        for verdict, _ in result.shadow:
            self.metrics.observe_shadow(verdict)
        for failed in result.failed:
            self.metrics.dead_letters.labels(failed.dead_letter.reason).inc()
        if result.failed:
            first = result.failed[0].dead_letter
            log.warning("records dead-lettered", count=len(result.failed), reason=first.reason, error=first.error)

    async def _checkpoint(self) -> bool:
        """Persist the acknowledged positions; False when that failed (they are kept for a retry)."""
        if not self._positions or self.source is None:
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

    async def on_partitions_revoked(self, partitions: set[Any]) -> None:
        """Kafka source, rebalance: before the partitions go, let what was read from them be
        scored and acknowledged (bounded wait), commit it, and forget their positions."""
        # Fence first: records of these partitions that the source reads from now on (the rest of
        # a fetch, a read blocked on the full queue) go to the new owner, never into a batch this
        # member commits once the partitions are gone. Then drain what was read before the fence.
        # Exactly-once: records of revoked partitions must not be committed by this member after
        # the revocation (their new owner scores them: a duplicate), so wait until all is committed
        # (the batch being scored included: waiting() counts it).
        self._fenced |= {(tp.topic, tp.partition) for tp in partitions}
        fenced_before = self.fenced_records
        drain_s = self.settings.rebalance_drain_s if not self.exactly_once else float("inf")
        deadline = time.monotonic() + drain_s
        while (self.waiting() and time.monotonic() < deadline and not self.supervisor.give_up.is_set()
               and self.supervisor.failed is None):
            await asyncio.sleep(0.02)
        if self.waiting():
            log.warning("rebalance: records of revoked partitions still unacknowledged; their new owner scores them again",
                        waiting=self.waiting())
        await self._checkpoint()
        if self.exactly_once and self.source is not None and hasattr(self.source, "wait_materialized"):
            # commit_transaction returns once the commit is decided, before its markers reach the
            # offsets topic; a new owner fetching offsets before then (aiokafka's OffsetFetch cannot
            # ask for stable offsets) would read the previous ones and score a batch again.
            mine = {key: offset for key, offset in self._txn_offsets.items() if key in self._fenced}
            lagging = await self.source.wait_materialized(mine, self.settings.rebalance_drain_s)
            if lagging:
                log.warning("rebalance: committed offsets not visible to the new owner yet; it may score a few "
                            "records again", partitions=sorted(f"{t}[{p}]" for t, p in lagging))
        if self.source is not None and hasattr(self.source, "drop"):
            self._positions = self.source.drop(self._positions, partitions)
        log.info("rebalance: revoked partitions committed and handed over",
                 left_to_new_owner=self.fenced_records - fenced_before)

    async def on_partitions_assigned(self, partitions: set[Any]) -> None:
        """Kafka source, rebalance: partitions (back) in this member's hands are read again from
        their committed offsets, so their fence is lifted."""
        self._fenced -= {(tp.topic, tp.partition) for tp in partitions}

    # -- model store ---------------------------------------------------------------------------
    async def _load_store(self) -> None:
        """The first store: a failure here is fatal (raised), there is nothing to keep serving."""
        await self.store.load(force=True, raise_errors=True)
        engine = self.store.value
        assert engine is not None
        self.pipeline = Pipeline(engine, self.executor, AnsweredIds(self.settings.supersede_memory))
        self.metrics.set_store(engine, str(self.settings.store))
        self.watchers.use_store(engine)
        self.recipe_holder.use_store(engine.model_version)
        log.info("model store loaded", store=str(self.settings.store), model_version=engine.model_version,
                 groups=len(engine.manifest.groups))

    async def _open_store(self, path: Path, force: bool) -> ScoringEngine | None:
        """The Reloader's callback: a new engine, None when it is the version already held (unless
        ``force``: the files changed under the engine), or StoreError to keep the current one."""
        engine = await asyncio.to_thread(load_engine, Path(self.settings.store), self.settings.cache_size)
        current = self.store.value
        if current is None:
            return engine
        if engine.manifest.schema_hash != current.manifest.schema_hash:
            # Another plant schema changes field names the source and sink rely on (timestamp
            # for backfill, facility for keys): that takes a restart, not a hot swap.
            raise StoreError("the new model store is for another plant schema (restart to switch)")
        if engine.model_version == current.model_version and not force:
            return None
        return engine

    def _swap_store(self) -> None:
        """Serve the store the watcher (or a forced reload) accepted last: at once when it is
        accepted (an idle stream must not keep reporting the old version), and again before each
        batch. A batch in flight finishes with the engine it started with (the pipeline reads it
        once per batch)."""
        engine = self.store.value
        if engine is None or self.pipeline is None or engine is self.pipeline.engine:
            return
        previous = self.pipeline.engine.model_version
        self.pipeline.swap(engine)
        self._store_broken = None
        self.metrics.reloads.labels("ok").inc()
        self.metrics.set_store(engine, str(self.settings.store))
        self.watchers.use_store(engine)
        self.recipe_holder.use_store(engine.model_version)
        log.info("model store reloaded", previous=previous, model_version=engine.model_version,
                 groups=len(engine.manifest.groups))

    # -- recipes and lines -------------------------------------------------------------------------
    def recipe(self, facility: str, item: str) -> tuple[dict[str, Any] | None, str, str]:
        """``(recipe, "", "")``, or ``(None, reason, error)`` saying why there is none
        (``GET /recipes/{facility}/{item}``)."""
        return self.recipe_holder.answer(facility, item)

    def _recipes_loaded(self, book: RecipeBook) -> None:
        if self.pipeline is not None:
            self.pipeline.recipes = book

    def _lines_loaded(self, book: Any) -> None:
        if self.pipeline is not None:
            self.pipeline.lines = book

    # -- shutdown ------------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        """In order: stop reading and watching, let the scorer drain what was read (the marker
        ends it), let the committer settle and checkpoint; give up after ``shutdown_timeout_s``."""
        give_up = self.supervisor.give_up_after(self.settings.shutdown_timeout_s)
        try:
            await self.supervisor.cancel("reader", "store-watcher", RecipeHolder.TASK, *VerdictWatchers.TASKS)
            scorer = self.supervisor.task("scorer")
            if scorer is not None and not scorer.done():
                put = asyncio.ensure_future(self.queue.put(_STOP))
                await asyncio.wait({put, scorer}, timeout=self.settings.shutdown_timeout_s,
                                   return_when=asyncio.FIRST_COMPLETED)
            unclean = await self.supervisor.drain(("scorer", "committer"), self.settings.shutdown_timeout_s + 1)
            if unclean:
                self.exit_code = 1
                log.error("shutdown deadline passed or a task failed; not everything read was acknowledged",
                          tasks=unclean)
            if self.exit_code == 0:
                log.info("drained, flushed and checkpointed", records_in=_total(self.metrics.records_in))
        finally:
            give_up.cancel()

    async def _close(self) -> None:
        await self.supervisor.cancel_all()
        if self.sink is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sink.close(), 5)
        if self.source is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.source.close(), 5)
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped", exit_code=self.exit_code)


def _partition_of(position: Any) -> tuple[str, int] | None:
    """(topic, partition) of a Kafka source position ``(topic, partition, next offset)``; None for
    any other source's position."""
    if isinstance(position, tuple) and len(position) == 3:
        return (position[0], position[1])
    return None


def _total(counter: Any) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


__all__ = ["Worker", "load_engine"]
