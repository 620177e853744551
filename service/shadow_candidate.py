"""The worker's shadow canary: a candidate store judging every record beside the served one.

The candidate directory (``candidate_store``) is watched by its whole-tree signature; whenever it
changes, it is loaded and handed to the pipeline, whose shadow verdicts go to the shadow topic only.
Shadowing stops (the pipeline's shadow is cleared) when the candidate is gone (promoted, removed),
does not load, is for another plant schema, or is the version already served; each change is a
metric (``moldwatch_shadow_active``) and a log line.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog

from model_store.errors import StoreError
from model_store.serving.scoring import ScoringEngine
from model_store.serving.store import MANIFEST
from service.reloader import tree_signature

log = structlog.get_logger("moldwatch.worker")


class ShadowCandidate:
    TASK = "candidate-watcher"

    def __init__(self, path: Path, poll_s: float, load: Callable[[Path], ScoringEngine], metrics: Any) -> None:
        self.path = path
        self.poll_s = poll_s
        self._load = load
        self.metrics = metrics

    async def watch(self, pipeline: Any, until_stopping: Callable[[Coroutine[Any, Any, Any]], Awaitable[Any]],
                    stopping: asyncio.Event) -> None:
        """Load the candidate whenever its files change, until the worker stops."""
        seen: Any = None
        while not stopping.is_set():
            signature = tree_signature(self.path, MANIFEST) if (self.path / MANIFEST).is_file() else None
            if signature != seen:
                seen = signature
                await self.load(pipeline, signature is not None)
            await until_stopping(asyncio.sleep(self.poll_s))

    async def load(self, pipeline: Any, present: bool) -> None:
        engine: ScoringEngine | None = None
        why = "the candidate store is gone (promoted or removed)"
        if present:
            try:
                engine = await asyncio.to_thread(self._load, self.path)
            except StoreError as exc:
                why = f"the candidate store does not load: {exc}"
            else:
                if engine.manifest.schema_hash != pipeline.engine.manifest.schema_hash:
                    engine, why = None, "the candidate store is for another plant schema"
                elif engine.model_version == pipeline.engine.model_version:
                    engine, why = None, "the candidate is the version already served"
        pipeline.shadow = engine
        pipeline.shadow_memory = {}
        self.metrics.shadow_active.set(1 if engine is not None else 0)
        if engine is not None:
            log.info("candidate store judging in the shadow", candidate=str(self.path), model_version=engine.model_version)
        else:
            log.warning("no candidate store in the shadow", candidate=str(self.path), reason=why)


__all__ = ["ShadowCandidate"]
