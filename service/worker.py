"""The streaming worker: source -> bounded queue -> micro-batches -> pipeline -> Kafka -> checkpoint.

Tasks on one event loop, each with one job::

    reader     source.run(emit)         emit = put into a bounded queue: when it is full, reading
                                        stops (backpressure instead of memory growth)
    scorer     queue -> micro-batches (batch_size / batch_max_wait_ms) -> pipeline (executor)
               -> sink.add_batch -> bounded in-flight queue (in_flight_batches)
    committer  in-flight batches in order -> sink.flush (every message acked) -> metrics ->
               source.commit(positions) at most every checkpoint_interval_s
    store      polls the store's manifest; a new version is loaded aside (a thread) and swapped in
               by the scorer between two batches; a bad store is logged and the old one kept
    recipes    (with a recipes file) polls it likewise; a changed file is loaded in a thread and
               replaces the pipeline's RecipeBook (verdicts' on_recipe, GET /recipes); a broken one
               is logged, counted, and the previous book kept
    http       uvicorn serving /healthz /readyz /metrics /score /recipes (see service/http.py)

Because the committer handles batches in order and commits only after their acks, a checkpoint
never passes an unacknowledged verdict. ``stop()`` (SIGTERM/SIGINT) stops the reader, lets the
scorer drain what was read, waits for the acks, writes the final checkpoint and returns 0.

Embedding (tests, demo, bench)::

    worker = Worker(WorkerSettings(...))
    task = asyncio.create_task(worker.run())
    await worker.wait_listening(30)      # the source reads from a definite position now
    ...
    worker.stop(); exit_code = await task
    worker.metrics.registry / worker.metrics.latencies.quantiles((0.5, 0.99))
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from model_store.errors import StoreError
from model_store.serving.recipe_book import RECIPES_JSON, RecipeBook
from model_store.serving.scoring import ScoringEngine
from model_store.serving.store import MANIFEST, open_store
from service.backoff import Backoff
from service.config import WorkerSettings
from service.decode import DeadLetter
from service.metrics import WorkerMetrics
from service.redact import SCRUB, one_line, scrub
from service.pipeline import BatchResult, Pipeline, ScoredRecord, SourceMessage
from service.sink import Delivery, KafkaSink, SinkError
from service.sources import Source

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
        self.pipeline: Pipeline | None = None
        self.sink: KafkaSink | None = None
        self.source: Source | None = None
        self.http_port: int | None = None
        self.exit_code = 0
        self._stopping = asyncio.Event()
        self._give_up = asyncio.Event()  # shutdown deadline passed: stop waiting for Kafka
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._failed: str | None = None
        self._pending_engine: ScoringEngine | None = None
        self._store_sig: tuple[int, int, int] | None = None
        self._store_problem: str | None = None
        self._reload_lock = asyncio.Lock()
        self.recipes: RecipeBook | None = None
        self._recipes_sig: tuple[int, int, int] | None = None
        self._recipes_problem: str | None = None
        self._positions: list[Any] = []
        self._checkpointed_at = time.monotonic()
        # Progress clock: the last time acknowledged work moved, or nothing was waiting.
        self._progress_at = time.monotonic()
        self.metrics.watch_progress(self.stalled_seconds)
        self._ready: tuple[float, bool, dict[str, str]] = (0.0, False, {})
        self._ready_lock = asyncio.Lock()
        self._loop_lag = 0.0
        self._acking = False
        self.positions: Any = None  # exactly-once with the MongoDB source: the Kafka position store
        self._committed_position: Any = None  # exactly-once: the position of the last committed transaction

    # -- public surface ------------------------------------------------------------------------
    @property
    def exactly_once(self) -> bool:
        return self.settings.delivery == "exactly-once"

    @property
    def model_version(self) -> str | None:
        return self.pipeline.engine.model_version if self.pipeline else None

    def stop(self) -> None:
        """Ask for a graceful stop (safe from a signal handler). A second call stops waiting for
        Kafka acknowledgements: what is unacknowledged is re-read from the checkpoint on restart."""
        if not self._stopping.is_set():
            log.info("stopping: no more reading, draining what was read")
            self._stopping.set()
        elif not self._give_up.is_set():
            log.warning("second stop request: not waiting for Kafka any longer")
            self._give_up.set()

    async def wait_listening(self, timeout: float = 60.0) -> None:
        """Until the source reads from a definite position (records inserted after this are seen)."""
        deadline = time.monotonic() + timeout
        while self.source is None or not self.source.listening.is_set():
            if self._failed or time.monotonic() > deadline:
                raise TimeoutError(f"worker not listening after {timeout} s (failed task: {self._failed})")
            await asyncio.sleep(0.02)

    async def score_document(self, document: Any) -> dict[str, Any] | DeadLetter:
        """Score one document now (``POST /score``); raises LookupError before a store is loaded."""
        if self.pipeline is None:
            raise LookupError("model store not loaded yet")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.pipeline.score_document, document)

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        ok = self._failed is None
        return ok, {"alive": ok, "loop_lag_s": round(self._loop_lag, 4), "failed_task": self._failed}

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, reasons). Pings are cached for ``ready_cache_s``: probe storms stay cheap."""
        async with self._ready_lock:
            at, ok, reasons = self._ready
            if time.monotonic() - at < self.settings.ready_cache_s:
                return ok, reasons
            reasons = await self._check_readiness()
            self._ready = (time.monotonic(), not reasons, reasons)
            self.metrics.ready.set(0 if reasons else 1)
            return not reasons, reasons

    async def _check_readiness(self) -> dict[str, str]:
        reasons: dict[str, str] = {}
        if self.pipeline is None:
            reasons["store"] = self._store_problem or "model store not loaded yet"
        elif self._store_problem:
            reasons["store"] = self._store_problem
        source_key = "mongodb" if self.settings.source == "mongo" else "kafka_source"
        pings: dict[str, Any] = {}
        if self.sink is None or self.sink.producer is None:
            reasons["kafka"] = "kafka producer not connected"
        else:
            pings["kafka"] = self.sink.ping()
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
        if self._failed:
            reasons["worker"] = f"task {self._failed} failed"
        elif self._stopping.is_set():
            reasons["worker"] = "shutting down"
        return {key: scrub(reason) for key, reason in reasons.items()}

    # -- progress ------------------------------------------------------------------------------
    def waiting(self) -> int:
        """Records read but not scored, plus scored batches not yet acknowledged."""
        return self.queue.qsize() + self._in_flight.qsize() + (1 if self._acking else 0)

    def stalled_seconds(self) -> float:
        """Seconds that work has been waiting without any acknowledgement (0 while idle or moving)."""
        if not self.waiting():
            self._progress_at = time.monotonic()
            return 0.0
        return time.monotonic() - self._progress_at

    # -- run -----------------------------------------------------------------------------------
    async def run(self, install_signal_handlers: bool = False) -> int:
        """Run until :meth:`stop`; return the exit code (0 = drained and checkpointed).

        Raises :class:`StoreError` when the store cannot be loaded at start-up, and ``OSError``
        when the HTTP port cannot be bound.
        """
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        log.info("worker starting", **self.settings.safe_summary())
        http: Any = None
        try:
            if self.settings.http_enabled:
                from service.http import create_app, start_http

                http = await start_http(create_app(self), self.settings.http_host, self.settings.http_port)
                self.http_port = http[2]
                log.info("http serving", url=f"http://{self.settings.http_host}:{self.http_port}",
                         endpoints="/healthz /readyz /metrics /score /recipes/{facility}/{item}")
            self._spawn("loop-monitor", self._monitor_loop())
            await self._load_store()
            assert self.pipeline is not None
            if self.settings.recipes is not None:
                await self._load_recipes()
                self._spawn("recipes-watcher", self._watch_recipes())
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
            if not await self._until_stopping(self.sink.setup(self._stopping)):
                return self.exit_code
            self._spawn("reader", self.source.run(self._emit))
            self._spawn("scorer", self._score_loop())
            self._spawn("committer", self._commit_loop())
            self._spawn("store-watcher", self._watch_store())
            await self._stopping.wait()
            await self._shutdown()
            return self.exit_code
        finally:
            await self._close(http)
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    def _make_source(self, schema: Any) -> Source:
        if self.settings.source == "kafka":
            from service.sources.kafka import KafkaSource

            return KafkaSource(self.settings, self.metrics, on_revoked=self.on_partitions_revoked)
        from service.sources.mongo import MongoSource

        return MongoSource(self.settings, schema, self.metrics)

    def _spawn(self, name: str, coro: Any) -> None:
        task = asyncio.create_task(coro, name=f"moldwatch-{name}")
        self._tasks[name] = task
        task.add_done_callback(lambda t, n=name: self._task_done(n, t))

    def _task_done(self, name: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None and (self._stopping.is_set() or name in ("scorer", "committer")):
            return
        self._failed = name
        self.exit_code = 1
        log.error("worker task failed; stopping", task=name,
                  error=f"{type(exc).__name__}: {exc}" if exc else "returned unexpectedly", exc_info=exc)
        self.stop()

    async def _until_stopping(self, coro: Any) -> bool:
        """Await ``coro`` unless a stop comes first (then cancel it and return False)."""
        task = asyncio.ensure_future(coro)
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return False
        task.result()
        return True

    async def _monitor_loop(self) -> None:
        gauge = self.metrics.loop_lag
        while True:
            started = time.monotonic()
            await asyncio.sleep(LOOP_TICK_S)
            self._loop_lag = max(0.0, time.monotonic() - started - LOOP_TICK_S)
            gauge.set(self._loop_lag)

    async def _emit(self, message: SourceMessage) -> None:
        if not message.marker:
            self.metrics.records_in.labels(self.settings.source).inc()
        if not self.waiting():
            self._progress_at = time.monotonic()  # work starts waiting now, not at the last ack
        await self.queue.put(message)  # blocks when full: the source stops reading

    # -- scoring -------------------------------------------------------------------------------
    async def _next_batch(self) -> tuple[list[SourceMessage], bool]:
        """Up to batch_size messages, waiting at most batch_max_wait_ms after the first one."""
        first = await self.queue.get()
        if first is _STOP:
            return [], True
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
            self._apply_pending_reload()
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
        await self._in_flight.put(None)

    async def _score(self, batch: list[SourceMessage]) -> BatchResult:
        """Score; on a store that changed or broke under the engine, reload and retry (records are
        never dead-lettered for the store's fault)."""
        assert self.pipeline is not None
        backoff, attempt = Backoff(*STORE_RETRY_BACKOFF_S), 0
        while True:
            try:
                result = await self.pipeline.process(batch)
                self._store_problem = None
                return result
            except StoreError as exc:
                self._store_problem = f"model store unusable: {exc}"
                log.error("model store changed or broke under the engine; reloading before retrying the batch",
                          error=str(exc), records=len(batch))
                if await self._reload(force=True):
                    self._apply_pending_reload()
                if self._give_up.is_set():
                    raise
                if attempt:  # the first retry is immediate: a reload usually fixed it
                    await asyncio.sleep(backoff.next())
                attempt += 1

    def _on_verdict_ack(self, scored: ScoredRecord, acked_at: float) -> None:
        self.metrics.observe_latency(scored.record_time, scored.received_at, acked_at)

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
            self._progress_at = time.monotonic()
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
        commit = asyncio.ensure_future(self.sink.commit_batch(item.delivery, position, offsets, self.settings.kafka_group_id))
        give_up = asyncio.ensure_future(self._give_up.wait())
        await asyncio.wait({commit, give_up}, return_when=asyncio.FIRST_COMPLETED)
        give_up.cancel()
        if not commit.done():
            commit.cancel()
            raise SinkError("shutdown deadline passed with a transaction not committed; "
                            "its records are read again from the last committed position on restart")
        commit.result()
        if position is not None:
            self._committed_position = last

    async def _await_acks(self, delivery: Delivery) -> None:
        assert self.sink is not None
        flush = asyncio.ensure_future(self.sink.flush(delivery))
        give_up = asyncio.ensure_future(self._give_up.wait())
        await asyncio.wait({flush, give_up}, return_when=asyncio.FIRST_COMPLETED)
        give_up.cancel()
        if not flush.done():
            flush.cancel()
            left = sum(m.acked_at is None for m in delivery.messages)
            raise SinkError(f"shutdown deadline passed with {left} Kafka message(s) unacknowledged; "
                            "they are re-read from the last checkpoint on restart")
        flush.result()

    def _count(self, result: BatchResult, delivery: Delivery | None = None) -> None:
        dropped = delivery.dead_lettered if delivery is not None else {}
        for index, scored in enumerate(result.scored):
            if index not in dropped:  # dead-lettered by the sink (too large for Kafka): counted there
                self.metrics.observe_verdict(scored.verdict)
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
        # Exactly-once: records of revoked partitions must not be committed by this member after
        # the revocation (their new owner scores them: a duplicate), so wait until all is committed.
        drain_s = self.settings.rebalance_drain_s if not self.exactly_once else float("inf")
        deadline = time.monotonic() + drain_s
        while self.waiting() and time.monotonic() < deadline and not self._give_up.is_set() and self._failed is None:
            await asyncio.sleep(0.02)
        if self.waiting():
            log.warning("rebalance: records of revoked partitions still unacknowledged; their new owner scores them again",
                        waiting=self.waiting())
        await self._checkpoint()
        if self.source is not None and hasattr(self.source, "drop"):
            self._positions = self.source.drop(self._positions, partitions)

    # -- model store ---------------------------------------------------------------------------
    def _manifest_signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(Path(self.settings.store) / MANIFEST)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def _load_store(self) -> None:
        self._store_sig = self._manifest_signature()
        try:
            engine = await asyncio.to_thread(load_engine, Path(self.settings.store), self.settings.cache_size)
        except StoreError as exc:
            self._store_problem = str(exc)
            raise
        self.pipeline = Pipeline(engine, self.executor)
        self.metrics.set_store(engine, str(self.settings.store))
        log.info("model store loaded", store=str(self.settings.store), model_version=engine.model_version,
                 groups=len(engine.manifest.groups))

    async def _watch_store(self) -> None:
        while True:
            await asyncio.sleep(self.settings.store_poll_s)
            signature = self._manifest_signature()
            if signature is not None and signature != self._store_sig:
                await self._reload()

    async def _reload(self, force: bool = False) -> bool:
        """Load the store aside; True when a new engine waits to be swapped in."""
        assert self.pipeline is not None
        async with self._reload_lock:
            signature = self._manifest_signature()
            if not force and (signature is None or signature == self._store_sig):
                return False
            try:
                engine = await asyncio.to_thread(load_engine, Path(self.settings.store), self.settings.cache_size)
            except Exception as exc:  # noqa: BLE001 - any failure: keep serving the current store
                self._store_sig = signature  # do not retry the same bad files every poll
                self.metrics.reloads.labels("failed").inc()
                log.error("new model store rejected; keeping the current one", store=str(self.settings.store),
                          error=f"{type(exc).__name__}: {exc}", serving=self.model_version)
                return False
            self._store_sig = signature
            current = self._pending_engine or self.pipeline.engine
            if engine.manifest.schema_hash != current.manifest.schema_hash:
                # Another plant schema changes field names the source and sink rely on (timestamp
                # for backfill, facility for keys): that takes a restart, not a hot swap.
                self.metrics.reloads.labels("failed").inc()
                log.error("new model store is for another plant schema; keeping the current one (restart to switch)",
                          store=str(self.settings.store), serving=self.model_version)
                return False
            if engine.model_version == current.model_version and not force:
                return False
            self._pending_engine = engine
            return True

    def _apply_pending_reload(self) -> None:
        engine, self._pending_engine = self._pending_engine, None
        if engine is None or self.pipeline is None:
            return
        previous = self.pipeline.engine.model_version
        self.pipeline.swap(engine)
        self._store_problem = None
        self.metrics.reloads.labels("ok").inc()
        self.metrics.set_store(engine, str(self.settings.store))
        log.info("model store reloaded", previous=previous, model_version=engine.model_version,
                 groups=len(engine.manifest.groups))
        self._check_recipe_version()

    # -- recipes -------------------------------------------------------------------------------
    def recipe(self, facility: str, item: str) -> tuple[dict[str, Any] | None, str, str]:
        """``(recipe, "", "")``, or ``(None, reason, error)`` saying why there is none
        (``GET /recipes/{facility}/{item}``)."""
        if self.settings.recipes is None:
            return None, "recipes_not_configured", "this worker has no recipes file (MOLDWATCH_RECIPES / --recipes)"
        if self.recipes is None:
            return None, "recipes_not_loaded", f"recipes file not loaded: {self._recipes_problem or 'not read yet'}"
        found = self.recipes.get(facility, item)
        if found is None:
            return None, "no_recipe", f"no recipe for facility {facility!r} item {item!r}"
        return found, "", ""

    def _recipes_path(self) -> Path:
        path = Path(self.settings.recipes or "")
        return path / RECIPES_JSON if path.is_dir() else path  # `moldwatch recipe --out DIR` or its recipes.json

    def _recipes_signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._recipes_path())
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def _load_recipes(self) -> None:
        """Read the recipes file in a thread; on any failure keep the current book (or none)."""
        path = self._recipes_path()
        self._recipes_sig = self._recipes_signature()  # before reading: a write after it is seen next poll
        try:
            book = await asyncio.to_thread(RecipeBook.from_json, path)
        except Exception as exc:  # noqa: BLE001 - recipes are guidance: never stop scoring for them
            self.metrics.recipe_loads.labels("failed").inc()
            error = f"{type(exc).__name__}: {exc}"
            if self.recipes is None:
                self._recipes_problem = error
            log.error("recipes file rejected; keeping the current recipes", path=str(path), error=error,
                      serving=len(self.recipes) if self.recipes is not None else None)
            if self.pipeline is not None and self.pipeline.recipes is None:
                self.pipeline.recipes = RecipeBook([])  # configured: verdicts say on_recipe=null, not nothing
            return
        self.recipes, self._recipes_problem = book, None
        if self.pipeline is not None:
            self.pipeline.recipes = book
        self.metrics.recipe_loads.labels("ok").inc()
        self.metrics.set_recipes(book)
        log.info("recipes loaded", path=str(path), recipes=len(book), model_versions=sorted(book.model_versions))
        self._check_recipe_version()

    def _check_recipe_version(self) -> None:
        if self.recipes is None or not len(self.recipes) or self.model_version in self.recipes.model_versions:
            return
        log.warning("recipes were made with another model store version: on_recipe is null until they are rebuilt "
                    "('moldwatch recipe')", recipes_versions=sorted(self.recipes.model_versions), serving=self.model_version)

    async def _watch_recipes(self) -> None:
        while True:
            await asyncio.sleep(self.settings.store_poll_s)
            signature = self._recipes_signature()
            # None: missing right now ('moldwatch recipe' replaces its directory with two renames);
            # keep what is served, and load the file when it is back.
            if signature is not None and signature != self._recipes_sig:
                await self._load_recipes()

    # -- shutdown ------------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.call_later(self.settings.shutdown_timeout_s, self._give_up.set)
        try:
            await self._cancel("reader")
            await self._cancel("store-watcher")
            await self._cancel("recipes-watcher")
            scorer, committer = self._tasks.get("scorer"), self._tasks.get("committer")
            if scorer is not None and not scorer.done():
                put = asyncio.ensure_future(self.queue.put(_STOP))
                await asyncio.wait({put, scorer}, timeout=self.settings.shutdown_timeout_s,
                                   return_when=asyncio.FIRST_COMPLETED)
            pending = [t for t in (scorer, committer) if t is not None and not t.done()]
            if pending:
                await asyncio.wait(pending, timeout=self.settings.shutdown_timeout_s + 1)
            for name in ("scorer", "committer"):
                task = self._tasks.get(name)
                if task is None:
                    continue
                if not task.done():
                    task.cancel()
                    self.exit_code = 1
                    log.error("shutdown deadline passed; not everything read was acknowledged", task=name)
                elif not task.cancelled() and task.exception() is not None:
                    self.exit_code = 1
            if self.exit_code == 0:
                log.info("drained, flushed and checkpointed", records_in=_total(self.metrics.records_in))
        finally:
            give_up.cancel()

    async def _cancel(self, name: str) -> None:
        task = self._tasks.get(name)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _close(self, http: Any) -> None:
        for name in list(self._tasks):
            await self._cancel(name)
        if self.sink is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sink.close(), 5)
        if self.source is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.source.close(), 5)
        if http is not None:
            from service.http import stop_http

            await stop_http(http[0], http[1])
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped", exit_code=self.exit_code)


def _total(counter: Any) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


__all__ = ["Worker", "load_engine"]
