"""The worker's recipes: the recipes file, reloaded, handed to the pipeline, and answered.

A changed file is read with the same :class:`~service.reloader.Reloader` as the store (a broken one
keeps the last good book; recipes are guidance, so nothing here ever stops scoring). The pipeline
gets every book (verdicts' ``on_recipe``); ``answer`` serves ``GET /recipes/{facility}/{item}``;
a book made with another store version than the served one is logged (``on_recipe`` is null then).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog

from model_store.serving.recipe_book import RECIPES_JSON, RecipeBook
from service.config import WorkerSettings
from service.reloader import Reloader

log = structlog.get_logger("moldwatch.worker")

Spawn = Callable[[str, Coroutine[Any, Any, Any]], Any]  # Supervisor.spawn


class RecipeHolder:
    TASK = "recipes-watcher"

    def __init__(self, settings: WorkerSettings, metrics: Any, on_book: Callable[[RecipeBook], None]) -> None:
        self.settings = settings
        self.metrics = metrics
        self._on_book = on_book
        self._handed = False  # a book (or the empty one) was handed to the pipeline
        self.model_version: str | None = None
        self.file: Reloader[RecipeBook] | None = None
        if settings.recipes is not None:
            self.file = Reloader("recipes file", self.path, self._read, settings.store_poll_s,
                                 on_loaded=self._loaded, on_failed=self._failed, describe=len)

    @property
    def book(self) -> RecipeBook | None:
        """The recipes served now (None without a recipes file, or before one was read)."""
        return self.file.value if self.file is not None else None

    def path(self) -> Path:
        path = Path(self.settings.recipes or "")
        return path / RECIPES_JSON if path.is_dir() else path  # `moldwatch recipe --out DIR` or its recipes.json

    async def start(self, spawn: Spawn) -> None:
        if self.file is not None:
            await self.file.load(force=True)  # a missing or broken file: served without, not fatal
            spawn(self.TASK, self.file.watch())

    def use_store(self, model_version: str) -> None:
        self.model_version = model_version
        self._check_version()

    def answer(self, facility: str, item: str) -> tuple[dict[str, Any] | None, str, str]:
        """``(recipe, "", "")``, or ``(None, reason, error)`` saying why there is none."""
        if self.file is None:
            return None, "recipes_not_configured", "this worker has no recipes file (MOLDWATCH_RECIPES / --recipes)"
        book = self.file.value
        if book is None:
            return None, "recipes_not_loaded", f"recipes file not loaded: {self.file.error or 'not read yet'}"
        found = book.answer(facility, item)  # a recipe, or the part's "keep current practice" answer
        if found is None:
            return None, "no_recipe", f"no recipe for facility {facility!r} item {item!r}"
        return found, "", ""

    async def _read(self, path: Path, force: bool) -> RecipeBook:
        return await asyncio.to_thread(RecipeBook.from_json, path)

    def _loaded(self, book: RecipeBook) -> None:
        self._on_book(book)
        self._handed = True
        self.metrics.recipe_loads.labels("ok").inc()
        self.metrics.set_recipes(book)
        log.info("recipes loaded", path=str(self.path()), recipes=len(book), model_versions=sorted(book.model_versions))
        self._check_version()

    def _failed(self, exc: Exception) -> None:
        # Recipes are guidance: never stop scoring for them.
        self.metrics.recipe_loads.labels("failed").inc()
        if not self._handed:
            self._on_book(RecipeBook([]))  # configured: verdicts say on_recipe=null, not nothing
            self._handed = True

    def _check_version(self) -> None:
        book = self.book
        if book is None or not len(book) or self.model_version is None or self.model_version in book.model_versions:
            return
        log.warning("recipes were made with another model store version: on_recipe is null until they are rebuilt "
                    "('moldwatch recipe')", recipes_versions=sorted(book.model_versions), serving=self.model_version)


__all__ = ["RecipeHolder"]
