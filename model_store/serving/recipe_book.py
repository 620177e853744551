"""Fast, pure lookup of published recipes, for the worker's live check and its HTTP API.

    book = RecipeBook.from_json("recipes/recipes.json")      # or RecipeBook(docs) from MongoDB
    book.get("F01", "ITM-003")                                 # the recipe dict, or None
    book.on_recipe("F01", "ITM-003", 4, model_version=v)      # True / False / None (can't tell)
    book.on_recipe_batch(batch.facility, batch.item, batch.cluster, model_version=v)

Setting cluster numbers belong to one store version (its K-Means), so a recipe only judges
records scored by the store it was made with: pass the worker's ``model_version`` and a recipe
from another version answers None, like a facility/item without a recipe.

A recipe is served as published, so ``GET /recipes/{facility}/{item}`` carries its
``confidence`` (``clearly_better`` / ``uncertain``), ``confidence_reason`` and ``selection``. A
fallback recipe whose setting no cluster holds has ``setting_cluster`` -1: on_recipe answers None.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np

from model_store.errors import DataError

RECIPES_JSON = "recipes.json"  # the file `moldwatch recipe --out DIR` writes and the book reads


class RecipeBook:
    """Recipes keyed by (facility, item). Lookups are dict gets: safe to call per record."""

    def __init__(self, recipes: Iterable[Mapping[str, Any]], kept: Iterable[Mapping[str, Any]] = ()):
        self._by_pair: dict[tuple[str, str], dict[str, Any]] = {}
        # "keep current practice" answers (recipes.json's keep_current_practice): served by
        # GET /recipes as the part's answer, never used to say a shot is on or off recipe.
        self._kept: dict[tuple[str, str], dict[str, Any]] = {}
        for answer in kept:
            if isinstance(answer, Mapping) and "facility" in answer and "item" in answer:
                self._kept[(str(answer["facility"]), str(answer["item"]))] = {k: v for k, v in answer.items() if k != "_id"}
        for recipe in recipes:
            doc = {k: v for k, v in dict(recipe).items() if k != "_id"}  # MongoDB's _id is not part of a recipe
            try:
                key = (str(doc["facility"]), str(doc["item"]))
                doc["setting_cluster"] = int(doc["setting_cluster"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"recipe {doc.get('facility')!r}/{doc.get('item')!r}: "
                                "needs facility, item and an integer setting_cluster") from None
            self._by_pair[key] = doc

    @classmethod
    def from_json(cls, source: str | Path | Mapping[str, Any] | list[Mapping[str, Any]]) -> RecipeBook:
        """From a recipes.json path, its parsed document, or a plain list of recipe dicts."""
        if isinstance(source, (str, Path)):
            path = Path(source)
            try:
                source = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise DataError(f"{path}: recipes file not found; write one with 'moldwatch recipe'") from None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f"{path}: unreadable recipes file ({exc.__class__.__name__})") from None
        kept: Any = []
        recipes: Any = source
        if isinstance(source, Mapping):
            kept = source.get("keep_current_practice") or []
            recipes = source.get("recipes")
        if not isinstance(recipes, list) or not isinstance(kept, list):
            raise DataError("recipes: expected a recipes.json document or a list of recipes")
        return cls(recipes, kept)

    def __len__(self) -> int:
        return len(self._by_pair)

    def __contains__(self, pair: object) -> bool:
        return pair in self._by_pair

    @property
    def model_versions(self) -> set[str]:
        return {str(r.get("model_version")) for r in self._by_pair.values()}

    def recipes(self) -> list[dict[str, Any]]:
        return [self._by_pair[k] for k in sorted(self._by_pair)]

    def get(self, facility: Any, item: Any) -> dict[str, Any] | None:
        """The recipe of a facility/item (a JSON-ready dict), or None."""
        return self._by_pair.get((str(facility), str(item)))

    def answer(self, facility: Any, item: Any) -> dict[str, Any] | None:
        """What the recipes say for a facility/item: its recipe, else its "keep current practice"
        answer (``action`` says so, with the reason and the setting considered; it names no setting to
        run), else None."""
        key = (str(facility), str(item))
        return self._by_pair.get(key) or self._kept.get(key)

    def on_recipe(self, facility: Any, item: Any, setting_cluster: Any, model_version: str | None = None) -> bool | None:
        """Whether a record's setting cluster is the recommended one.

        None when there is no recipe for the facility/item, the cluster is unknown (< 0 or
        missing), the recipe names no cluster (-1), or ``model_version`` is given and differs from
        the recipe's.
        """
        recipe = self._by_pair.get((str(facility), str(item)))
        if recipe is None or setting_cluster is None:
            return None
        if model_version is not None and recipe.get("model_version") != model_version:
            return None
        try:
            cluster = int(setting_cluster)
        except (TypeError, ValueError):
            return None
        if cluster < 0 or recipe["setting_cluster"] < 0:
            return None
        return cast(bool, cluster == recipe["setting_cluster"])

    def on_recipe_batch(self, facility: Iterable[Any], item: Iterable[Any], setting_cluster: Iterable[Any],
                        model_version: str | None = None) -> np.ndarray:
        """:meth:`on_recipe` for parallel arrays (e.g. a ScoredBatch's): an object array of True/False/None."""
        return np.array(
            [self.on_recipe(f, i, c, model_version) for f, i, c in zip(facility, item, setting_cluster)], dtype=object
        )
