"""The worker's live recipe check against the real servers: ``on_recipe`` on every verdict, the
per-facility check counter, ``GET /recipes/{facility}/{item}``, and a recipes file replaced (then
broken) while the worker runs."""
from __future__ import annotations

import asyncio
import collections
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pymongo import AsyncMongoClient

from model_store.serving.recipe_book import RecipeBook
from service.pipeline import Pipeline, SourceMessage
from service.worker import load_engine
from tests.support.worker_helpers import (
    VERDICT_SCHEMA,
    get,
    metric,
    plant_documents,
    read_topic,
    running_worker,
    unique,
    values,
    wait_for,
    worker_settings,
)

pytestmark = [pytest.mark.servers, pytest.mark.timeout(240)]

SHOTS = 150  # the small plant's first shots: 15 facility/items, one setting cluster each


def write_recipes(path: Path, recipes: list[dict[str, Any]]) -> None:
    """A minimal recipes.json (what RecipeBook reads of 'moldwatch recipe' output), replaced atomically."""
    staged = path.with_suffix(".tmp")
    staged.write_text(json.dumps({"recipes": recipes}))
    os.replace(staged, path)


def recipe(pair: tuple[str, str], cluster: int, model_version: str) -> dict[str, Any]:
    return {"facility": pair[0], "item": pair[1], "setting_cluster": cluster, "model_version": model_version,
            "setting": {"exact": {}, "centroid": {}}}


def expected(book: RecipeBook, verdict: dict[str, Any]) -> bool | None:
    return book.on_recipe(verdict["facility"], verdict["item"], verdict["setting_cluster"], verdict["model_version"])


def clusters_of(store: Path, documents: list[dict[str, Any]]) -> tuple[str, list[tuple[tuple[str, str], int]]]:
    """The serving store's version, and each facility/item's most common setting cluster in
    ``documents`` (most shots first): the scoring core decides clusters, so ask it."""
    engine = load_engine(store, 64)
    verdicts = Pipeline(engine).run_batch([SourceMessage(d) for d in documents], memory={}).verdicts
    counts = collections.Counter((v["facility"], v["item"], v["setting_cluster"]) for v in verdicts)
    pairs: dict[tuple[str, str], int] = {}
    for (facility, item, cluster), _ in counts.most_common():
        if cluster is not None:
            pairs.setdefault((facility, item), cluster)
    return engine.model_version, list(pairs.items())


async def test_verdicts_say_whether_they_are_on_recipe_and_a_replaced_recipes_file_is_picked_up(
    mongo_server, kafka_server, trained_store, small_plant, tmp_path
):
    name = unique("recipes")
    path = tmp_path / "recipes.json"
    batches = [plant_documents(small_plant, SHOTS, f"{name}-{n}") for n in range(3)]  # the same shots, new ids
    version, pairs = await asyncio.to_thread(clusters_of, trained_store, batches[0])
    assert len(pairs) >= 4
    (a, cluster_a), (b, cluster_b), (stale, cluster_stale) = pairs[:3]
    v1 = [recipe(a, cluster_a, version), recipe(b, cluster_b + 1, version),
          recipe(stale, cluster_stale, "an-older-store")]  # cluster numbers of another store: can't tell
    write_recipes(path, v1)
    settings = worker_settings(mongo_server, kafka_server, trained_store, name, recipes=path)
    topic = settings.kafka_verdicts_topic
    client = AsyncMongoClient(mongo_server.uri)
    collection = client[settings.mongo_database][settings.mongo_collection]
    try:
        async with running_worker(settings) as worker:
            await collection.insert_many(batches[0])
            first = values(await read_topic(kafka_server.bootstrap_servers, topic, SHOTS))
            await wait_for(lambda: metric(worker, "moldwatch_recipe_checks_total") == SHOTS)
            checks = {(f, o): metric(worker, "moldwatch_recipe_checks_total", facility=f, on_recipe=o)
                      for f in {a[0], b[0], stale[0]} for o in ("true", "false", "unknown")}
            found = await get(worker, f"/recipes/{a[0]}/{a[1]}")
            missing = await get(worker, f"/recipes/{a[0]}/no-such-item")
            ready = (await get(worker, "/readyz")).status_code

            # v2 swaps the verdicts of a and b; it is picked up while the worker runs.
            write_recipes(path, [recipe(a, cluster_a + 1, version), recipe(b, cluster_b, version)])
            await wait_for(lambda: metric(worker, "moldwatch_recipe_loads_total", outcome="ok") == 2, timeout=20)
            await collection.insert_many(batches[1])
            second = values(await read_topic(kafka_server.bootstrap_servers, topic, 2 * SHOTS))[SHOTS:]

            # A broken file is refused and v2 kept.
            path.write_text('{"recipes": [{"facility": ')
            await wait_for(lambda: metric(worker, "moldwatch_recipe_loads_total", outcome="failed") >= 1, timeout=20)
            await collection.insert_many(batches[2])
            third = values(await read_topic(kafka_server.bootstrap_servers, topic, 3 * SHOTS))[2 * SHOTS:]
            kept = await get(worker, f"/recipes/{b[0]}/{b[1]}")
            exposition = (await get(worker, "/metrics")).text
    finally:
        await client.close()

    book_v1, book_v2 = RecipeBook(v1), RecipeBook.from_json({"recipes": [recipe(a, cluster_a + 1, version),
                                                                        recipe(b, cluster_b, version)]})
    for verdicts, book, prefix in ((first, book_v1, "-0-"), (second, book_v2, "-1-"), (third, book_v2, "-2-")):
        assert len(verdicts) == SHOTS and all(prefix in v["record_id"] for v in verdicts)
        for verdict in verdicts:
            jsonschema.validate(verdict, VERDICT_SCHEMA)
            assert verdict["on_recipe"] is expected(book, verdict), verdict

    def by_pair(verdicts: list[dict[str, Any]], pair: tuple[str, str]) -> set[bool | None]:
        return {v["on_recipe"] for v in verdicts if (v["facility"], v["item"]) == pair}

    assert by_pair(first, a) == {True} and by_pair(first, b) == {False} and by_pair(first, stale) == {None}
    assert by_pair(second, a) == {False} and by_pair(second, b) == {True}
    assert by_pair(third, a) == {False} and by_pair(third, b) == {True}
    assert {v["on_recipe"] for v in first if (v["facility"], v["item"]) not in (a, b, stale)} == {None}

    # The per-facility counter (share on recipe = true / all), created at 0 for the book's facilities.
    count = collections.Counter((v["facility"], {True: "true", False: "false", None: "unknown"}[v["on_recipe"]])
                                for v in first)
    assert checks == {key: float(count[key]) for key in checks}
    assert f'moldwatch_recipe_checks_total{{facility="{a[0]}",on_recipe="true"}}' in exposition
    assert metric(worker, "moldwatch_recipes") == 2  # v2, kept through the broken file
    assert ready == 200 and metric(worker, "moldwatch_ready") == 1

    assert found.status_code == 200 and found.json() == recipe(a, cluster_a, version)
    assert missing.status_code == 404 and missing.json()["reason"] == "no_recipe"
    assert kept.status_code == 200 and kept.json()["setting_cluster"] == cluster_b
