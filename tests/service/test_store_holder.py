"""The served store (service/store_holder.py) on a real trained store, without servers: the first
load builds the pipeline and tells the followers, a new version is swapped in, a store that does not
verify is refused while the last good one serves, one unusable at start is fatal, and a batch whose
store broke under the engine is scored again after a reload instead of being dead-lettered."""
from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from model_store.errors import StoreError
from service.config import WorkerSettings
from service.metrics import WorkerMetrics
from service.pipeline import SourceMessage
from service.recipe_holder import RecipeHolder
from service.store_holder import StoreHolder
from service.verdict_watch import VerdictWatchers
from tests.support.plants import versioned_store
from tests.support.worker_helpers import plant_documents


@pytest.fixture()
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


def holder_for(store: Path, executor: ThreadPoolExecutor) -> StoreHolder:
    settings = WorkerSettings(_env_file=None, store=store)  # type: ignore[call-arg]
    metrics = WorkerMetrics()
    recipes = RecipeHolder(settings, metrics, lambda book: None)
    watchers = VerdictWatchers(settings, metrics.registry, lambda book: None)
    return StoreHolder(settings, metrics, executor, recipes, watchers)


def publish(source: Path, store: Path, version: str, **changes: Any) -> None:
    """Replace the store directory with ``source`` as ``version`` (what a deploy does)."""
    staged = versioned_store(source, store.parent / f"staged-{version}", version, **changes)
    shutil.rmtree(store)
    staged.rename(store)


def sample(holder: StoreHolder, name: str) -> float | None:
    return holder.metrics.registry.get_sample_value(name)


async def test_the_first_store_builds_the_pipeline_and_the_followers_learn_its_version(store_copy, executor):
    holder = holder_for(store_copy, executor)
    assert holder.pipeline is None and holder.reason() == "model store not loaded yet"
    pipeline = await holder.load()
    assert holder.pipeline is pipeline and holder.model_version == pipeline.engine.model_version
    assert holder.recipes.model_version == holder.model_version  # the recipes follow the served store
    assert holder.reason() is None and holder.warnings() == {}
    assert sample(holder, "moldwatch_store_rejected") == 0 and sample(holder, "moldwatch_broken_groups") == 0


async def test_a_new_version_is_swapped_in_and_a_store_that_does_not_verify_is_refused(store_copy, trained_store, executor):
    holder = holder_for(store_copy, executor)
    await holder.load()
    publish(trained_store, store_copy, "v2")
    assert await holder.reloader.load()  # what the watcher does when the directory changed
    assert holder.model_version == "v2" and holder.pipeline.engine.model_version == "v2"
    assert holder.metrics.registry.get_sample_value("moldwatch_model_reloads_total", {"outcome": "ok"}) == 1
    publish(trained_store, store_copy, "v3", schema_hash="another-plant")  # its manifest no longer verifies
    assert not await holder.reloader.load()
    assert holder.model_version == "v2" and holder.reason() is None  # the last good store keeps serving
    warning = holder.warnings()["store"]
    assert "rejected" in warning and "schema hash mismatch" in warning and "serving v2" in warning
    assert sample(holder, "moldwatch_store_rejected") == 1


async def test_a_store_that_cannot_load_at_start_is_fatal(tmp_path, executor):
    (tmp_path / "store").mkdir()
    holder = holder_for(tmp_path / "store", executor)
    with pytest.raises(StoreError):
        await holder.load()
    assert holder.pipeline is None and holder.reason()


async def test_a_batch_whose_store_broke_under_it_is_reloaded_and_scored_again(store_copy, executor, small_plant):
    holder = holder_for(store_copy, executor)
    pipeline = await holder.load()
    real = pipeline.process
    failures = [StoreError("model file changed under the engine")]

    async def breaks_once(batch: list[SourceMessage]) -> Any:
        if failures:
            raise failures.pop()
        return await real(batch)

    pipeline.process = breaks_once  # type: ignore[method-assign]
    (document,) = plant_documents(small_plant, 1, "holder")
    result = await holder.process([SourceMessage(document, None)], asyncio.Event())
    assert len(result.scored) + len(result.failed) == 1 and not failures
    assert holder.broken is None and holder.reason() is None  # scored: the store is fine again
    give_up = asyncio.Event()
    give_up.set()
    failures.append(StoreError("still broken"))
    with pytest.raises(StoreError):  # past the shutdown deadline: raised, not retried forever
        await holder.process([SourceMessage(document, None)], give_up)
