"""The served model store: loaded at start, watched, swapped in between batches, reloaded when it
breaks under the engine; the pipeline that scores with it.

- The first load is fatal when it fails (:meth:`StoreHolder.load`): there is nothing to serve.
- A :class:`~service.reloader.Reloader` polls the whole store directory (every file is in the
  signature, no debounce): a store copied file by file fails verification until its last file
  lands and is served at the next poll after. A rejected store keeps the last good one serving.
- A new store is swapped in at once when accepted (an idle stream must not keep reporting the old
  version) and again before each batch; a batch in flight finishes with the engine it started with.
- A store for another plant schema is refused: field names the source and sink rely on
  (timestamp for backfill, facility for keys) change, which takes a restart.
- :meth:`StoreHolder.process` never dead-letters a record for the store's fault: a store that
  changed or broke under the engine is reloaded and the batch scored again.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from model_store.errors import StoreError
from model_store.serving.line_book import LineBook
from model_store.serving.recipe_book import RecipeBook
from model_store.serving.scoring import ScoringEngine
from model_store.serving.store import MANIFEST, open_store
from service.backoff import Backoff
from service.config import WorkerSettings
from service.metrics import WorkerMetrics
from service.pipeline import BatchResult, Pipeline, SourceMessage
from service.recipe_holder import RecipeHolder
from service.redact import scrub
from service.reloader import Reloader, tree_signature
from service.supersede import AnsweredIds
from service.verdict_watch import VerdictWatchers

log = structlog.get_logger("moldwatch.worker")

# Pauses between re-scoring a batch whose store broke under the engine (after one immediate retry):
# a store being replaced takes seconds, a broken one an operator.
STORE_RETRY_BACKOFF_S = (0.2, 10.0)


def load_engine(store: Path, cache_size: int) -> ScoringEngine:
    """Open (verify every hash) and index a store: blocking, run it in a thread."""
    return ScoringEngine(open_store(store), cache_size=cache_size)


class StoreHolder:
    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics, executor: ThreadPoolExecutor,
                 recipes: RecipeHolder, watchers: VerdictWatchers) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = executor
        self.recipes = recipes  # follow the served store's version
        self.watchers = watchers
        self.reloader: Reloader[ScoringEngine] = Reloader(
            "model store", Path(settings.store) / MANIFEST, self._open, settings.store_poll_s, debounce=False,
            on_loaded=lambda engine: self.swap(), on_failed=lambda exc: metrics.reloads.labels("failed").inc(),
            describe=lambda e: e.model_version, signature=lambda manifest: tree_signature(manifest.parent, MANIFEST))
        self.pipeline: Pipeline | None = None
        self.broken: str | None = None  # the scorer found the serving store unusable
        metrics.store_rejected.set_function(lambda: 1.0 if self.reloader.rejected() else 0.0)
        metrics.broken_groups.set_function(lambda: float(len(self.broken_groups())))

    @property
    def model_version(self) -> str | None:
        return self.pipeline.engine.model_version if self.pipeline else None

    def broken_groups(self) -> dict[str, str]:
        """Setting groups whose model file failed to load: group -> why."""
        return dict(self.pipeline.engine.broken_groups) if self.pipeline is not None else {}

    def reason(self) -> str | None:
        """Why no store serves now (readiness), or None."""
        return self.reloader.reason() or self.broken

    def warnings(self) -> dict[str, str]:
        """What is wrong with the store but does not stop serving (``/readyz`` warnings)."""
        warnings: dict[str, str] = {}
        rejected = self.reloader.rejected()
        if rejected:
            warnings["store"] = scrub(f"newer store at {self.settings.store} rejected ({rejected}); "
                                      f"serving {self.model_version}")
        broken = self.broken_groups()
        if broken:
            named = ", ".join(sorted(broken)[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
            first = broken[sorted(broken)[0]]
            warnings["groups"] = scrub(f"{len(broken)} setting group model(s) cannot be loaded, their records are "
                                       f"unscorable: {named} ({first}); publish a good store")
        return warnings

    async def load(self) -> Pipeline:
        """The first store and the pipeline on it; raises :class:`StoreError` when it cannot load."""
        await self.reloader.load(force=True, raise_errors=True)
        engine = self.reloader.value
        assert engine is not None  # raise_errors: loaded, or raised
        self.pipeline = Pipeline(engine, self.executor, AnsweredIds(self.settings.supersede_memory))
        self._follow(engine)
        log.info("model store loaded", store=str(self.settings.store), model_version=engine.model_version,
                 groups=len(engine.manifest.groups))
        return self.pipeline

    def use_recipes(self, book: RecipeBook) -> None:
        if self.pipeline is not None:
            self.pipeline.recipes = book

    def use_lines(self, book: LineBook) -> None:
        if self.pipeline is not None:
            self.pipeline.lines = book

    async def _open(self, path: Path, force: bool) -> ScoringEngine | None:
        """The Reloader's callback: a new engine, None when it is the version already held (unless
        ``force``: the files changed under the engine), or StoreError to keep the current one."""
        engine = await asyncio.to_thread(load_engine, Path(self.settings.store), self.settings.cache_size)
        current = self.reloader.value
        if current is None:
            return engine
        if engine.manifest.schema_hash != current.manifest.schema_hash:
            raise StoreError("the new model store is for another plant schema (restart to switch)")
        if engine.model_version == current.model_version and not force:
            return None
        return engine

    def swap(self) -> None:
        """Serve the store the watcher (or a forced reload) accepted last, if it is not served yet."""
        engine = self.reloader.value
        if engine is None or self.pipeline is None or engine is self.pipeline.engine:
            return
        previous = self.pipeline.engine.model_version
        self.pipeline.swap(engine)
        self.broken = None
        self.metrics.reloads.labels("ok").inc()
        self._follow(engine)
        log.info("model store reloaded", previous=previous, model_version=engine.model_version,
                 groups=len(engine.manifest.groups))

    def _follow(self, engine: ScoringEngine) -> None:
        self.metrics.set_store(engine, str(self.settings.store))
        self.watchers.use_store(engine)
        self.recipes.use_store(engine.model_version)

    async def process(self, batch: list[SourceMessage], give_up: asyncio.Event) -> BatchResult:
        """Score ``batch``; on a store that changed or broke under the engine, reload and retry
        until it scores (or ``give_up`` is set: then the StoreError is raised)."""
        assert self.pipeline is not None
        backoff, attempt = Backoff(*STORE_RETRY_BACKOFF_S), 0
        while True:
            try:
                result = await self.pipeline.process(batch)
                self.broken = None
                return result
            except StoreError as exc:
                self.broken = f"model store unusable: {exc}"
                log.error("model store changed or broke under the engine; reloading before retrying the batch",
                          error=str(exc), records=len(batch))
                await self.reloader.load(force=True)
                self.swap()
                if give_up.is_set():
                    raise
                if attempt:  # the first retry is immediate: a reload usually fixed it
                    await asyncio.sleep(backoff.next())
                attempt += 1


__all__ = ["StoreHolder", "load_engine", "STORE_RETRY_BACKOFF_S"]
