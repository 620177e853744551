"""The streaming worker: source -> bounded queue -> micro-batches -> pipeline -> Kafka -> checkpoint.

The worker wires its parts and runs them as tasks on one event loop, watched by a Supervisor
(one that dies stops the worker with exit code 1)::

    reader      source.run(flow.emit)      service/sources/
    scorer      flow.score(commit)         service/flow.py; the delivery mode is the commit
    committer   flow.commit(commit)        strategy picked at start (service/commit.py)
    watchers    the store (store_holder.py), recipes (recipe_holder.py), drift, lots and lines
                (verdict_watch.py), the shadow candidate, feedback intake

Readiness: service/readiness.py. HTTP and signal handlers belong to the process
(``service.run_command.serve`` starts them beside :meth:`Worker.run`). ``stop()`` stops the reader,
lets the scorer drain what was read, waits for the acks, writes the final checkpoint, returns 0.

Embedding (tests, demo, bench)::

    worker = Worker(WorkerSettings(...))
    task = asyncio.create_task(worker.run())       # or serve(worker): with /healthz /readyz /metrics /score
    await worker.wait_listening(30)                # the source reads from a definite position now
    worker.stop(); exit_code = await task
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from model_store.errors import StoreError
from service.commit import CommitStrategy, commit_strategy
from service.config import WorkerSettings
from service.decode import DeadLetter
from service.feedback import VerdictMemory
from service.feedback_intake import FeedbackIntake
from service.flow import BatchFlow
from service.metrics import WorkerMetrics
from service.pipeline import Pipeline, ScoredRecord
from service.readiness import CachedProbe, ProgressClock, Reasons, check_readiness
from service.recipe_holder import RecipeHolder
from service.redact import SCRUB
from service.shadow_candidate import ShadowCandidate
from service.sink import SinkError
from service.sources import Source
from service.sources.factory import open_source
from service.store_holder import StoreHolder, load_engine
from service.supervisor import LoopLag, Supervisor
from service.topics import TopicError, ensure_output_topics
from service.verdict_watch import VerdictWatchers

log = structlog.get_logger("moldwatch.worker")


class Worker:
    def __init__(self, settings: WorkerSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        SCRUB.register(settings.secret_values())  # before anything can log or answer a probe
        self.metrics = WorkerMetrics(registry)
        self.metrics.expect(settings.source, (settings.kafka_verdicts_topic, settings.kafka_alarms_topic,
                                              settings.kafka_dead_letters_topic))
        # One thread: scoring is CPU-bound numpy; a second thread would only contend for the GIL
        # and the two cores the brokers also need.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="moldwatch-score")
        self.supervisor = Supervisor(on_failure=self._task_failed)
        self.recipe_holder = RecipeHolder(settings, self.metrics, lambda book: self.store.use_recipes(book))
        self.watchers = VerdictWatchers(settings, self.metrics.registry, lambda book: self.store.use_lines(book))
        self.store = StoreHolder(settings, self.metrics, self.executor, self.recipe_holder, self.watchers)
        self.source: Source | None = None
        self.commit: CommitStrategy | None = None  # the delivery mode, picked in run()
        self.http_port: int | None = None  # set by whoever serves HTTP beside the worker (run_command.serve)
        self.exit_code = 0
        # Operator feedback (POST /feedback), joined to the verdicts this worker published.
        self.answered = VerdictMemory(settings.feedback_memory)
        self.feedback = FeedbackIntake(settings, self.answered, self.metrics.registry) \
            if settings.kafka_feedback_topic else None
        # The ack hook is looked up per verdict, not bound once: a bench wraps it on a built worker.
        self.flow = BatchFlow(settings, self.metrics, self.store, self.watchers.observe, self.supervisor.give_up,
                              lambda scored, acked_at: self._on_verdict_ack(scored, acked_at))
        self._probe = CachedProbe(lambda: check_readiness(self), settings.ready_cache_s,
                                  on_result=lambda ok: self.metrics.ready.set(1 if ok else 0))
        self.loop_lag = LoopLag(self.metrics.loop_lag.set)

    # -- public surface ------------------------------------------------------------------------
    @property
    def pipeline(self) -> Pipeline | None:
        return self.store.pipeline

    @property
    def model_version(self) -> str | None:
        return self.store.model_version

    def recipe(self, facility: str, item: str) -> tuple[dict[str, Any] | None, str, str]:
        """``GET /recipes/{facility}/{item}``: ``(recipe, "", "")`` or ``(None, reason, error)``."""
        return self.recipe_holder.answer(facility, item)

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
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.pipeline.score_document, document)

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        failed = self.supervisor.failed
        return failed is None, {"alive": failed is None, "loop_lag_s": round(self.loop_lag.seconds, 4), "failed_task": failed}

    async def readiness(self) -> tuple[bool, Reasons]:
        """(ready, reasons). Pings are cached for ``ready_cache_s``: probe storms stay cheap."""
        return await self._probe()

    def readiness_warnings(self) -> dict[str, str]:
        """What is wrong but does not stop serving (``/readyz`` shows it, still 200)."""
        return self.store.warnings()

    @property
    def progress(self) -> ProgressClock:
        return self.flow.progress

    def waiting(self) -> int:
        """Records read but not scored, plus scored batches not yet acknowledged."""
        return self.flow.waiting()

    # -- run -----------------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until :meth:`stop`; return the exit code (0 = drained and checkpointed).

        Raises :class:`StoreError` when the store cannot be loaded at start-up, and
        :class:`TopicError` when an output topic is missing and cannot be created.
        """
        log.info("worker starting", **self.settings.safe_summary())
        spawn, stopping = self.supervisor.spawn, self.supervisor.stopping
        try:
            spawn("loop-monitor", self.loop_lag.watch())
            try:
                pipeline = await self.store.load()
                await self.recipe_holder.start(spawn)
                await self.watchers.start(spawn, stopping)
                self.source = open_source(self.settings, pipeline.engine.schema, self.metrics,
                                          self.on_partitions_revoked, self.on_partitions_assigned)
                self.commit = commit_strategy(self.settings, self.metrics, self.source,
                                              pipeline.engine.schema.facility, self.supervisor.until_give_up)
                if not await self._connect_output(self.commit):
                    return self.exit_code
            except (StoreError, TopicError) as exc:
                self.exit_code = 2  # what the run command exits with: the closing log line must agree
                what = "model store unusable" if isinstance(exc, StoreError) else "kafka topic missing"
                log.error(f"{what}; not starting", error=str(exc))  # noqa: G004 - structlog renders the event once: no deferred %-formatting to keep
                raise
            spawn("reader", self.source.run(self.flow.emit))
            spawn("scorer", self.flow.score(self.commit), may_finish=True)  # both end after the drain marker
            spawn("committer", self.flow.commit(self.commit), may_finish=True)
            spawn("store-watcher", self.store.reloader.watch())
            if self.settings.candidate_store is not None:
                candidate = ShadowCandidate(Path(self.settings.candidate_store), self.settings.store_poll_s,
                                            lambda path: load_engine(path, self.settings.cache_size), self.metrics)
                spawn(ShadowCandidate.TASK, candidate.watch(pipeline, self.supervisor.until_stopping, stopping))
            if self.feedback is not None and self.settings.kafka_feedback_in_topic:
                spawn("feedback-intake", self.feedback.consume(stopping))
            await stopping.wait()
            await self._shutdown()
            return self.exit_code
        finally:
            await self._close()

    async def _connect_output(self, commit: CommitStrategy) -> bool:
        """The producer connected and the output topics there (:class:`TopicError` when one is
        missing and cannot be created); False on a stop meanwhile."""
        stopping = self.supervisor.stopping
        try:
            if not await self.supervisor.until_stopping(commit.sink.setup(stopping)):
                return False
        except SinkError:
            if not stopping.is_set():
                raise
            return False  # it gave up retrying because it was told to stop: a clean stop
        return await ensure_output_topics(self.settings, stopping, self.supervisor.until_stopping)

    def _task_failed(self, name: str, exc: BaseException | None) -> None:
        self.exit_code = 1

    def _on_verdict_ack(self, scored: ScoredRecord, acked_at: float) -> None:
        self.metrics.observe_latency(scored.record_time, scored.received_at, acked_at, scored.event_time)
        if self.feedback is not None:
            self.answered.remember(scored.verdict)  # published: an operator may now answer it

    # -- rebalance (Kafka source) --------------------------------------------------------------
    async def on_partitions_revoked(self, partitions: set[TopicPartition]) -> None:
        """Drain, commit and hand over what was read from ``partitions`` (:meth:`BatchFlow.revoke`)."""
        assert self.commit is not None  # the source runs only once the strategy is picked
        await self.flow.revoke(partitions, self.commit,
                               lambda: self.supervisor.give_up.is_set() or self.supervisor.failed is not None)

    async def on_partitions_assigned(self, partitions: set[TopicPartition]) -> None:
        """Partitions (back) in this member's hands are read again from their committed offsets."""
        self.flow.lift(partitions)

    # -- shutdown ------------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        """In order: stop reading and watching, let the scorer drain what was read (the marker
        ends it), let the committer settle and checkpoint; give up after ``shutdown_timeout_s``."""
        timeout = self.settings.shutdown_timeout_s
        give_up = self.supervisor.give_up_after(timeout)
        try:
            await self.supervisor.cancel("reader", "store-watcher", RecipeHolder.TASK, *VerdictWatchers.TASKS)
            scorer = self.supervisor.task("scorer")
            if scorer is not None and not scorer.done():
                put = asyncio.ensure_future(self.flow.end())
                await asyncio.wait({put, scorer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            unclean = await self.supervisor.drain(("scorer", "committer"), timeout + 1)
            if self.flow.final_checkpoint_written is False:
                self.exit_code = 1
            if unclean:
                self.exit_code = 1
                log.error("shutdown deadline passed or a task failed; not everything read was acknowledged",
                          tasks=unclean)
            if self.exit_code == 0:
                log.info("drained, flushed and checkpointed", records_in=self.flow.records_read)
        finally:
            give_up.cancel()

    async def _close(self) -> None:
        await self.supervisor.cancel_all()
        for part in (self.commit.sink if self.commit else None, self.source):
            if part is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(part.close(), 5)
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped", exit_code=self.exit_code)


__all__ = ["Worker", "load_engine"]
